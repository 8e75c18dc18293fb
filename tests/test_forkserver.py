"""Env processes forked from the warm fork server are what a fresh Python was: same secrets (none), same
descriptors, same group, same exit codes, same results; and when the fork server fails, evaluations go on."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from envs.forkserver import STATUS_LOST, ForkServer, ForkServerFailed, Stdio, Warm, kill_group
from envs.sandbox import HEURIST_ROOT, sandbox_env
from envs.tasks import get_task
from policies import RANDOM_POLICY, starter_policy

SECRET = "sk-forkserver-test-0123456789abcdef"


@pytest.fixture
def server(monkeypatch):
    """A fork server of its own, started while heurist's environment holds an API key."""
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    started = ForkServer()
    yield started
    started.close()


def _spawn(server: ForkServer, tmp_path, mode: str):
    """The probe forked with its report pipe passed under a number of its own; its log, its report."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    log = open(tmp_path / "log", "wb")
    report_r, report_w = os.pipe()
    proc = server.spawn("tests.forkserver_probe", [str(report_w), mode], sandbox_env(home), home, log.fileno(),
                        (report_w,))
    os.close(report_w)
    log.close()
    with os.fdopen(report_r, "rb") as report:
        data = report.read()
    return proc, json.loads(data) if data else None, home, report_w


def test_a_forked_env_process_has_no_secret_no_stray_descriptor_and_its_own_group(server, tmp_path):
    proc, report, home, report_w = _spawn(server, tmp_path, "exit0")
    assert proc.wait(timeout=60) == 0
    assert SECRET not in json.dumps(report["environ"]) and SECRET not in report["initial_environ"]
    assert report["environ"]["HOME"] == str(home) and report["tempdir"] == str(home) and report["cwd"] == str(home)
    # Exactly stdin, the log twice and the one descriptor passed, under the number it was passed as.
    assert sorted(report["fds"]) == sorted(["0", "1", "2", str(report_w)]), report["fds"]
    assert report["fds"]["0"] == "/dev/null" and report["fds"]["1"] == report["fds"]["2"] == str(tmp_path / "log")
    assert report["pgid"] == report["pid"] == proc.pid
    assert report["dumpable"] == 0  # no process of the same user can attach to it
    assert (tmp_path / "log").read_text() == "probe on stdout\nprobe on stderr\n"
    if os.geteuid() != 0:
        return  # the fork server cannot be traced, so only root reads its descriptors and environment
    # The fork server holds nothing of heurist's either: its socket, its wake-up pipe and its log.
    held = {os.readlink(f"/proc/{server.proc.pid}/fd/{n}") for n in os.listdir(f"/proc/{server.proc.pid}/fd")}
    assert all(h.startswith(("pipe:", "socket:", "/dev/null")) or h.endswith("(deleted)") for h in held), held
    assert SECRET.encode() not in open(f"/proc/{server.proc.pid}/environ", "rb").read()


@pytest.mark.parametrize("mode,code", [("exit3", 3), ("raise", 1)])
def test_exit_codes_come_back_as_a_fresh_pythons_would(server, tmp_path, mode, code):
    proc, report, _, _ = _spawn(server, tmp_path, mode)
    assert report is not None and proc.wait(timeout=60) == code
    if mode == "raise":
        assert "RuntimeError: the probe failed on purpose" in (tmp_path / "log").read_text()


def test_a_command_forked_with_its_own_stdio_ends_as_a_fresh_python_would(tmp_path):
    """The tests' warm ``heurist`` (tests/warm_cli.py): stdout and stderr apart, the child's $PYTHONPATH first on its
    import path, dumpable, and at the end its non-daemon threads joined, then its atexit handlers, then the exit
    code: all as a fresh Python gives them."""
    server = ForkServer(Warm("shell command", ("json",), environment="heurist"))
    extra = tmp_path / "extra"
    extra.mkdir()
    env = {**sandbox_env(tmp_path), "PYTHONPATH": os.pathsep.join([str(extra), str(HEURIST_ROOT)])}
    outputs = []
    try:
        for forked in (True, False):
            out, err = (open(tmp_path / f"{forked}.{name}", "w+b") for name in ("out", "err"))
            report_r, report_w = os.pipe()
            if forked:
                proc = server.spawn("tests.forkserver_probe", [str(report_w), "shell"], env, tmp_path, out.fileno(),
                                    (report_w,), Stdio(0, out.fileno(), err.fileno(), "probe-command"))
            else:
                proc = subprocess.Popen([sys.executable, "-P", "-m", "tests.forkserver_probe", str(report_w), "shell"],
                                        env=env, cwd=tmp_path, stdout=out, stderr=err, pass_fds=(report_w,))
            os.close(report_w)
            with os.fdopen(report_r, "rb") as report:
                data = json.loads(report.read())
            code = proc.wait(timeout=60)
            outputs.append((code, (tmp_path / f"{forked}.out").read_text(), (tmp_path / f"{forked}.err").read_text(),
                            data["path"], data["argv"][1:], data["dumpable"], data["pgid"] == data["pid"]))
            out.close()
            err.close()
            if forked:
                assert data["argv"][0] == "probe-command"
    finally:
        server.close()
    forked, fresh = outputs
    assert forked[:6] == fresh[:6]
    assert forked[0] == 5 and forked[1] == "probe on stdout\nthread finished\natexit handler ran\n"
    assert forked[2] == "probe on stderr\npool task ran\n" and forked[3] == [str(extra), str(HEURIST_ROOT)]
    assert forked[5] == 1  # traceable by its user, as a command is (an env process is not)
    assert forked[6]  # a group of its own, as every forked child


def test_a_group_kill_right_after_the_fork_reaches_the_child(server, tmp_path):
    """The fork server sets the child's group before it answers: a kill at once cannot miss."""
    home = tmp_path / "home"
    home.mkdir()
    report_r, report_w = os.pipe()
    proc = server.spawn("tests.forkserver_probe", [str(report_w), "wait"], sandbox_env(home), home, 2, (report_w,))
    os.close(report_w)
    os.killpg(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    os.close(report_r)


def _episodes(result):
    return [e.model_dump(exclude={"wall_s", "cpu_s"}) for e in result.episodes]


@pytest.mark.parametrize("task,policy,steps", [("CartPole-v1", None, None), ("ALE/Breakout-v5", RANDOM_POLICY, 300)])
def test_forked_and_fresh_env_processes_give_the_same_results(run_eval, monkeypatch, capfd, task, policy, steps):
    """Twice forked (the second time the fork server has imported the task's simulator) and once from a fresh
    Python: the same returns, lengths, events and traces."""
    fresh_shared_servers(monkeypatch)
    forked_pids = []
    spawn = ForkServer.spawn

    def counted(self, *args, **kwargs):
        child = spawn(self, *args, **kwargs)
        forked_pids.append(child.pid)
        return child

    monkeypatch.setattr(ForkServer, "spawn", counted)
    policy = policy or starter_policy(get_task(task))
    forked = [_episodes(run_eval(policy, task, episodes=3, workers=2, max_steps=steps)) for _ in range(2)]
    # Forked indeed: every env process of both evaluations came from the fork server, which never failed.
    assert len(forked_pids) >= 4 and ForkServer.shared() is not None
    assert "fork server" not in capfd.readouterr().err
    monkeypatch.setenv("HEURIST_FORK_SERVER", "0")
    fresh = _episodes(run_eval(policy, task, episodes=3, workers=2, max_steps=steps))
    assert forked[0] == forked[1] == fresh
    assert all(e["status"] == "ok" for e in fresh)


def fresh_shared_servers(monkeypatch) -> None:
    """This test's own shared fork servers, whatever earlier tests in this process did to theirs."""
    monkeypatch.setattr(ForkServer, "_shared", {})
    monkeypatch.setattr(ForkServer, "_shared_pid", None)
    monkeypatch.setattr(ForkServer, "_broken", set())


def test_a_dead_fork_server_is_replaced_by_fresh_pythons_and_the_evaluation_goes_on(run_eval, monkeypatch, capfd,
                                                                                    tmp_path):
    fresh_shared_servers(monkeypatch)
    server = ForkServer.shared()
    assert server is not None
    server.proc.kill()
    server.proc.wait()
    result = run_eval(starter_policy(get_task("CartPole-v1")), "CartPole-v1", episodes=2, workers=1)
    assert result.status == "complete" and all(e.status == "ok" for e in result.episodes)
    assert "the fork server of env processes failed" in capfd.readouterr().err
    assert ForkServer.shared() is None  # not tried again by this process
    other = ForkServer.shared(Warm("another kind", ()))  # each kind fails on its own (the report's, say)
    assert other is not None
    try:
        proc, report, _, _ = _spawn(other, tmp_path, "exit3")
        assert report is not None and proc.wait(timeout=60) == 3
    finally:
        other.close()


def test_a_stuck_fork_server_delays_no_wait_and_no_kill(server, tmp_path, monkeypatch):
    """A fork server that cannot answer (a preload that hangs, here stopped) still lets heurist kill an env process
    and learn that it ended, from the pidfd, without its exit code."""
    monkeypatch.setattr("envs.forkserver.STATUS_GRACE_S", 0.5)
    home = tmp_path / "home"
    home.mkdir()
    report_r, report_w = os.pipe()
    proc = server.spawn("tests.forkserver_probe", [str(report_w), "wait"], sandbox_env(home), home, 2, (report_w,))
    os.close(report_w)
    assert os.read(report_r, 1)  # it runs
    os.close(report_r)
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        assert proc.running()
        kill_group(proc)
        assert proc.wait() == STATUS_LOST and proc.status_lost
        assert not proc.running()
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


def test_a_fork_server_an_import_left_with_threads_refuses_to_fork(server, tmp_path):
    """A task whose module starts a thread at import: forking then could copy a held lock, so the fork server says
    no and heurist starts env processes itself (``start_process``)."""
    task = get_task("CartPole-v1").model_copy(update={"register_module": "tests.threaded_import"})
    server.preload(task.model_dump_json())
    with pytest.raises(ForkServerFailed, match="threads"):
        _spawn(server, tmp_path, "exit0")


def test_an_env_process_outliving_its_fork_server_is_still_waited_for_and_killed(server, tmp_path):
    """The fork server ends (given up by another thread, killed): its children's status pipes close, yet a child
    still running is seen as running, and is killed and reaped through its pidfd."""
    home = tmp_path / "home"
    home.mkdir()
    report_r, report_w = os.pipe()
    proc = server.spawn("tests.forkserver_probe", [str(report_w), "wait"], sandbox_env(home), home, 2, (report_w,))
    os.close(report_w)
    assert os.read(report_r, 1)
    os.close(report_r)
    server.kill()
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=0.2)  # not taken for ended because the fork server has
    assert proc.running()
    kill_group(proc)
    assert proc.wait() == STATUS_LOST and proc.status_lost and not proc.running()
