"""A warm parent for heurist's own child processes: each is forked from it instead of starting Python and its
imports again. Env processes come from one (``ENV_PROCESSES``), the report rebuilt after every iteration from
another (``runner/lifecycle.py``), so neither carries the other's imports.

Starting a worker pair cost about 0.27 s of CPU, 0.2 s of it the env process importing numpy, pydantic,
Gymnasium and heurist's episode code before its first step (``benchmarks/eval_throughput.py`` prints it). An
evaluation pays that once per worker and a run evaluates hundreds of times: the test suite started 900 pairs,
and a 20-seed CartPole evaluation steps for less time than its pair took to start. So heurist starts one fork
server per process, the first time it needs an env process: ``python -P -O -m envs.forkserver``, with the same
scrubbed environment an env process gets (``envs.sandbox.sandbox_env``: no API key, no token), which imports
all that once and then forks each env process, in a few milliseconds. When an env process takes its first
job, the fork server is also asked to import that task's simulator (ALE, MuJoCo, a plug-in's module), so the
next env processes of the task have it too.

Only the env process comes from here. It runs heurist's code and the environment's, never the policy's, and
is trusted as before; a forked one is what ``subprocess.Popen`` made: its own process group, no descriptor
but those it is given (under the same numbers), the log as stdout and stderr, /dev/null as stdin, its own
working folder and environment, not traceable. The policy process is still started fresh in its own sandbox
for every worker (``envs.worker_pair``), so no two policies ever share a process, a namespace or anything one
could leave behind, and nothing untrusted ever runs in the fork server or reaches it.

The report's child is heurist's code too, reading the run directory. Its fork server imports the report's
libraries (Chroma, matplotlib, Jinja2: 1.5 s a report spent before on imports) once per heurist process, under
heurist's environment less its secrets (``Warm.environment``), and is started when a run goes on, so even the
first report finds them imported. No fork server ever holds a secret: the report child's come to it over a pipe
of its own (``runner/report_child.py``).

The test suite forks its ``heurist`` commands from a third kind (``tests/warm_cli.py``), whose children get a
stdin, stdout and stderr of their own and end as Python ends (``Stdio``): heurist itself never starts one.

Why not ``multiprocessing``'s forkserver: it starts with heurist's own environment (the key among it), and
its children cannot be given a process group, descriptors by number and a log as stdout, which the env
process needs. ``HEURIST_FORK_SERVER=0`` turns it off (each env process then starts Python as before), for a
simulator plug-in that cannot be forked once imported (one that starts threads at import, say); a fork server
that cannot start or has died is replaced by the same fallback, for the rest of the process.

The protocol, on a SOCK_SEQPACKET socket pair (one message each way per request):
- ``{"kind": "spawn", "module": ..., "argv": [...], "env": {...}, "cwd": ..., "fds": [n, ...]}`` with the
  descriptors: a pipe's write end for the exit status, the log, then one per entry of ``fds`` (the number
  the child gets it under); the answer is ``{"pid": ...}`` or ``{"error": ...}``;
- ``{"kind": "preload", "task": <TaskSpec JSON>}``, no answer: import the task's simulator modules.
When a child ends, the fork server writes its exit code (``subprocess``'s convention: minus the signal) to
its status pipe and closes it; ``ForkedProcess.wait`` reads it.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import fcntl
import hashlib
import importlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from common.scratch import ScratchDir
from pathlib import Path
from typing import Literal, NamedTuple

from envs.limited import ended_children

MAX_MESSAGE = 1 << 16
MAX_FDS = 16
SPAWN_TIMEOUT_S = 300.0  # a bound on a hung fork server only: a first preload on a loaded machine takes seconds
STATUS_LOST = 255  # the exit code given when the fork server did not say (see ForkedProcess.wait)
STATUS_GRACE_S = 10.0  # how long an ended env process's exit code may take to come (the fork server is busy)


class Warm(NamedTuple):
    """A kind of child process, what its fork server imports before the first fork, and the environment those
    imports see: the sandbox's allow-list (``"sandbox"``), or heurist's own without its secrets (``"heurist"``:
    the user's settings, paths and home, as a fresh child of heurist would see them). One server per name.
    ``python_flags`` are the interpreter's options after ``-P`` (always given, so the working folder is never on the
    import path): the fork server's, and so every child's, and a child's that starts its own Python when there is
    no fork server."""

    name: str
    imports: tuple[str, ...]
    environment: Literal["sandbox", "heurist"] = "sandbox"
    python_flags: tuple[str, ...] = ()


# The env process runs with -O: the simulators' own asserts go. Gymnasium's envs assert, every step, that the action is
# in their space (``Discrete.contains`` through ``np.issubdtype``), which envs/actions.py has checked already before
# any env.step: on CartPole that repeated check was 2.8 of the env process's 10 us a step (a third of the step itself).
# heurist's own code in the env process asserts nothing (tests/test_evaluator.py reads it), and a simulator plug-in
# must raise, not assert, to stop an episode: what an assert guards is gone under -O, as anywhere Python runs with it.
ENV_PROCESSES = Warm("env", ("gymnasium", "envs.worker"), python_flags=("-O",))


class Stdio(NamedTuple):
    """A forked child that is to look like a command run from a shell, not like an env process: these three
    descriptors as its stdin, stdout and stderr, ``argv0`` as its ``sys.argv[0]``, its own ``$PYTHONPATH`` first on
    its import path, traceable by its user, numpy's global generator seeded anew, and at its end what Python's own
    exit does (``_finalize``: threads, then the ``atexit`` handlers, its own and those its imports registered in the
    fork server, as a fresh Python's imports would have; an uncaught Ctrl-C kills it with SIGINT).
    ``tests/warm_cli.py`` starts ``heurist`` this way."""

    stdin: int
    stdout: int
    stderr: int
    argv0: str


class ForkServerFailed(Exception):
    """The fork server could not start, or could not fork: the caller starts the process the usual way."""


class ForkedProcess:
    """An env process forked by the fork server: what ``envs.worker_pair`` uses of a ``subprocess.Popen``.

    Not this process's child, so its exit code comes from the fork server, over a pipe of its own; and a pidfd
    (from the fork server, opened before the child could be reaped) says when it has ended whatever the fork
    server is doing, so no wait and no kill here depends on the fork server being alive or free."""

    def __init__(self, pid: int, status_fd: int, pidfd: int | None) -> None:
        self.pid, self.returncode, self.status_lost = pid, None, False
        self._status_fd, self._pidfd = status_fd, pidfd
        self._lock = threading.Lock()

    def wait(self, timeout: float | None = None) -> int:
        if not self._lock.acquire(timeout=-1 if timeout is None else timeout):
            raise subprocess.TimeoutExpired(f"env process {self.pid}", timeout or 0)
        try:
            if self.returncode is None:
                self._wait(None if timeout is None else time.monotonic() + timeout, timeout)
            return self.returncode
        finally:
            self._lock.release()

    def _wait(self, deadline: float | None, timeout: float | None) -> None:
        poller = select.poll()
        poller.register(self._status_fd, select.POLLIN)
        if self._pidfd is not None:
            poller.register(self._pidfd, select.POLLIN)
        ended_at = None  # when the pidfd said it ended, the fork server not having said how yet
        server_gone = False  # the fork server ended without a word on this child: only the pidfd can tell
        while True:
            now = time.monotonic()
            limits = [t for t in (deadline, ended_at and ended_at + STATUS_GRACE_S) if t]
            wait_ms = None if not limits else max(0, int((min(limits) - now) * 1000))
            ready = {fd for fd, _ in poller.poll(wait_ms)}
            if self._status_fd in ready and not server_gone:
                text = os.read(self._status_fd, 64)
                if text:
                    return self._ended(int(text))
                # The fork server has ended (given up, or killed): the child may well be running still.
                if self._pidfd is None or ended_at is not None:
                    return self._ended(STATUS_LOST, lost=True)
                server_gone = True
                poller.unregister(self._status_fd)
                continue
            if self._pidfd in ready and ended_at is None:
                if server_gone:
                    return self._ended(STATUS_LOST, lost=True)
                ended_at = time.monotonic()
                poller.unregister(self._pidfd)
                continue
            if ended_at is not None and time.monotonic() >= ended_at + STATUS_GRACE_S:
                return self._ended(STATUS_LOST, lost=True)  # the fork server is stuck (a preload that hangs)
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(f"env process {self.pid}", timeout or 0)

    def _ended(self, code: int, lost: bool = False) -> None:
        self.returncode, self.status_lost = code, lost
        for fd in (self._status_fd, self._pidfd):
            if fd is not None:
                os.close(fd)

    def running(self) -> bool:
        """Whether it has not ended (the pidfd says, where there is one): its pid cannot have been reused."""
        if self.returncode is not None:
            return False
        if self._pidfd is None:
            return True
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return not poller.poll(0)

    def __del__(self) -> None:
        if self.returncode is None:
            for fd in (self._status_fd, self._pidfd):
                if fd is not None:
                    try:
                        os.close(fd)
                    except OSError:
                        pass


def kill_group(proc: ForkedProcess | subprocess.Popen, sig: int = signal.SIGKILL) -> None:
    """Signal a process's group (``start_new_session`` made it its own). A forked env process is reaped by the
    fork server, not here, so once it has ended its pid may be another's: its group is then left alone."""
    if isinstance(proc, ForkedProcess) and not proc.running():
        return
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


class ForkServer:
    """The client side: one fork server per kind per heurist process, shared by its threads (``shared()``)."""

    _shared: dict[str, ForkServer] = {}
    _shared_pid: int | None = None
    _broken: set[str] = set()
    _guard = threading.Lock()

    def __init__(self, warm: Warm = ENV_PROCESSES) -> None:
        self.warm = warm
        self._lock = threading.Lock()
        self._preloaded: set[str] = set()
        self.owner = os.getpid()
        self._home = ScratchDir("forkserver")  # one a killed heurist left is removed by a later fork server's start
        self.home = self._home.path
        self.log = tempfile.TemporaryFile(prefix="heurist-forkserver-")  # its own output: read only on failure
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", *warm.python_flags, "-m", "envs.forkserver",
                 "--socket-fd", str(theirs.fileno()), "--home", str(self.home), "--imports", ",".join(warm.imports)],
                env=self._environment(), cwd=self.home, stdin=subprocess.DEVNULL, stdout=self.log,
                stderr=self.log, pass_fds=(theirs.fileno(),), close_fds=True,
                start_new_session=True)  # not in heurist's group: a Ctrl-C is heurist's to handle, not its
        except OSError as exc:
            ours.close()
            self.log.close()
            self._home.remove()
            raise ForkServerFailed(f"could not start: {exc}") from None
        finally:
            theirs.close()
        self.sock = ours
        self.sock.settimeout(SPAWN_TIMEOUT_S)

    def _environment(self) -> dict[str, str]:
        from common.safe_text import environ_without_secrets
        from envs.sandbox import ONE_THREAD, import_path, sandbox_env  # here: the fork server imports this module

        if self.warm.environment == "sandbox":
            return sandbox_env(self.home)
        env = environ_without_secrets()
        env.update(ONE_THREAD)  # a BLAS pool started at import would make every fork unsafe (see ``serve``)
        env.update(TMPDIR=str(self.home),
                   PYTHONPATH=os.pathsep.join([*import_path(), *filter(None, [env.get("PYTHONPATH")])]))
        return env

    @classmethod
    def shared(cls, warm: Warm = ENV_PROCESSES) -> ForkServer | None:
        """This process's fork server of that kind, started at the first call (it imports in the background, so a
        caller can start it early); None where it is turned off or has failed."""
        if os.environ.get("HEURIST_FORK_SERVER", "1") == "0":
            return None
        with cls._guard:
            if cls._shared_pid != os.getpid():  # a forked heurist process must not share its parent's sockets
                cls._shared, cls._shared_pid, cls._broken = {}, os.getpid(), set()
            if warm.name in cls._broken:
                return None
            server = cls._shared.get(warm.name)
            if server is None:
                try:
                    server = cls._shared[warm.name] = ForkServer(warm)
                except ForkServerFailed:
                    cls._broken.add(warm.name)
                    return None
                atexit.register(server.close)
            return server

    @classmethod
    def give_up(cls, server: ForkServer) -> bool:
        """A fork server that failed: closed, and not used again by this process; False if another thread gave it
        up first."""
        with cls._guard:
            first = cls._shared.get(server.warm.name) is server
            if first:
                del cls._shared[server.warm.name]
                cls._broken.add(server.warm.name)
        server.close()
        return first

    def spawn(self, module: str, argv: list[str], env: dict[str, str], cwd: Path, log_fd: int,
              pass_fds: tuple[int, ...], stdio: Stdio | None = None) -> ForkedProcess:
        """``python -m module *argv`` as a fork of the warm server: ``pass_fds`` under the same numbers; the log as
        stdout and stderr and /dev/null as stdin, or ``stdio`` (``log_fd`` is then not used)."""
        if any(fd < 3 for fd in pass_fds):
            raise ValueError("descriptors 0-2 are the child's stdin and log")
        request = {"kind": "spawn", "module": module, "argv": argv, "env": env, "cwd": str(cwd), "fds": list(pass_fds)}
        given = [log_fd]
        if stdio is not None:
            request.update(stdio="own", argv0=stdio.argv0)
            given = [stdio.stdin, stdio.stdout, stdio.stderr]
        status_r, status_w = os.pipe()
        fds: list[int] = []
        try:
            with self._lock:
                socket.send_fds(self.sock, [json.dumps(request).encode()], [status_w, *given, *pass_fds])
                answer, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 1)
            reply = json.loads(answer) if answer else {"error": f"it has ended; {self.output()}"}
        except BaseException as exc:  # a timeout, a broken socket, a Ctrl-C between the request and its answer
            for fd in (status_r, *fds):
                os.close(fd)
            # Killed, not only closed: it must not fork this request later (while heurist starts the env process
            # itself on the same pipes), nor answer the next request with this one's pid.
            self.kill()
            if isinstance(exc, (OSError, ValueError)):
                raise ForkServerFailed(f"no answer: {exc}; {self.output()}") from None
            raise
        finally:
            os.close(status_w)  # the fork server has its own copy now
        if "pid" not in reply:
            os.close(status_r)
            for fd in fds:
                os.close(fd)
            raise ForkServerFailed(str(reply.get("error")))
        return ForkedProcess(int(reply["pid"]), status_r, fds[0] if fds else None)

    def preload(self, task_json: str) -> None:
        """Ask the fork server to import this task's simulator modules (once per task), for its next forks."""
        key = hashlib.sha256(task_json.encode()).hexdigest()
        with self._lock:
            if key in self._preloaded:
                return
            self._preloaded.add(key)
            try:
                self.sock.send(json.dumps({"kind": "preload", "task": task_json}).encode())
            except OSError:
                pass  # the next spawn finds out and says so

    def output(self) -> str:
        """The fork server's last output, for the reason it failed."""
        try:
            self.log.seek(0)
            return "its output: " + self.log.read()[-600:].decode(errors="replace").strip().replace("\n", " | ")
        except (OSError, ValueError):
            return "no output"

    def kill(self) -> None:
        """Ended at once, whatever it is doing (its children live on to the end of their jobs)."""
        if os.getpid() != self.owner:
            return
        self.proc.kill()
        self.close()

    def close(self) -> None:
        """End of input: the fork server ends (its children live on to the end of their jobs)."""
        if os.getpid() != self.owner:  # a fork of heurist's process: the fork server is its parent's
            return
        try:
            self.sock.close()
        except OSError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._home.remove()
        self.log.close()


