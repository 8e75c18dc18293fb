"""Shared fixtures: real environments, real worker subprocesses, real files; no mocks of heurist's parts."""

from __future__ import annotations

import fcntl
import os
import pickle
import signal
import tempfile
import textwrap
from pathlib import Path
from typing import Callable, TypeVar

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

# A suite started in the background by a script (`.ci/run &`: a shell without job control starts it so) ignores
# Ctrl-C, and so would every heurist process a test starts: a heurist command started ignoring Ctrl-C keeps
# ignoring it, as a Unix command should, and the tests that stop one with a Ctrl-C would wait out their timeouts
# and fail. They stand for a command started from a terminal, so the suite takes Ctrl-C as a terminal's command
# does; the tests of an ignored Ctrl-C set it up themselves. (pytest-xdist's workers inherit this from here.) So
# started, a Ctrl-C meant for the script's foreground command, which shares the suite's process group, stops the
# suite too.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

from common.ledger import Ledger  # noqa: E402
from envs.evaluator import EvalRequest, evaluate  # noqa: E402
from envs.limits import Limits  # noqa: E402
from envs.results import EvalResult  # noqa: E402
from envs.tasks import get_task  # noqa: E402
from tests.offline_runs import weak_cartpole  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
T = TypeVar("T")


@pytest.fixture(autouse=True)
def no_ctrl_c_left_behind():
    """A test that leaves a Ctrl-C behind fails itself, rather than the later test whose wait acts on it: one
    pending (``common.interrupts.check`` runs pending handlers), or one remembered (``interrupts.received``), or
    heurist's handler left in place (then a simulated Ctrl-C, as Ray cancels a task, is remembered for good), or
    Ctrl-C left ignored or as a stopped command leaves it (then a later test's Ctrl-C goes unanswered). One
    such Ctrl-C took down a pytest worker in an unrelated test that waited on an evaluation."""
    yield
    import ctypes
    import signal

    from common import interrupts

    left = []
    try:
        ctypes.pythonapi.PyErr_CheckSignals()
    except KeyboardInterrupt:
        left.append("a Ctrl-C pending")
    if interrupts.received.is_set():
        interrupts.received.clear()
        left.append("a Ctrl-C remembered")
    if signal.getsignal(signal.SIGINT) is interrupts.on_sigint:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        left.append("heurist's SIGINT handler installed")
    if signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, interrupts._after_stop):  # as a stopped command leaves it
        signal.signal(signal.SIGINT, signal.default_int_handler)
        left.append("Ctrl-C ignored or held as after a stop (a later test's Ctrl-C would go unanswered)")
    if left:
        pytest.fail(f"this test left {' and '.join(left)} (see conftest.no_ctrl_c_left_behind)")


def once_per_session(tmp_path_factory, name: str, make: Callable[[Path], T]) -> T:
    """``make(folder)`` once per pytest session however many xdist workers ask: the first one makes it and saves
    it pickled, the others wait on a lock and read it (pytest-xdist's documented way to share a session fixture).
    Readers must leave what it made as it is. A worker whose ``make`` failed saves nothing, so the next one to ask
    makes it again, in a folder of its own. An xdist worker is told by ``PYTEST_XDIST_WORKER`` (xdist sets it in each
    worker), not by xdist's ``worker_id`` fixture, so that ``pytest -p no:xdist`` (a debugger's run) works too."""
    base = tmp_path_factory.getbasetemp()
    shared = base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base  # the session's folder, above each worker's
    saved = shared / f"{name}.pickle"
    with open(shared / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, by a failure too
        if saved.exists():
            return pickle.loads(saved.read_bytes())
        made = make(Path(tempfile.mkdtemp(prefix=f"{name}-", dir=shared)))
        partial = saved.with_suffix(".partial")
        partial.write_bytes(pickle.dumps(made))
        partial.rename(saved)
        return made


@pytest.fixture
def write_policy(tmp_path):
    """Write a policy file from a dedented source string; returns its path."""

    def write(source: str, name: str = "policy.py") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(source))
        return path

    return write


@pytest.fixture
def slow_balancer(write_policy):
    """A CartPole policy that balances (500 steps an episode) but sleeps before every action."""

    def write(seconds_per_step: float) -> Path:
        return write_policy(f'''
            import time

            class Policy:
                def reset(self, seed):
                    pass

                def act(self, obs, info):
                    time.sleep({seconds_per_step})
                    return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
            ''', name="slow_balancer.py")

    return write


@pytest.fixture
def ledger(tmp_path) -> Ledger:
    return Ledger(tmp_path / "ledger.jsonl")


@pytest.fixture
def run_eval(ledger, tmp_path):
    """Evaluate through the real evaluator with short, test-sized limits unless told otherwise."""

    def run(policy: Path, task: str, **kw) -> EvalResult:
        limits = kw.pop("limits", Limits(episode_timeout_s=20, episode_cpu_s=20, memory_mb=2048))
        # Every pair at once, as the test asks for (workers=2 means two pairs side by side, whatever the machine's
        # speed); the staggered start that runs get is tested on its own (test_evaluator.py).
        kw.setdefault("stagger_s", 0)
        request = EvalRequest(policy_path=policy, task_id=task, limits=limits, out_dir=tmp_path / "clips", **kw)
        return evaluate(get_task(task), request, kw.pop("ledger", ledger))

    return run


@pytest.fixture(scope="session")
def llm_run(tmp_path_factory):
    """One recorded two-iteration run on the LLM path (tests/scripted_runs.py), read by several tests: recorded
    once per session (about 15 CPU-seconds), not once per xdist worker. Tests copy it before they change it."""
    from tests.scripted_runs import record_llm_run

    def record(home: Path):
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("HEURIST_HOME", str(home / "home"))
            patch.delenv("OPENAI_API_KEY", raising=False)
            return record_llm_run(home)

    return once_per_session(tmp_path_factory, "llm-run", record)


@pytest.fixture
def home(tmp_path):
    """A private $HEURIST_HOME, no API key, and the weak CartPole policy at tmp_path/weak.py."""
    env = {k: v for k, v in os.environ.items() if k != "OPENAI_API_KEY"}
    env["HEURIST_HOME"] = str(tmp_path / "home")
    (tmp_path / "weak.py").write_text(weak_cartpole())
    return tmp_path, env
