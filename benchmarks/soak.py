"""Soak: one long run with faults injected everywhere, then a count of what was lost (it must be nothing).

    python benchmarks/soak.py [--iterations 300] [--quick] [--seed 0] [--kill-every 40] [--json FILE]

One run of ``heurist`` on CartPole-v1 through the LLM path: the real openai client against the
scripted OpenAI-compatible server of tests/scripted_openai.py, whose responder answers every
role and injects, at random,
- model faults: 429 with Retry-After, 500, 503, a timeout, a dropped connection, a body that
  is not JSON, a truncated body, a refusal, a reply that does not fit the schema, and now and
  then an outage of many failures in a row (which pauses the run: the soak resumes it);
- hostile candidates: edits that make the policy loop forever, sleep, exit, segfault, eat
  memory, read the API key or patch the evaluator; regression tests from tests/hostile_tests/
  that read secrets, delete the ledger, write outside the workspace, fork-bomb or sleep;
- kill -9 of heurist and all its workers every ``--kill-every`` iterations on average, at a
  random moment, followed by ``heurist resume``.

It reports iterations completed, faults injected by kind, kills, pauses and resumes, records
lost or repeated (tests/offline_runs.lost_or_repeated: ledger, git history, memory,
transcripts, files, checkpoints), hostile candidates accepted, and the resident memory of the
heurist process against the iterations it has done in each session (slope per 100 iterations,
which must stay flat: the goal is under 10 MB per 100 iterations in every long session).
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
from scipy import stats

# The scripted server and the run checks live in tests/, which is not an installed package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.ledger import Ledger  # noqa: E402
from envs.contract import read_tunables  # noqa: E402
from policies import POLICY_DIR  # noqa: E402
from store.rundir import run_status  # noqa: E402
from tests.offline_runs import lost_or_repeated  # noqa: E402
from tests.scripted_openai import ScriptedOpenAI  # noqa: E402
from tests.test_cli import HEURIST  # noqa: E402
from tests.test_llm import chat  # noqa: E402

HOSTILE_TESTS = Path(__file__).resolve().parent.parent / "tests" / "hostile_tests"
ENVS = Path(__file__).resolve().parent.parent / "envs"
SECRET = "sk-soak-must-never-reach-sandboxed-code"
TIMEOUT_S = 2.0  # the model client's timeout; a "timeout" fault answers later than this

# Code put before `class Policy:` (so it runs when the file loads), one kind of attack each.
HOSTILE_EDITS = {
    "loops_forever": "while True:\n    pass\n",
    "sleeps": "import time\ntime.sleep(10_000)\n",
    "exits": "import os\nos._exit(3)\n",
    "segfaults": "import ctypes\nctypes.string_at(0)\n",
    "eats_memory": "hoard = [bytearray(2**28) for _ in range(64)]\n",
    "reads_api_key": "import os\nassert not os.environ.get('OPENAI_API_KEY'), 'leaked'\n"
                     "raise RuntimeError('no key here: ' + str(sorted(os.environ)))\n",
    "patches_the_evaluator": "import importlib\nimportlib.import_module('envs.lockstep').EpisodeRun.finish = "
                             "lambda self, traced=True: {'seed': self.seed, 'status': 'ok', 'return': 1e9}\n",
}
MARKERS = ("while True:\n    pass", "time.sleep(10_000)", "os._exit(3)", "string_at(0)", "bytearray(2**28)",
           "OPENAI_API_KEY", "EpisodeRun.finish")

FAULTS = {
    "429": {"status": 429, "headers": {"Retry-After": "0"}, "json": {"error": {"message": "slow down"}}},
    "500": {"status": 500, "json": {"error": {"message": "internal error", "type": "server_error"}}},
    "503": {"status": 503, "json": {"error": {"message": "overloaded", "type": "server_error"}}},
    "timeout": {"delay": TIMEOUT_S + 0.5, **chat("{}")},
    "dropped_connection": {"drop": True},
    "not_json": {"status": 200, "raw": "<html>502 bad gateway</html>"},
    "truncated": {"status": 200, "raw": '{"id": "c1", "object": "chat.completion", "choices": [{"mess'},
    "refusal": chat(None, refusal="I can't help with that"),
    "off_schema": chat('{"nothing": "useful"}'),
}


def reply(obj: dict) -> dict:
    return chat(json.dumps(obj), prompt_tokens=800, completion_tokens=150)


class Responder:
    """Answers each role by the schema its request names, with faults and hostile content at random."""

    def __init__(self, rng: random.Random, tunables, ledger: Path, outside: Path, fault_rate: float,
                 hostile_rate: float) -> None:
        self.rng, self.tunables, self.ledger, self.outside = rng, tunables, ledger, outside
        self.fault_rate, self.hostile_rate = fault_rate, hostile_rate
        self.injected: Counter = Counter()
        self.outage_left = 0
        self.tests_written = 0
        self._lock = threading.Lock()

    def __call__(self, body: dict) -> dict:
        with self._lock:  # the server answers on threads; the draws stay in one sequence
            return self._answer(body)

    def _answer(self, body: dict) -> dict:
        rng = self.rng
        if self.outage_left == 0 and rng.random() < 0.004:
            self.outage_left = rng.randint(8, 16)  # enough failures in a row to pause the run
            self.injected["outage"] += 1
        if self.outage_left:
            self.outage_left -= 1
            self.injected["fault:503 (outage)"] += 1
            return FAULTS["503"]
        if rng.random() < self.fault_rate:
            kind = rng.choice(sorted(FAULTS))
            self.injected[f"fault:{kind}"] += 1
            return FAULTS[kind]
        schema = body.get("response_format", {}).get("json_schema", {}).get("name")
        if schema == "ModelReading":
            return reply({"findings": [], "summary": "the pole falls to one side"})
        if schema == "Edit":
            return self._edit()
        if schema == "TestFile":
            return self._test(body)
        if schema == "LLMReview":
            return reply({"games_the_evaluation": False, "reasons": ["a general control rule"]})
        self.injected["unknown schema"] += 1
        return FAULTS["500"]

    def _edit(self) -> dict:
        if self.rng.random() < self.hostile_rate:
            name = self.rng.choice(sorted(HOSTILE_EDITS))
            self.injected[f"hostile edit:{name}"] += 1
            return reply({"kind": "search_replace", "rationale": "balance earlier", "target_seeds": [0],
                          "blocks": [{"search": "class Policy:", "replace": HOSTILE_EDITS[name] + "\n\nclass Policy:"}]})
        values = {t.name: round(self.rng.uniform(t.low, t.high), 3) for t in self.tunables
                  if self.rng.random() < 0.6} or {self.tunables[0].name: round(self.rng.uniform(0, 1), 3)}
        return reply({"kind": "tunables", "rationale": "push toward the fall sooner", "tunables": values,
                      "target_kinds": ["pole_fell"]})

    def _test(self, body: dict) -> dict:
        self.tests_written += 1
        name = f"tests/test_soak_{self.tests_written:05d}.py"
        if self.rng.random() < self.hostile_rate:
            path = self.rng.choice(sorted(p for p in HOSTILE_TESTS.glob("*.py")))
            self.injected[f"hostile test:{path.stem}"] += 1
            source = path.read_text()
            for key, value in {"ledger": self.ledger, "outside": self.outside, "canary": self.outside,
                               "workspace": self.ledger.parent / "workspace", "heurist_envs": ENVS,
                               "checkout": ENVS.parent}.items():
                source = source.replace("{" + key + "}", str(value))
        else:
            # A regression test as a model would write one: the incumbent's worst seed must now do better, so it
            # fails before the edit and passes after it when the edit helped, and is kept (fail-to-pass).
            prompt = body["messages"][-1]["content"]
            found = re.search(r"Incumbent returns per dev seed: (\{.*?\})", prompt)
            returns = ast.literal_eval(found.group(1)) if found else {0: 0.0}
            seed, floor = min(((s, r) for s, r in returns.items() if r is not None), key=lambda x: x[1],
                              default=(0, 0.0))
            source = ("from heurist_testkit import run_episode\n\n\n"
                      f"def test_seed_{seed}_does_better():\n    result = run_episode({seed})\n"
                      f"    assert result['status'] == 'ok' and result['return'] > {floor!r}\n")
        return reply({"filename": name, "source": source, "rationale": "pins the fix", "seeds": [0]})


def rss_mb(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def iterations_done(ledger: Ledger) -> int:
    return sum(r.get("event") == "iteration" for r in ledger.read()[0])


def drive(command: list[str], resume: list[str], env: dict, ledger: Ledger, run_dir: Path, rng: random.Random,
          kill_every: float, deadline: float) -> dict:
    """Run until the run finishes: kill it now and then, resume it after kills and pauses, sample its memory."""
    sessions: list[list[tuple[int, float]]] = []
    counts: Counter = Counter()
    crashes: list[str] = []
    while time.monotonic() < deadline:
        done_before = iterations_done(ledger)
        kill_at = done_before + max(1, round(rng.expovariate(1 / kill_every))) if kill_every else float("inf")
        proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        samples: list[tuple[int, float]] = []
        sessions.append(samples)
        killed = False
        while proc.poll() is None and time.monotonic() < deadline:
            done = iterations_done(ledger)
            mb = rss_mb(proc.pid)
            if mb is not None:
                samples.append((done, mb))
            if done >= kill_at:
                time.sleep(rng.uniform(0.0, 2.0))  # a random moment inside the next iteration
                os.killpg(proc.pid, signal.SIGKILL)  # heurist and all its workers
                proc.wait()
                counts["kill -9"] += 1
                killed = True
                break
            time.sleep(0.5)
        if proc.poll() is None:  # out of time
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            break
        stderr = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        status = run_status(run_dir)
        if status == "finished":
            break
        if not killed:
            if status == "paused":
                counts["paused after model failures in a row"] += 1
            else:
                crashes.append(f"exit {proc.returncode}: {stderr.strip()[-500:]}")
        command = resume
    return {"sessions": sessions, "counts": counts, "crashes": crashes}


def memory_growth(sessions: list[list[tuple[int, float]]], warmup: int = 3) -> dict:
    """Resident MB of the heurist process against iterations done, after each session's warm-up:
    per session of 20+ iterations, and one fit over every session together (the headline: a
    session's own slope over a few dozen iterations is dominated by the sawtooth of allocations)."""
    rows, everything = [], []
    for samples in sessions:
        if not samples:
            continue
        first = samples[0][0]
        kept = [(i, mb) for i, mb in samples if i >= first + warmup]
        everything += kept
        if len(kept) < 5 or kept[-1][0] - kept[0][0] < 20:
            continue
        fit = stats.linregress([i for i, _ in kept], [mb for _, mb in kept])
        rows.append({"iterations": [kept[0][0], kept[-1][0]], "rss_mb_median": round(float(np.median([mb for _, mb in kept])), 1),
                     "rss_mb_max": round(max(mb for _, mb in kept), 1), "mb_per_100_iterations": round(fit.slope * 100, 2)})
    overall = None
    if len({i for i, _ in everything}) >= 20:
        overall = round(stats.linregress([i for i, _ in everything], [mb for _, mb in everything]).slope * 100, 2)
    return {"mb_per_100_iterations": overall, "sessions": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iterations", type=int, default=300)
    parser.add_argument("--quick", action="store_true", help="40 iterations, a kill every 10 (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kill-every", type=float, default=40.0, help="mean iterations between kills (0: none)")
    parser.add_argument("--fault-rate", type=float, default=0.12, help="share of model calls answered with a fault")
    parser.add_argument("--hostile-rate", type=float, default=0.2, help="share of edits and tests that are hostile")
    parser.add_argument("--hours", type=float, default=3.0, help="give up after this long")
    parser.add_argument("--no-report", action="store_true", help="runs without rewriting its HTML report (to compare)")
    parser.add_argument("--keep", action="store_true", help="keep the run directory")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.quick:
        args.iterations, args.kill_every = 40, 10.0
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="heurist-soak-"))
    run_dir, home, outside = root / "run", root / "home", root / "outside.txt"
    policy = root / "policy.py"
    shutil.copy(POLICY_DIR / "cartpole_untuned.py", policy)
    responder = Responder(rng, read_tunables(policy.read_text()), run_dir / "ledger.jsonl", outside,
                          args.fault_rate, args.hostile_rate)
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["HEURIST_HOME"] = str(home)
    env["OPENAI_API_KEY"] = SECRET  # hostile policies and tests look for it; heurist never writes it down
    started = time.monotonic()
    with ScriptedOpenAI(responder=responder, record=False) as server:
        config = root / "run.json"
        config.write_text(json.dumps({
            "task": "CartPole-v1", "policy": str(policy),
            "budget": {"iterations": args.iterations, "stop_when": "never", "patience": None},
            # The responder answers by schema: the single-call coder (the agent's loop is driven by
            # tests/test_coder_agent.py and benchmarks/llm_loop.py).
            "code": {"mode": "single"},
            "llm": {"model": "gpt-4.1-mini", "base_url": server.base_url, "timeout_s": TIMEOUT_S,
                    "retry_base_s": 0.01, "max_retries": 2, "max_consecutive_failures": 4},
            "eval": {"episodes": 6, "video": False, "holdout": False, "episode_timeout_s": 5, "memory_mb": 1024},
            "report": not args.no_report,
        }))
        ledger = Ledger(run_dir / "ledger.jsonl")
        driven = drive([HEURIST, "run", "--config", str(config), "--run-dir", str(run_dir), "--no-progress"],
                       [HEURIST, "resume", str(run_dir), "--no-progress"], env, ledger, run_dir, rng,
                       args.kill_every, started + args.hours * 3600)
    elapsed = time.monotonic() - started
    finished = run_status(run_dir) == "finished"
    problems = lost_or_repeated(run_dir, home / "memory", args.iterations) if finished else ["the run did not finish"]
    best = (run_dir / "best_policy.py").read_text() if finished else ""
    accepted_hostile = [m for m in MARKERS if m in best]
    # Sandboxed code that saw the key would have printed it into a recorded failure reason.
    leaked = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*") if p.is_file() and ".git" not in p.parts
              and SECRET.encode() in p.read_bytes()]
    growth = memory_growth(driven["sessions"])
    faults = sum(n for k, n in responder.injected.items() if k.startswith("fault:"))
    hostile = sum(n for k, n in responder.injected.items() if k.startswith("hostile"))
    results = {
        "task": "CartPole-v1", "iterations_asked": args.iterations, "iterations_completed": iterations_done(ledger),
        "finished": finished, "minutes": round(elapsed / 60, 1), "seed": args.seed,
        "model_faults_injected": faults, "hostile_candidates_injected": hostile,
        "injected": dict(sorted(responder.injected.items())), "process_faults": dict(driven["counts"]),
        "heurist_crashes": driven["crashes"], "records_lost_or_repeated": problems,
        "hostile_candidates_accepted": accepted_hostile, "secret_file_written_outside": outside.exists(),
        "api_key_found_in": leaked,
        "memory_growth": growth, "run_dir": str(run_dir) if args.keep else None,
    }
    print(json.dumps(results, indent=2))
    slope = growth["mb_per_100_iterations"]
    flat = slope is not None and slope < 10
    ok = finished and not problems and not driven["crashes"] and not accepted_hostile and not outside.exists() \
        and not leaked
    print(f"\n{results['iterations_completed']}/{args.iterations} iterations in {results['minutes']} min; "
          f"{faults} model faults, {hostile} hostile candidates, {driven['counts']['kill -9']} kill -9, "
          f"{driven['counts']['paused after model failures in a row']} pauses: all survived" if ok else
          "\nSOAK FAILED: see records_lost_or_repeated, heurist_crashes, hostile_candidates_accepted, "
          "secret_file_written_outside and api_key_found_in above")
    print(f"records lost or repeated: {len(problems)} (goal 0); heurist memory growth: "
          f"{'n/a (too few iterations)' if slope is None else f'{slope:+.2f} MB per 100 iterations'} "
          f"(goal < 10: {'met' if flat else 'MISSED'})")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if ok and flat else 1)


if __name__ == "__main__":
    main()
