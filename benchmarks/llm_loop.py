"""The coder's agent against the single call, with a real model served locally by llama.cpp, on three tasks.

    python benchmarks/llm_loop.py [--iterations 1] [--port 8765] [--tasks CartPole-v1,Acrobot-v1,LunarLander-v3]

It sets up what it needs through ``benchmarks/local_model.py`` (llama-cpp-python's server with
Qwen2.5-Coder-0.5B-Instruct; it says so and stops when that cannot be done), starts the server if
none answers (and stops it again at the end), asks ``heurist doctor`` what the endpoint takes, then
runs ``heurist run`` from a weak start on each task three times, with ``code.mode = "single"``,
with ``code.mode = "agent"``, and with two agents side by side (``code.parallel = 2``), with the
same iterations, dev seeds and budgets (8 tool calls and 420 s a loop), and prints per
task and mode, from each run's own records: the dev mean reached (and where it started), the
iterations and accepted edits, the agent's tool calls, model replies that failed validation, model
tokens, and wall time. A 0.5B model on two cores will not solve these tasks; the point is that the
loop runs end to end on a real model, survives its mistakes, and that the agent does at least as
well as the single call.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import local_model  # noqa: E402

from common.formatting import score_text  # noqa: E402


# Weak starts: the untuned CartPole starter (always pushes left); for Acrobot and LunarLander a policy
# that does one thing regardless of what it sees. Readable files a model has to improve.
def constant_policy(doc: str, action: int, mode: str) -> str:
    return (f'"""{doc}"""\n\n\nclass Policy:\n    def reset(self, seed):\n        pass\n\n'
            f'    def act(self, obs, info):\n        self.diagnostics = {{"mode": "{mode}"}}\n'
            f'        return {action}\n')


ACROBOT_WEAK = constant_policy("Acrobot-v1, a weak start: always applies +1 torque, whatever the links do.", 2, "push")
LUNAR_WEAK = constant_policy("LunarLander-v3, a weak start: fires nothing and falls.", 0, "idle")
STARTS = {"CartPole-v1": None, "Acrobot-v1": ACROBOT_WEAK, "LunarLander-v3": LUNAR_WEAK}
# The single structured call, the agent, and two agents side by side (code.parallel = 2: what K = 2 buys).
MODES = ("single", "agent", "agent-x2")


def answering(port: int) -> bool:
    """Whether a server answers there (a busy one answers once it has finished the reply it is writing)."""
    try:
        with urllib.request.urlopen(f"{local_model.base_url(port)}/models", timeout=120):
            return True
    except OSError:
        return False


def one_run(home: Path, task: str, mode: str, iterations: int, port: int) -> dict:
    env = {**{k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}, "HEURIST_HOME": str(home)}
    policy = home / f"{task.split('-')[0].lower()}_weak.py"
    if STARTS[task] is None:
        policy = ROOT / "policies" / "cartpole_untuned.py"
    else:
        policy.write_text(STARTS[task])
    config = home / f"{mode}.toml"
    parallel = 2 if mode == "agent-x2" else 1
    config.write_text("report = false\n[eval]\nepisodes = 6\nvideo = false\nholdout = false\n"
                      "[llm]\ntimeout_s = 300\nmax_retries = 1\n"
                      f"[code]\nmode = \"{mode.removesuffix('-x2')}\"\nparallel = {parallel}\n"
                      "max_tool_calls = 8\nmax_wall_s = 420\n"
                      "[budget]\npatience = 100\nstop_when = \"never\"\n")
    run_dir = home / f"{task}-{mode}"
    started = time.monotonic()
    done = subprocess.run([*local_model._heurist(ROOT), "run", "--env", task, "--policy", str(policy),
                           "--config", str(config), "--base-url", local_model.base_url(port), "--model",
                           local_model.MODEL_NAME, "--iterations", str(iterations), "--run-dir", str(run_dir),
                           "--no-progress"], capture_output=True, text=True, env=env)
    return {"task": task, "mode": mode, "exit": done.returncode, "wall_s": round(time.monotonic() - started, 1),
            **measured(run_dir), "stderr_tail": done.stderr[-600:] if done.returncode else ""}


def measured(run_dir: Path) -> dict:
    """From the run's ledger and transcripts, read as JSON."""
    def lines(path: Path) -> list[dict]:
        return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []

    ledger = lines(run_dir / "ledger.jsonl")
    start = next((r["start"]["mean"] for r in ledger if r.get("event") == "run_started"), None)
    iterations = [r for r in ledger if r.get("event") == "iteration"]
    best = max([start] + [r["mean_after"] for r in iterations if r.get("mean_after") is not None],
               key=lambda v: float("-inf") if v is None else v, default=None)
    transcript = [e for f in sorted((run_dir / "transcripts").rglob("*.jsonl")) for e in lines(f)]
    calls = [e for e in transcript if e.get("kind") == "llm_call"]
    return {"dev_mean_start": start, "dev_mean_reached": best, "iterations": len(iterations),
            "accepted": sum(1 for r in iterations if r["accepted"]),
            "tool_calls": sum(1 for e in transcript if e.get("kind") == "tool_run"),
            "tool_errors": sum(1 for e in transcript if e.get("kind") == "tool_run"
                               and e.get("result", "").startswith("error:")),
            "model_calls": len(calls), "failed_validation": sum(1 for e in transcript
                                                                if e.get("kind") == "validation_error"),
            "failed_calls": sum(1 for e in calls if e.get("error")),
            "tokens": sum((e.get("prompt_tokens") or 0) + (e.get("completion_tokens") or 0) for e in calls),
            "reasons": [r["reason"][:160] for r in iterations]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--iterations", type=int, default=1)
    parser.add_argument("--tasks", default=",".join(STARTS))
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    try:
        local_model.setup()
    except (subprocess.CalledProcessError, OSError, SystemExit) as exc:
        sys.exit(f"cannot set up the local model ({exc}); see benchmarks/local_model.py, then run this again")
    started_server = not answering(args.port)
    if started_server:
        local_model.serve(args.port)
    home = Path(tempfile.mkdtemp(prefix="heurist-llm-loop-"))
    env = {**{k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}, "HEURIST_HOME": str(home)}
    doctor = subprocess.run([*local_model._heurist(ROOT), "doctor", "--json", "--base-url",
                             local_model.base_url(args.port), "--model", local_model.MODEL_NAME],
                            capture_output=True, text=True, env=env)
    print("doctor:", doctor.stdout.strip()[-800:] or doctor.stderr.strip()[-800:], flush=True)
    rows = []
    try:
        for task in args.tasks.split(","):
            for mode in MODES:
                row = one_run(home, task, mode, args.iterations, args.port)
                rows.append(row)
                print(json.dumps(row), flush=True)
    finally:
        if started_server:
            local_model.stop()
    print(f"\n{'task':16} {'coder':8} {'dev mean start -> reached':28} {'iter':>4} {'acc':>4} {'tools':>5} "
          f"{'tool err':>8} {'invalid':>7} {'tokens':>8} {'wall s':>7}")
    for r in rows:
        means = f"{score_text(r['dev_mean_start'])} -> {score_text(r['dev_mean_reached'])}"
        print(f"{r['task']:16} {r['mode']:8} {means:28} {r['iterations']:>4} {r['accepted']:>4} {r['tool_calls']:>5} "
              f"{r['tool_errors']:>8} {r['failed_validation']:>7} {r['tokens']:>8} {r['wall_s']:>7}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
