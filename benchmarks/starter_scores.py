"""Measure every starter policy on its task's dev split and, with --write, record the result in its docstring.

    python benchmarks/starter_scores.py            # print the table
    python benchmarks/starter_scores.py --write    # also rewrite each docstring's "Measured" line

The docstring line is what tests/test_starters.py checks against a fresh evaluation, so
a starter's claimed score cannot drift from what it really does.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from envs.evaluator import EvalRequest, evaluate
from envs.tasks import get_task, registry
from policies import starter_policy

MEASURED = re.compile(r"Measured \(heurist eval, dev split seeds (\d+)\.\.(\d+), (\d+) episodes, protocol (\w+)\):\n(.*?)\.\n", re.S)


def starter_tasks() -> list[str]:
    return [s.id for s in registry().all() if s.starter_policy and s.variant_of is None]


def measure(task_id: str):
    spec = get_task(task_id)
    request = EvalRequest(policy_path=starter_policy(spec), task_id=task_id)
    return evaluate(spec, request)


def claim_line(result) -> str:
    s = result.stats
    return f"mean {s.mean:.2f} ± {s.std:.2f} (min {s.min:.2f}, max {s.max:.2f})"


def write_claim(path: Path, result) -> None:
    text = path.read_text()
    header = (f"Measured (heurist eval, dev split seeds {result.seeds[0]}..{result.seeds[-1]}, "
              f"{len(result.seeds)} episodes, protocol {result.protocol}):\n")
    new, count = MEASURED.subn(lambda _: header + claim_line(result) + ".\n", text, count=1)
    if count != 1:
        raise SystemExit(f"{path} has no 'Measured (heurist eval, ...)' paragraph to rewrite")
    path.write_text(new)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", action="store_true", help="rewrite each starter's Measured line")
    parser.add_argument("tasks", nargs="*", help="only these task ids")
    args = parser.parse_args()
    for task_id in args.tasks or starter_tasks():
        result = measure(task_id)
        target = result.target
        met = "met" if target is not None and result.stats.mean >= target else "not met"
        print(f"{task_id:28s} {claim_line(result):60s} target {target} {met}  "
              f"{result.env_steps:,} env steps, {result.wall_s:.1f} s")
        if args.write:
            write_claim(starter_policy(get_task(task_id)), result)


if __name__ == "__main__":
    main()
