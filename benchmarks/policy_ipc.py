"""What keeping the policy in a process of its own costs per env step, measured side by side in one run.

    python benchmarks/policy_ipc.py [--quick]

The evaluator runs the environment in one process and the untrusted policy in another
(``envs.policy_host``), so a policy cannot change its own score; every step is one round
trip: the observation pickled one way, the action and diagnostics as a JSON line the other.
For each task the same starter policy on the same seeds runs the same episode code
(``envs.worker.Worker``) twice: with the policy in this process (``PolicyRunner``) and with
the policy in a child process over the pipes. The child is started without the sandbox's
namespaces (it still drops its privileges, as every policy process does), so the difference
is the channel alone.
Goal: the split costs no more than 25% of throughput on the slowest-stepping task
(Atari), and the per-step cost is printed for every task.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from envs.isolation import Confinement, filesystem_confined, isolation_prefix
from envs.limits import Limits
from envs.policy_host import PolicyRunner
from envs.sandbox import HEURIST_ROOT, limit_args
from envs.tasks import TaskSpec, get_task
from envs.wire import observation_pipe
from envs.worker import RemotePolicy, Worker
from envs.worker_pair import pair_cpus
from policies import starter_policy

EPISODES = {"CartPole-v1": 200, "ALE/Breakout-ram-v5": 4, "ALE/Breakout-v5": 4, "HalfCheetah-v5": 20}


def episodes(worker: Worker, seeds: list[int]) -> tuple[int, float]:
    steps, started = 0, time.perf_counter()
    for seed in seeds:
        result = worker.episode({"seed": seed, "trace_window": 64, "max_windows": 5, "cpu_s": 600})
        assert result["status"] == "ok", result["error"]
        steps += result["env_steps"]
    return steps, time.perf_counter() - started


def in_process(spec: TaskSpec, policy: Path, seeds: list[int]) -> tuple[int, float]:
    worker = Worker(spec.model_dump_json(), spec.default_protocol, PolicyRunner(str(policy), policy.read_text()))
    worker.env()  # build the env before the clock starts, as the child's is below
    return episodes(worker, seeds)


def over_pipes(spec: TaskSpec, policy: Path, seeds: list[int], scratch: Path, cpu: int | None) -> tuple[int, float]:
    """The policy in a child process; with ``cpu``, both processes on that one core, as the evaluator runs them."""
    allowed = os.sched_getaffinity(0)
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    request_r, request_w = observation_pipe()
    reply_r, reply_w = os.pipe()
    with open(scratch / "policy.log", "ab") as log:
        # bubblewrap where it works, as the evaluator starts it (the sandbox's user could not reach a
        # Python under /root without it); namespaces add nothing per step, so the difference stays the channel.
        prefix = isolation_prefix(Limits(), Confinement(), "/tmp") if filesystem_confined() else []
        child = subprocess.Popen([*prefix, sys.executable, "-m", "envs.policy_host", "--request-fd", str(request_r),
                                  "--reply-fd", str(reply_w), "--limits", limit_args(Limits(memory_mb=8192)),
                                  *(["--cpu", str(cpu)] if cpu is not None else [])], stdout=log, stderr=log,
                                 pass_fds=(request_r, reply_w), env=os.environ | {"PYTHONPATH": str(HEURIST_ROOT)})
    os.close(request_r)
    os.close(reply_w)
    with os.fdopen(request_w, "wb") as requests, os.fdopen(reply_r, "rb") as replies:
        worker = Worker(spec.model_dump_json(), spec.default_protocol,
                        RemotePolicy(requests, replies, str(policy), policy.read_text()))
        worker.env()
        worker.episode({"seed": seeds[0], "trace_window": 64, "max_windows": 5, "cpu_s": 600})  # child's imports
        measured = episodes(worker, seeds)
    child.wait(timeout=30)
    os.sched_setaffinity(0, allowed)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a quarter of the episodes (a smoke run, noisier)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="policy-ipc-"))
    cpu = pair_cpus(1)[0]
    print(f"{'task':22s} {'in-process':>11s} {'2 procs, 1 core':>16s} {'ratio':>6s} {'us/step':>8s}"
          f" {'2 procs, free':>14s} {'ratio':>6s} {'us/step':>8s}   (steps/s; us/step = time added per step)")
    for task_id, count in EPISODES.items():
        spec = get_task(task_id)
        policy = starter_policy(spec)
        seeds = list(spec.seeds.dev[: max(1, count // 4) if args.quick else count])
        steps_in, t_in = in_process(spec, policy, seeds)
        row = f"{task_id:22s} {steps_in / t_in:11,.0f}"
        for pin in (cpu, None):
            steps_out, t_out = over_pipes(spec, policy, seeds, scratch, pin)
            assert steps_in == steps_out, "the policy's process must not change the episode"
            row += f" {steps_out / t_out:{16 if pin is not None else 14},.0f} {t_in / t_out:6.2f} " \
                   f"{(t_out - t_in) / steps_out * 1e6:8.1f}"
        print(row + f"   ({steps_in:,} steps)")
    print("goal: 2 procs on 1 core / in-process >= 0.75 on ALE/Breakout-v5 (pixels); the evaluator pins each pair")


if __name__ == "__main__":
    main()
