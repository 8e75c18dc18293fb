"""Model-written code cannot reach what it must not: hostile regression tests run as ``verify`` runs them, and
policies that reach for the run's files, the repository or unbounded processes. Real sandbox, real bubblewrap."""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest

from envs.sandbox import HEURIST_ROOT, Confinement, Limits, SandboxedRun, filesystem_confined, \
    process_count_bounded, run_sandboxed

HOSTILE_TESTS = Path(__file__).parent / "hostile_tests"
HOSTILE = Path(__file__).parent / "hostile"
LIMITS = Limits(episode_timeout_s=20, episode_cpu_s=20, memory_mb=1024, fsize_mb=16)
needs_confinement = pytest.mark.skipif(not filesystem_confined(), reason="bubblewrap is not installed or cannot make "
                                       "namespaces here (apt-get install bubblewrap; `heurist doctor` says which)")
needs_process_bound = pytest.mark.skipif(not process_count_bounded(), reason="no pids cgroup can be made and heurist "
                                         "runs as root, so nothing bounds the process count (`heurist doctor`)")


class RunLayout:
    """A run directory as the graph makes one: a ledger beside the workspace the tests run in."""

    def __init__(self, tmp_path: Path):
        self.run_dir = tmp_path / "run"
        self.workspace = self.run_dir / "workspace"
        (self.workspace / "tests").mkdir(parents=True)
        self.scratch = self.run_dir / "scratch"
        self.scratch.mkdir()
        self.ledger = self.run_dir / "ledger.jsonl"
        self.ledger.write_text('{"event": "run_started"}\n')
        self.outside = tmp_path / "outside.txt"

    def run_test(self, name: str, timeout_s: float = 30, **fill: object) -> SandboxedRun:
        source = (HOSTILE_TESTS / name).read_text()
        for key, value in {"ledger": self.ledger, "outside": self.outside, **fill}.items():
            source = source.replace("{" + key + "}", str(value))
        (self.workspace / "tests" / f"test_{name}").write_text(source)
        return run_sandboxed([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
                             self.workspace, LIMITS, timeout_s=timeout_s,
                             confinement=Confinement(writable=[self.scratch], hidden=[self.run_dir]))


@pytest.fixture
def layout(tmp_path):
    return RunLayout(tmp_path)


def test_a_test_that_reads_secrets_sees_none(layout, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-must-not-leak")
    ran = layout.run_test("reads_secrets.py")
    assert ran.returncode == 0, ran.output


@needs_confinement
def test_a_test_cannot_delete_the_ledger(layout):
    ran = layout.run_test("deletes_the_ledger.py")
    assert ran.returncode != 0 and "FileNotFoundError" in ran.output
    assert layout.ledger.read_text() == '{"event": "run_started"}\n'


@needs_confinement
def test_a_test_cannot_write_outside_the_workspace(layout):
    layout.run_test("writes_outside.py")
    assert not layout.outside.exists()  # it wrote into the sandbox's private /tmp, which is gone


@needs_process_bound
def test_a_fork_bomb_in_a_test_stops_at_the_process_limit(layout):
    started = time.monotonic()
    ran = layout.run_test("fork_bomb.py")
    assert ran.returncode != 0 and not ran.timed_out
    assert "Resource temporarily unavailable" in ran.output
    assert time.monotonic() - started < 30


def test_a_test_that_sleeps_forever_is_killed_at_the_limit(layout):
    ran = layout.run_test("sleeps_forever.py", timeout_s=3)
    assert ran.timed_out and "process group was killed" in ran.reason


def test_a_test_that_prints_gigabytes_is_cut_short(layout):
    started = time.monotonic()
    ran = layout.run_test("prints_gigabytes.py")
    assert ran.returncode != 0 and len(ran.output) <= 8000
    assert time.monotonic() - started < 60


def test_a_test_cannot_call_a_server_on_loopback(layout):
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(6)
    accepted: list[str] = []

    def accept() -> None:
        try:
            server.accept()[0].close()
            accepted.append("connected")
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    ran = layout.run_test("opens_a_socket.py", port=server.getsockname()[1])
    thread.join()
    server.close()
    assert ran.returncode != 0 and accepted == []


@needs_confinement
def test_a_policy_sees_neither_the_ledger_nor_a_writable_repository(run_eval, ledger, write_policy):
    ledger.append({"event": "before"})
    policy = write_policy(f'''
        from pathlib import Path

        class Policy:
            def reset(self, seed):
                escaped = []
                try:
                    Path("{ledger.path}").read_text()
                    escaped.append("read the ledger")
                except OSError:
                    pass
                try:
                    Path("{HEURIST_ROOT}", "escaped.txt").write_text("x")
                    escaped.append("wrote into heurist's code")
                except OSError:
                    pass
                Path("/tmp/scratch.txt").write_text("a private /tmp is fine")
                if escaped:
                    raise RuntimeError("escaped: " + ", ".join(escaped))

            def act(self, obs, info):
                return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
        ''')
    result = run_eval(policy, "CartPole-v1", episodes=2, workers=2)
    assert [e.status for e in result.episodes] == ["ok", "ok"], result.episodes[0].error
    assert not (HEURIST_ROOT / "escaped.txt").exists()
    records, bad = ledger.read()
    assert bad == 0 and [r["event"] for r in records] == ["before", "eval_started", "eval_finished"]


@needs_process_bound
def test_a_fork_bomb_policy_is_stopped_and_recorded(run_eval):
    result = run_eval(HOSTILE / "fork_bomb.py", "CartPole-v1", episodes=2, workers=2, limits=LIMITS)
    assert [e.status for e in result.episodes] == ["policy_error", "policy_error"]
    assert all("Resource temporarily unavailable" in e.error for e in result.episodes), result.episodes[0].error
