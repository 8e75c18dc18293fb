"""The simplify stage: mechanical simplifications that keep behaviour, the non-inferiority gate, and the stage in a
real offline run (kept when it loses nothing, refused when it plays worse)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import textwrap

from common.ledger import Ledger
from envs.complexity import complexity
from roles.reviewer import non_inferiority_gate
from roles.simplify_rules import simplify
from roles.stages import ReviewInput
from tests.offline_runs import heurist
from tests.test_graph_offline import EXAMPLE_PLUGIN


def _final(source: str) -> str:
    steps = simplify(textwrap.dedent(source))
    return steps[-1].source if steps else textwrap.dedent(source)


def test_unused_imports_helpers_tunables_and_constants_go_and_everything_used_stays():
    source = '''
        """Docstring."""
        from __future__ import annotations

        import json
        import math, os
        from dataclasses import dataclass, field

        DEBUG = False
        SCALE = 2.0  # read below


        def tunable(default, low, high, doc):
            return field(default=default, metadata={"low": low, "high": high, "doc": doc})


        @dataclass
        class Tunables:
            gain: float = tunable(1.0, 0.0, 5.0, "read by act")
            named: float = tunable(1.0, 0.0, 5.0, "read through getattr")
            dead: float = tunable(0.3, 0.0, 5.0, "read by nothing")


        def unused_helper(x):
            return unused_helper(x - 1) if x else 0  # calls itself, nothing else calls it


        def used_helper(x):
            return math.copysign(1.0, x)


        class Policy:
            def __init__(self):
                self.p = Tunables()

            def reset(self, seed):
                self.t = 0

            def _called(self, obs):
                return used_helper(obs[2]) * SCALE

            def _never_called(self):
                return json.dumps({})

            def act(self, obs, info):
                # the rule: lean with the pole
                push = self.p.gain * self._called(obs) + getattr(self.p, "named") * obs[3]
                return int(push > 0)
    '''
    out = _final(source)
    for gone in ("import json", "os", "DEBUG", "dead:", "unused_helper", "_never_called"):
        assert gone not in out, gone
    for kept in ("from __future__ import annotations", "import math", "SCALE = 2.0  # read below", "named:",
                 "used_helper", "_called", "# the rule: lean with the pole", '"""Docstring."""'):
        assert kept in out, kept
    compile(out, "policy.py", "exec")
    assert simplify(out) == []  # a fixed point
    before, after = complexity(textwrap.dedent(source)), complexity(out)
    assert after.lines < before.lines and after.ast_nodes < before.ast_nodes


def test_constant_branches_keep_the_branch_taken_and_leave_what_is_not_constant():
    source = '''
        VERBOSE = False
        MODE = 1
        FLIP = True


        def toggle():
            global FLIP
            FLIP = not FLIP


        class Policy:
            def reset(self, seed):
                pass

            def act(self, obs, info):
                if obs[1] > 5:
                    toggle()
                if VERBOSE:
                    print(obs)
                if MODE:
                    # kept, dedented
                    action = int(obs[2] > 0)
                else:
                    action = 0
                if FLIP:
                    action = 1 - action
                if obs[0] > 1:
                    action = 0
                elif False:
                    action = 1
                return action
    '''
    out = _final(source)
    assert "if VERBOSE" not in out and "print(obs)" not in out
    assert "if MODE" not in out and "        # kept, dedented\n        action = int(obs[2] > 0)\n" in out
    assert "else:\n            action = 0" not in out
    assert "if FLIP:" in out  # FLIP is rebound by `global` in a helper act calls: not a constant
    assert "elif False:" in out  # an elif chain is left as written
    compile(out, "policy.py", "exec")


def test_constant_folding_shortens_literal_arithmetic_and_never_lengthens_it():
    out = _final('''
        class Policy:
            def reset(self, seed):
                pass

            def act(self, obs, info):
                third = 1.0 / 3.0
                return int(obs[2] * (2 * 0.5) + obs[3] * (60 * 60) + obs[1] * 60 * 60 + third > 0)
    ''')
    assert "obs[2] * 1.0" in out and "obs[3] * 3600" in out and "1.0 / 3.0" in out
    assert "obs[1] * 60 * 60" in out  # (obs[1] * 60) * 60: reassociating floats could change the result


def _review(incumbent, candidate, tests_passed=True):
    return ReviewInput(task="t", incumbent=dict(enumerate(incumbent)), candidate=dict(enumerate(candidate)),
                       tests_passed=tests_passed, tests_report="tests/test_a.py: failed")


def test_the_non_inferiority_gate_keeps_only_what_loses_nothing():
    same = [500.0, 480.0, 300.0, None]
    assert non_inferiority_gate(_review(same, same)).accept
    assert non_inferiority_gate(_review(same, [500.0, 490.0, 300.0, 10.0])).accept  # better, and fixes a failure
    worse = non_inferiority_gate(_review(same, [500.0, 479.0, 300.0, None]))
    assert not worse.accept and "worse beyond the tolerance of 0 on seeds 1 (-1)" in worse.reasons[0]
    failed = non_inferiority_gate(_review(same, [None, 480.0, 300.0, None]))
    assert not failed.accept and failed.new_failures == [0]
    tests = non_inferiority_gate(_review(same, same, tests_passed=False))
    assert not tests.accept and "regression tests failed" in tests.reasons[0]


def test_the_non_inferiority_gate_allows_a_small_loss_only_within_its_tolerances_and_by_the_test():
    before = [100.0 + i for i in range(20)]
    small = [b - 0.5 for b in before]  # every seed half a point worse
    assert not non_inferiority_gate(_review(before, small)).accept  # no tolerance: no loss
    assert not non_inferiority_gate(_review(before, small), seed_tolerance=1.0).accept  # mean tolerance 0
    mixed = [b + (1.0 if i % 2 else -0.5) for i, b in enumerate(before)]  # some seeds lower, the mean higher
    assert non_inferiority_gate(_review(before, mixed), seed_tolerance=1.0).accept
    far = [b - (10.0 if i < 4 else 0.9) for i, b in enumerate(before)]  # the mean falls 2.7: beyond a margin of 1
    verdict = non_inferiority_gate(_review(before, far), seed_tolerance=10.0, mean_tolerance=1.0)
    assert not verdict.accept and "more than the tolerance of 1" in verdict.reasons[0]
    kept = non_inferiority_gate(_review(before, small), seed_tolerance=1.0, mean_tolerance=1.0)
    assert kept.accept and kept.p_value < 0.05
    beyond = non_inferiority_gate(_review(before, small), seed_tolerance=1.0, mean_tolerance=0.5)
    assert not beyond.accept  # a loss exactly at the margin is not shown to be within it
    few = non_inferiority_gate(_review(before[:3], small[:3]), seed_tolerance=1.0, mean_tolerance=1.0)
    assert not few.accept and "not shown to be within" in few.reasons[0]  # three seeds cannot show it


BLOAT = {
    "from dataclasses import dataclass, field\n": "import json\nimport math\nfrom dataclasses import dataclass, field\n"
                                                  "\nDEBUG = False\n",
    '    velocity_gain: float = tunable(0.0, -1.0, 1.0, "weight on the cart velocity: damps drift")\n':
        '    velocity_gain: float = tunable(0.0, -1.0, 1.0, "weight on the cart velocity: damps drift")\n'
        '    legacy_gain: float = tunable(0.0, -1.0, 1.0, "a gain an old rule read; nothing reads it now")\n\n\n'
        'def old_rule(obs):\n    """The first rule, superseded by Policy.act."""\n    return int(obs[2] > 0)\n',
    "        action = 1 if push > 0 else 0\n": "        if DEBUG:\n            print(json.dumps([x, x_dot]))\n"
                                             "        action = 1 if push > 0 else 0\n"}


# A short run: one accepted edit from a small search, then the simplify stage, then the goal or the budget. No HTML
# report (a view, tests/test_report.py): top-level keys come before the tables, so each file starts with NO_REPORT.
NO_REPORT = "report = false\n"
QUICK = ("[eval]\nepisodes = 6\nvideo = false\nholdout = false\n[budget]\niterations = 2\n"
         "[search]\npopulation = 4\ngenerations = 1\nepisodes = 3\nseed = 1\n")


def _bloated(tmp) -> str:
    source = (tmp / "weak.py").read_text()
    for old, new in BLOAT.items():
        assert old in source
        source = source.replace(old, new)
    (tmp / "bloated.py").write_text(source)
    return source


def _run_simplified_by(home, role: str, simplify: str = "", quick: str = QUICK):
    """A short offline CartPole run whose simplify stage (after each accepted edit) is the plug-in ``role``
    (tests/plugins/simplify_roles.py); its folder, environment, finished process and ledger records."""
    tmp, env = home
    env["PYTHONPATH"] = str(EXAMPLE_PLUGIN)
    (tmp / "run.toml").write_text(f'{NO_REPORT}[stages]\nsimplify = "simplify_roles:{role}"\n'
                                  f'[simplify]\nevery = 1\n{simplify}{quick}')
    done = heurist(env, "run", "--env", "CartPole-v1", "--policy", tmp / "weak.py", "--config", tmp / "run.toml",
                   "--run-dir", tmp / "run", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, env, done, Ledger(tmp / "run" / "ledger.jsonl").read()[0]


def test_a_run_keeps_a_simplification_that_loses_nothing_and_records_it(home):
    tmp, env = home
    source = _bloated(tmp)
    (tmp / "run.toml").write_text(f"{NO_REPORT}[simplify]\nevery = 1\n{QUICK}")
    done = heurist(env, "run", "--env", "CartPole-v1", "--policy", tmp / "bloated.py", "--config", tmp / "run.toml",
                   "--run-dir", tmp / "run", "--no-progress")
    assert done.returncode == 0, done.stderr[-3000:]
    records, _ = Ledger(tmp / "run" / "ledger.jsonl").read()
    [first, *_] = [r for r in records if r["event"] == "simplify"]
    assert first["accepted"] and first["iteration"] == 1, first
    assert "identical returns" in first["reason"]
    assert first["complexity_after"]["lines"] < first["complexity_before"]["lines"]
    best = (tmp / "run" / "best_policy.py").read_text()
    assert "old_rule" not in best and "legacy_gain" not in best and "import json" not in best
    assert "angle_gain" in best and best != source
    summary = json.loads((tmp / "run" / "summary.json").read_text())
    assert summary["simplifications"][0]["accepted"] and "Simplify after iteration 1: kept" in \
        (tmp / "run" / "summary.md").read_text()
    # The commit names the iteration it followed and holds the bytes that were scored; later edits build on it.
    git = ["git", "-C", str(tmp / "run" / "workspace")]
    message = subprocess.run([*git, "log", "-1", "--format=%B", first["commit"]], capture_output=True, text=True,
                             check=True).stdout
    committed = subprocess.run([*git, "show", f"{first['commit']}:policy.py"], capture_output=True, check=True).stdout
    assert "Heurist-Simplify: 1" in message
    assert hashlib.sha256(committed).hexdigest() == first["policy_sha256_after"]
    assert hashlib.sha256(best.encode()).hexdigest() == summary["best_sha256"]


def test_a_simplification_that_plays_worse_is_refused_by_the_gate(home):
    tmp, _env, _done, records = _run_simplified_by(home, "DropsATerm")
    iteration = next(r for r in records if r["event"] == "iteration")
    [simplified] = [r for r in records if r["event"] == "simplify"]
    assert iteration["accepted"] and not simplified["accepted"], simplified
    assert "worse beyond the tolerance" in simplified["reason"] or "now fail" in simplified["reason"]
    assert simplified["applied"] == ["dropped the spin term"] and simplified["commit"] is None
    assert "spin_gain * theta_dot" in (tmp / "run" / "best_policy.py").read_text()


def test_with_a_model_the_simplifier_asks_for_blocks_through_the_real_client(tmp_path, monkeypatch):
    from roles.llm import LLMClient
    from roles.llm_usage import Usage
    from roles.simplifier import Simplifier
    from roles.stages import SimplifyInput
    from store.config import LLMConfig
    from tests.scripted_openai import ScriptedOpenAI
    from tests.test_llm import chat
    from tests.test_roles import context

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    source = "import math\n\n\nclass Policy:\n    def reset(self, seed):\n        pass\n\n" \
             "    def act(self, obs, info):\n        return int(obs[2] > 0)\n"
    edit = {"kind": "search_replace", "rationale": "math is never used", "tunables": {}, "target_seeds": [],
            "target_kinds": [], "blocks": [{"search": "import math\n\n\n", "replace": ""}]}
    with ScriptedOpenAI() as server:
        server.queue(chat(json.dumps(edit)))
        llm = LLMClient(LLMConfig(model="scripted", base_url=server.base_url), Usage())
        ctx = context(tmp_path, "simplifier", llm=llm)
        out = Simplifier().run(SimplifyInput(task="CartPole-v1", policy_source=source, complexity=
                                             complexity(source).model_dump(), incumbent={0: 500.0},
                                             tests=["tests/test_iteration_0001.py"]), ctx)
        brief = server.requests[0]["body"]["messages"][1]["content"]
    assert "import math" in brief and "tests/test_iteration_0001.py" in brief and '"0": 500.0' in brief
    assert out.edit is not None and out.edit.blocks[0].search == "import math\n\n\n"
    assert [e.kind for e in ctx.transcript.entries()] == ["llm_call", "parsed"]


def _behaviour(source: str) -> object:
    """What the scratch module computes (its RESULT), run here: these are the test's own sources, not a policy's."""
    namespace: dict = {}
    exec(compile(textwrap.dedent(source), "<scratch>", "exec"), namespace)
    return namespace["RESULT"]


# A policy's tunables, as each policy file declares them (a policy may not import heurist's helper).
TUNABLES = '''
        from dataclasses import astuple, dataclass, field


        def tunable(default, low, high, doc):
            return field(default=default, metadata={"low": low, "high": high, "doc": doc})


        @dataclass
        class Tunables:
            a: float = tunable(1.0, 0.0, 5.0, "a")
            b: float = tunable(2.0, 0.0, 5.0, "b")
'''

RULE_TRAPS = {
    "a form feed and wide characters before the code": '''
        # the policy \x0c, section two
        label = "xθθθθ"
        k = 5


        def f():
            y = k * 3
            z = 2 * 3
            return y, z


        RESULT = (f(), label)
    ''',
    "definitions that act by existing": '''
        RULES = []


        def rule(fn):
            RULES.append(fn)
            return fn


        @rule
        def lean(obs):
            return 1


        class Base:
            seen = []

            def __init_subclass__(cls):
                Base.seen.append(cls.__name__)


        class Registered(Base):
            pass


        RESULT = (len(RULES), Base.seen)
    ''',
    "a constant's name bound elsewhere": '''
        VERBOSE = False
        USE = False


        def clip(x, VERBOSE=True):
            if VERBOSE:
                return "verbose"
            return "quiet"


        def walrus():
            if (USE := True):
                pass
            if USE:
                return "walrus"
            return "no"


        RESULT = (clip(1), walrus())
    ''',
    "a dead yield, a multi-line string, a one-line if": '''
        OFF = False
        ON = True


        def gen():
            if OFF:
                yield 1
            return


        def text():
            if ON:
                return """rule:
            lean"""


        def one():
            if ON: return "one"


        RESULT = (type(gen()).__name__, text(), one())
    ''',
    "tunables read whole": TUNABLES + '''

        RESULT = sum(astuple(Tunables()))
    ''',
    # Found by a red-team review (2026-12-05): a list literal filled in later was read as a falsy constant and its
    # branch removed; a method reached only through a computed name was removed as unused.
    "a list filled in later": '''
        RECOVERY_MODES = []
        RECOVERY_MODES.append("recover")


        def mode():
            if RECOVERY_MODES:
                return "recover"
            return "balance"


        RESULT = mode()
    ''',
    # Found by a review of that fix: the tunables the MuJoCo starters read as getattr(p, f"amp_{j}") were removed as
    # unused, and the simplified policy raised AttributeError.
    "tunables read by a computed name": TUNABLES + '''

        RESULT = sum(getattr(Tunables(), chr(ord("a") + j)) for j in range(2))
    ''',
    "a method reached by a computed name": '''
        class Policy:
            def reset(self, seed):
                pass

            def act(self, obs, info):
                return getattr(self, "_guard_" + ("right" if obs > 0 else "left"))()

            def _guard_right(self):
                return 0

            def _guard_left(self):
                return 1


        RESULT = (Policy().act(1, {}), Policy().act(-1, {}))
    ''',
}


def test_the_rules_keep_the_behaviour_of_code_that_python_makes_tricky():
    import ast

    import pytest

    from roles.simplify_rules import constant_folding

    for name, source in RULE_TRAPS.items():
        out = _final(source)
        assert _behaviour(out) == _behaviour(source), (name, out)
    deep = "W = [0.5] * 1500\n\n\ndef f(obs):\n    return " + " + ".join(f"W[{i}] * obs[{i}]" for i in range(1500)) \
        + "\n\n\nRESULT = 1\n"
    with pytest.raises(RecursionError):  # too deep for constant folding's recursion ...
        constant_folding(deep, ast.parse(deep))
    assert all(step.kind != "constant folding" for step in simplify(deep))  # ... which is skipped, never a crash


def test_tunables_are_rewritten_in_place_after_a_form_feed():
    """Offsets count lines as Python does: a form feed in a comment once sent the search's rewrite one line off."""
    from envs.contract import read_tunables, rewrite_tunables

    source = textwrap.dedent('''
        # tuned by hand \x0c then by heurist
        from dataclasses import dataclass, field


        def tunable(default, low, high, doc):
            return field(default=default, metadata={"low": low, "high": high, "doc": doc})


        @dataclass
        class Tunables:
            angle_gain: float = tunable(1.0, 0.0, 5.0, "weight on the pole angle")


        class Policy:
            def reset(self, seed):
                pass

            def act(self, obs, info):
                return int(Tunables().angle_gain * obs[2] > 0)
    ''')
    rewritten = rewrite_tunables(source, {"angle_gain": 2.5})
    assert [t.default for t in read_tunables(rewritten)] == [2.5]
    assert rewritten.replace("2.5", "1.0") == source


