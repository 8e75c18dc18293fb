"""The sandboxed policy process: runs an untrusted policy file and answers with actions, nothing else.

Started by ``envs.worker_pair.WorkerProcess`` as ``python -m envs.policy_host`` inside the
sandbox (scrubbed environment, bubblewrap or ``unshare -n``, cgroups). Before it reads
any policy code it limits itself and gives up every privilege (``envs.limited.confine_self``),
then serves the env process over two pipes (``envs.wire``) and reads observations from the
shared memory it may only read. The env process runs several episodes in lockstep, each in a
slot here (``envs.policy_slots``): ``("start", slot, {...})`` builds a fresh Policy for one
episode from the source the message carries (the policy file itself is never visible here, so
the bytes that run are the bytes heurist hashed); ``("act", slots, observations, infos)`` asks
for one action per slot; ``("diag", slot, first, last)`` for the diagnostics of a trace window;
``("end", slot, accepted)`` frees the slot and answers its mode counts. A start that ran the policy's
``setup()`` (once per process, see ``PolicySlots``) says how long it took. It never sees the
environment, the reward or the bookkeeping, so whatever the policy patches in here (gymnasium,
numpy or heurist's own modules) changes only the actions it sends, never its score. Its stdout
and stderr are a log heurist opened, so nothing a policy prints can corrupt the protocol.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from envs.limited import PrivilegeError, become_reaper, confine_self, fresh_signals
from envs.policy_slots import PolicyFailed, PolicySlots, charged_cpu_s, limit_cpu
from envs.wire import ObservationView, actions_to_wire, receive_from_env, send_to_env

__all__ = ["PolicyFailed", "serve"]


def serve(requests, replies, observations: ObservationView) -> None:
    """Answer the env process until it hangs up. A policy failure is a reply, never the end of the process."""
    slots: PolicySlots | None = None
    while (message := receive_from_env(requests)) is not None:
        kind = message[0]
        if kind == "act":
            actions, failed = slots.act(message[1], observations.unpack(message[2]), message[3], message[4])
            reply: dict[str, Any] = actions_to_wire(actions, failed)
        elif kind == "start":
            job = message[2]
            if slots is None or (slots.path, slots.source) != (job["policy_path"], job["source"]):
                slots = PolicySlots(job["policy_path"], job["source"])
                slots.announce = True
            try:
                if job.get("cpu_s") is not None:
                    # The episodes in flight share a budget; a set-up (once per process) has one of its own.
                    slots.cpu_budget = float(job["cpu_s"]) * int(job.get("live", 1))
                    slots.setup_cpu_s = float(job["cpu_s"])
                    limit_cpu(slots.cpu_budget)
                slots.start(int(message[1]), int(job["seed"]), job["action_space"], int(job["window"]),
                            job.get("simulator_model"))
                reply = {"ok": True, "observes": slots.observes(int(message[1]))}
            except PolicyFailed as exc:
                reply = {"error": str(exc)}
            reply["setup_s"] = slots.take_setup()  # the set-up ran in this start: counted by the env process
        elif kind == "diag":
            reply = {"d": slots.diagnostics(int(message[1]), int(message[2]), int(message[3]))}
        else:  # "end"
            modes, failed = slots.end(int(message[1]), int(message[2]), message[3]) if slots is not None else ({}, None)
            reply = {"modes": modes, "observe_error": failed}
        send_to_env(replies, reply)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--request-fd", type=int, required=True)
    parser.add_argument("--reply-fd", type=int, required=True)
    parser.add_argument("--limits", required=True)
    parser.add_argument("--observations-fd", type=int, help="the shared observations, read-only")
    parser.add_argument("--cpu", type=int, help="the core shared with the env process (see envs.worker_pair.pair_cpus)")
    parser.add_argument("--reap", action="store_true",
                        help="stay above the policy process and end what it leaves behind (envs.limited.become_reaper)")
    args = parser.parse_args()
    fresh_signals(python=True)  # as a policy process started from a terminal, however heurist was started
    if args.reap:
        try:
            become_reaper()  # returns in the child, which is the policy process from here on
        except PrivilegeError as exc:
            sys.exit(f"heurist's sandbox refused to start the policy: {exc}")
    charged_cpu_s()  # arms the charged-CPU clock while it still agrees with getrusage (see limit_cpu)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    try:
        confine_self(json.loads(args.limits))
    except (PrivilegeError, OSError) as exc:  # never run policy code with privileges left
        sys.exit(f"heurist's sandbox refused to start the policy: {exc}")
    with os.fdopen(args.request_fd, "rb") as requests, os.fdopen(args.reply_fd, "wb") as replies:
        serve(requests, replies, ObservationView(args.observations_fd))


if __name__ == "__main__":
    main()
