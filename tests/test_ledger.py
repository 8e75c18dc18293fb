"""The ledger is append-only: interruption, torn lines and concurrent writers lose nothing already recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from common.errors import LedgerError
from common.ledger import MAX_LINE_BYTES, Ledger, LedgerTail
from common.locks import held
from tests.test_cli import HEURIST


def test_kill_9_mid_evaluation_leaves_earlier_records_intact(tmp_path, slow_balancer):
    ledger_path = tmp_path / "ledger.jsonl"
    slow = slow_balancer(0.004)  # 2 s an episode: 8 episodes on 2 workers are still running at the kill
    done = subprocess.run([HEURIST, "eval", str(slow), "--env", "CartPole-v1", "--episodes", "1", "--json",
                           "--ledger", str(ledger_path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    before = ledger_path.read_bytes()

    proc = subprocess.Popen([HEURIST, "eval", str(slow), "--env", "CartPole-v1", "--episodes", "8", "--workers", "2",
                             "--ledger", str(ledger_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while ledger_path.read_bytes().count(b"\n") < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()

    after = ledger_path.read_bytes()
    assert after.startswith(before)  # nothing earlier was rewritten
    records, bad = Ledger(ledger_path).read()
    assert bad == 0
    assert [r["event"] for r in records] == ["eval_started", "eval_finished", "eval_started"]
    killed = records[-1]["eval_id"]
    assert not any(r.get("eval_id") == killed and r["event"] == "eval_finished" for r in records)

    again = subprocess.run([HEURIST, "eval", str(slow), "--env", "CartPole-v1", "--episodes", "1", "--json",
                            "--ledger", str(ledger_path)], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0
    assert ledger_path.read_bytes().startswith(after)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_a_stop_signal_records_the_interruption(tmp_path, slow_balancer, signum):
    """Ctrl-C, and the SIGTERM that `timeout`, systemd or a batch scheduler send (which before ended heurist at once,
    recording nothing and leaving the policy's copy and the sandbox's folders in the temp folder)."""
    ledger_path = tmp_path / "ledger.jsonl"
    temp = tmp_path / "tmp"
    temp.mkdir()
    slow = slow_balancer(0.5)  # 20 episodes of 500 steps: over an hour unless the signal stops it
    proc = subprocess.Popen([HEURIST, "eval", str(slow), "--env", "CartPole-v1", "--episodes", "20", "--workers", "1",
                             "--ledger", str(ledger_path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "TMPDIR": str(temp)})
    try:
        deadline = time.monotonic() + 120  # a hang guard: the wait is for an event
        while not _policy_process_under(proc.pid):  # an episode is under way: the evaluation is past its start
            assert proc.poll() is None and time.monotonic() < deadline, "no policy process started"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=20)  # stops now, not when the episode in flight ends
    finally:  # a failed test does not leave an hour-long evaluation behind
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signum and "Traceback" not in stderr, stderr
    records, _ = Ledger(ledger_path).read()
    assert [r["event"] for r in records] == ["eval_started", "eval_interrupted"]
    assert "KeyboardInterrupt" in records[1]["reason"]
    if signum == signal.SIGTERM:
        assert "SIGTERM" in records[1]["reason"]
    assert not list(temp.iterdir())  # the policy's copy and the sandbox's folders are gone


def _policy_process_under(root: int) -> bool:
    """Whether a descendant of ``root`` runs a policy (envs.policy_host), which only the evaluation's episodes start."""
    parents, policies = {}, set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parents[int(stat.parent.name)] = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            if b"envs.policy_host" in (stat.parent / "cmdline").read_bytes():
                policies.add(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    for pid in policies:
        while pid in parents and pid != root:
            pid = parents[pid]
        if pid == root:
            return True
    return False


def test_a_torn_last_line_is_skipped_and_never_merged_into_the_next(tmp_path):
    ledger = Ledger(tmp_path / "l.jsonl")
    ledger.append({"event": "a", "n": 1})
    with open(ledger.path, "ab") as fh:
        fh.write(b'{"event": "b", "n"')  # a crash mid-write
    ledger.append({"event": "c", "n": 3})
    records, bad = ledger.read()
    assert [r["event"] for r in records] == ["a", "c"] and bad == 1


def test_a_fifo_a_device_or_a_line_without_end_is_no_ledger_a_reader_waits_on(tmp_path):
    """A run directory from elsewhere (a red-team review, 2026-12-05): a FIFO as the ledger or the run's lock hung
    `heurist show` and `transcripts` until someone wrote to it; a ledger linked to /dev/zero, or a line gigabytes
    long, was read whole into memory."""
    fifo = tmp_path / "fifo.jsonl"
    os.mkfifo(fifo)
    zero = tmp_path / "zero.jsonl"
    zero.symlink_to("/dev/zero")
    for path in (fifo, zero):
        with pytest.raises(LedgerError, match="not a regular file"):
            Ledger(path).read()
        with pytest.raises(LedgerError, match="not a regular file"):
            LedgerTail(Ledger(path)).read()
    assert held(fifo) is False  # no process's lock, and no wait for a writer
    long = tmp_path / "long.jsonl"
    with open(long, "wb") as file:
        file.write(b'{"event": "a"}\n' + b"x" * (MAX_LINE_BYTES + (3 << 20)) + b'\n{"event": "b"}\n')
    assert Ledger(long).read() == ([{"event": "a"}, {"event": "b"}], 1)
    tail = LedgerTail(Ledger(long))
    assert tail.read() == ([{"event": "a"}, {"event": "b"}], 1)
    growing = tmp_path / "growing.jsonl"  # read while the too-long line is still without its end
    growing.write_bytes(b'{"event": "a"}\n' + b"x" * (MAX_LINE_BYTES + 5))
    tail = LedgerTail(Ledger(growing))
    assert tail.read() == ([{"event": "a"}], 1)
    with open(growing, "ab") as file:
        file.write(b'yyy\n{"event": "b"}\n')
    assert tail.read() == ([{"event": "a"}, {"event": "b"}], 1)


def test_a_ledger_read_as_it_grows_parses_each_line_once_and_gives_what_a_whole_read_gives(tmp_path):
    """A campaign's driver reads its ledger several times per run it starts or ends: it parses the new lines
    only, and reads what ``Ledger.read`` reads, a line still being written once it is whole."""
    ledger = Ledger(tmp_path / "l.jsonl")
    parsed: list[int] = []

    def parse(record: dict):
        parsed.append(record["n"])
        return record if record["event"] != "foreign" else None  # a line the reader leaves out

    tail = LedgerTail(ledger, parse)
    assert tail.read() == ([], 0)  # no file yet
    ledger.append({"event": "a", "n": 1})
    ledger.append({"event": "foreign", "n": 2})
    assert tail.read() == ([{"event": "a", "n": 1}], 0) and parsed == [1, 2]
    with open(ledger.path, "ab") as fh:
        fh.write(b'{"event": "b", "n": 3')  # being written: not yet a line
    assert tail.read() == ([{"event": "a", "n": 1}], 0) and parsed == [1, 2]
    with open(ledger.path, "ab") as fh:
        fh.write(b'}\n')
    assert [r["n"] for r in tail.read()[0]] == [1, 3] and parsed == [1, 2, 3]
    with open(ledger.path, "ab") as fh:
        fh.write(b'{"event": "c", "n"')  # torn by a crash: the next append ends it, and it counts as unreadable
    ledger.append({"event": "d", "n": 5})
    records, bad = tail.read()
    assert [r["n"] for r in records] == [1, 3, 5] and bad == 1 and parsed == [1, 2, 3, 5]
    whole, whole_bad = ledger.read()
    assert [r for r in whole if r["event"] != "foreign"] == records and whole_bad == bad
    records.append({"event": "mine", "n": 7})  # a new list each time: what a reader adds to its list stays there
    assert len(tail.read()[0]) == 3
    # A file replaced by another (never by heurist: a ledger is append-only) is read again from its start.
    replacement = tmp_path / "other.jsonl"
    replacement.write_text('{"event": "e", "n": 6}\n')
    os.replace(replacement, ledger.path)
    assert [r["n"] for r in tail.read()[0]] == [6]
    ledger.path.unlink()
    assert tail.read() == ([], 0)


WRITER = textwrap.dedent('''
    import sys
    from common.ledger import Ledger
    ledger = Ledger(sys.argv[1])
    for i in range(300):
        ledger.append({"event": "w", "writer": sys.argv[2], "i": i, "pad": "x" * 5000})
''')


def test_two_writer_processes_lose_nothing(tmp_path):
    path = tmp_path / "l.jsonl"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name]) for name in ("A", "B")]
    for proc in procs:
        assert proc.wait(timeout=120) == 0
    records, bad = Ledger(path).read()
    assert bad == 0 and len(records) == 600
    for name in ("A", "B"):
        assert [r["i"] for r in records if r["writer"] == name] == list(range(300))
    assert all(json.dumps(r) for r in records)


