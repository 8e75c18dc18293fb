"""How a campaign scales with the cores it is given, and what Ray adds per run.

The same small offline campaign (CartPole from the untuned starter, N repeats, one iteration each,
one CPU and one evaluator worker per run) is run:

- one after another with ``heurist run`` (no Ray: the baseline),
- as a campaign with ``--max-concurrent 1`` (Ray, one run at a time: the difference is Ray's cost),
- as a campaign with 2, ... up to all cores at once.

Printed side by side in one run: wall seconds, runs per minute, the speed-up over one at a time and
Ray's overhead per run. Usage: ``python benchmarks/campaign_scaling.py [--runs N]``.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEURIST = str(Path(sys.executable).with_name("heurist"))
RUN = textwrap.dedent("""
    report = false
    [budget]
    iterations = 1
    stop_when = "never"
    [eval]
    episodes = 8
    workers = 1
    video = false
    holdout = false
    [search]
    population = 6
    generations = 2
    seed = 3
""")


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["HEURIST_HOME"] = str(home)
    return env


def sequential(tmp: Path, runs: int) -> float:
    (tmp / "run.toml").write_text(RUN)
    started = time.perf_counter()
    for i in range(runs):
        subprocess.run([HEURIST, "run", "--env", "CartPole-v1", "--policy", str(ROOT / "policies/cartpole_untuned.py"),
                        "--config", str(tmp / "run.toml"), "--run-dir", str(tmp / f"run{i}"), "--no-progress"],
                       check=True, capture_output=True, env=_env(tmp / "home"))
    return time.perf_counter() - started


def campaign(tmp: Path, runs: int, concurrent: int) -> float:
    # The same run config as the [run] table: top-level keys first, each [table] as [run.table].
    run_table = "\n".join(line.replace("[", "[run.", 1) if line.startswith("[") else line
                          for line in RUN.strip().splitlines())
    (tmp / "c.toml").write_text(
        f'name = "scaling"\ntasks = ["CartPole-v1"]\nrepeats = {runs}\n'
        f'[policies]\n"CartPole-v1" = "{ROOT / "policies/cartpole_untuned.py"}"\n[run]\n{run_table}\n')
    started = time.perf_counter()
    subprocess.run([HEURIST, "campaign", "start", str(tmp / "c.toml"), "--dir", str(tmp / "camp"),
                    "--max-concurrent", str(concurrent)], check=True, capture_output=True, env=_env(tmp / "home"))
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=4)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    widths = sorted({1, 2, cores} & set(range(1, cores + 1)))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in ["seq", *(f"c{w}" for w in widths)]:
            (Path(tmp) / name).mkdir()
        base = sequential(Path(tmp) / "seq", args.runs)
        rows.append(("heurist run, one after another", base))
        for width in widths:
            rows.append((f"campaign, {width} at once", campaign(Path(tmp) / f"c{width}", args.runs, width)))
    one = rows[1][1]
    print(f"{args.runs} offline CartPole runs of one iteration, {cores} cores")
    print(f"{'':34s} {'wall s':>8s} {'runs/min':>9s} {'vs 1 at once':>13s}")
    for name, wall in rows:
        print(f"{name:34s} {wall:8.1f} {60 * args.runs / wall:9.2f} {one / wall:13.2f}")
    print(f"Ray's overhead per run (campaign 1 at once vs heurist run): {(one - base) / args.runs:+.1f} s")


if __name__ == "__main__":
    main()
