"""The policy file contract: static checks with one-line reasons, and tunables a search can rewrite safely."""

from __future__ import annotations

import difflib

import pytest

from common.errors import PolicyError
from envs.contract import check_policy_source, read_tunables, rewrite_tunables
from policies import POLICY_DIR

STARTERS = sorted(p for p in POLICY_DIR.glob("*.py") if p.name != "__init__.py")


def test_every_starter_satisfies_the_contract():
    assert len(STARTERS) >= 11
    for path in STARTERS:
        check_policy_source(path.read_text(), path.name)
        for tunable in read_tunables(path.read_text(), path.name):
            assert tunable.low <= tunable.default <= tunable.high and tunable.doc


@pytest.mark.parametrize("source,message", [
    ("import requests\nclass Policy:\n    def reset(self, s): pass\n    def act(self, o, i): return 0\n",
     "imports requests; policies may import only"),
    ("from envs.tasks import get_task\nclass Policy:\n    def reset(self, s): pass\n    def act(self, o, i): return 0\n",
     "must not import heurist itself"),
    ("from . import helper\nclass Policy:\n    def reset(self, s): pass\n    def act(self, o, i): return 0\n",
     "relative import"),
    ("class Policy:\n    def act(self, o, i): return 0\n", "no reset method"),
    ("class Policy:\n    def reset(self, s):\n        pass\n", "no act method"),
    ("x = (\n", "syntax error at line 1"),
    # Only compiling finds these; each would fail every episode at load.
    ("import math\nfrom __future__ import annotations\nclass Policy:\n    def reset(self, s): pass\n"
     "    def act(self, o, i): return 0\n", "syntax error at line 2: from __future__ imports must occur"),
    ("return 3\nclass Policy:\n    def reset(self, s): pass\n    def act(self, o, i): return 0\n",
     "syntax error at line 1: 'return' outside function"),
    # Loaded with the file, inside a class body: refused as a top-level import is.
    ("class Policy:\n    import requests\n    def reset(self, s): pass\n    def act(self, o, i): return 0\n",
     "p.py:2 imports requests"),
    # heurist itself is refused wherever the import is.
    ("class Policy:\n    def reset(self, s):\n        import envs.tasks\n    def act(self, o, i): return 0\n",
     "must not import heurist itself"),
])
def test_contract_violations_are_named(source, message):
    with pytest.raises(PolicyError, match=message):
        check_policy_source(source, "p.py")


LAZY = """
import numpy as np


class Policy:
    def reset(self, seed):
        self.seed, self.t = seed, 0

    def act(self, obs, info):
        self.t += 1
        if self.seed == 1 and self.t == 3:
            import envpool  # used: this episode fails, with why
        if obs is None:
            import requests  # never runs: a warning at the check, nothing more
        return int(np.dot(obs, [0.0, 0.0, 1.0, 0.5]) > 0)
"""


def test_an_import_inside_a_function_is_a_warning_and_fails_only_the_episode_that_runs_it(run_eval, write_policy):
    from envs.contract import lazy_imports

    tree = check_policy_source(LAZY, "lazy.py")  # accepted: neither import runs when the file loads
    assert lazy_imports(tree, "lazy.py") == [
        "lazy.py:12 imports envpool; policies may import only the standard library and Box2D, ale_py, cv2, mujoco, "
        "numpy, scipy (inside a function: that episode fails if it runs)",
        "lazy.py:14 imports requests; policies may import only the standard library and Box2D, ale_py, cv2, mujoco, "
        "numpy, scipy (inside a function: that episode fails if it runs)"]
    result = run_eval(write_policy(LAZY, "lazy.py"), "CartPole-v1", seeds=[0, 1, 2], workers=1)
    by_seed = {e.seed: e for e in result.episodes}
    assert by_seed[1].status == "policy_error" and "ModuleNotFoundError: the policy imports envpool" in by_seed[1].error
    assert by_seed[0].status == by_seed[2].status == "ok"  # numpy, from inside the same code, is imported freely


