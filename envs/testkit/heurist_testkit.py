"""Helpers for a workspace's regression tests. Written by heurist into each test's throwaway copy.

A test file runs alone, in a sandboxed pytest process, with no policy in it: every call
here is a request to heurist over a private channel, answered by heurist's own code.

- ``run_episode(seed)``: one episode of the policy under test on a dev seed, run by heurist's
  sandboxed evaluator (the same episode an evaluation records; heurist counts its env steps).
  A dict: seed, status ("ok", "policy_error", "invalid_action", "env_error", "timeout",
  "crash"), error, return, length, termination, events ([{step, kind, description}]), trace
  ({actions, rewards, mode_counts, windows}), env_steps.
- ``run_scenario(name)``: a saved failure scenario (heurist names them: the seed, the failure's kind and
  step): the simulator restored a few steps before that failure, the policy under test warmed up on what
  it saw before, then run over the window with its own actions. A dict: scenario, return (over the
  window), length, ending (None, "terminated" or "truncated"), events, failed_again (whether the
  scenario's failure happened again). A Breakout test is then the frames before a lost life, not a game.
- ``first_event(result, kind)``: the step of the first failure event of that kind, or None.
- ``load_policy()``: the policy under test, run in its own sandboxed process: ``reset(seed)``,
  then ``act(obs, info)`` returns its action (an int, a float or a list) and sets
  ``.diagnostics``; for pinning what it does on an observation a test recorded.
"""

import json
import os


class KitError(RuntimeError):
    """heurist refused or could not answer a request (a seed outside the dev split, say)."""


_channel = None


def _ask(message):
    """One request to heurist and its reply, each one JSON line."""
    global _channel
    if _channel is None:
        fds = os.environ.get("HEURIST_KIT_FDS")
        if not fds:
            raise KitError("these tests run only under heurist (its regression step gives them a channel to it)")
        request_fd, reply_fd = (int(fd) for fd in fds.split(","))
        _channel = (os.fdopen(request_fd, "w"), os.fdopen(reply_fd, "r"))
    requests, replies = _channel
    requests.write(json.dumps(message) + "\n")
    requests.flush()
    line = replies.readline()
    if not line:
        raise KitError("heurist closed the channel")
    reply = json.loads(line)
    if not reply.get("ok"):
        raise KitError(reply.get("error", "refused"))
    return reply.get("result")


def run_episode(seed, policy=None):
    if policy is not None:
        raise KitError("regression tests run against the policy under test only; call run_episode(seed)")
    return _ask({"op": "episode", "seed": int(seed)})


def run_scenario(name):
    return _ask({"op": "scenario", "name": str(name)})


def first_event(result, kind):
    steps = [e["step"] for e in result["events"] if e["kind"] == kind]
    return min(steps) if steps else None


def _plain(value):
    """An observation or info value as JSON, keeping a numpy array's dtype."""
    if hasattr(value, "tolist") and hasattr(value, "dtype"):
        return value.tolist(), str(value.dtype)
    return value, None


class RemotePolicy:
    """The policy under test, in its own sandboxed process; only ``reset`` and ``act`` reach it."""

    def __init__(self):
        self.diagnostics = None

    def reset(self, seed):
        _ask({"op": "reset", "seed": int(seed)})
        self.diagnostics = None

    def act(self, obs, info=None):
        data, dtype = _plain(obs)
        reply = _ask({"op": "act", "obs": data, "dtype": dtype, "info": info or {}})
        self.diagnostics = reply["diagnostics"]
        return reply["action"]


def load_policy():
    return RemotePolicy()
