"""The sandboxed policy process: runs an untrusted policy file and answers with actions, nothing else.

Started by ``envs.worker_pair.WorkerProcess`` as ``python -m envs.policy_host`` inside the
sandbox (scrubbed environment, bubblewrap or ``unshare -n``, cgroups). Before it reads
any policy code it limits itself and gives up every privilege (``envs.limited.confine_self``),
then serves the env process over two pipes (``envs.wire``): ``("reset", {...})`` starts an
episode with a fresh Policy compiled from the source the message carries (the policy file
itself is never visible here, so the bytes that run are the bytes heurist hashed), ``("act",
obs, info)`` asks for one action. It never sees the environment, the reward or the
bookkeeping, so whatever the policy patches in here (gymnasium, numpy, heurist's own modules)
changes only the actions it sends, never its score. Its stdout and stderr are a log heurist
opened, so nothing a policy prints can corrupt the protocol.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import resource
import sys
import traceback
import types
from pathlib import Path
from typing import Any

from envs.limited import PrivilegeError, confine_self
from envs.wire import action_to_wire, plain_diag, receive_from_env, send_to_env

POLICY_MODULE = "heurist_policy"


class PolicyFailed(Exception):
    """The policy's own code failed (load, reset or act); the message says where and how."""


def limit_cpu_for_next_episode(cpu_s: float) -> None:
    """RLIMIT_CPU counts the whole process, so each episode moves the soft limit to 'used so far + budget'."""
    used = resource.getrusage(resource.RUSAGE_SELF).ru_utime + resource.getrusage(resource.RUSAGE_SELF).ru_stime
    soft = int(used + cpu_s) + 1
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    if hard != resource.RLIM_INFINITY:  # inside run_sandboxed, whose hard limit bounds the whole test run
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def load_policy(path: str, code, action_space) -> Any:
    """Execute the compiled policy file in a fresh module and construct its Policy."""
    module = types.ModuleType(POLICY_MODULE)
    module.__file__ = path
    # dataclasses resolve string annotations through sys.modules, so the module must be there.
    sys.modules[POLICY_MODULE] = module
    exec(code, module.__dict__)
    cls = getattr(module, "Policy", None)
    if cls is None or not isinstance(cls, type):
        raise TypeError(f"{path} defines no class Policy")
    if "action_space" in inspect.signature(cls).parameters:
        return cls(action_space=action_space)
    return cls()


def where_in_policy(exc: BaseException, path: str) -> str:
    """'file.py:LINE in func' for the innermost frame inside the policy file."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {Path(path).name}:{f.lineno} in {f.name}"


class PolicyRunner:
    """One policy's source: a fresh Policy from a fresh module for every episode, so no state crosses
    seeds; the source is compiled once, since recompiling it each episode would buy nothing. ``path``
    names it in tracebacks and as the module's ``__file__``."""

    def __init__(self, path: str, source: str) -> None:
        self.path = path
        self.source = source
        self._code = None
        self._policy: Any = None
        self._step = 0

    def start(self, seed: int, action_space, cpu_s: float | None = None) -> None:
        if cpu_s is not None:
            limit_cpu_for_next_episode(cpu_s)
        self._policy, self._step = None, 0
        try:
            if self._code is None:
                self._code = compile(self.source, self.path, "exec")
            policy = load_policy(self.path, self._code, action_space)
            policy.reset(seed)
        except BaseException as exc:
            raise PolicyFailed(f"policy failed to load or reset{where_in_policy(exc, self.path)}: "
                               f"{type(exc).__name__}: {exc}") from None
        self._policy = policy

    def act(self, obs, info) -> tuple[Any, Any]:
        """The policy's action, as returned, and its ``diagnostics`` attribute (the object itself)."""
        try:
            action = self._policy.act(obs, info)
        except BaseException as exc:
            raise PolicyFailed(f"act() raised at step {self._step}{where_in_policy(exc, self.path)}: "
                               f"{type(exc).__name__}: {exc}") from None
        self._step += 1
        return action, getattr(self._policy, "diagnostics", None)


def serve(requests, replies) -> None:
    """Answer the env process until it hangs up. A policy failure is a reply, never the end of the process."""
    runner: PolicyRunner | None = None
    while (message := receive_from_env(requests)) is not None:
        try:
            if message[0] == "reset":
                job = message[1]
                if runner is None or (runner.path, runner.source) != (job["policy_path"], job["source"]):
                    runner = PolicyRunner(job["policy_path"], job["source"])
                runner.start(int(job["seed"]), job["action_space"], float(job["cpu_s"]))
                reply: dict[str, Any] = {"ok": True}
            else:
                action, diag = runner.act(message[1], message[2])
                reply = action_to_wire(action)
                if diag is not None:
                    reply["d"] = plain_diag(diag)
        except PolicyFailed as exc:
            reply = {"error": str(exc)}
        send_to_env(replies, reply)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--request-fd", type=int, required=True)
    parser.add_argument("--reply-fd", type=int, required=True)
    parser.add_argument("--limits", required=True)
    parser.add_argument("--cpu", type=int, help="the core shared with the env process (see envs.worker_pair.pair_cpus)")
    args = parser.parse_args()
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    try:
        confine_self(json.loads(args.limits))
    except (PrivilegeError, OSError) as exc:  # never run policy code with privileges left
        sys.exit(f"heurist's sandbox refused to start the policy: {exc}")
    with os.fdopen(args.request_fd, "rb") as requests, os.fdopen(args.reply_fd, "wb") as replies:
        serve(requests, replies)


if __name__ == "__main__":
    main()
