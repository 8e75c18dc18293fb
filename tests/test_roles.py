"""Roles on real evaluations: the log parser's report and the reviewer's statistical gate and LLM review."""

from __future__ import annotations

import json

import pytest

from envs.tasks import get_task
from policies import POLICY_DIR
from roles.base import RoleContext
from roles.llm import LLMClient
from roles.llm_usage import Usage
from roles.log_parser import LogParser
from roles.reviewer import Reviewer, statistical_gate
from roles.stages import AnalyseInput, ReviewInput
from store.config import LLMConfig, RunConfig
from store.transcripts import TranscriptRecorder
from tests.scripted_openai import ScriptedOpenAI
from tests.test_llm import chat

WEAK = '''
class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        lean = obs[2] + 0.1 * obs[3]
        self.diagnostics = {"mode": "lean_right" if lean > 0 else "lean_left"}
        return 1 if obs[2] > 0.05 else 0
'''
CRASHES_ON_ODD_SEEDS = '''
class Policy:
    def reset(self, seed):
        self.seed = seed

    def act(self, obs, info):
        if self.seed % 2:
            raise RuntimeError("boom")
        return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
'''


def per_seed(result) -> dict[int, float | None]:
    return {e.seed: e.return_ if e.status == "ok" else None for e in result.episodes}


@pytest.fixture(scope="module")
def cartpole_evals(tmp_path_factory):
    """The weak policy, the starter and a crasher on dev seeds 0..9, through the real evaluator."""
    from envs.evaluator import EvalRequest, evaluate
    from envs.limits import Limits

    tmp = tmp_path_factory.mktemp("evals")
    results = {}
    for name, source in (("weak", WEAK), ("starter", (POLICY_DIR / "cartpole.py").read_text()),
                         ("crasher", CRASHES_ON_ODD_SEEDS)):
        path = tmp / f"{name}.py"
        path.write_text(source)
        results[name] = evaluate(get_task("CartPole-v1"), EvalRequest(
            policy_path=path, task_id="CartPole-v1", episodes=10, limits=Limits(episode_timeout_s=30)))
    return results


def context(tmp_path, role: str, llm=None) -> RoleContext:
    def no_scoring(sources, seeds):
        raise AssertionError("this role must not score policies here")

    return RoleContext(task=get_task("CartPole-v1"), iteration=2, config=RunConfig(task="CartPole-v1"),
                       transcript=TranscriptRecorder(tmp_path).for_role(2, role), llm=llm, memory=None,
                       score=no_scoring, search_key="test")


def test_log_parser_counts_failures_and_names_the_active_mode(tmp_path, cartpole_evals):
    ctx = context(tmp_path, "log_parser")
    report = LogParser().run(AnalyseInput(task="CartPole-v1", task_description="", policy_source=WEAK,
                                           evaluation=cartpole_evals["weak"]), ctx)
    assert report.kind_counts["pole_fell"] == 10 and len(report.seeds_by_kind["pole_fell"]) == 10
    worst = report.failures[0]
    assert worst.kind == "pole_fell" and worst.active_mode in ("lean_right", "lean_left")
    assert len(worst.observation) == 4 and worst.step == worst.length - 1
    assert set(report.mode_share) == {"lean_right", "lean_left"}
    assert "pole_fell on 10/10 seeds" in report.summary
    [decision] = ctx.transcript.entries()
    assert decision.kind == "decision" and decision.summary == report.summary


