"""Sends heurist's test channel what it does not expect: lines that are not JSON, unknown operations, extra
keys, an observation with an absurd dtype, holdout and negative seeds (for an episode and for the policy's
reset), a line too long to read; every request
must be refused with a reason and heurist must keep answering."""

import json

import heurist_testkit
import pytest


def _raw(line: bytes):
    requests, replies = heurist_testkit._channel
    requests.buffer.write(line)
    requests.flush()
    return json.loads(replies.readline())


def test_refused_requests():
    heurist_testkit.run_episode(0)  # opens the channel
    assert not _raw(b"not json\n")["ok"]
    assert not _raw(b'{"op": "shell", "cmd": "id"}\n')["ok"]
    assert not _raw(b'{"op": "episode", "seed": 0, "policy": "/etc/passwd"}\n')["ok"]
    assert not _raw(json.dumps({"op": "report", "kind": "test", "nodeid": "x" * 10_000_000}).encode() + b"\n")["ok"]
    for seed in (1000, 2000, -1, 10**30):
        with pytest.raises(heurist_testkit.KitError):
            heurist_testkit.run_episode(seed)
    policy = heurist_testkit.load_policy()
    with pytest.raises(heurist_testkit.KitError):
        policy.act([0.0, 0.0, 0.0, 0.0])  # before reset
    for seed in (1000, 2049):  # the task's holdout and audit seeds: never a test's
        with pytest.raises(heurist_testkit.KitError, match="holdout|audit"):
            policy.reset(seed)
    policy.reset(0)
    for obs, dtype in (([0.0] * 4, "object"), ([0.0] * 4, "<U10"), (["a"] * 4, "float32"), ([0.0] * 4, "V8"),
                       ([0.0] * 4, "(,)f8"), ([0.0] * 4, "(-1,)f8"), ([0.0] * 4, "(2,)f8"), ([0.0] * 4, "\udc00")):
        with pytest.raises(heurist_testkit.KitError):
            heurist_testkit._ask({"op": "act", "obs": obs, "dtype": dtype, "info": {}})
    assert policy.act([0.0, 0.0, 0.1, 0.0]) in (0, 1)
    assert heurist_testkit.run_episode(0)["status"] == "ok"  # still answering