def start_process(module: str, argv: list[str], env: dict[str, str], cwd: Path, log_fd: int,
                  pass_fds: tuple[int, ...], warm: Warm = ENV_PROCESSES) -> ForkedProcess | subprocess.Popen:
    """``python -P -m module *argv`` (with the kind's ``python_flags``) in its own process group: forked from the warm
    fork server of its kind where there is one, else started as a new Python."""
    server = ForkServer.shared(warm)
    if server is not None:
        try:
            return server.spawn(module, argv, env, cwd, log_fd, pass_fds)
        except ForkServerFailed as exc:
            # Said unless heurist is stopping: a stop signal sent to the whole group ends the fork server too, and
            # that is no failure worth a line. Imported here, not at the top: every fork server imports this module
            # at its start, and common.interrupts brings concurrent.futures (6 ms) it never uses.
            from common import interrupts

            if ForkServer.give_up(server) and not interrupts.received.is_set():
                print(f"heurist: the fork server of {warm.name} processes failed ({exc}); each {warm.name} process "
                      f"now starts its own Python", file=sys.stderr)
    # The fork server's flags: -P (the working folder is never on the import path), and the kind's own.
    return subprocess.Popen([sys.executable, "-P", *warm.python_flags, "-m", module, *argv], env=env, cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=log_fd, stderr=log_fd, pass_fds=pass_fds,
                            start_new_session=True, close_fds=True)