def test_gate_accepts_a_real_gain_and_rejects_losses_ties_crashes_and_failed_tests(cartpole_evals):
    weak, starter, crasher = (per_seed(cartpole_evals[k]) for k in ("weak", "starter", "crasher"))
    gain = statistical_gate(ReviewInput(task="CartPole-v1", incumbent=weak, candidate=starter, tests_passed=True),
                            alpha=0.05, min_improvement=0.0)
    assert gain.accept and gain.p_value < 0.01 and gain.mean_after == 500 and gain.paired_seeds == 10
    loss = statistical_gate(ReviewInput(task="CartPole-v1", incumbent=starter, candidate=weak, tests_passed=True),
                            alpha=0.05, min_improvement=0.0)
    assert not loss.accept and "not above 0" in loss.reasons[0]
    tie = statistical_gate(ReviewInput(task="CartPole-v1", incumbent=starter, candidate=starter, tests_passed=True),
                           alpha=0.05, min_improvement=0.0)
    assert not tie.accept and "identical returns" in tie.reasons[0]
    crash = statistical_gate(ReviewInput(task="CartPole-v1", incumbent=weak, candidate=crasher, tests_passed=True),
                             alpha=0.05, min_improvement=0.0)
    assert not crash.accept and crash.new_failures == [1, 3, 5, 7, 9]
    failed = statistical_gate(ReviewInput(task="CartPole-v1", incumbent=weak, candidate=starter, tests_passed=False,
                                          tests_report="test_seed_3 failed"), alpha=0.05, min_improvement=0.0)
    assert not failed.accept and "regression tests failed: test_seed_3 failed" in failed.reasons


def test_gate_accepts_a_fix_for_crashing_episodes_and_rejects_one_that_costs_elsewhere():
    crashing = {0: None, 1: None, 2: 100.0, 3: 100.0}
    fixed = statistical_gate(ReviewInput(task="t", incumbent=crashing, candidate={0: 80.0, 1: 90.0, 2: 100.0, 3: 101.0},
                                         tests_passed=True), alpha=0.05, min_improvement=0.0)
    assert fixed.accept and "now complete on seeds [0, 1]" in fixed.reasons[0]
    nothing_ran_before = statistical_gate(ReviewInput(task="t", incumbent={0: None, 1: None}, candidate={0: 5.0, 1: None},
                                                      tests_passed=True), alpha=0.05, min_improvement=0.0)
    assert nothing_ran_before.accept
    costly = statistical_gate(ReviewInput(task="t", incumbent=crashing, candidate={0: 80.0, 1: 90.0, 2: 50.0, 3: 40.0},
                                          tests_passed=True), alpha=0.05, min_improvement=0.0)
    assert not costly.accept


def test_gate_needs_significance_not_one_lucky_seed():
    incumbent = {s: 100.0 for s in range(10)}
    lucky = {**incumbent, 0: 400.0}
    verdict = statistical_gate(ReviewInput(task="t", incumbent=incumbent, candidate=lucky, tests_passed=True),
                               alpha=0.05, min_improvement=0.0)
    assert not verdict.accept and verdict.mean_delta == 30 and "not significant" in verdict.reasons[0]


def test_gate_accepts_better_on_several_seeds_and_worse_on_none():
    incumbent = {s: 500.0 for s in range(10)} | {3: 180.0, 7: 260.0}
    fixed_last_two = {s: 500.0 for s in range(10)}
    verdict = statistical_gate(ReviewInput(task="t", incumbent=incumbent, candidate=fixed_last_two, tests_passed=True),
                               alpha=0.05, min_improvement=0.0, pareto_seeds=2)
    assert verdict.accept and verdict.p_value > 0.05 and "better on 2 of 10 paired dev seeds and worse on none" in \
        verdict.reasons[0]
    one_worse = statistical_gate(ReviewInput(task="t", incumbent=incumbent, candidate=fixed_last_two | {0: 499.0},
                                             tests_passed=True), alpha=0.05, min_improvement=0.0, pareto_seeds=2)
    assert not one_worse.accept
    switched_off = statistical_gate(ReviewInput(task="t", incumbent=incumbent, candidate=fixed_last_two,
                                                tests_passed=True), alpha=0.05, min_improvement=0.0, pareto_seeds=0)
    assert not switched_off.accept