# Lines as earlier versions of heurist wrote them (fields were added over time), and one no version wrote.
OLDER_LINES = [
    {"event": "eval_finished", "time": "2026-11-20T10:00:00.000+00:00", "eval_id": "e1", "task": "CartPole-v1",
     "protocol": "standard", "split": "dev", "seeds": [0, 1], "policy": "/p.py", "policy_sha256": "a" * 64,
     "status": "complete", "episodes": 2, "episodes_failed": 0, "mean": 9.5, "std": 0.5, "median": 9.5, "min": 9.0,
     "max": 10.0, "ci95": [3.1, 15.9], "hns_mean": None, "target": 475.0, "env_steps": 19, "wall_s": 0.2,
     "failures": {"pole_fell": 2}, "clips": [],
     "per_episode": [{"seed": 0, "status": "ok", "return": 9.0, "length": 9, "error": None},
                     {"seed": 1, "status": "ok", "return": 10.0, "length": 10, "error": None}]},
    {"event": "tests_run", "time": "2026-11-20T10:00:01.000+00:00", "run_id": "r", "iteration": 1, "passed": True,
     "reason": "all 1 accepted test files passed", "env_steps": 7, "wall_s": 1.5},
    {"event": "iteration", "time": "2026-11-20T10:00:02.000+00:00", "run_id": "r", "iteration": 1,
     "accepted": False, "reason": "no gain", "edit": "tune", "mean_before": 9.5, "mean_candidate": 9.0,
     "mean_after": 9.5, "commit": None, "tests_added": [], "verdict": None, "policy_sha256": "a" * 64,
     "spent": {"env_steps": 26}},
    {"event": "run_paused", "time": "2026-11-20T10:00:03.000+00:00", "run_id": "r", "reason": "model down"},
    {"event": "run_exploded", "time": "2026-11-20T10:00:04.000+00:00", "run_id": "r"},
]


