"""Model-written code cannot reach what it must not, nor fake what heurist reports.

Hostile regression tests run exactly as ``verify`` runs them (``envs.regression.run_test_file``: alone,
sandboxed, on a throwaway copy, the policy under test reached only through the kit, a real evaluator
answering ``run_episode``), next to a real run layout: a ledger, a git workspace, heurist's own code and a
file of the user's. Real sandbox, real bubblewrap, real git.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from common.ledger import Ledger
from common.paths import heurist_home
from envs.cgroups import SandboxCgroups, cgroups_available, own_sandbox_cgroups
from envs.containment import probe_privileges, process_count_bounded
from envs.evaluator import EvalRequest, evaluate
from envs.gitsafe import check_repository
from envs.isolation import SANDBOX_CODE, filesystem_confined
from envs.limits import Limits
from envs.regression import PolicyUnderTest, TestFileResult, run_test_file
from envs.sandbox import HEURIST_ROOT, run_sandboxed
from envs.tasks import get_task
from policies import starter_policy
from store.workspace import Workspace

HOSTILE_TESTS = Path(__file__).parent / "hostile_tests"
HOSTILE = Path(__file__).parent / "hostile"
LIMITS = Limits(episode_timeout_s=20, episode_cpu_s=20, memory_mb=1024, fsize_mb=16)
CARTPOLE = get_task("CartPole-v1")
needs_confinement = pytest.mark.skipif(not filesystem_confined(), reason="bubblewrap is not installed or cannot make "
                                       "namespaces here (apt-get install bubblewrap; `heurist doctor` says which)")
needs_process_bound = pytest.mark.skipif(not process_count_bounded(), reason="no pids cgroup and no unprivileged "
                                         "sandbox user here, so nothing bounds the process count (`heurist doctor`)")


def code_fingerprint() -> str:
    """A hash of every file of heurist's sandbox-side code: a test that wrote into it would change this."""
    digest = hashlib.sha256()
    for path in sorted(SANDBOX_CODE.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


class RunLayout:
    """A run directory as the graph makes one (a ledger and a git workspace) and a file of the user's beside it."""

    def __init__(self, tmp_path: Path, policy: Path | None = None):
        self.tmp = tmp_path
        self.run_dir = tmp_path / "run"
        self.ledger = Ledger(self.run_dir / "ledger.jsonl")
        self.ledger.append({"event": "run_started"})
        self.workspace = Workspace(self.run_dir / "workspace")
        self.policy = policy or starter_policy(CARTPOLE)
        self.workspace.create(self.policy.read_text(), {"tests/test_policy_runs.py": "def test_x():\n    pass\n"})
        self.outside = tmp_path / "outside.txt"
        self.canary = tmp_path / "payload-ran.txt"
        self.git_config = (self.workspace.root / ".git" / "config").read_text()

    def policy_under_test(self) -> PolicyUnderTest:
        def episode(seed: int) -> dict:
            if seed not in CARTPOLE.seeds.seeds("dev"):
                from envs.regression import KitRefused
                raise KitRefused(f"seed {seed} is not a dev seed")
            result = evaluate(CARTPOLE, EvalRequest(policy_path=self.policy, task_id=CARTPOLE.id, seeds=[seed],
                                                    limits=LIMITS), self.ledger)
            return result.episodes[0].model_dump(mode="json", by_alias=True)

        return PolicyUnderTest(episode, CARTPOLE.model_dump_json(), "standard", str(self.policy),
                               self.policy.read_text(), LIMITS)

    def source(self, name: str, **fill: object) -> str:
        source = (HOSTILE_TESTS / name).read_text()
        values = {"ledger": self.ledger.path, "outside": self.outside, "workspace": self.workspace.root,
                  "canary": self.canary, "heurist_envs": SANDBOX_CODE, "heurist_home": heurist_home(),
                  "checkout": HEURIST_ROOT, **fill}
        for key, value in values.items():
            source = source.replace("{" + key + "}", str(value))
        return source

    def run_test(self, name: str, timeout_s: float = 60, **fill: object) -> TestFileResult:
        return run_test_file(f"tests/test_{name}", self.source(name, **fill), self.policy_under_test(), LIMITS,
                             timeout_s)

    def intact(self) -> None:
        """The run's records, its repository, heurist's code and the user's files are as they were."""
        records, bad = self.ledger.read()
        assert bad == 0 and records[0] == {"event": "run_started"}
        assert all(r["event"] in ("run_started", "eval_started", "eval_finished") for r in records)
        assert (self.workspace.root / ".git" / "config").read_text() == self.git_config
        check_repository(self.workspace.root)
        self.workspace.reset_to(self.workspace.head())  # git touching the work tree runs no payload
        assert not self.outside.exists() and not self.canary.exists()


@pytest.fixture
def layout(tmp_path):
    return RunLayout(tmp_path)


@pytest.fixture(scope="module")
def fingerprint():
    before = code_fingerprint()
    yield
    assert code_fingerprint() == before, "a hostile test or policy changed heurist's code"


def test_a_test_that_reads_secrets_sees_none(layout, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-must-not-leak")
    monkeypatch.setenv("GITHUB_TOKEN", "ghp-must-not-leak")
    ran = layout.run_test("reads_secrets.py")
    assert ran.passed, ran.reason


@needs_confinement
def test_a_test_cannot_delete_the_ledger(layout):
    ran = layout.run_test("deletes_the_ledger.py")
    assert not ran.passed and "FileNotFoundError" in ran.output
    layout.intact()


@needs_confinement
def test_a_test_cannot_write_outside_its_copy(layout):
    ran = layout.run_test("writes_outside.py")
    assert not ran.passed
    layout.intact()


@needs_confinement
def test_git_payloads_and_a_rewritten_policy_never_reach_the_workspace(layout, fingerprint):
    layout.run_test("plants_git_payloads.py")
    layout.intact()
    assert layout.workspace.policy.read_text() == layout.policy.read_text()


def test_git_refuses_a_workspace_that_asks_it_to_run_a_program(tmp_path):
    """Defence in depth: were a workspace's repository changed anyway, heurist's git would not obey it."""
    for change in ("config", "attributes", "info", "hook"):
        workspace = Workspace(tmp_path / change)
        workspace.create("class Policy:\n    pass\n", {})
        dot_git = workspace.root / ".git"
        if change == "config":
            with open(dot_git / "config", "a") as fh:
                fh.write(f"[core]\n\tfsmonitor = {tmp_path / 'payload.sh'}\n")
        elif change == "attributes":
            (workspace.root / ".gitattributes").write_text("* filter=x\n")
        elif change == "info":
            (dot_git / "info").mkdir(exist_ok=True)
            (dot_git / "info" / "attributes").write_text("* diff=x\n")
        else:
            (dot_git / "hooks").mkdir(exist_ok=True)
            (dot_git / "hooks" / "post-checkout").write_text("#!/bin/sh\n")
        with pytest.raises(Exception, match="heurist never writes|which heurist never"):
            workspace.reset_to(workspace.head())


@needs_confinement
def test_sandboxed_processes_hold_no_privileges(layout, fingerprint):
    found = probe_privileges(LIMITS)
    assert found["uid"] != 0 and found["gid"] != 0 and found["no_new_privs"] and not found["shadow_readable"]
    assert found["seccomp"] and not found["user_namespaces"]
    assert all(int(value, 16) == 0 for value in found["caps"].values()), found["caps"]
    ran = layout.run_test("escalates.py")
    assert ran.passed, ran.reason  # it asserts that every attempt failed
    layout.intact()


def test_a_test_that_swaps_its_log_leaks_nothing(layout, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-canary-in-heurists-own-environment")
    ran = layout.run_test("swaps_its_output.py")
    assert not ran.passed
    assert "sk-canary" not in ran.output + ran.reason and "OPENAI_API_KEY" not in ran.output
    layout.intact()


@pytest.mark.parametrize("name, words", [
    ("exits_zero_at_import.py", "ended before pytest reported the end of its session"),
    ("forges_its_report.py", "test_a_fails failed"),
])
def test_an_exit_code_or_a_forged_report_is_not_a_pass(layout, name, words):
    ran = layout.run_test(name)
    assert not ran.passed and words in ran.reason, ran.reason


def test_a_test_that_abuses_its_channel_is_answered_and_refused(layout):
    ran = layout.run_test("abuses_the_channel.py")
    assert ran.passed, (ran.reason, ran.output[-2000:])
    records, _ = layout.ledger.read()
    assert {r.get("split") for r in records if r["event"] == "eval_started"} == {"dev"}  # never a protected split


def test_the_private_tmp_is_bounded(layout):
    started = time.monotonic()
    ran = layout.run_test("fills_its_tmp.py")
    assert not ran.passed and "No space left on device" in ran.output, ran.output[-500:]
    assert time.monotonic() - started < 60


@pytest.mark.skipif("cpu" not in cgroups_available(), reason="no cpu cgroup can be made here (`heurist doctor`)")
def test_a_test_that_forks_busy_children_does_not_starve_the_file_beside_it(layout):
    """verify runs test files side by side; a sandbox's processes share one cpu cgroup (capped at one core), so
    however many it forks, they cannot starve the file beside it.

    Events, not guesses at this machine's speed: the honest file starts once 50 of the starver's busy children
    run (the rest follow), and the starver is killed as soon as the honest file is done. Both run on two of
    the machine's cores whatever it has, so the verdict does not depend on how many it has: the honest file has
    30 s for about 1.2 s of CPU (its pytest and its second of work), where without a cpu cgroup it would get at
    most two cores' share among 51 busy processes and need over 30 s (the starver's children go on to 150)."""
    honest = '''import time


def test_a_second_of_work():
    started = time.process_time()
    while time.process_time() - started < 1.0:
        pass
'''
    policy = layout.policy_under_test()
    before = set(own_sandbox_cgroups())
    everywhere = os.sched_getaffinity(0)
    # Threads, and the sandboxes they start, inherit the affinity of the thread that starts them.
    os.sched_setaffinity(0, sorted(everywhere)[:2])
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            starver = pool.submit(run_test_file, "tests/test_starves.py", layout.source("starves_the_cpu.py"),
                                  policy, LIMITS, 120)
            group = _busy_cgroup(before, starver, processes=50)
            try:
                victim = run_test_file("tests/test_honest.py", honest, policy, LIMITS, 30)
            finally:  # the starver ends now: its cgroup's clean-up kills everything in it
                SandboxCgroups({"starver": group}).remove()
            assert not starver.result().passed
    finally:
        os.sched_setaffinity(0, everywhere)
    assert victim.passed, victim.reason


def _busy_cgroup(before: set[Path], starver, processes: int) -> Path:
    """A cgroup of the starver's, once at least ``processes`` processes run in it. Looked for in every controller's
    cgroups, so the test fails on its verdict, not here, if the sandbox is left out of the cpu one."""
    deadline = time.monotonic() + 120  # a guard against a hang, not a guess at the machine's speed
    while True:
        assert not starver.done(), starver.result()
        assert time.monotonic() < deadline, "the starver's children never ran"
        for group in set(own_sandbox_cgroups()) - before:
            try:
                if len((group / "cgroup.procs").read_text().split()) >= processes:
                    return group
            except OSError:
                pass
        time.sleep(0.05)


def test_markup_and_escape_sequences_come_back_inert(layout):
    ran = layout.run_test("prints_markup_and_escapes.py")
    assert not ran.passed and "[/bold]" in ran.reason
    from common.safe_text import printable
    assert "\x1b" not in printable(ran.reason) and "\\x1b" in printable(ran.reason + "\x1b")


@needs_process_bound
def test_a_fork_bomb_in_a_test_stops_at_the_process_limit(layout):
    started = time.monotonic()
    ran = layout.run_test("fork_bomb.py")
    assert not ran.passed and "Resource temporarily unavailable" in ran.output
    assert time.monotonic() - started < 40


def test_a_test_that_sleeps_forever_is_killed_at_the_limit(layout):
    ran = layout.run_test("sleeps_forever.py", timeout_s=3)
    assert not ran.passed and "process group was killed" in ran.reason


def test_a_test_that_prints_gigabytes_is_cut_short(layout):
    started = time.monotonic()
    ran = layout.run_test("prints_gigabytes.py")
    assert not ran.passed and len(ran.output) <= 8000
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
    assert not ran.passed and accepted == []


def test_run_sandboxed_binds_its_folder_read_only_and_hides_the_key(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-secret")
    seen = run_sandboxed([sys.executable, "-c", "import os; print(os.environ.get('OPENAI_API_KEY'))"], tmp_path,
                         LIMITS, timeout_s=30)
    assert seen.returncode == 0 and seen.output.strip() == "None"
    if filesystem_confined():
        wrote = run_sandboxed([sys.executable, "-c", "open('x', 'w')"], tmp_path, LIMITS, timeout_s=30)
        assert wrote.returncode != 0 and not (tmp_path / "x").exists()
        assert "Read-only file system" in wrote.output or "Permission denied" in wrote.output


# --------------------------------------------------------------------------- hostile policies


def _fill(name: str, tmp_path: Path, **values: object) -> Path:
    source = (HOSTILE / name).read_text()
    for key, value in values.items():
        source = source.replace("{" + key + "}", str(value))
    path = tmp_path / name
    path.write_text(source)
    return path


@needs_confinement
def test_a_policy_sees_neither_the_ledger_nor_a_writable_repository(run_eval, ledger, write_policy):
    ledger.append({"event": "before"})
    policy = write_policy(f'''
        from pathlib import Path

        class Policy:
            def reset(self, seed):
                escaped = []
                for path in ("{ledger.path}", "{HEURIST_ROOT / 'README.md'}", "{HEURIST_ROOT / '.git' / 'config'}"):
                    try:
                        Path(path).read_text()
                        escaped.append("read " + path)
                    except OSError:
                        pass
                try:
                    Path("{HEURIST_ROOT}", "escaped.txt").write_text("x")
                    escaped.append("wrote into heurist's checkout")
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


def test_legitimate_python_still_works_in_the_sandbox(run_eval, write_policy):
    """No privileges and no new namespaces, but threads, subprocesses and multiprocessing (whose semaphores need a
    writable /dev/shm) work as anywhere."""
    policy = write_policy('''
        import multiprocessing
        import subprocess
        import threading

        def square(x):
            return x * x

        class Policy:
            def reset(self, seed):
                thread = threading.Thread(target=lambda: None)
                thread.start()
                thread.join()
                assert subprocess.run(["true"]).returncode == 0
                with multiprocessing.get_context("fork").Pool(2) as pool:
                    assert pool.map(square, [1, 2, 3]) == [1, 4, 9]
                queue = multiprocessing.Queue()
                queue.put(seed)
                assert queue.get(timeout=5) == seed

            def act(self, obs, info):
                return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
        ''')
    result = run_eval(policy, "CartPole-v1", episodes=1, limits=LIMITS)
    assert result.episodes[0].status == "ok", result.episodes[0].error


SIGNALS_AS_FROM_A_TERMINAL = """
import json, signal, sys
from pathlib import Path
from envs.evaluator import EvalRequest, evaluate
from envs.limits import Limits
from envs.tasks import get_task
# As a Ray worker starts its tasks (SIGINT blocked) and a script its background jobs (SIGINT and SIGQUIT ignored).
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGQUIT, signal.SIG_IGN)
request = EvalRequest(policy_path=Path(sys.argv[1]), task_id="CartPole-v1", episodes=2, workers=1, stagger_s=0,
                      limits=Limits(episode_timeout_s=60, episode_cpu_s=30, memory_mb=2048), out_dir=Path(sys.argv[2]))
result = evaluate(get_task("CartPole-v1"), request)
print(json.dumps([[e.status, e.return_, e.error] for e in result.episodes]))
"""


def test_a_policy_gets_the_signals_of_a_fresh_process_however_heurist_was_started(write_policy, tmp_path):
    """A policy process inherited the signals heurist's process blocked or ignored: on Ray (a worker blocks SIGINT)
    a policy raising SIGINT in itself went on as if nothing happened, and scored 9.75 where it scored 500 locally
    (a red-team review, 2026-12-05). Started blocking and ignoring them, heurist's policy process has none of it."""
    policy = write_policy('''
        import signal

        class Policy:
            def reset(self, seed):
                self.seen = False

            def act(self, obs, info):
                try:
                    signal.raise_signal(signal.SIGINT)
                except KeyboardInterrupt:  # delivered, as in any Python started from a terminal: balance
                    assert signal.getsignal(signal.SIGQUIT) is signal.SIG_DFL
                    assert not signal.pthread_sigmask(signal.SIG_BLOCK, set())
                    return 1 if obs[2] + 0.5 * obs[3] > 0 else 0
                return 0  # blocked or ignored: push left until the pole falls
        ''')
    done = subprocess.run([sys.executable, "-c", SIGNALS_AS_FROM_A_TERMINAL, str(policy), str(tmp_path)],
                          capture_output=True, text=True, cwd=HEURIST_ROOT, timeout=300,
                          env={**os.environ, "HEURIST_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == [["ok", 500.0, None]] * 2


@needs_confinement
def test_a_policy_cannot_escalate(run_eval, fingerprint):
    result = run_eval(HOSTILE / "escalates.py", "CartPole-v1", episodes=1, limits=LIMITS)
    assert result.episodes[0].status == "ok", result.episodes[0].error


def test_a_policy_that_swaps_its_log_leaks_nothing(run_eval, ledger, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-canary-in-heurists-own-environment")
    result = run_eval(HOSTILE / "swaps_its_log.py", "CartPole-v1", episodes=1, limits=LIMITS)
    episode = result.episodes[0]
    assert episode.status == "crash" and "exited with code 1" in episode.error
    assert "sk-canary" not in ledger.path.read_text() and "OPENAI_API_KEY" not in episode.error


def test_diagnostics_are_bounded_by_the_env_process(run_eval):
    result = run_eval(HOSTILE / "floods_diagnostics.py", "CartPole-v1", episodes=1, limits=LIMITS)
    episode = result.episodes[0]
    assert episode.status == "ok" and episode.length == 500, episode.error
    assert len(episode.trace.mode_counts) <= 65 and sum(episode.trace.mode_counts.values()) == 500
    kept = max(len(json.dumps(step["diag"])) for window in episode.trace.windows for step in window.steps)
    assert kept <= 2100, kept


@needs_confinement
def test_links_planted_for_clips_are_never_written_through(run_eval, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("the user's file")
    clips = tmp_path / "clips"
    policy = _fill("plants_clip_links.py", tmp_path, clips=clips, victim=victim)
    result = run_eval(policy, "CartPole-v1", episodes=2, limits=LIMITS, video=True)  # clips go to tmp_path/clips
    assert victim.read_text() == "the user's file"
    assert result.clips and all(Path(c.mp4).is_file() and not Path(c.mp4).is_symlink() for c in result.clips)
    assert not [p for p in clips.rglob("*") if p.is_symlink()]  # the policy could not even reach the folder


@pytest.mark.skipif("memory" not in cgroups_available(), reason="no memory cgroup can be made here (`heurist doctor`)")
def test_a_policy_and_its_children_share_one_memory_bound(run_eval, write_policy):
    """RLIMIT_AS bounds each process; the memory cgroup bounds them together, their /tmp included."""
    policy = write_policy('''
        import os
        import signal
        import time

        class Policy:
            def reset(self, seed):
                children = []
                for _ in range(8):
                    pid = os.fork()
                    if pid == 0:
                        block = bytearray(200 * 2**20)  # each child alone is within the address-space limit
                        block[::4096] = b"x" * len(block[::4096])
                        time.sleep(3)  # all of them at once: 1.6 GB together
                        os._exit(0)
                    children.append(pid)
                statuses = [os.waitpid(pid, 0)[1] for pid in children]
                killed = sum(os.WIFSIGNALED(s) and os.WTERMSIG(s) == signal.SIGKILL for s in statuses)
                raise RuntimeError(f"{killed} of 8 children were killed")

            def act(self, obs, info):
                return 0
        ''')
    limits = Limits(episode_timeout_s=30, episode_cpu_s=30, memory_mb=512, tmp_mb=64)
    result = run_eval(policy, "CartPole-v1", episodes=1, limits=limits)
    error = result.episodes[0].error or ""
    # Either the policy process itself was chosen by the OOM killer, or it saw some of its children killed.
    assert "killed (SIGKILL)" in error or ("children were killed" in error and "0 of 8" not in error), error


@needs_process_bound
def test_a_fork_bomb_policy_is_stopped_and_recorded(run_eval):
    result = run_eval(HOSTILE / "fork_bomb.py", "CartPole-v1", episodes=2, workers=2, limits=LIMITS)
    assert [e.status for e in result.episodes] == ["policy_error", "policy_error"]
    assert all("Resource temporarily unavailable" in e.error for e in result.episodes), result.episodes[0].error


def test_a_channel_held_open_and_silent_is_abandoned_and_the_broker_ends(layout, tmp_path):
    """Where no PID namespace or cgroup ends a test's processes with it, a daemon it left can hold the channel open
    and say nothing: the broker answered what came, and abandoning it ends it (it used to wait in a read no other
    thread could stop, and run_test_file with it)."""
    import json
    import os

    from envs.regression import _Broker

    request_r, request_w = os.pipe()
    reply_r, reply_w = os.pipe()
    broker = _Broker(request_r, reply_w, layout.policy_under_test(), tmp_path)
    broker.start()
    try:
        os.write(request_w, json.dumps({"op": "report", "kind": "test", "nodeid": "t", "when": "call",
                                        "outcome": "passed"}).encode() + b"\n")
        with os.fdopen(os.dup(reply_r), "rb") as replies:
            assert json.loads(replies.readline()) == {"ok": True}
        broker.abandon()  # the write end stays open: nothing but abandon can end the broker's wait
        broker.join(timeout=60)
        assert not broker.is_alive() and broker.failure is None
        assert [r.nodeid for r in broker.reports] == ["t"]
    finally:
        broker.abandon()
        for fd in (request_w, reply_r):
            os.close(fd)


# A sandboxed command that detaches two processes from its group (``setsid``: one directly, one a grandchild of a
# subshell that detached), prints their pids, and ends (or, with the tail added, outlives its time limit).
DETACHES = ('mkfifo "$HOME/pid2"; setsid sleep 1000 & echo $!; (setsid sh -c "sleep 1000 & echo \\$! > "$HOME/pid2"; wait") & '
            'read second < "$HOME/pid2"; echo $second; echo started')


def _still_running(pids: list[int]) -> list[int]:
    running = []
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state != "Z":
            running.append(pid)
    return running


@pytest.mark.parametrize("outlives_its_limit", [False, True])
def test_where_no_namespace_or_cgroup_would_a_reaper_ends_what_a_sandbox_detached(monkeypatch, tmp_path,
                                                                                    outlives_its_limit):
    """Without bubblewrap's PID namespace and without a cgroup to empty, processes a test or policy detached from its
    process group used to outlive its sandbox (a known gap until 2026-12-05). The trusted reaper above it
    (envs.limited.become_reaper) ends them before run_sandboxed returns: when the command ends, and at its limit."""
    import envs.sandbox

    # This machine as one without cgroups: what SandboxCgroups.create gives where none can be made.
    monkeypatch.setattr(envs.sandbox.SandboxCgroups, "create", classmethod(lambda cls, limits: cls({})))
    command = DETACHES + ("; sleep 1000" if outlives_its_limit else "")
    ran = run_sandboxed(["/bin/sh", "-c", command], tmp_path, Limits(filesystem_isolation=False),
                        timeout_s=5 if outlives_its_limit else 60)
    pids = [int(word) for word in ran.output.split() if word.isdigit()]
    try:
        assert "started" in ran.output and len(pids) == 2, ran.output
        assert (ran.timed_out, ran.returncode) == ((True, -9) if outlives_its_limit else (False, 0)), ran
        assert _still_running(pids) == []
    finally:
        for pid in _still_running(pids):
            os.kill(pid, 9)


@pytest.mark.parametrize(("command", "returncode", "reason"), [
    ("exit 3", 3, "exited with code 3"),
    ("kill -SEGV $$", -11, "crashed with a segmentation fault (SIGSEGV)"),
])
def test_a_reaped_sandbox_ends_as_its_process_did(monkeypatch, tmp_path, command, returncode, reason):
    """The reaper exits as the sandboxed process did, so heurist's reasons read the same with it as without."""
    import envs.sandbox

    monkeypatch.setattr(envs.sandbox.SandboxCgroups, "create", classmethod(lambda cls, limits: cls({})))
    ran = run_sandboxed(["/bin/sh", "-c", command], tmp_path, Limits(filesystem_isolation=False), timeout_s=60)
    assert (ran.returncode, ran.reason) == (returncode, reason)


def _sandbox_user_cannot_run_python() -> str | None:
    from envs.containment import _unprivileged_python_problem

    return _unprivileged_python_problem()


@pytest.mark.skipif("_sandbox_user_cannot_run_python()",
                    reason="the sandbox's user cannot run this Python without bubblewrap (heurist as root with a "
                           "Python under /root): a policy process cannot start unconfined here")
def test_a_daemon_a_policy_left_ends_with_its_pair_where_no_namespace_or_cgroup_would(monkeypatch, run_eval, tmp_path):
    """The policy process's own reaper (envs.policy_host --reap) ends the daemons its episodes detached when the pair
    closes, as the PID namespace and the cgroups do where they apply."""
    import envs.sandbox

    monkeypatch.setattr(envs.sandbox.SandboxCgroups, "create", classmethod(lambda cls, limits: cls({})))
    import shutil
    import tempfile

    pids = Path(tempfile.mkdtemp(prefix="heurist-daemons-"))  # where the sandbox's user can write (tmp_path is 0700)
    pids.chmod(0o777)
    daemons: list[int] = []
    try:
        policy = _fill("detaches_a_daemon.py", tmp_path, pids=pids)
        result = run_eval(policy, "CartPole-v1", episodes=2, max_steps=5,
                          limits=LIMITS.model_copy(update={"filesystem_isolation": False}))
        daemons = [int(mark.stem) for mark in pids.iterdir()]
        assert [e.status for e in result.episodes] == ["ok", "ok"], result.episodes[0].error
        assert len(daemons) == 2 and _still_running(daemons) == []
    finally:
        for pid in _still_running(daemons):
            os.kill(pid, 9)
        shutil.rmtree(pids, ignore_errors=True)
