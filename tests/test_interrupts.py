"""A Ctrl-C stops a heurist process soon: one the kernel gave a thread other than the main one, one a library
swallowed, and one that comes while sandboxed tests run on other threads (``common/interrupts.py``).

Each case runs in a process of its own, given a real SIGINT. What it waits for would take 600 s; the process must
end long before (the limits below are only there so a regression fails rather than hangs)."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap

import pytest

from common import interrupts

ENDS_WITHIN_S = 120  # far above the ~0.2 s it takes, far below the 600 s the waits would take without the fix


def _start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(script), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    try:
        out, err = proc.communicate(timeout=ENDS_WITHIN_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the Ctrl-C did not stop the process")
    assert proc.returncode == 130, err
    return out


ELSEWHERE = '''
    import signal, sys, threading
    from envs.scheduling import on_threads

    release = threading.Event()
    threading.Thread(target=release.wait, daemon=True).start()  # SIGINT unblocked here: the kernel picks this thread
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})  # blocked in the main thread and those it starts
    try:
        print("ready", flush=True)
        on_threads([lambda: release.wait(600)], release.set)  # an evaluation whose episodes take 600 s
    except KeyboardInterrupt:
        sys.exit(130)
'''


def test_a_ctrl_c_another_thread_took_still_stops_an_evaluation():
    # As under load, when a thread that has just spawned a worker takes the process's SIGINT: the main thread,
    # waiting for the evaluation's threads, is not woken by it.
    proc = _start(ELSEWHERE)
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    _finish(proc)


SWALLOWED = '''
    import os, signal, sys, threading, time
    from common import interrupts
    from envs.scheduling import on_threads

    with interrupts.remembering():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(60)
        except KeyboardInterrupt:
            pass  # as an optional import does, when the Ctrl-C came during the import it guards
        print("swallowed", flush=True)
        release = threading.Event()
        try:
            on_threads([lambda: release.wait(600)], release.set)
        except KeyboardInterrupt:
            sys.exit(130)
'''


def test_a_swallowed_ctrl_c_still_stops_the_process_at_its_next_wait():
    assert _finish(_start(SWALLOWED)) == "swallowed\n"


SANDBOXED = '''
    import sys
    from concurrent.futures import ThreadPoolExecutor
    from pathlib import Path
    from common import interrupts
    from envs.limits import Limits
    from envs.sandbox import run_sandboxed

    import os, select
    with interrupts.remembering():
        pool = ThreadPoolExecutor(1)
        running_r, running_w = os.pipe()  # the sandboxed process writes a byte once it runs
        future = pool.submit(run_sandboxed, [sys.executable, "-c", f"import os, time; os.write({running_w}, b'x'); "
                             "time.sleep(600)"], Path(sys.argv[1]), Limits(), 900, pass_fds=(running_w,))
        try:
            assert select.select([running_r], [], [], 120)[0] and os.read(running_r, 1) == b"x"  # a hang guard
            print("ready", flush=True)
            with pool:  # as verify's test files: their threads are joined before the Ctrl-C goes on
                interrupts.results([future])
        except KeyboardInterrupt:
            print(f"{type(future.exception()).__name__}: {future.exception()}", flush=True)
            sys.exit(130)
'''


def test_a_ctrl_c_stops_sandboxed_tests_that_other_threads_wait_for(tmp_path):
    proc = _start(SANDBOXED, str(tmp_path))
    assert proc.stdout.readline() == "ready\n"
    proc.send_signal(signal.SIGINT)
    assert _finish(proc) == "KeyboardInterrupt: Ctrl-C: the sandboxed process group was killed\n"


LOCKS_LEFT_HELD = '''
    import signal, sys, threading, time
    from concurrent.futures import Future
    from common import interrupts

    interrupts.POLL_S = 0.0  # through concurrent.futures.wait over and over: most of the time inside its locks
    main = threading.main_thread().ident
    armed = threading.Event()

    def shoot():
        while True:
            armed.wait()
            time.sleep(0.001)
            armed.clear()
            signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=shoot, daemon=True).start()
    for round in range(40):
        futures = [Future() for _ in range(300)]  # never done but by the thread below: the wait goes on until a Ctrl-C
        try:
            armed.set()
            interrupts.results(futures)
        except KeyboardInterrupt:
            pass
        else:
            sys.exit("results came back without them")
        while armed.is_set():
            time.sleep(0.001)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
        # As a worker thread ends its task: if the Ctrl-C left a future's condition held, this blocks for ever.
        finish = threading.Thread(target=lambda: [future.set_result(None) for future in futures], daemon=True)
        finish.start()
        finish.join(30)
        if finish.is_alive():
            sys.exit(f"round {round}: a future's lock was left held by the Ctrl-C")
    print("40 Ctrl-Cs, no lock left held", flush=True)
'''


def test_a_ctrl_c_during_the_wait_for_futures_leaves_none_of_their_locks_held():
    # concurrent.futures.wait takes each future's condition in a loop; a KeyboardInterrupt between two of its steps
    # left one held, so the sandboxed test's thread could not record its result and the Ctrl-C hung (one suite run
    # in many). Before common.interrupts.deferred, a lock stayed held in about one Ctrl-C in four here.
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(LOCKS_LEFT_HELD)], capture_output=True, text=True,
                          timeout=ENDS_WITHIN_S)
    assert (proc.stdout, proc.returncode) == ("40 Ctrl-Cs, no lock left held\n", 0), proc.stderr


DEFERRED = '''
    import os, signal, sys
    from common import interrupts

    for signum in (signal.SIGINT, signal.SIGTERM):
        with interrupts.remembering():  # a command each: the second signal would repeat the first's stop
            try:
                with interrupts.deferred():
                    os.kill(os.getpid(), signum)
                    for _ in range(1000):  # bytecode boundaries enough for the handler to have run
                        pass
                    print("block ran on", interrupts.received.is_set(), flush=True)
            except KeyboardInterrupt as stop:
                print("raised at its end:", stop, flush=True)
            print(signal.getsignal(signal.SIGINT) is interrupts.on_sigint,
                  signal.getsignal(signal.SIGTERM) is interrupts.on_stop_signal, flush=True)
        for taken in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # as they were after a stop: set back
            signal.signal(taken, signal.default_int_handler if taken == signal.SIGINT else signal.SIG_DFL)
    with interrupts.remembering():
        with interrupts.deferred():
            pass
        print("a quiet block raises nothing", flush=True)
'''


def test_a_stop_signal_in_a_deferred_block_is_raised_at_its_end_by_the_handler_it_had():
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(DEFERRED)], capture_output=True, text=True,
                          timeout=ENDS_WITHIN_S)
    assert proc.stdout.splitlines() == [
        "block ran on True", "raised at its end: ", "True True",
        "block ran on True", "raised at its end: stopped by SIGTERM", "True True",
        "a quiet block raises nothing"], proc.stderr


SIGNAL_IN_A_HANDLER = '''
    import faulthandler, os, signal, sys
    from common import interrupts

    faulthandler.dump_traceback_later(60, exit=True)  # a hang guard: the process ends, with where it hung
    sent = []

    def second_signal_at_every_call(frame, event, arg):
        # A signal at each function the handler calls, while it runs: its handler then runs inside the first's.
        caller = frame.f_back
        while caller is not None and caller.f_code.co_name not in ("on_sigint", "on_stop_signal"):
            caller = caller.f_back
        if event == "call" and caller is not None and len(sent) < 20:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGTERM if len(sent) % 2 else signal.SIGINT)

    with interrupts.remembering():
        try:
            with interrupts.deferred():
                sys.setprofile(second_signal_at_every_call)
                os.kill(os.getpid(), signal.SIGINT)
                for _ in range(1000):
                    pass
                sys.setprofile(None)
        except KeyboardInterrupt as stop:
            sys.setprofile(None)
            print(f"came out after {len(sent)} signals more", flush=True)
'''


def test_signals_that_come_while_a_handler_runs_are_taken_in_turn():
    # Two signals close together (a double Ctrl-C; a Ctrl-C to the process group and a supervisor's SIGTERM): the
    # second's handler runs inside the first's. Setting `received` once took an Event's lock, which is not
    # re-entrant, and the second handler waited on it for ever (a red-team review's finding, 2026-12-06).
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SIGNAL_IN_A_HANDLER)], capture_output=True,
                          text=True, timeout=ENDS_WITHIN_S)
    came_out = re.fullmatch(r"came out after (\d+) signals more\n", proc.stdout)
    assert came_out and int(came_out[1]) >= 1, proc.stdout + proc.stderr  # the KeyboardInterrupt came out, no hang


SECOND_CTRL_C_WHILE_STOPPING = '''
    import faulthandler, os, signal, sys, threading, time
    from common import interrupts
    from envs import scheduling
    from envs.scheduling import Schedule, Scheduler

    faulthandler.dump_traceback_later(60, exit=True)  # a hang guard: the process ends, with where it hung

    class Pair:  # a worker pair whose episodes never end
        def started(self, slot): return False
        def clear_steps(self, slot): pass
        def send_group(self, jobs): pass
        def receive(self, timeout): time.sleep(min(timeout, 0.05)); return None
        def steps_in(self, slots): return 0
        def steps_taken(self, slot=0): return 0
        def setup_runs(self): return 0
        def kill(self): pass
        def close(self): pass

    plan = Schedule(seeds=list(range(8)), workers=2, width=1, episode_timeout_s=600, episode_cpu_s=600,
                    deadline=time.perf_counter() + 3600, eval_timeout_s=3600, job=lambda seed, slot: {},
                    start_worker=lambda cpu: Pair(), stagger_s=600)  # the later pair waits on `drained`
    scheduler = Scheduler(plan)
    scheduling.pair_cpus = lambda n: list(range(n))
    drained = scheduler.drained._cond
    sent = []

    def second_ctrl_c(frame, event, arg):
        # The moment the stop has taken `drained`'s lock to set it: a Ctrl-C raised there would leave it held.
        if event == "c_return" and not sent and frame.f_code.co_name == "__enter__" and \\
                frame.f_locals.get("self") is drained:
            sent.append(1)
            os.kill(os.getpid(), signal.SIGINT)

    def first_ctrl_c():
        while not scheduler.live:  # the first pair is running
            time.sleep(0.01)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=first_ctrl_c, daemon=True).start()
    with interrupts.remembering():
        sys.setprofile(second_ctrl_c)
        try:
            scheduler.run()
        except KeyboardInterrupt:
            sys.setprofile(None)
            print("stopped; second Ctrl-C sent:", bool(sent), flush=True)
'''


def test_a_second_ctrl_c_while_an_evaluation_stops_does_not_hang_it():
    # The stop takes the scheduler's and its Events' locks; a second Ctrl-C raised inside one left it held, and the
    # pairs' threads waiting on it held up the pool's shutdown for ever (a red-team review's finding, 2026-12-06).
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(SECOND_CTRL_C_WHILE_STOPPING)], capture_output=True,
                          text=True, timeout=ENDS_WITHIN_S)
    assert proc.stdout == "stopped; second Ctrl-C sent: True\n", proc.stdout + proc.stderr


REPEATED_STOP = '''
    import os, signal, sys
    from common import interrupts

    def handled():
        for _ in range(1000):  # bytecode boundaries enough for a handler to have run
            pass

    with interrupts.remembering():
        try:
            os.kill(os.getpid(), signal.SIGINT)
            handled()
            print("not stopped", flush=True)
        except KeyboardInterrupt:
            # The stop's clean-up: signals that repeat the stop are recorded, not raised into it.
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            handled()
            print("clean-up ran on; recorded:", interrupts.stopped_by, "exit code", interrupts.exit_code(), flush=True)
            interrupts._stopping_since -= interrupts.REPEAT_S  # as if the clean-up had been stuck that long
            try:
                os.kill(os.getpid(), signal.SIGINT)
                handled()
                print("not broken into", flush=True)
            except KeyboardInterrupt:
                print("a later one breaks in", flush=True)
    print("after the stop, SIGTERM ignored:", signal.getsignal(signal.SIGTERM) is signal.SIG_IGN, flush=True)
    os.kill(os.getpid(), signal.SIGINT)  # the process is ending: a Ctrl-C that repeats the stop does not cut it short
    handled()
    print("a Ctrl-C at once: exit goes on", flush=True)
    interrupts._stopping_since -= interrupts.REPEAT_S  # as if the exit had been stuck that long
    os.kill(os.getpid(), signal.SIGINT)  # ends the process at once, as Ctrl-C's default action does
    handled()
    print("not ended", flush=True)
'''


def test_signals_that_repeat_a_stop_are_recorded_not_raised_into_its_clean_up():
    # A second Ctrl-C pressed at once, or a group's Ctrl-C with a supervisor's SIGTERM, raised inside the stop's own
    # clean-up: tracebacks from LangGraph's executor, and once a process that hung at its exit (a red-team review's
    # finding, 2026-12-06). One that comes REPEAT_S later breaks in, for a stop or an exit that is stuck.
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(REPEATED_STOP)], capture_output=True, text=True,
                          timeout=ENDS_WITHIN_S)
    assert proc.stdout.splitlines() == ["clean-up ran on; recorded: [2, 2, 15] exit code 130", "a later one breaks in",
                                        "after the stop, SIGTERM ignored: True", "a Ctrl-C at once: exit goes on"]
    assert proc.returncode == -signal.SIGINT and "Traceback" not in proc.stderr, proc.stderr  # a later one ends it


STOPS_BY_OTHER_WAYS = '''
    import os, signal
    from common import interrupts

    def handled():
        for _ in range(1000):
            pass

    for stop_by in ("check", "library_init"):
        with interrupts.remembering():
            try:
                if stop_by == "check":
                    interrupts.received.set()  # a Ctrl-C whose KeyboardInterrupt a library swallowed
                    interrupts.check()
                else:
                    with interrupts.library_init():
                        raise SystemExit(signal.SIGTERM)  # what ray.init's own SIGTERM handler does
            except KeyboardInterrupt:
                try:
                    os.kill(os.getpid(), signal.SIGINT)  # the group's Ctrl-C, a moment later
                    handled()
                    print(stop_by, "stop: the repeat recorded", flush=True)
                except KeyboardInterrupt:
                    print(stop_by, "stop: the repeat raised into its clean-up", flush=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)
'''


def test_a_stop_raised_at_a_safe_point_or_out_of_a_librarys_start_is_not_broken_into_either():
    # Stops that no handler raised (``check``'s, ``library_init``'s) start the repeat window too (a review's finding).
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(STOPS_BY_OTHER_WAYS)], capture_output=True,
                          text=True, timeout=ENDS_WITHIN_S)
    assert proc.stdout.splitlines() == ["check stop: the repeat recorded", "library_init stop: the repeat recorded"], \
        proc.stderr


def test_results_come_in_order_and_the_first_failure_is_raised():
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        assert interrupts.results([pool.submit(lambda n=n: n * n) for n in range(5)]) == [0, 1, 4, 9, 16]
        with pytest.raises(ZeroDivisionError):
            interrupts.results([pool.submit(lambda: 1), pool.submit(lambda: 1 / 0)])


def test_ctrl_c_is_remembered_only_while_a_command_runs_and_never_where_it_is_ignored():
    script = '''
        import signal
        from common import interrupts
        with interrupts.remembering():
            print(signal.getsignal(signal.SIGINT) is interrupts.on_sigint)
        print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)  # as it was, for a later caller
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with interrupts.remembering():
            print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)
    '''
    assert subprocess.run([sys.executable, "-c", textwrap.dedent(script)], capture_output=True, text=True,
                          timeout=60).stdout == "True\nTrue\nTrue\n"


def test_a_remembered_ctrl_c_ends_a_sleep_and_stops_at_a_check():
    interrupts.received.set()  # as on_sigint leaves it after a KeyboardInterrupt that something swallowed
    try:
        with pytest.raises(KeyboardInterrupt):
            interrupts.sleep(600)  # a model server's Retry-After
        with pytest.raises(KeyboardInterrupt):
            interrupts.check()
    finally:
        interrupts.received.clear()
    interrupts.check()  # nothing remembered: nothing raised
    interrupts.sleep(0.01)


def test_a_run_whose_node_swallowed_a_ctrl_c_stops_when_that_node_ends(home, monkeypatch):
    from common.ledger import Ledger
    from runner.lifecycle import execute
    from store.config import RunConfig
    from store.rundir import create_run

    tmp, env = home
    monkeypatch.setenv("HEURIST_HOME", env["HEURIST_HOME"])
    config = RunConfig.model_validate({"task": "CartPole-v1", "policy": str(tmp / "weak.py"), "offline": True,
                                       "report": False, "budget": {"iterations": 1, "stop_when": "never"},
                                       "eval": {"episodes": 4, "holdout": False}})
    run_dir = create_run(config, tmp / "run")
    nodes: list[str] = []

    def swallow_once(kind: str, fields: dict) -> None:
        if kind == "node":
            nodes.append(fields["node"])
            if len(nodes) == 1:
                interrupts.received.set()  # as on_sigint leaves it when the node's KeyboardInterrupt was swallowed

    try:
        with pytest.raises(KeyboardInterrupt):
            execute(run_dir, swallow_once)
    finally:
        interrupts.received.clear()
    assert nodes == ["begin"]  # stopped once the node it came in had ended, not at the run's end
    events = [r["event"] for r in Ledger(run_dir / "ledger.jsonl").read()[0]]
    assert "run_finished" not in events  # (resuming an interrupted run: tests/test_faults.py)


def test_a_library_that_takes_sigterm_gives_it_back_to_heurist():
    """ray.init makes SIGTERM a sys.exit(15): a campaign driver stopped by systemd skipped its stop and its record.
    heurist takes the handler back after such a call (campaign.engine, envs.ray_backend)."""
    import signal

    with interrupts.remembering():
        ours = interrupts.handlers()
        assert ours[signal.SIGTERM] is interrupts.on_stop_signal
        signal.signal(signal.SIGTERM, lambda signum, frame: None)  # as ray.init does
        interrupts.reclaim(ours)
        assert signal.getsignal(signal.SIGTERM) is interrupts.on_stop_signal
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_stop_signal_during_a_librarys_start_and_after_the_stop_is_heurists():
    """ray.init installs its SIGTERM handler (sys.exit(15)) at its start and runs on for seconds: a SIGTERM then
    ended heurist with status 15, saying nothing. And a second SIGTERM while heurist ends (closing its fork servers,
    Ray's shutdown) killed it at once: after a stop signal, the stop signals are ignored."""
    import signal

    import pytest

    with interrupts.remembering():
        with pytest.raises(KeyboardInterrupt, match="stopped by SIGTERM"):
            with interrupts.library_init():
                signal.signal(signal.SIGTERM, lambda signum, frame: None)  # as ray.init does at its start
                raise SystemExit(signal.SIGTERM)  # what its handler does on a SIGTERM
        assert signal.getsignal(signal.SIGTERM) is interrupts.on_stop_signal and interrupts.exit_code() == 143
    try:
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
        assert signal.getsignal(signal.SIGINT) is interrupts._after_stop  # a Ctrl-C soon after repeats the stop
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGHUP, signal.SIG_DFL)


