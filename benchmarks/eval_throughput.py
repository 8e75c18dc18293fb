"""Env steps per second: the sandboxed evaluator against a bare loop, measured side by side in one run.

    python benchmarks/eval_throughput.py [--quick] [--only TASK[:PROTOCOL]] [--repeats N]

For CartPole-v1, ALE/Breakout-v5 (pixels) under the standard protocol and under the
deterministic one, and HalfCheetah-v5, the same starter policy on the same seeds runs:

- ``bare``: a loop in this process, ``env.step(policy.act(obs, info))`` and nothing else;
- ``in-process``: heurist's episode code (``envs.lockstep``) with the policy in this process:
  everything an evaluation records (trace, failure events, diagnostics), no second process;
- ``1 worker, 1 at a time``: the sandboxed evaluator with one worker and one episode per
  message (``lockstep = 1``: how every evaluation ran before lockstep);
- ``1 worker``: one worker, episodes in lockstep (the task family's default width);
- ``N workers``: one worker per core, in lockstep.

A line under each setting gives one bare loop per core, run side by side over shares of the seeds, against one:
what this machine's cores give the simulator with no sandbox at all (shared caches and memory bandwidth, and a
virtual machine's cores, keep it under the number of cores): the reference for ``all / 1w``, which the
evaluator reaches only if its pairs scale as the simulator does.

With ``--repeats N`` each setting runs all five N times, round after round; the table gives the median of each
column and of each round's own ratios, and prints every round's ratios beside it, so that the machine's drift
(up to 15% between two runs here) shows as a spread rather than as one number that may be its best or worst.

Goals (the evaluation-speed issue): one sandboxed worker at 0.85x the bare loop or better,
and all workers at 1.8x one worker or better on 2 cores. The evaluator's time includes
starting its workers and everything it records; the bare loop has none of that.

Before the table, the start of an evaluation on its own: a one-step CartPole evaluation with one worker,
its env process forked from heurist's warm fork server (``envs/forkserver.py``, what every evaluation does)
against one that starts its own Python (``HEURIST_FORK_SERVER=0``, how every evaluation started before). The
fork server is started, and has imported each task's simulator, before the table's timings, as it has in a
run after its first evaluation.

Each setting also prints where an env step's microseconds go: ``env+act`` (the bare loop),
``record`` (the episode code's bookkeeping: in-process minus bare), ``sandbox`` (the policy in
its own process: one worker minus in-process, which holds the channel, the start of the
two processes and the CPU the two share), and the same for one episode per message. A third line
fits the sandbox's cost over those two widths as so much a round plus so much a step (``sandbox_fit``),
and gives the ratio to the bare loop that one worker could reach at any lockstep width.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import runpy
import statistics
import time
from concurrent.futures import ProcessPoolExecutor
from itertools import repeat
from pathlib import Path
from typing import Any

from envs.evaluator import EvalRequest, evaluate, lockstep_width
from envs.tasks import SeedSplits, TaskSpec, get_task
from envs.worker import LocalPolicy, Worker
from policies import starter_policy

# (task, protocol, episodes): enough env steps that starting the workers (about a second) is amortised.
SETTINGS = [("CartPole-v1", None, 600), ("ALE/Breakout-v5", None, 24), ("ALE/Breakout-v5", "deterministic", 4),
            ("HalfCheetah-v5", None, 100)]


def with_dev_seeds(spec: TaskSpec, n: int) -> TaskSpec:
    """The same task with a dev split of n seeds, kept clear of the holdout and audit seeds."""
    dev = tuple(range(10_000, 10_000 + n))
    return spec.model_copy(update={"seeds": SeedSplits(dev=dev, holdout=spec.seeds.holdout, audit=spec.seeds.audit)})


def bare_loop(spec: TaskSpec, protocol: str | None, policy: Path, seeds: tuple[int, ...]) -> tuple[int, float]:
    env = spec.make_env(protocol)
    module = runpy.run_path(str(policy))
    steps, started = 0, time.perf_counter()
    for seed in seeds:
        agent = module["Policy"]()
        agent.reset(seed)
        obs, info = env.reset(seed=seed)
        while True:
            obs, _, terminated, truncated, info = env.step(agent.act(obs, info))
            steps += 1
            if terminated or truncated:
                break
    elapsed = time.perf_counter() - started
    env.close()
    return steps, elapsed


def _bare_share(spec_json: str, protocol: str | None, policy: str, seeds: tuple[int, ...],
                ready: Any) -> tuple[int, float]:
    """One of ``bare_side_by_side``'s processes: its share of the seeds in the bare loop, timed from a common start."""
    spec = TaskSpec.model_validate_json(spec_json)
    try:
        spec.make_env(protocol).close()  # the simulator imported and its ROM or model loaded before the clock starts
    except BaseException:
        ready.abort()  # the others stop waiting for this one, and its error comes back
        raise
    ready.wait()
    return bare_loop(spec, protocol, Path(policy), seeds)