def test_ledgers_written_by_earlier_versions_are_read_whole(tmp_path):
    from common.events import EvalFinished, IterationDone, RunPaused, TestsRun, read_events

    ledger = Ledger(tmp_path / "ledger.jsonl")
    for line in OLDER_LINES:
        ledger.append(line)
    events, bad = read_events(ledger)
    assert bad == 1  # the event no version wrote is counted as damaged, never guessed at
    finished, tests, iteration, paused = events
    assert isinstance(finished, EvalFinished) and finished.clip_env_steps == 0 and finished.ci95 == (3.1, 15.9)
    assert isinstance(tests, TestsRun) and tests.env_steps == 7 and tests.files == {}
    assert isinstance(iteration, IterationDone) and iteration.baseline_sha256 is None and iteration.diff == ""
    assert isinstance(paused, RunPaused) and paused.iteration is None


def test_a_write_cut_short_by_a_kill_leaves_no_temp_file_once_the_run_is_resumed(tmp_path):
    """A kill between atomic_write's temp file and its rename leaves the temp file beside the whole old file;
    taking the run's lock (every start and resume does) removes such files, and only those."""
    import tempfile

    from store.rundir import locked

    run_dir = tmp_path / "run"
    (run_dir / "evals").mkdir(parents=True)
    (run_dir / "workspace" / ".git").mkdir(parents=True)
    (run_dir / "evals" / "a.json").write_text("{}")
    fd, torn = tempfile.mkstemp(prefix=".a.json.", suffix=".tmp", dir=run_dir / "evals")  # as atomic_write names it
    os.write(fd, b'{"half')
    os.close(fd)
    gits = run_dir / "workspace" / ".git" / ".index.abcdefgh.tmp"
    gits.write_text("git's own")
    theirs = run_dir / ".notes.tmp"  # not a name atomic_write makes
    theirs.write_text("someone's")
    with locked(run_dir):
        assert not os.path.exists(torn)
    assert gits.exists() and theirs.exists() and (run_dir / "evals" / "a.json").read_text() == "{}"