def preload_task(task_json: str) -> None:
    """The task's simulator, imported by the fork server for the env processes after this one (if there is one)."""
    server = ForkServer._shared.get(ENV_PROCESSES.name) if ForkServer._shared_pid == os.getpid() else None
    if server is not None:
        server.preload(task_json)


# --------------------------------------------------------------------------- the fork server's side


def _preload(task_json: str) -> None:
    """Import what ``TaskSpec.make_env`` will import for this task. A failure is the env process's to report."""
    from envs.tasks import TaskSpec

    try:
        import gymnasium

        spec = TaskSpec.model_validate_json(task_json)
        spec._register()
        entry = gymnasium.spec(spec.gym_id).entry_point
        if isinstance(entry, str):
            importlib.import_module(entry.split(":")[0])
        if any(p.fire_reset or p.noop_max for p in spec.protocols):
            importlib.import_module("envs.atari_reset")
    except Exception:
        traceback.print_exc()


def _refuse(sock: socket.socket, fds: list[int], why: str) -> None:
    for fd in fds:
        os.close(fd)
    sock.send(json.dumps({"error": why}).encode())


def _pidfd(pid: int) -> int | None:
    try:
        return os.pidfd_open(pid)
    except (OSError, AttributeError):  # a kernel before 5.3: waits then rely on the fork server alone
        return None