def test_a_simplification_fitted_to_the_dev_seeds_alone_is_refused_on_seeds_no_model_has_seen(home):
    """The simplifier is shown the dev seeds' returns and no model reviews its edit: a policy that plays the
    incumbent only where the first observation is a dev seed's passed every dev check (and scored 8.72 on the
    holdout against 500, in a red-team run). The gate runs again on seeds drawn from the run's secret."""
    tmp, _env, done, records = _run_simplified_by(home, "MemorisesTheDevSeeds", "screen_episodes = 4\n")
    [simplified] = [r for r in records if r["event"] == "simplify"]
    assert simplified["verdict"]["accept"], simplified  # the dev seeds alone could not tell
    assert not simplified["accepted"] and simplified["commit"] is None
    assert simplified["reason"].startswith("on 4 seeds no model has seen: "), simplified["reason"]
    seeds = simplified["screen_seeds"]
    assert len(set(seeds)) == 4 and all(s >= 10**6 for s in seeds)
    custom = [r for r in records if r["event"] == "eval_started" and r["split"] == "custom"]
    assert [r["seeds"] for r in custom] == [seeds, seeds]  # the incumbent and the candidate, on the same seeds
    record = json.loads((tmp / "run" / "run.json").read_text())
    assert len(record["screen_key"]) == 32 and record["screen_key"] not in done.stdout + done.stderr
    assert "KNOWN" not in (tmp / "run" / "best_policy.py").read_text()