def test_a_page_written_while_a_resume_takes_the_lock_is_written_whole(tmp_path, monkeypatch):
    """`heurist report RUN_DIR` writes without the run's lock; a resume taking the lock meanwhile sweeps the temp
    files of torn writes. A write in progress holds its temp file's flock and is left alone; one swept between its
    temp file and that flock is written again (before, the report failed once)."""
    import fcntl
    import tempfile

    from common import files
    from store.rundir import locked

    run_dir = tmp_path / "run"
    (run_dir / "report").mkdir(parents=True)
    fd, writing = tempfile.mkstemp(prefix=".index.html.", suffix=".tmp", dir=run_dir / "report")
    fcntl.flock(fd, fcntl.LOCK_EX)  # as atomic_write holds it until its rename
    with locked(run_dir):
        assert os.path.exists(writing)
    os.close(fd)
    with locked(run_dir):  # its writer gone, it is a torn write
        assert not os.path.exists(writing)

    real_fsync, swept = os.fsync, []

    def sweep_first(fileno):  # the resume's sweep, at the worst moment: before this write held its temp file
        real_fsync(fileno)
        if not swept:
            for temp in (run_dir / "report").glob(".index.html.*.tmp"):
                temp.unlink()
                swept.append(temp)

    monkeypatch.setattr(files.os, "fsync", sweep_first)
    files.atomic_write(run_dir / "report" / "index.html", "<p>whole</p>")
    assert swept and (run_dir / "report" / "index.html").read_text() == "<p>whole</p>"
    assert not list((run_dir / "report").glob("*.tmp"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stopped_run_says_so_once_with_the_whole_command_to_continue(tmp_path, slow_balancer, signum):
    """One line, unwrapped: it said "interrupted" twice (the run's line, then the command's), and a pipe's 80 columns
    split the path to resume from the command that takes it."""
    slow = slow_balancer(0.5)  # 500 steps an episode: the first evaluation is still running when the signal comes
    (tmp_path / "run.toml").write_text("report = false\n[eval]\nepisodes = 2\nholdout = false\nvideo = false\n")
    run_dir = tmp_path / ("a run directory with a name long enough that eighty columns cannot hold the line " * 2)
    proc = subprocess.Popen([HEURIST, "run", "--env", "CartPole-v1", "--policy", str(slow), "--config",
                             str(tmp_path / "run.toml"), "--iterations", "1", "--run-dir", str(run_dir),
                             "--no-progress"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,
                            env={**os.environ, "HEURIST_HOME": str(tmp_path / "home"), "COLUMNS": "80"})
    try:
        deadline = time.monotonic() + 120  # a hang guard: the wait is for an event
        while not _policy_process_under(proc.pid):  # the run's first evaluation is under way
            assert proc.poll() is None and time.monotonic() < deadline, "no policy process started"
            time.sleep(0.05)
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signum and "Traceback" not in stderr, stderr
    said = [line for line in stderr.splitlines() if "interrupted" in line]
    assert said == [f"interrupted; nothing recorded is lost. Continue with: heurist resume {run_dir.resolve()}"], stderr