def _reap(status_of: dict[int, int]) -> None:
    for pid, status in ended_children():
        fd = status_of.pop(pid, None)
        if fd is None:
            continue
        try:
            os.write(fd, str(os.waitstatus_to_exitcode(status)).encode())
        except OSError:  # nobody waits for it any more
            pass
        os.close(fd)


def _become(request: dict, fds: list[int], server_fds: list[int]) -> None:
    """In the forked child: become the process ``subprocess.Popen`` would have started, then run the module."""
    code = 1
    try:
        os.setpgid(0, 0)  # the server sets it too, so a kill of the group works as soon as the pid is known
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        for fd in [*server_fds, fds[0]]:  # the server's socket and wake-up pipe, the exit status pipe
            os.close(fd)
        targets = [int(n) for n in request["fds"]]
        keep = fds[1:]  # stdin, stdout and stderr (``Stdio``) or the log alone, then one per target
        top = max([*keep, *targets, 2]) + 1
        moved = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, top) for fd in keep]  # out of every target's way
        own = request.get("stdio") == "own"
        stdio = moved[:3] if own else [os.open(os.devnull, os.O_RDONLY), moved[0], moved[0]]
        for fd, number in zip(stdio, (0, 1, 2)):
            os.dup2(fd, number)
        for fd, number in zip(moved[3:] if own else moved[1:], targets):
            os.dup2(fd, number, inheritable=True)
        wanted = {0, 1, 2, *targets}
        for name in os.listdir("/proc/self/fd"):  # close_fds: nothing else of the server's reaches the child
            if int(name) not in wanted:
                try:
                    os.close(int(name))
                except OSError:
                    pass
        server_path = _absolute_paths(os.environ.get("PYTHONPATH", "")) if own else []  # from the server's folder
        os.chdir(request["cwd"])
        if own:  # a command: its own $PYTHONPATH (heurist's children keep the import path heurist gave the server),
            _import_path(server_path, _absolute_paths(request["env"].get("PYTHONPATH", "")))
            _set_dumpable(1)  # and traceable by its user, as a command is (the server is not: see ``main``)
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # found again from TMPDIR, which is this child's own
        sys.argv = [request.get("argv0") or request["module"], *request["argv"]]
        if own:
            _fresh_random_state()
        code = _run_main(request["module"])
        if own:
            _finalize()
    except BaseException:  # it could not become that process (its folder is gone, say): the log says why
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            if code == INTERRUPTED:  # Python's way out of an uncaught Ctrl-C: killed by SIGINT
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                os.kill(os.getpid(), signal.SIGINT)
            os._exit(code & 0xFF)  # never the server's own clean-up (its home, its objects), as after an exec


