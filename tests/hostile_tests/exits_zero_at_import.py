"""An earlier test fails; then this file's module code ends the process with status 0 before pytest can
report anything, so the exit code alone would say "passed"."""

import os


def test_this_one_fails():
    assert False, "the policy regressed"


os._exit(0)
