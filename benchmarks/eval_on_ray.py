"""What evaluating on Ray (``--backend ray``) costs and buys against the local backend, for an expensive policy.

The policy is the CartPole starter with a planning step that burns a fixed amount of CPU per step
(``--ms`` milliseconds of arithmetic, as a model-predictive controller would), so a step costs what an
expensive policy's does and the simulator's own time is negligible. The same seeds are evaluated:

- locally with one worker, and with one worker per core (the local backend at its best);
- with ``--backend ray`` on Ray started on this machine by the command (one pair per CPU, as on a
  cluster's node), and on a Ray already running (``ray start --head``), as a run sees it after its
  first evaluation.

Printed side by side in one run: wall seconds as the user waits for them (the command's whole life,
Ray's start included), episodes per second, each against one local worker, and whether every
episode's return and length match. On one machine the Ray backend can at best equal the local
backend with all workers; what it buys is more machines. Usage:
``python benchmarks/eval_on_ray.py [--episodes N] [--ms MS]``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEURIST = str(Path(sys.executable).with_name("heurist"))
TOKEN = secrets.token_hex(16)  # Ray 2.59+ authenticates its nodes with a token

PLANNER = '''

import time as _time


class Policy(_Starter):
    """The starter's decisions, after a planning step of fixed CPU cost."""

    def reset(self, seed):
        return super().reset(seed)

    def act(self, obs, info):
        until = _time.process_time() + {seconds}
        total = 0.0
        while _time.process_time() < until:
            total += sum(i * i for i in range(200))
        return super().act(obs, info)
'''


def planner_source(seconds: float) -> str:
    starter = (ROOT / "policies" / "cartpole.py").read_text()
    assert starter.count("class Policy:") == 1
    return starter.replace("class Policy:", "class _Starter:") + PLANNER.format(seconds=seconds)


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "RAY_ADDRESS")}
    env.update(HEURIST_HOME=str(tmp / "home"), RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token",
               RAY_AUTH_TOKEN=TOKEN)
    return env


def evaluate(policy: Path, episodes: int, tmp: Path, *extra: str) -> tuple[float, list]:
    env = _env(tmp)
    ledger = tmp / f"ledger-{len(list(tmp.glob('ledger-*')))}.jsonl"
    started = time.perf_counter()
    subprocess.run([HEURIST, "eval", str(policy), "--env", "CartPole-v1", "--episodes", str(episodes), "--json",
                    "--ledger", str(ledger), "--episode-timeout", "600", *extra],
                   check=True, capture_output=True, env=env)
    wall = time.perf_counter() - started
    finished = [json.loads(line) for line in ledger.read_text().splitlines() if '"eval_finished"' in line][-1]
    return wall, [(e["seed"], e["return"], e["length"]) for e in finished["per_episode"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--ms", type=float, default=2.0, help="CPU milliseconds of planning per step")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="heurist-bench-") as scratch:
        tmp = Path(scratch)
        policy = tmp / "planner.py"
        policy.write_text(planner_source(args.ms / 1000))
        ways = [("local, 1 worker", ("--workers", "1", "--lockstep", "1")),
                (f"local, {cores} workers", ("--workers", str(cores), "--lockstep", "1")),
                (f"ray, {cores} pairs", ("--backend", "ray", "--workers", str(cores), "--lockstep", "1"))]
        rows = [(name, *evaluate(policy, args.episodes, tmp, *extra)) for name, extra in ways]
        # The same on a Ray already running (`ray start --head`), as inside a run, which joins Ray once and
        # evaluates many times: what is left is the cost of the shards themselves.
        ray = str(Path(sys.executable).with_name("ray"))
        port = str(6500 + os.getpid() % 400)
        subprocess.run([ray, "start", "--head", "--num-cpus", str(cores), "--port", port, "--include-dashboard=false",
                        "--disable-usage-stats"], check=True, capture_output=True, env=_env(tmp))
        try:
            rows.append((f"ray up, {cores} pairs", *evaluate(policy, args.episodes, tmp, "--backend", "ray",
                                                             "--ray-address", f"127.0.0.1:{port}", "--workers",
                                                             str(cores), "--lockstep", "1")))
        finally:
            subprocess.run([ray, "stop", "--force"], capture_output=True, env=_env(tmp))
    base = rows[0][1]
    print(f"CartPole-v1, {args.episodes} episodes, {args.ms:g} CPU ms of planning per step, {cores} cores")
    print(f"{'way':<22} {'wall s':>8} {'episodes/s':>11} {'vs 1 worker':>12}  same results")
    for name, wall, episodes in rows:
        print(f"{name:<22} {wall:8.1f} {args.episodes / wall:11.3f} {base / wall:12.2f}  {episodes == rows[0][2]}")


if __name__ == "__main__":
    main()