def bare_side_by_side(spec: TaskSpec, protocol: str | None, policy: Path, seeds: tuple[int, ...],
                      processes: int) -> tuple[int, float]:
    """The bare loop in ``processes`` processes at once, each over its share of the seeds: what the machine's cores
    give this simulator with no sandbox, no bookkeeping and no start-up (each times only its loop), the reference for
    ``all / 1w``. Shared caches and memory bandwidth, and a virtual machine's cores, keep it under ``processes``."""
    context = multiprocessing.get_context("spawn")  # a fresh interpreter, as the evaluator's pairs are
    shares = [share for share in (seeds[i::processes] for i in range(processes)) if share]
    # One worker a share: each waits at the barrier, so none is free to take a second share.
    with context.Manager() as manager, ProcessPoolExecutor(len(shares), mp_context=context) as pool:
        ready = manager.Barrier(len(shares))
        done = list(pool.map(_bare_share, repeat(spec.model_dump_json()), repeat(protocol), repeat(str(policy)),
                             shares, repeat(ready)))
    return sum(steps for steps, _ in done), max(elapsed for _, elapsed in done)


def in_process(spec: TaskSpec, protocol: str | None, policy: Path, seeds: tuple[int, ...],
               width: int) -> tuple[int, float]:
    """The episode code in lockstep groups of ``width``, the policy in this process."""
    worker = Worker(spec.model_dump_json(), spec.protocol(protocol).name, LocalPolicy(str(policy), policy.read_text()))
    queue, steps, started = list(reversed(seeds)), 0, time.perf_counter()
    group = worker.episodes
    while queue or len(group):
        while queue and len(group) < width:
            slot = min(set(range(width)) - {run.slot for run in group.runs})
            group.add({"seed": queue.pop(), "slot": slot, "trace_window": 64, "max_windows": 5})
        for result in group.round():
            steps += result["env_steps"]
    return steps, time.perf_counter() - started


def sandboxed(spec: TaskSpec, protocol: str | None, policy: Path, workers: int,
              lockstep: int | None) -> tuple[int, float]:
    request = EvalRequest(policy_path=policy, task_id=spec.id, protocol=protocol, workers=workers, lockstep=lockstep)
    started = time.perf_counter()
    result = evaluate(spec, request)
    elapsed = time.perf_counter() - started
    assert result.status == "complete", result.failures
    return result.env_steps, elapsed


def start_up(spec: TaskSpec, policy: Path, fork_server: bool, tries: int = 7) -> float:
    """Median seconds of a one-step evaluation with one worker: starting its pair is nearly all of it."""
    before = os.environ.get("HEURIST_FORK_SERVER")
    os.environ["HEURIST_FORK_SERVER"] = "1" if fork_server else "0"
    request = EvalRequest(policy_path=policy, task_id=spec.id, workers=1, max_steps=1)
    times = []
    try:
        for _ in range(tries):
            started = time.perf_counter()
            assert evaluate(spec, request).status == "complete"
            times.append(time.perf_counter() - started)
    finally:
        if before is None:
            os.environ.pop("HEURIST_FORK_SERVER")
        else:
            os.environ["HEURIST_FORK_SERVER"] = before
    return statistics.median(times)


def warm_fork_server(spec: TaskSpec, protocol: str | None, policy: Path) -> None:
    """One short evaluation of the task, so that the fork server runs and has imported its simulator."""
    request = EvalRequest(policy_path=policy, task_id=spec.id, protocol=protocol, workers=1, max_steps=1)
    for _ in range(2):  # the first one's env process asks the fork server to import the task's simulator
        assert evaluate(spec, request).status == "complete"


def sandbox_fit(us: dict[str, float], wide: int) -> str:
    """The sandbox's cost per step, fitted as ``a + r / w`` at lockstep width w from the two widths measured (1 and
    ``wide``): ``r`` what a round costs however many episodes it carries (two wake-ups, two processes' caches
    refilled, the messages' fixed part), ``a`` what each episode adds to it. A wider lockstep only shrinks ``r / w``,
    so ``bare / (in-proc + a)`` is the most one worker can reach at any width. A fit of two noisy points, and a cost
    cannot be negative: an ``a`` that comes out below zero is within the noise of nothing, and the ceiling is then
    read with none (``bare / in-proc``: heurist's own record alone)."""
    at_one, at_wide = us["solo"] - us["in"], us["one"] - us["in"]
    per_round = (at_one - at_wide) / (1 - 1 / wide)
    per_step = at_one - per_round
    step = f"{per_step:.1f} us a step" if per_step >= 0 else f"{per_step:.1f} us a step (noise: read as 0)"
    return (f"sandbox fitted over widths 1 and {wide}: {per_round:.0f} us a round + {step}; "
            f"at any width, 1w / bare <= {us['bare'] / (us['in'] + max(per_step, 0.0)):.2f}")


def protocol_name(setting: tuple[str, str | None, int]) -> str:
    return get_task(setting[0]).protocol(setting[1]).name