def test_a_reader_gone_does_not_stop_heurist(tmp_path):
    """`heurist run ... | tee LOG` stopped by a group's SIGTERM kills tee too: rich answered the broken pipe with
    SystemExit(1) wherever it printed, in a campaign's stop before its runs' ends were recorded."""
    import os

    from cli.console import _Console

    read, write = os.pipe()
    os.close(read)
    console = _Console(file=os.fdopen(write, "w"), emoji=False)
    console.print("interrupted; nothing recorded is lost")  # EPIPE: before, SystemExit(1)
    console.print("and on")
    assert console.quiet


def test_a_run_stopped_just_after_its_directory_was_made_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    """A stop between the run directory's making and the graph's start (its offline note, its "run directory" line)
    said a bare "interrupted" (a red-team review, 2026-12-06); the directory is a run that `heurist resume` takes."""
    import sys

    import cli.run_commands
    from cli.main import main
    from policies import POLICY_DIR

    printed = cli.run_commands.err.print

    def stopped_at_the_directory_line(*args, **kwargs):
        if str(args[0]).startswith("run directory:"):
            raise KeyboardInterrupt  # as a Ctrl-C there
        printed(*args, **kwargs)

    monkeypatch.setattr(cli.run_commands.err, "print", stopped_at_the_directory_line)
    monkeypatch.setattr(sys, "stdout", sys.stdout)  # main() wraps both in its redacting streams: put back after
    monkeypatch.setattr(sys, "stderr", sys.stderr)
    monkeypatch.setenv("HEURIST_HOME", str(tmp_path / "home"))
    for key in ("OPENAI_API_KEY", "OPENAI_BASE_URL"):
        monkeypatch.delenv(key, raising=False)
    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["heurist", "run", "--env", "CartPole-v1", "--policy",
                                      str(POLICY_DIR / "cartpole.py"), "--run-dir", str(run_dir)])
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 130
    assert f"Continue with: heurist resume {run_dir.resolve()}" in capsys.readouterr().err