def test_llm_review_vetoes_an_edit_that_games_the_evaluation(tmp_path, cartpole_evals, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    weak, starter = per_seed(cartpole_evals["weak"]), per_seed(cartpole_evals["starter"])
    with ScriptedOpenAI() as server:
        server.queue(chat(json.dumps({"games_the_evaluation": True, "reasons": ["branches on seed 3"]})))
        llm = LLMClient(LLMConfig(model="scripted", base_url=server.base_url), Usage())
        ctx = context(tmp_path, "reviewer", llm=llm)
        verdict = Reviewer().run(ReviewInput(task="CartPole-v1", incumbent=weak, candidate=starter, tests_passed=True,
                                             diff="+ if seed == 3: return 1"), ctx)
        assert "+ if seed == 3: return 1" in server.requests[0]["body"]["messages"][1]["content"]
    assert not verdict.accept and "games the evaluation: branches on seed 3" in verdict.reasons[0]
    assert verdict.p_value < 0.01  # the gate passed; the review vetoed
    assert [e.kind for e in ctx.transcript.entries()] == ["decision", "llm_call", "parsed"]


def test_facts_are_gathered_from_reports_checkpointed_before_they_had_names():
    """A run resumed mid-iteration from the previous version holds the analysts' reports as they were."""
    from roles.stages import gather

    old = {"log_parser": {"summary": "s", "seeds_by_kind": {"pole_fell": [3]},
                          "findings": [{"seed": 3, "step": 40, "kind": "pole_fell", "description": "fell",
                                        "status": "ok", "return": 41.0, "length": 41, "active_mode": "lean"}]},
           "video_analyst": {"summary": "v", "findings": [{"seed": 3, "step": 40, "what_went_wrong": "late",
                                                          "evidence": ""}]}}
    [failure] = gather(old, "failures")
    [sighting] = gather(old, "sightings")
    assert (failure.seed, failure.kind, failure.active_mode) == (3, "pole_fell", "lean")
    assert (sighting.seed, sighting.what_went_wrong) == (3, "late")
    assert gather(old, "seeds_by_kind") == {"pole_fell": [3]}


def test_prompts_carry_no_placeholder_a_model_could_copy():
    """A small local model copied "<python>" and "[...]" from a JSON template into its reply; the prompts
    describe each field in words instead."""
    from roles.base import PROMPTS

    for prompt in sorted(PROMPTS.glob("*.md")):
        text = prompt.read_text()
        for placeholder in ("...", "<", '{"', "[...]"):
            assert placeholder not in text, f"{prompt.name} holds {placeholder!r}"


def test_memory_reaches_the_coder_once_a_record_in_one_line():
    from memory.records import FailureHit, FailureRecord, FixHit, FixRecord, Recall
    from roles.coder import recall_text

    failure = FailureRecord(run_id="r", description="CartPole-v1: the pole fell right", task="CartPole-v1",
                            family="classic_control", protocol="standard", iteration=1, seed=3, step=40,
                            kind="pole_fell", policy_sha256="a" * 64, seen_in=("r:1", "r:2", "r:3")).with_id()
    fix = FixRecord(run_id="r", rationale="lean into the fall", diff_summary="+1 -1", task="CartPole-v1",
                    family="classic_control", iteration=1, failure_ids=(failure.id,), outcome="accepted",
                    reason="better on 9 seeds", score_before=40.0, score_after=120.0).with_id()
    recall = Recall(query="pole", failures=[FailureHit(failure=failure, similarity=0.9,
                                                       fixes=[FixHit(fix=fix, similarity=None)])],
                    fixes=[FixHit(fix=fix, similarity=0.8)])
    text = recall_text(recall)
    assert text.splitlines() == [
        "- failure (pole_fell, seed 3, step 40, seen 3x): CartPole-v1: the pole fell right",
        "- fix accepted, dev mean 40.0 -> 120.0: lean into the fall (why: better on 9 seeds)"]
    assert failure.id not in text and fix.id not in text


def test_the_offline_search_imports_cma_without_matplotlib_and_leaves_matplotlib_importable():
    """cma imports matplotlib.pyplot for plots heurist never draws (0.4 s of each offline run's start): the coder
    hides it while cma imports; CMA-ES still searches, and matplotlib is still there for whatever imports it next."""
    import subprocess
    import sys
    from pathlib import Path

    probe = (
        "import sys\n"
        "from roles.coder import import_cma\n"
        "cma = import_cma()\n"
        "assert 'matplotlib' not in sys.modules and 'matplotlib.pyplot' not in sys.modules, sorted(sys.modules)\n"
        "es = cma.CMAEvolutionStrategy([0.5, 0.5], 0.3, {'bounds': [0, 1], 'popsize': 4, 'seed': 3, 'verbose': -9})\n"
        "for _ in range(3):\n"
        "    points = es.ask()\n"
        "    es.tell(points, [sum((x - 0.2) ** 2 for x in p) for p in points])\n"
        "assert import_cma() is cma\n"
        "import matplotlib.pyplot\n"
        "print(round(float(es.result.fbest), 6))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          cwd=Path(__file__).resolve().parent.parent)
    assert done.returncode == 0, done.stderr[-2000:]
    assert float(done.stdout) < 0.18  # it searched: the start point scores 0.18


ONE_TUNABLE = '''
from dataclasses import dataclass


def tunable(default, low, high, doc):
    return default


@dataclass
class Tunables:
    {field}


class Policy:
    def reset(self, seed):
        self.p = Tunables()

    def act(self, obs, info):
        return 0
'''


def _offline_coder(tmp_path, source: str, incumbent: dict, scorer, key: str = "run", iteration: int = 1):
    """The offline coder's search on ``source``, each candidate scored by ``scorer(tunables) -> {seed: return}``
    (no simulator: the search's own logic is what is under test)."""
    from envs.contract import read_tunables
    from roles.coder import Coder
    from roles.stages import CoderInput

    def score(sources, seeds):
        return [{s: scorer({t.name: t.default for t in read_tunables(src)})[s] for s in seeds} for src in sources]

    config = RunConfig.model_validate({"task": "CartPole-v1", "search": {"population": 6, "generations": 2,
                                                                          "episodes": len(incumbent)}})
    ctx = RoleContext(task=get_task("CartPole-v1"), iteration=iteration, config=config,
                      transcript=TranscriptRecorder(tmp_path).for_role(iteration, "coder"), llm=None, memory=None,
                      score=score, search_key=key)
    data = CoderInput(task="CartPole-v1", task_description="x", policy_source=source, incumbent=incumbent)
    return Coder().run(data, ctx)


def test_the_offline_search_takes_one_tunable(tmp_path):
    """cma's bounded search cannot start in one dimension: a policy with one tunable stopped the offline coder in
    most runs (27 seeds of 40), and every resume of that iteration again."""
    source = ONE_TUNABLE.format(field='gain: float = tunable(0.1, 0.0, 1.0, "how hard")')
    incumbent = {s: 10.0 for s in range(5)}
    for key in range(12):  # a dozen search seeds
        out = _offline_coder(tmp_path / str(key), source, incumbent, lambda t: {s: 100 * t["gain"] for s in range(5)},
                             key=str(key))
        assert out.edit is not None and out.edit.tunables["gain"] > 0.1, out.reason


def test_the_offline_search_ranks_fewer_failures_first_as_the_gate_does(tmp_path):
    """A failure was counted at a floor below the incumbent's completed returns: a candidate keeping 499 on seed 0
    and completing the other four at 107 ranked below the incumbent crashing on those four, though the gate accepts
    it (failed episodes now complete, the paired mean no lower)."""
    source = ONE_TUNABLE.format(field='guard: float = tunable(0.1, 0.0, 1.0, "how careful")')

    def returns(t):
        return {0: 499.0, **{s: (107.0 if t["guard"] >= 0.3 else None) for s in range(1, 5)}}

    out = _offline_coder(tmp_path, source, returns({"guard": 0.1}), returns)
    assert out.edit is not None and out.edit.tunables["guard"] >= 0.3, out.reason
    assert sorted(out.edit.target_seeds) == [1, 2, 3, 4]
    assert "(4 failed)" in out.edit.rationale


def test_search_values_keep_the_precision_of_the_span_and_whole_number_bounds():
    """A tunable in [1000.0, 1000.1] kept four significant digits of its value: every candidate was 1000.0."""
    import numpy as np

    from envs.contract import Tunable
    from roles.coder import Coder

    narrow = Tunable(name="x", default=1000.05, low=1000.0, high=1000.1, doc="")
    values = {Coder._values([narrow], np.array([v]))["x"] for v in (1000.01, 1000.03, 1000.07, 1000.09)}
    assert len(values) == 4
    whole = Tunable(name="n", default=1, low=0, high=2, doc="", integer=True)
    assert Coder._values([whole], np.array([1.9]))["n"] == 2.0


def test_the_offline_search_proposes_what_the_gate_accepts_over_a_higher_mean_it_rejects(tmp_path):
    """The incumbent scores 100 on seeds 0-3 and fails seed 4. A candidate completing seed 4 at 10 and keeping the
    rest is what the gate accepts; one completing seed 4 at 500 but losing 10 on every other seed has the higher
    mean and the gate rejects it (a paired loss). The search proposed the second whenever it met both."""
    from roles.reviewer import statistical_gate
    from roles.stages import ReviewInput

    source = ONE_TUNABLE.format(field='x: float = tunable(0.1, 0.0, 1.0, "which")')
    incumbent = {0: 100.0, 1: 100.0, 2: 100.0, 3: 100.0, 4: None}
    kept = {0: 100.0, 1: 100.0, 2: 100.0, 3: 100.0, 4: 10.0}
    lossy = {0: 90.0, 1: 90.0, 2: 90.0, 3: 90.0, 4: 500.0}

    def returns(t):
        return incumbent if t["x"] == 0.1 else kept if t["x"] < 0.5 else lossy

    def gate(candidate):
        return statistical_gate(ReviewInput(task="t", incumbent=incumbent, candidate=candidate, tests_passed=True),
                                alpha=0.05, min_improvement=0.0).accept

    assert gate(kept) and not gate(lossy)
    proposed = []
    for key in range(6):
        out = _offline_coder(tmp_path / str(key), source, incumbent, returns, key=str(key))
        assert out.edit is not None
        proposed.append(out.edit.tunables["x"])
    assert all(x < 0.5 for x in proposed), proposed  # never the candidate the gate rejects


def test_heuristss_own_test_file_holds_the_coders_failure_kinds_as_plain_names_never_as_code():
    """A red-team review (2026-12-05): a target kind holding '\"\"\"' closed the template test's docstring, and the
    model's code after it ran in every later test run, though the user had set the test writer offline."""
    import ast

    from roles.test_writer import template_test

    hostile = 'pole_fell"""\nimport heurist_testkit as _k\nprint("MODEL CODE")\n"""'
    source = template_test(1, {3: (10.0, 500.0)}, [hostile, "cart_left"]).source
    tree = ast.parse(source)
    assert [type(node).__name__ for node in tree.body] == ["Expr", "ImportFrom", "FunctionDef"], source
    assert "MODEL CODE" not in "".join(ast.unparse(node) for node in tree.body[1:])


def test_only_heuristss_own_scenario_tests_pin_a_scenario():
    """A red-team review (2026-12-05): a writer's test naming a scenario anywhere (a comment, a call whose result it
    never checks) counted as pinning it, which kept the failure from the analysts and from a test of its own."""
    from graph.testing import replayed_scenarios, scenario_test_name
    from roles.test_writer import scenario_test

    writers = ('# run_scenario("s0-pole_fell-9")\nfrom heurist_testkit import run_scenario\n\n\n'
               'def test_x():\n    run_scenario("s1-pole_fell-3")\n')
    own = scenario_test_name(set(), 2)
    tests = {"tests/test_iteration_0002.py": writers, own: scenario_test(2, "s2-cart_left-7")}
    assert replayed_scenarios(tests) == {"s2-cart_left-7"}


def test_the_offline_note_names_what_runs_in_each_stage_plug_ins_included():
    """The note named the built-in log parser and template tests of a config whose [stages] had replaced them with
    plug-ins (a review, 2026-12-06)."""
    from cli.run_commands import offline_note

    default = offline_note(RunConfig(task="CartPole-v1"))
    assert default == ("offline: no $OPENAI_API_KEY and no --base-url, so the roles run their offline backends "
                       "(OpenCV video analyst, log parser, CMA-ES coder over tunables, template tests, statistical gate)")
    replaced = offline_note(RunConfig(task="CartPole-v1", stages={
        "analyse": ["video_analyst", "my_roles:FailureRate"], "test": "completes_test_writer"}))
    assert "(OpenCV video analyst, plug-in my_roles:FailureRate, CMA-ES coder over tunables, plug-in " \
           "completes_test_writer, statistical gate)" in replaced
    assert "log parser" not in replaced and "template tests" not in replaced