def test_rewrite_changes_only_the_named_defaults():
    source = (POLICY_DIR / "cartpole.py").read_text()
    before = {t.name: t.default for t in read_tunables(source)}
    changed = rewrite_tunables(source, {"angle_gain": 2.5, "spin_gain": 0.75})
    after = {t.name: t.default for t in read_tunables(changed)}
    assert after == before | {"angle_gain": 2.5, "spin_gain": 0.75}
    diff = [l for l in difflib.unified_diff(source.splitlines(), changed.splitlines(), lineterm="", n=0)
            if l.startswith(("+", "-")) and not l.startswith(("+++", "---"))]
    assert len(diff) == 4  # two lines out, two lines in: the logic is untouched
    assert all("tunable(" in line for line in diff)


def test_rewrite_keeps_integers_integral_and_rejects_bad_values():
    source = (POLICY_DIR / "breakout.py").read_text()
    serve = next(t for t in read_tunables(source) if t.name == "serve_wait")
    assert serve.integer
    assert "serve_wait: int = tunable(5," in rewrite_tunables(source, {"serve_wait": 4.6})
    with pytest.raises(PolicyError, match="outside its bounds"):
        rewrite_tunables(source, {"dead_zone": 99.0})
    with pytest.raises(PolicyError, match="declares no tunable colour"):
        rewrite_tunables(source, {"colour": 1.0})


def test_tunable_default_outside_bounds_is_refused():
    source = ("from dataclasses import dataclass, field\n"
              "def tunable(d, lo, hi, doc):\n    return field(default=d)\n"
              "@dataclass\nclass Tunables:\n    k: float = tunable(9.0, 0.0, 1.0, 'gain')\n"
              "class Policy:\n    def reset(self, s): pass\n    def act(self, o, i): return 0\n")
    with pytest.raises(PolicyError, match="default 9.0 is outside"):
        read_tunables(source)


@pytest.mark.parametrize("source, binds", [
    ("def setup():\n    return 1\n", True),
    ("from helpers import setup\n", True),
    ("from helpers import make as setup\n", True),
    ("from helpers import *\n", True),  # may bring one
    ("import setup\n", True),
    ("setup = lambda: 1\n", True),
    ("setup, other = make()\n", True),
    ("class Policy:\n    def setup(self):\n        pass\n", False),  # a method, not the module's
    ("def make():\n    setup = 1\n    return setup\n", False),
    ("import helpers.setup\n", False),  # binds helpers
    ("def broken(:\n", False),
])
def test_whether_a_policy_file_binds_setup_at_its_top(source, binds):
    """The env process believes a set-up the policy process reports only where the file's module can have one."""
    from envs.contract import binds_setup

    assert binds_setup(source) is binds


TUNED = """
from dataclasses import dataclass


def tunable(default, low, high, doc):
    return default


@dataclass
class Tunables:
    x: float = {declaration}


class Policy:
    def reset(self, seed):
        pass

    def act(self, obs, info):
        return 0
"""


@pytest.mark.parametrize("declaration, message", [
    ('tunable(1, 0, 1.9, "mode")', "whole number, so its bounds must be whole numbers too"),
    ('tunable(1 + 1j, 0, 2, "c")', "not complex"),
    ('tunable(None, 0, 1, "n")', "not NoneType"),
    ('tunable("5", "10", "9", "s")', "not str"),
    ('tunable(True, 0, 1, "b")', "not bool"),
    ('tunable(0.0, -1e999, 1e999, "i")', "finite numbers"),
    ('tunable(0.0, -1e308, 1e308, "h")', "span is finite"),
    ('tunable(0.5, 0.0, 1.0, 3)', "takes a string as its doc"),
    ('tunable(2.0, 0.0, 1.0, "out")', "default 2.0 is outside"),
])
def test_a_tunable_no_search_can_use_is_refused_when_the_policy_is_checked(declaration, message):
    """Each passed the start check and then stopped the run mid-way (an internal error, or a search pinned at
    1e308); a whole-number tunable with a fractional bound had a value written outside its bounds (2 in
    [0, 1.9]), which stopped every later iteration as the policy's fault."""
    with pytest.raises(PolicyError, match=message):
        check_policy_source(TUNED.format(declaration=declaration), "p.py")


def test_what_a_tunables_edit_writes_is_within_its_bounds():
    source = TUNED.format(declaration='tunable(0.5, 0.0, 1.0, "x")')
    assert "tunable(0.75, 0.0, 1.0" in rewrite_tunables(source, {"x": 0.75})
    with pytest.raises(PolicyError, match="outside its bounds"):
        rewrite_tunables(source, {"x": 1.5})
