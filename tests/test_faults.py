"""Faults an overnight run must survive and lose nothing to: kill -9 again and again, a full disk, a
read-only file system. Each is followed by ``heurist resume`` and a check of everything recorded:
the ledger, the workspace's git history, the memory, the transcripts and the checkpoints."""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from common.ledger import Ledger
from tests.offline_runs import heurist, lost_or_repeated
from tests.test_cli import HEURIST

KILLS = 10


def _start(command: list, env: dict) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)


def _work_done(ledger: Ledger) -> int:
    """Ledger records of finished work: not a resume's own line, nor the start of an evaluation (killing
    every start within a second of its `eval_started` would kill the same evaluation forever)."""
    return sum(r["event"] not in ("run_resumed", "eval_started") for r in ledger.read()[0])


def _evaluations_done(ledger: Ledger) -> int:
    return sum(r["event"] == "eval_finished" for r in ledger.read()[0])


def _iterations_done(ledger: Ledger) -> int:
    return sum(r["event"] == "iteration" for r in ledger.read()[0])


def _wait_for(condition, proc: subprocess.Popen, timeout: float) -> bool:
    """Poll until ``condition()`` holds; False if the process ended first or time ran out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _lock_released(run_dir: Path) -> bool:
    """Whether no process holds the run's lock any more (a killed run's last holder has gone)."""
    if not (run_dir / ".lock").exists():
        return True
    fd = os.open(run_dir / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


# Waits are on events (progress in the ledger, the lock released); these bounds only stop a hang, so they are
# far above what a loaded machine needs, and the test's own timeout is raised to match. Eleven starts of heurist
# (about 76 CPU seconds, the suite's longest test): a slow test, which .ci/run runs after the suite.
@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_ten_kill_9s_in_one_run_then_resume_lose_and_repeat_nothing(home):
    """Each start makes some progress (a finished evaluation, test run or iteration), then heurist and
    all its workers get SIGKILL after a random delay, so the kills land in evaluations, searches, test
    runs, commits and memory writes across the iterations."""
    tmp, env = home
    iterations = 4
    # No HTML report: it is a view (tests/test_report.py), and its child process per iteration costs seconds here.
    (tmp / "run.toml").write_text(f'report = false\n[budget]\niterations = {iterations}\nstop_when = "never"\n'
                                  f'patience = {iterations}\n'
                                  '[eval]\nepisodes = 8\nvideo = false\nholdout = false\n'
                                  '[search]\npopulation = 6\nseed = 4\n')
    seed = int(os.environ.get("HEURIST_KILL_SEED", "7"))
    rng = random.Random(seed)
    run_dir = tmp / "run"
    ledger = Ledger(run_dir / "ledger.jsonl")
    command = [HEURIST, "run", "--env", "CartPole-v1", "--policy", str(tmp / "weak.py"), "--config",
               str(tmp / "run.toml"), "--run-dir", str(run_dir), "--no-progress"]
    killed_after: list[str] = []
    while len(killed_after) < KILLS:
        before = _work_done(ledger)
        # Spread over the run: the k-th kill waits until k * iterations / KILLS iterations are done.
        due = len(killed_after) * iterations // KILLS
        proc = _start(command, env)
        progressed = _wait_for(lambda: _work_done(ledger) > before and _iterations_done(ledger) >= due, proc,
                               timeout=900)
        if progressed:
            time.sleep(rng.uniform(0.0, 0.8))
        if proc.poll() is not None:
            break  # it finished (or failed) before being killed: checked below
        os.killpg(proc.pid, signal.SIGKILL)  # heurist and its workers, as a crash or the OOM killer would
        proc.wait()
        # The resume must not find the lock still held by a process the kernel has not reaped yet.
        deadline = time.monotonic() + 120
        while not _lock_released(run_dir) and time.monotonic() < deadline:
            time.sleep(0.05)
        killed_after.append(ledger.read()[0][-1]["event"])
        command = [HEURIST, "resume", str(run_dir), "--no-progress"]
    assert len(killed_after) == KILLS, (f"the run ended after {len(killed_after)} kills (HEURIST_KILL_SEED={seed}): "
                                        f"{proc.returncode} {proc.stderr.read().decode()[-2000:]}")
    done = heurist(env, "resume", run_dir, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    records, _ = ledger.read()
    assert sum(r["event"] == "run_resumed" for r in records) == KILLS  # every resume continued the run
    finished_before_kill, finished = [], 0
    for r in records:
        finished += r["event"] == "iteration"
        if r["event"] == "run_resumed":
            finished_before_kill.append(finished)
    assert finished_before_kill == sorted(finished_before_kill) and len(set(finished_before_kill)) == iterations, \
        f"kills not spread over the iterations: {finished_before_kill}"
    assert lost_or_repeated(run_dir, tmp / "home" / "memory", iterations) == []


@pytest.fixture
def small_disk(tmp_path):
    """A tmpfs of its own, to fill up and to make read-only while heurist writes to it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): filling a disk needs root")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], capture_output=True)


