"""What ``setup()`` once per worker buys a policy with an expensive, deterministic set-up.

The issue's case: a planner that builds a large table (200×301×301 in the original) took 70 s in heurist, against
7.6 s run directly, because each episode reloads the policy and builds it again. Here the same policy is evaluated
two ways on the same seeds, side by side in one run:

- building its table in ``Policy.__init__`` (every episode pays it);
- building it in a top-level ``setup()`` that ``Policy.__init__(setup)`` receives (once per worker; each episode
  gets its own copy, the table's array shared read-only).

Printed: wall seconds of each evaluation through ``heurist eval`` (the command's whole life), the ratio, the set-up
runs counted, and whether every episode's return and length match. Usage:
``python benchmarks/setup_once.py [--episodes N] [--workers N] [--size N]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HEURIST = str(Path(sys.executable).with_name("heurist"))

TABLE = '''
import numpy as np


def build_table(size):
    """A value table swept a few times, standing in for a planner's dynamic programme (deterministic)."""
    grid = np.linspace(-1.0, 1.0, size)
    table = np.add.outer(np.sin(grid * 3.0), np.cos(grid * 2.0))
    for _ in range(40):
        table = 0.5 * table + 0.25 * (np.roll(table, 1, 0) + np.roll(table, 1, 1))
    return table


def lookup(table, obs):
    size = table.shape[0]
    i = int(np.clip((obs[2] + 0.21) / 0.42 * (size - 1), 0, size - 1))
    j = int(np.clip((obs[3] + 2.0) / 4.0 * (size - 1), 0, size - 1))
    return table[i, j]
'''

PER_EPISODE = TABLE + '''

class Policy:
    def __init__(self):
        self.table = build_table(SIZE)

    def reset(self, seed):
        pass

    def act(self, obs, info):
        return int(obs[2] + 0.5 * obs[3] + 1e-3 * lookup(self.table, obs) > 0)
'''

ONCE = TABLE + '''

def setup():
    return build_table(SIZE)


class Policy:
    def __init__(self, setup):
        self.table = setup

    def reset(self, seed):
        pass

    def act(self, obs, info):
        return int(obs[2] + 0.5 * obs[3] + 1e-3 * lookup(self.table, obs) > 0)
'''


def evaluate(policy: Path, episodes: int, workers: int, home: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    done = subprocess.run([HEURIST, "eval", str(policy), "--env", "CartPole-v1", "--episodes", str(episodes),
                           "--workers", str(workers), "--json", "--ledger", str(home / "ledger.jsonl")],
                          capture_output=True, text=True, env={**os.environ, "HEURIST_HOME": str(home)})
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"heurist eval failed: {done.stderr.strip()}")
    return wall, json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--size", type=int, default=1500, help="the table's side (1500: about 0.45 s to build here)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="heurist-bench-") as tmp:
        home = Path(tmp)
        rows = []
        for name, source in (("set-up in __init__ (every episode)", PER_EPISODE), ("setup() once per worker", ONCE)):
            policy = home / f"{'once' if source is ONCE else 'each'}.py"
            policy.write_text(source.replace("SIZE", str(args.size)))
            wall, summary = evaluate(policy, args.episodes, args.workers, home)
            rows.append((name, wall, summary))
        ledger = [json.loads(line) for line in (home / "ledger.jsonl").read_text().splitlines()]
    finished = [r for r in ledger if r["event"] == "eval_finished"]
    same = [(e["return"], e["length"]) for e in finished[0]["per_episode"]] == \
        [(e["return"], e["length"]) for e in finished[1]["per_episode"]]
    base = rows[0][1]
    print(f"CartPole-v1, {args.episodes} dev episodes, {args.workers} worker(s), a {args.size}x{args.size} table "
          f"({os.cpu_count()} cores)")
    print(f"{'policy':<38} {'wall s':>8} {'speed-up':>9} {'set-up runs':>12} {'mean':>8}")
    for name, wall, summary in rows:
        print(f"{name:<38} {wall:>8.1f} {base / wall:>8.2f}x {summary.get('setup_runs', 0):>12} "
              f"{summary['mean']:>8.2f}")
    print(f"same returns and lengths on every seed: {same}")


if __name__ == "__main__":
    main()