def measure_round(spec: TaskSpec, protocol: str | None, policy: Path, seeds: tuple[int, ...], width: int,
                  cores: int) -> tuple[int, dict[str, float]]:
    """Every way once, one after another: the env steps each took (the same) and each one's steps a second."""
    n, t_bare = bare_loop(spec, protocol, policy, seeds)
    runs = {"bare_all": bare_side_by_side(spec, protocol, policy, seeds, cores),
            "in": in_process(spec, protocol, policy, seeds, width),
            "solo": sandboxed(spec, protocol, policy, 1, 1),
            "one": sandboxed(spec, protocol, policy, 1, None),
            "all": sandboxed(spec, protocol, policy, cores, None)}
    assert all(steps == n for steps, _ in runs.values()), "every way must take the same env steps"
    return n, {k: n / t for k, (_, t) in runs.items()} | {"bare": n / t_bare}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a quarter of the episodes (a smoke run, noisier)")
    parser.add_argument("--only", metavar="TASK[:PROTOCOL]",
                        help="one task's settings, or one setting: ALE/Breakout-v5:deterministic")
    parser.add_argument("--repeats", type=int, default=1, help=(
        "rounds of every way, one after another, per setting; the table gives the medians, and each round's ratios "
        "are printed: two runs of one round differ by up to 15%% on a shared machine"))
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be 1 or more")
    settings = [s for s in SETTINGS if args.only is None or args.only in (s[0], f"{s[0]}:{protocol_name(s)}")]
    if not settings:
        parser.error(f"--only {args.only} names no setting; the settings are "
                     + ", ".join(f"{s[0]}:{protocol_name(s)}" for s in SETTINGS))
    cores = os.cpu_count() or 1
    cartpole = with_dev_seeds(get_task("CartPole-v1"), 1)
    balancer = starter_policy(cartpole)
    warm_fork_server(cartpole, None, balancer)
    fresh, forked = (start_up(cartpole, balancer, fork_server) for fork_server in (False, True))
    print(f"evaluation start-up (CartPole, 1 worker, 1 step, median of 7): {fresh:.3f} s starting Python, "
          f"{forked:.3f} s forked from the fork server ({fresh / forked:.2f}x faster)\n")
    print(f"{'setting':32s} {'bare':>9s} {'in-proc':>9s} {'1w 1-at-a-time':>15s} {'1 worker':>9s} "
          f"{f'{cores} workers':>10s} {'1w / bare':>10s} {'all / 1w':>9s}   (env steps/s)")
    for task_id, protocol, episodes in settings:
        spec = with_dev_seeds(get_task(task_id), max(2, episodes // 4) if args.quick else episodes)
        policy = starter_policy(spec)
        seeds = spec.seeds.dev
        name = f"{task_id} ({spec.protocol(protocol).name})"
        width = lockstep_width(spec, None)
        warm_fork_server(spec, protocol, policy)
        rounds = [measure_round(spec, protocol, policy, seeds, width, cores) for _ in range(args.repeats)]
        n = rounds[0][0]
        rate = {k: statistics.median(r[k] for _, r in rounds) for k in rounds[0][1]}
        # Each round's ratios from its own side-by-side timings, then their median: the machine's drift between rounds
        # moves both sides of a round's ratio together.
        one_bare = [r["one"] / r["bare"] for _, r in rounds]
        all_one = [r["all"] / r["one"] for _, r in rounds]
        print(f"{name:32s} {rate['bare']:9,.0f} {rate['in']:9,.0f} {rate['solo']:15,.0f} {rate['one']:9,.0f} "
              f"{rate['all']:10,.0f} {statistics.median(one_bare):10.2f} {statistics.median(all_one):9.2f}"
              f"   ({n:,} steps)")
        if len(rounds) > 1:
            print(f"{'':32s} medians of {len(rounds)} rounds; each round's ratios: 1w / bare "
                  f"{', '.join(f'{x:.2f}' for x in one_bare)}; all / 1w {', '.join(f'{x:.2f}' for x in all_one)}")
        side_by_side = [r["bare_all"] / r["bare"] for _, r in rounds]
        print(f"{'':32s} {cores} bare loops side by side: {statistics.median(side_by_side):.2f}x one bare loop "
              f"(how this machine's cores scale the simulator alone: the reference for all / 1w)"
              + (f" (each round's: {', '.join(f'{x:.2f}' for x in side_by_side)})" if len(rounds) > 1 else ""))
        us = {k: 1e6 / r for k, r in rate.items()}
        wide = min(width, len(seeds))
        print(f"{'':32s} us/step: env+act {us['bare']:.1f} | record {us['in'] - us['bare']:+.1f} | "
              f"sandbox {us['one'] - us['in']:+.1f} in lockstep of {wide}, "
              f"{us['solo'] - us['in']:+.1f} one at a time")
        if wide > 1:
            print(f"{'':32s} {sandbox_fit(us, wide)}")
    print("goals: 1w / bare >= 0.85; all / 1w >= 1.8 on 2 cores")


if __name__ == "__main__":
    main()
