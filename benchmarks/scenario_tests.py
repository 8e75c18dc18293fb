"""Regression tests that replay failure scenarios against tests that replay whole episodes, on Breakout.

The Breakout starter (pixels) loses no life under the ``deterministic`` protocol (frameskip 1, up to 108,000 steps)
on the first dev seeds (it plays all 108,000 steps), so the policy here is the starter with two tunables weakened
(``--tunables``, default ``lead=0.7,dead_zone=9``: it loses its five lives in a few thousand steps; with
``aim_offset=5`` it loses one life in a 108,000-step game). It is evaluated on a few dev seeds; every life it lost
becomes a scenario, saved 300 steps before the loss (``envs.scenarios``).
Two regression suites pin the same failures through the real sandboxed kit (``envs.regression.run_test_file``):

- whole episodes: one test per lost life runs its seed's whole episode (``run_episode``, evaluated afresh, as a
  suite run outside the loop, without an evaluation to read from) and checks the life is lost where it was;
- scenarios: one test per lost life runs its scenario (``run_scenario``) and checks the life is lost again.

Printed side by side in one run: each suite's wall seconds and env steps, the ratio, and whether every test still
fails the way it should on the policy that failed (here: the failure happens again, so each test's check holds).
Usage: ``python benchmarks/scenario_tests.py [--seeds N] [--before STEPS]``.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from common.ledger import Ledger  # noqa: E402
from envs.contract import rewrite_tunables  # noqa: E402
from envs.evaluator import EvalRequest, evaluate  # noqa: E402
from envs.limits import Limits  # noqa: E402
from envs.regression import PolicyUnderTest, run_test_file  # noqa: E402
from envs.scenario_files import save_scenarios  # noqa: E402
from envs.tasks import get_task  # noqa: E402
from policies import POLICY_DIR  # noqa: E402

TASK, PROTOCOL = "ALE/Breakout-v5", "deterministic"
LIMITS = Limits(episode_timeout_s=900, episode_cpu_s=900, memory_mb=4096)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--before", type=int, default=300, help="steps before each lost life the state is saved")
    parser.add_argument("--tunables", default="lead=0.7,dead_zone=9", help="the starter's tunables changed")
    args = parser.parse_args()
    spec = get_task(TASK)
    values = {k: float(v) for k, v in (pair.split("=") for pair in args.tunables.split(",") if pair)}
    with tempfile.TemporaryDirectory(prefix="heurist-bench-") as tmp:
        tmp = Path(tmp)
        policy = tmp / "breakout_weakened.py"
        policy.write_text(rewrite_tunables((POLICY_DIR / "breakout.py").read_text(), values))
        ledger = Ledger(tmp / "ledger.jsonl")
        seeds = list(spec.seeds.seeds("dev"))[: args.seeds]
        result = evaluate(spec, EvalRequest(policy_path=policy, task_id=TASK, protocol=PROTOCOL, seeds=seeds,
                                            limits=LIMITS, eval_timeout_s=3600), ledger)
        lost = [(e.seed, ev.step) for e in result.episodes for ev in e.events if ev.kind == "life_lost"]
        started = time.perf_counter()
        saved = save_scenarios(result, spec.model_dump_json(), policy.read_text(), str(policy), LIMITS,
                               tmp / "scenarios", [], args.before, 8, len(seeds), events_per_episode=10)
        save_s = time.perf_counter() - started
        names = [name for seed in seeds for name in saved.by_seed.get(seed, [])]
        by_name = {name: int(name.split("-step")[1].split("-")[0]) for name in names}

        fresh_steps = []

        def episode(seed: int) -> dict:  # afresh, as a suite run outside the loop has no evaluation to read
            fresh = evaluate(spec, EvalRequest(policy_path=policy, task_id=TASK, protocol=PROTOCOL, seeds=[seed],
                                               limits=LIMITS, eval_timeout_s=3600), ledger)
            fresh_steps.append(fresh.env_steps)
            return fresh.episodes[0].model_dump(mode="json", by_alias=True)

        under_test = PolicyUnderTest(episode, spec.model_dump_json(), PROTOCOL, str(policy), policy.read_text(),
                                     LIMITS, scenarios=tmp / "scenarios")
        whole = ["from heurist_testkit import run_episode\n"]
        for name, step in by_name.items():
            seed = int(name.split("-")[0][len("seed"):])
            whole.append(f"\n\ndef test_{name.replace('-', '_')}():\n    result = run_episode({seed})\n"
                         f"    assert any(e['kind'] == 'life_lost' and e['step'] == {step} for e in result['events'])\n")
        scenario = ["from heurist_testkit import run_scenario\n"]
        for name in by_name:
            scenario.append(f"\n\ndef test_{name.replace('-', '_')}():\n    result = run_scenario({name!r})\n"
                            f"    assert result['failed_again'], result['events']\n")
        started = time.perf_counter()
        on_whole = run_test_file("tests/test_whole.py", "".join(whole), under_test, LIMITS, 3600)
        whole_s = time.perf_counter() - started
        started = time.perf_counter()
        on_scenarios = run_test_file("tests/test_scenarios.py", "".join(scenario), under_test, LIMITS, 3600)
        scenario_s = time.perf_counter() - started
    print(f"{TASK}, protocol {PROTOCOL}, the Breakout starter with {args.tunables} on dev seeds {seeds}: "
          f"{len(lost)} lives lost in {result.env_steps:,} env steps, "
          f"{len(names)} scenarios saved {args.before} steps before them in {save_s:.1f} s "
          f"({saved.env_steps:,} env steps to replay and verify), {len(saved.discarded)} discarded")
    print(f"{'regression suite':<28} {'wall s':>8} {'env steps':>11} {'tests pass on the failing policy':>34}")
    print(f"{'whole episodes':<28} {whole_s:>8.1f} {sum(fresh_steps):>11,} {str(on_whole.passed):>34}")
    print(f"{'scenarios':<28} {scenario_s:>8.1f} {under_test.scenario_steps:>11,} {str(on_scenarios.passed):>34}")
    print(f"scenarios are {whole_s / scenario_s:.1f}x faster and take "
          f"{sum(fresh_steps) / max(1, under_test.scenario_steps):.0f}x fewer env steps"
          + ("" if on_whole.passed and on_scenarios.passed else
             f"; failures: {on_whole.reason[:200]} | {on_scenarios.reason[:200]}"))


if __name__ == "__main__":
    main()