def test_a_policy_packed_into_a_string_for_exec_is_no_simpler(home):
    tmp, _env, _done, records = _run_simplified_by(home, "PacksThePolicy")
    [simplified] = [r for r in records if r["event"] == "simplify"]
    assert not simplified["accepted"] and simplified["reason"].startswith("not a simplification: it adds exec"), \
        simplified
    assert simplified["complexity_after"]["lines"] < simplified["complexity_before"]["lines"]  # what it looked like
    assert "exec(" not in (tmp / "run" / "best_policy.py").read_text()


def test_a_policy_that_plays_otherwise_on_the_public_holdout_seeds_is_shown_beside_its_control(home):
    """The holdout's seeds are public: a simplification that drops the pole only on them passes the dev gate and the
    unseen seeds' gate (a red-team review's). The run cannot refuse what no gate sees, but its summary must not
    present that holdout as the policy's skill: the control, on seeds drawn from the run's secret, says otherwise."""
    tmp, env, done, records = _run_simplified_by(
        home, "SparesTheHoldout", "screen_episodes = 4\n",
        QUICK.replace("holdout = false", "holdout = true\nholdout_control = 10"))
    assert any(r["event"] == "simplify" and r["accepted"] for r in records)
    holdout = json.loads((tmp / "run" / "summary.json").read_text())["holdout"]
    control = holdout["control"]
    assert holdout["mean"] < 20 < control["mean"] and control["differs"] and control["p_value"] < 0.01
    assert control["split"] == "custom" and len(set(control["seeds"])) == 10 and min(control["seeds"]) >= 10**6
    assert "The holdout differs from its control" in (tmp / "run" / "summary.md").read_text()
    assert "The holdout differs from its control" in done.stdout
    shown = heurist(env, "show", tmp / "run")
    assert shown.returncode == 0 and "Control, 10 seeds no model has seen" in shown.stdout
    assert "The holdout differs from its control beyond chance" in " ".join(shown.stdout.split())
    assert heurist(env, "report", tmp / "run").returncode == 0
    page = " ".join((tmp / "run" / "report" / "index.html").read_text().split())
    assert "10 seeds no model has seen" in page and "The holdout differs from this control" in page


