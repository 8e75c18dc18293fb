"""Lessons that travel: does what a run learned on CartPole-v1 speed up a run on a related task?

Two offline runs in sequence, from the same untuned starter (every gain at 0), same config and seeds:

1. CartPole-v1, with a fresh memory, until its dev mean reaches the target (or the iteration budget);
2. CartPoleLongPole-v1 (a pole twice as long, ``envs/variants.py``), once with the first run's memory
   and once with a fresh one.

Printed side by side in one run: for each, the iterations and env steps until the dev mean first
reached the task's target (475), its final dev mean, and the lessons its coder was shown. Usage:
``python benchmarks/lessons_transfer.py [--iterations N] [--seed S]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEURIST = str(Path(sys.executable).with_name("heurist"))
TARGET = 475.0


def config(iterations: int, seed: int) -> str:
    return textwrap.dedent(f"""
        report = false
        [budget]
        iterations = {iterations}
        stop_when = "target"
        [eval]
        episodes = 20
        video = false
        holdout = false
        [search]
        population = 6
        generations = 2
        seed = {seed}
    """)


def run(tmp: Path, name: str, task: str) -> dict:
    """One offline run with the memory at $HEURIST_HOME/memory (whatever it holds now), and how it went."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["HEURIST_HOME"] = str(tmp / "home")
    subprocess.run([HEURIST, "run", "--env", task, "--policy", str(ROOT / "policies" / "cartpole_untuned.py"),
                    "--config", str(tmp / "run.toml"), "--run-dir", str(tmp / name), "--no-progress"],
                   check=True, capture_output=True, env=env)
    ledger = [json.loads(line) for line in (tmp / name / "ledger.jsonl").read_text().splitlines()]
    iterations = [e for e in ledger if e["event"] == "iteration"]
    reached = next((e for e in iterations if (e["mean_after"] or float("-inf")) >= TARGET), None)
    shown = set()
    for path in (tmp / name / "transcripts").glob("*/recall.jsonl"):
        for line in path.read_text().splitlines():
            shown |= {h["id"] for h in json.loads(line).get("details", {}).get("used", []) if h["type"] == "lesson"}
    return {"task": task, "iterations": reached["iteration"] if reached else None,
            "env_steps": reached["spent"]["env_steps"] if reached else None,
            "final": iterations[-1]["mean_after"] if iterations else None, "lessons": len(shown)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=4)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="heurist-bench-") as scratch:
        tmp = Path(scratch)
        (tmp / "run.toml").write_text(config(args.iterations, args.seed))
        rows = [("CartPole-v1, fresh memory", run(tmp, "first", "CartPole-v1"))]
        rows.append(("long pole, its memory", run(tmp, "with", "CartPoleLongPole-v1")))  # what the first left
        shutil.rmtree(tmp / "home" / "memory")  # a fresh store for the run without it
        rows.append(("long pole, fresh memory", run(tmp, "without", "CartPoleLongPole-v1")))
    print(f"offline runs from the untuned CartPole starter; target {TARGET:g}; up to {args.iterations} iterations; "
          f"search seed {args.seed}")
    print(f"{'run':<26} {'iterations to target':>21} {'env steps to target':>20} {'final dev mean':>15} "
          f"{'lessons shown':>14}")
    for name, r in rows:
        print(f"{name:<26} {r['iterations'] if r['iterations'] is not None else 'not reached':>21} "
              f"{r['env_steps'] if r['env_steps'] is not None else '-':>20} {r['final']:>15.2f} {r['lessons']:>14}")
    with_, without = rows[1][1], rows[2][1]
    if with_["env_steps"] and without["env_steps"]:
        print(f"env steps to target on the long pole, without its memory / with it: "
              f"{without['env_steps'] / with_['env_steps']:.2f}")


if __name__ == "__main__":
    main()
