"""Env steps per second: the sandboxed evaluator against a bare loop, measured side by side in one run.

    python benchmarks/eval_throughput.py [--quick]

For CartPole, Breakout (pixels) and HalfCheetah, the same starter policy on the same
seeds runs three ways: a bare loop in this process (``act`` then ``env.step``, nothing
else), ``heurist``'s evaluator with one worker, and with one worker per core. Goals
from the foundation issue: one sandboxed worker no more than 15% below the bare loop,
and all workers at least 1.7x one worker on 2 cores. The evaluator's time includes
starting its workers, reloading the policy per episode, traces and the ledger-ready
result; the bare loop has none of that, which is the point of the comparison.
"""

from __future__ import annotations

import argparse
import os
import runpy
import time
from pathlib import Path

from envs.evaluator import EvalRequest, evaluate
from envs.tasks import SeedSplits, TaskSpec, get_task
from policies import starter_policy

# Episodes per task: enough env steps that worker start-up (about a second) is amortised.
EPISODES = {"CartPole-v1": 600, "ALE/Breakout-v5": 24, "HalfCheetah-v5": 100}


def with_dev_seeds(spec: TaskSpec, n: int) -> TaskSpec:
    """The same task with a dev split of n seeds, kept clear of the holdout and audit seeds."""
    dev = tuple(range(10_000, 10_000 + n))
    return spec.model_copy(update={"seeds": SeedSplits(dev=dev, holdout=spec.seeds.holdout, audit=spec.seeds.audit)})


def bare_loop(spec: TaskSpec, policy: Path, seeds: tuple[int, ...]) -> tuple[int, float]:
    env = spec.make_env()
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


def sandboxed(spec: TaskSpec, policy: Path, workers: int) -> tuple[int, float]:
    request = EvalRequest(policy_path=policy, task_id=spec.id, workers=workers)
    started = time.perf_counter()
    result = evaluate(spec, request)
    elapsed = time.perf_counter() - started
    assert result.status == "complete", result.failures
    return result.env_steps, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a quarter of the episodes (a smoke run, noisier)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"{'task':18s} {'bare steps/s':>13s} {'1 worker':>10s} {f'{cores} workers':>10s} "
          f"{'1w / bare':>10s} {'all / 1w':>9s}")
    for task_id, episodes in EPISODES.items():
        spec = with_dev_seeds(get_task(task_id), max(4, episodes // 4) if args.quick else episodes)
        policy = starter_policy(spec)
        steps_bare, t_bare = bare_loop(spec, policy, spec.seeds.dev)
        steps_one, t_one = sandboxed(spec, policy, 1)
        steps_all, t_all = sandboxed(spec, policy, cores)
        assert steps_bare == steps_one == steps_all, "the three runs must take the same env steps"
        bare, one, every = steps_bare / t_bare, steps_one / t_one, steps_all / t_all
        print(f"{task_id:18s} {bare:13,.0f} {one:10,.0f} {every:10,.0f} {one / bare:10.2f} {every / one:9.2f}"
              f"   ({steps_bare:,} steps each)")
    print("goals: 1w / bare >= 0.85; all / 1w >= 1.7 on 2 cores")


if __name__ == "__main__":
    main()
