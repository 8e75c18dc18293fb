"""Suggests the name of an accepted test ('tests/test_policy_runs.py') and defines its function, failing, as if
to replace it; heurist names new files itself."""


def test_policy_runs_a_dev_episode():
    assert False