def _fill(disk: Path) -> Path:
    filler = disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * (1 << 20))
                fh.flush()
        except OSError:
            pass
    return filler


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], check=True, capture_output=True)


def _read_only_over(path: Path) -> None:
    """Make one file read-only under a running process (a whole file system cannot be remounted
    read-only while files on it are open for writing): a read-only bind mount over it."""
    _mount("--bind", str(path), str(path))
    _mount("-o", "remount,bind,ro", str(path))


# Four starts of heurist, 27 CPU-seconds: slow (`make test-slow`, which .ci/run runs after the suite).
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_a_full_disk_then_a_read_only_one_stop_the_run_cleanly_and_resume_finishes_it(home, small_disk):
    """The run directory and $HEURIST_HOME (memory, the runs index) both live on the small disk: it
    fills up mid-run, then the ledger turns read-only mid-run, then the whole disk is read-only at a
    resume; each stops cleanly in one line, and the last resume finishes the run with nothing lost."""
    tmp, env = home
    env["HEURIST_HOME"] = str(small_disk / "home")
    iterations = 2
    (tmp / "run.toml").write_text(f'[budget]\niterations = {iterations}\nstop_when = "never"\npatience = {iterations}\n'
                                  '[eval]\nepisodes = 8\nvideo = false\nholdout = false\n'
                                  '[search]\npopulation = 6\nseed = 4\n')
    run_dir = small_disk / "run"
    ledger = Ledger(run_dir / "ledger.jsonl")

    def stops_cleanly(command: list, fault) -> None:
        finished = _evaluations_done(ledger)
        proc = _start(command, env)
        assert _wait_for(lambda: _evaluations_done(ledger) > finished, proc, 120)  # the fault lands mid-run
        fault()
        _, stderr = proc.communicate(timeout=120)
        lines = stderr.decode().strip().splitlines()
        assert proc.returncode == 2, stderr.decode()[-3000:]
        assert lines[-1].startswith("error: the run cannot go on: it could not write (")
        assert f"heurist resume {run_dir}" in lines[-1] and "Traceback" not in stderr.decode()
        assert ledger.read()[1] == 0  # no torn line
        assert [r["status"] for r in json.loads(heurist(env, "runs", "--json").stdout)] == ["stopped (resume it)"]

    filler: list[Path] = []

    def fill_disk() -> None:
        filler.append(_fill(small_disk))

    stops_cleanly([HEURIST, "run", "--env", "CartPole-v1", "--policy", str(tmp / "weak.py"), "--config",
                   str(tmp / "run.toml"), "--run-dir", str(run_dir), "--no-progress"], fill_disk)
    filler[0].unlink()

    stops_cleanly([HEURIST, "resume", str(run_dir), "--no-progress"], lambda: _read_only_over(run_dir / "ledger.jsonl"))
    subprocess.run(["umount", str(run_dir / "ledger.jsonl")], check=True)

    _mount("-o", "remount,ro", str(small_disk))  # the whole disk, with nothing running
    refused = heurist(env, "resume", run_dir)  # refused at once, in one line
    assert refused.returncode == 2 and "Read-only file system" in refused.stderr, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    _mount("-o", "remount,rw", str(small_disk))

    done = heurist(env, "resume", run_dir, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert lost_or_repeated(run_dir, small_disk / "home" / "memory", iterations) == []


def test_a_kill_between_a_nodes_writes_and_its_checkpoint_is_resumed(home):
    """LangGraph saves a node's writes, then the step's checkpoint; a kill between the two leaves a checkpoint
    whose only task is done and whose `next` is empty. That is not the end of the run: resume applies the
    writes and goes on. (Seen in the ten-kill test, where resume used to exit 0 and do nothing.) Made here
    by taking back the checkpoints after the last `remember`, the moment before `finish`."""
    tmp, env = home
    (tmp / "run.toml").write_text('report = false\n[budget]\niterations = 1\nstop_when = "never"\n'
                                  '[eval]\nepisodes = 4\nvideo = false\nholdout = false\n'
                                  '[search]\npopulation = 2\ngenerations = 1\nseed = 1\n')
    run_dir = tmp / "run"
    done = heurist(env, "run", "--env", "CartPole-v1", "--policy", tmp / "weak.py", "--config", tmp / "run.toml",
                   "--run-dir", run_dir, "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]
    with sqlite3.connect(run_dir / "checkpoints.sqlite") as db:
        step = "json_extract(CAST(metadata AS TEXT), '$.step')"
        remember_step = db.execute(f"SELECT {step} FROM checkpoints c JOIN writes w USING (checkpoint_id) "
                                   "WHERE w.channel = 'branch:to:finish'").fetchone()[0]  # remember's edge
        db.execute(f"DELETE FROM checkpoints WHERE {step} > ?", (remember_step,))
        db.execute("DELETE FROM writes WHERE checkpoint_id NOT IN (SELECT checkpoint_id FROM checkpoints)")
    (run_dir / "summary.json").unlink()  # finish had not run yet
    resumed = heurist(env, "resume", run_dir, "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records, _ = Ledger(run_dir / "ledger.jsonl").read()
    assert [r["at"] for r in records if r["event"] == "run_resumed"] == [["remember"]]
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"  # finish ran
    memory = Path(json.loads((run_dir / "run.json").read_text())["config"]["memory"]["path"])
    assert lost_or_repeated(run_dir, memory, 1) == []


def test_a_checkpoint_that_names_code_is_not_run_by_resume(home):
    """LangGraph's checkpoint serializer rebuilt any object a checkpoint named, by importing its module and calling
    it: a checkpoints.sqlite edited to hold ``os.system("...")`` ran the command on `heurist resume` (a red-team
    review, 2026-12-05). Checkpoints are read with the allowlist of plain types only (heurist's state is plain data)."""
    import ormsgpack
    from langgraph.checkpoint.serde import jsonplus

    tmp, env = home
    (tmp / "run.toml").write_text('report = false\n[budget]\niterations = 1\nstop_when = "never"\n'
                                  '[eval]\nepisodes = 4\nvideo = false\nholdout = false\n'
                                  '[search]\npopulation = 2\ngenerations = 1\nseed = 1\n')
    run_dir, proof = tmp / "run", tmp / "a command ran"
    done = heurist(env, "run", "--env", "CartPole-v1", "--policy", tmp / "weak.py", "--config", tmp / "run.toml",
                   "--run-dir", run_dir, "--no-progress")
    assert done.returncode == 0, done.stderr[-2000:]

    class Planted:
        pass

    def default(value):
        if isinstance(value, Planted):
            return ormsgpack.Ext(jsonplus.EXT_CONSTRUCTOR_POS_ARGS,
                                 ormsgpack.packb(["os", "system", [f"touch '{proof}'"]]))
        return jsonplus._msgpack_default(value)

    serde = jsonplus.JsonPlusSerializer()
    with sqlite3.connect(run_dir / "checkpoints.sqlite") as db:
        for thread, checkpoint_id, kind, blob in db.execute(
                "SELECT thread_id, checkpoint_id, type, checkpoint FROM checkpoints").fetchall():
            checkpoint = serde.loads_typed((kind, blob))
            checkpoint["channel_values"]["stop_reason"] = Planted()
            db.execute("UPDATE checkpoints SET checkpoint = ? WHERE thread_id = ? AND checkpoint_id = ?",
                       (ormsgpack.packb(checkpoint, default=default, option=jsonplus._option), thread, checkpoint_id))
    heurist(env, "resume", run_dir, "--no-progress")
    assert not proof.exists()


def test_git_failing_on_a_full_disk_is_a_storage_failure(small_disk):
    """A full disk can land while git writes the workspace (its objects, its index): git says so in its own words
    ("write error. Out of diskspace" among them), and the run must stop with the same clean line as for any other
    write, not with git's error. Real git, on a disk that is really full."""
    from store.rundir import storage_failure
    from store.workspace import Workspace, WorkspaceError

    workspace = Workspace(small_disk / "run" / "workspace")
    first = workspace.create("class Policy:\n    pass\n", {})
    workspace.policy.write_text("class Policy:\n    edited = True\n")  # a candidate, as a rollback finds it
    _fill(small_disk)
    with pytest.raises(WorkspaceError) as failed:  # the rollback of the CI run that found this
        workspace.git("reset", "-q", "--hard", first)
    assert storage_failure(failed.value, small_disk / "run") is not None, str(failed.value)
    assert storage_failure(WorkspaceError("git log failed in /x: fatal: bad revision 'nope'"), small_disk) is None