def _absolute_paths(python_path: str) -> list[str]:
    """A ``$PYTHONPATH``'s folders as Python's start puts them on ``sys.path``: absolute, from the working folder
    (an empty one is that folder), each once."""
    folders = [os.path.abspath(p) for p in python_path.split(os.pathsep)] if python_path else []
    return list(dict.fromkeys(folders))


def _import_path(server: list[str], child: list[str]) -> None:
    """The child's ``$PYTHONPATH`` on its import path in place of the fork server's, where Python would have put
    it at its start: first (``-P``: no script folder before it)."""
    if sys.path[:len(server)] == server:
        del sys.path[:len(server)]
    sys.path[:0] = child
    importlib.invalidate_caches()


def _fresh_random_state() -> None:
    """numpy's global generator seeded anew, as a fresh Python's import would (``random`` reseeds itself at a fork):
    two forks must not draw the same numbers where two fresh commands would not."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None:
        numpy_random.seed()


INTERRUPTED = -signal.SIGINT  # _run_main's code for an uncaught KeyboardInterrupt


def _run_main(module: str) -> int:
    """``module.main()``, and the exit code Python would give it."""
    try:
        importlib.import_module(module).main()
        return 0
    except SystemExit as exc:
        if not isinstance(exc.code, (int, type(None))):
            print(exc.code, file=sys.stderr)
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except KeyboardInterrupt:
        traceback.print_exc()
        return INTERRUPTED
    except BaseException:
        traceback.print_exc()
        return 1


def _finalize() -> None:
    """What Python does at its exit before it flushes: ``threading._shutdown`` (threading's own exit hooks, such as
    the one that ends ``concurrent.futures``' idle workers, then a wait for the non-daemon threads), then ``atexit``'s
    handlers. Both are private, and both are what the interpreter itself calls at its exit: there is no public way to
    run them in a process that leaves through ``os._exit``. A handler that raises, ``sys.exit`` included, is
    printed and passed over, as at a real exit."""
    threading._shutdown()
    atexit._run_exitfuncs()


def serve(sock: socket.socket, home: Path, imports: list[str]) -> None:
    for name in imports:  # imported once here is the point of this process
        importlib.import_module(name)

    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    os.set_blocking(wake_r, False)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that SIGCHLD writes to the wake-up pipe
    signal.set_wakeup_fd(wake_w)
    status_of: dict[int, int] = {}
    try:
        while True:
            ready = select.select([sock, wake_r], [], [])[0]
            if wake_r in ready:
                while True:
                    try:
                        if not os.read(wake_r, 512):
                            break
                    except BlockingIOError:
                        break
                _reap(status_of)
            if sock not in ready:
                continue
            message, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
            if not message:
                for fd in fds:
                    os.close(fd)
                return  # heurist closed its end, or has died
            request = json.loads(message)
            if request["kind"] == "preload":
                _preload(request["task"])
                continue
            threads = len(os.listdir("/proc/self/task"))
            if threads > 1:  # a simulator's import started a thread: a fork could copy a lock it holds
                _refuse(sock, fds, f"an import left it with {threads} threads, and forking is safe only with one")
                continue
            sys.stdout.flush()  # what an import printed is the fork server's, not copied into every child's log
            sys.stderr.flush()
            try:
                pid = os.fork()
            except OSError as exc:
                _refuse(sock, fds, f"fork failed: {exc}")
                continue
            if pid == 0:
                _become(request, fds, [sock.fileno(), wake_r, wake_w])
            try:
                os.setpgid(pid, pid)
            except OSError:  # it has done so itself, or ended already
                pass
            pidfd = _pidfd(pid)  # before the loop can reap it: the pidfd is this child's whoever gets the pid later
            status_of[pid] = fds[0]
            for fd in fds[1:]:
                os.close(fd)
            socket.send_fds(sock, [json.dumps({"pid": pid}).encode()], [pidfd] if pidfd is not None else [])
            if pidfd is not None:
                os.close(pidfd)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _set_dumpable(value: int) -> None:
    """``PR_SET_DUMPABLE``: 0, and no process of the same user can attach to this one or read its memory."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(4, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main() -> None:
    parser = argparse.ArgumentParser(description="heurist's fork server of its own processes (started by heurist)")
    parser.add_argument("--socket-fd", type=int, required=True)
    parser.add_argument("--home", type=Path, required=True)
    parser.add_argument("--imports", default="", help="comma-separated modules to import before the first fork")
    args = parser.parse_args()
    _set_dumpable(0)  # inherited by every fork
    serve(socket.socket(fileno=args.socket_fd), args.home, [m for m in args.imports.split(",") if m])


if __name__ == "__main__":
    main()