def test_the_control_sees_returns_and_failures_apart_and_stays_quiet_by_chance():
    """A mean is over completed episodes: a policy that failed the 19 holdout episodes its own simulation said would
    score badly reported 326 against an honest 254, unseen by a test that ranked failures lowest (p = 0.12)."""
    from types import SimpleNamespace

    from envs.results import CONTROL_ALPHA, differs_p

    def evaluation(returns, failed=0):
        return SimpleNamespace(episodes=[SimpleNamespace(status="ok", return_=r) for r in returns]
                               + [SimpleNamespace(status="crash", return_=None)] * failed)

    honest = [200.0 + 3 * i for i in range(50)]
    assert differs_p(evaluation(honest), evaluation(honest[::2] + honest[1::2])) == 1.0
    assert differs_p(evaluation([500.0] * 50), evaluation([500.0] * 47, failed=3)) > CONTROL_ALPHA  # a few timeouts
    assert differs_p(evaluation(honest[19:], failed=19), evaluation(honest)) < CONTROL_ALPHA  # the bad ones failed
    assert differs_p(evaluation([500.0] * 40 + [9.0] * 10), evaluation([500.0] * 50)) < CONTROL_ALPHA  # 10 spoiled
    assert differs_p(evaluation([]), evaluation(honest)) is None
    # Episodes never run (the evaluation's limit) are not the policy's failures; a return that is no number is.
    cut = evaluation(honest[:41])
    cut.episodes += [SimpleNamespace(status="not_run", return_=None)] * 9
    assert differs_p(cut, evaluation(honest)) > CONTROL_ALPHA
    assert differs_p(evaluation([500.0] * 49 + [float("nan")]), evaluation([9.0] * 50)) < CONTROL_ALPHA
