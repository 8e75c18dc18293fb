"""How untrusted code runs: the containment every sandboxed process gets, and ``run_sandboxed`` for a command.

Untrusted code (policies, model-written tests) runs only in sandboxed processes started from here
(``run_sandboxed``) or by ``envs/worker_pair.py`` (``WorkerProcess``, which runs policies with the
same folders, environment and limits).

Containment, in order of strength:
- its own process: a policy never runs in heurist's process, nor in the env process that
  keeps its score (``WorkerProcess`` is a pair; ``envs/wire.py`` is all they share), so an
  exception, a hang, ``os._exit`` or a segfault ends a policy process, not heurist, and
  whatever it patches changes only its own actions;
- its own process group (``start_new_session``): a timeout kills the whole group,
  children included, with SIGKILL, which nothing can catch; and nothing it started outlives it: its PID
  namespace (bubblewrap) or its cgroups are emptied when it ends, and where neither applies a trusted reaper
  above it (``envs.limited.become_reaper``) ends every process it left, detached or not;
- no privileges (``envs.limited.confine_self``): before it reads untrusted code the process
  drops to an unprivileged user (``nobody`` when heurist runs as root, else heurist's own
  user), with every capability set empty and ``no_new_privs``, so ``mount``, raw devices and
  root-only files stay out of reach;
- resource limits the process puts on itself at the same moment: address space, CPU
  seconds per episode, file size (so output is bounded), open files, no core dumps;
- a scrubbed environment built from an allow-list, so API keys and tokens are not inherited;
- a confined file system where bubblewrap works (Debian's ``bubblewrap``; ``envs/isolation.py``): only the
  system, the interpreter and its packages and heurist's sandbox-side code (``envs/``), read-only,
  plus what a job needs (a throwaway copy of a test); a private, size-limited ``/tmp`` that
  is also its home; ``$HEURIST_HOME`` and the run directory hidden; its own PID, IPC, UTS and
  network namespaces, so it sees no other process and no network;
- else no network through a new network namespace (``unshare -n``) where this machine
  allows it;
- cgroups where they can be made (``SandboxCgroups``, ``envs/cgroups.py``): pids (a fork bomb stops at
  ``Limits.max_processes``; else RLIMIT_NPROC, which the kernel enforces for the unprivileged
  user), memory (the whole tree and its RAM folders) and cpu (the whole tree at ``Limits.cpus``).

What a sandboxed process prints goes to a file heurist opened before it started, in a folder
it cannot see, and heurist reads it back through its own descriptor: a process that replaces
its log with a link (to ``/proc/self/environ``, to a user's file) changes nothing heurist reads.
``envs.containment.containment()`` says which of these this machine gives.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from common import interrupts
from common.safe_text import redact
from envs.cgroups import SandboxCgroups
from envs.isolation import Confinement, filesystem_confined, isolation_prefix, sandbox_user
from envs.limits import Limits

HEURIST_ROOT = Path(__file__).resolve().parent.parent

# Variables a worker may inherit; everything else (OPENAI_API_KEY, AWS_*, tokens...) is dropped.
ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "MUJOCO_GL", "PYOPENGL_PLATFORM", "EGL_PLATFORM",
             "SDL_VIDEODRIVER", "SDL_AUDIODRIVER", "LD_LIBRARY_PATH", "VIRTUAL_ENV")


class SandboxDirs:
    """The folders of one sandboxed process tree, made before it starts and removed after.

    ``private``: heurist's alone (0700, never bound into a sandbox): the output log lives here and
    is read back through the descriptor heurist opened, so nothing the sandbox does to a path can
    change what heurist reads. ``home``: the sandbox's home and temp folder: its private ``/tmp``
    under bubblewrap; without bubblewrap, a fresh folder on disk owned by the sandbox's user.
    """

    def __init__(self, limits: Limits, parent: Path | None = None) -> None:
        self.confined = filesystem_confined(limits)
        self.private = Path(tempfile.mkdtemp(prefix="heurist-private-", dir=parent))
        self._home: Path | None = None
        if self.confined:
            self.home = Path("/tmp")
        else:
            self._home = Path(tempfile.mkdtemp(prefix="heurist-home-"))
            uid, gid = sandbox_user()
            if os.geteuid() == 0:
                os.chown(self._home, uid, gid)
            self.home = self._home

    def log(self, name: str) -> "OutputLog":
        return OutputLog(self.private / name)

    def remove(self) -> None:
        shutil.rmtree(self.private, ignore_errors=True)
        if self._home is not None:
            shutil.rmtree(self._home, ignore_errors=True)


class OutputLog:
    """A file a sandboxed process writes its output to, opened by heurist before the process starts.

    The process gets the descriptor (as stdout and stderr); heurist reads through its own, by
    offset, never by path, so a replaced, deleted or linked file name changes nothing.
    """

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)

    def tail(self, chars: int) -> str:
        try:
            size = os.fstat(self.fd).st_size
            start = max(0, size - chars)
            return os.pread(self.fd, size - start, start).decode(errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


def unwrapped_returncode(returncode: int, prefix: list[str]) -> int:
    """bubblewrap and the cgroup shell report a child killed by signal N as exit code 128 + N; undo that."""
    if prefix and returncode > 128 and returncode - 128 in signal.valid_signals():
        return -(returncode - 128)
    return returncode


def signal_reason(returncode: int, who: str = "policy process") -> str:
    if returncode >= 0:
        return f"{who} exited with code {returncode}" + (" (the policy called exit or os._exit?)" if who else "")
    sig = -returncode
    known = {signal.SIGKILL: "killed (SIGKILL): out of memory or killed from outside",
             signal.SIGSEGV: "crashed with a segmentation fault (SIGSEGV)",
             signal.SIGXCPU: "CPU time limit exceeded (SIGXCPU)",
             signal.SIGXFSZ: "output size limit exceeded (SIGXFSZ): the policy wrote too much",
             signal.SIGABRT: "aborted (SIGABRT)", signal.SIGBUS: "bus error (SIGBUS)",
             signal.SIGFPE: "floating-point exception (SIGFPE)"}
    if sig in known:
        return known[sig]
    try:
        return f"killed by signal {signal.Signals(sig).name}"
    except ValueError:
        return f"killed by signal {sig}"


def import_path() -> list[str]:
    """heurist's ``envs`` importable, and a user's site packages where heurist's own come from there
    (``PYTHONNOUSERSITE``: the sandbox's own home, which it can write, is never a site folder)."""
    path = [str(HEURIST_ROOT)]
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        path.append(site.getusersitepackages())
    return path


# Numerical libraries' thread pools held to one thread: a sandbox's CPU is its limit, and a fork server must stay
# single-threaded to fork safely (envs/forkserver.py).
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def sandbox_env(home: Path) -> dict[str, str]:
    """The whole environment of a sandboxed process: the allow-list, a private HOME and TMPDIR, heurist importable."""
    env = {k: os.environ[k] for k in ENV_ALLOW if k in os.environ}
    env.update(ONE_THREAD)
    env.update(HOME=str(home), TMPDIR=str(home), PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join(import_path()), PYTHONNOUSERSITE="1")
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("SDL_VIDEODRIVER", "dummy")
    return env


class SandboxedRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    returncode: int
    timed_out: bool
    output: str
    reason: str
    wall_s: float


def limit_args(limits: Limits, cgroups: SandboxCgroups | None = None, **extra: int) -> str:
    """The limits a sandboxed process puts on itself (``envs.limited.confine_self``), who it becomes included.
    RLIMIT_NPROC only where no pids cgroup bounds the tree: it counts every sandbox's processes together."""
    uid, gid = sandbox_user()
    nproc = None if cgroups is not None and "pids" in cgroups else limits.max_processes
    return json.dumps({"memory_mb": limits.memory_mb, "fsize_mb": limits.fsize_mb, "nofile": limits.nofile,
                       "max_processes": nproc, "uid": uid, "gid": gid, **extra})


def needs_reaper(dirs: SandboxDirs, cgroups: SandboxCgroups) -> bool:
    """Whether nothing else ends what a sandboxed process leaves behind: no PID namespace (bubblewrap) and no cgroup
    to empty. Then a reaper stays above it (``envs.limited.become_reaper``)."""
    return not dirs.confined and not cgroups.paths


REAPER_GRACE_S = 10.0  # a reaper asked to end its tree kills and reaps: milliseconds, unless the machine is stalled


def end_tree(proc: subprocess.Popen, reaped: bool) -> int:
    """End a sandboxed process and everything it started; its exit code. A reaper is asked first (SIGTERM), since
    it alone can reach what left the process group; then, or without one, the group is killed."""
    if reaped and proc.poll() is None:
        try:
            os.kill(proc.pid, signal.SIGTERM)
            return proc.wait(timeout=REAPER_GRACE_S)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            pass
    if proc.returncode is None:  # (envs.forkserver.kill_group does this too; the fork server imports this module)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return proc.wait()


def _wait_unless_stopping(proc: subprocess.Popen, timeout_s: float) -> int:
    """The process's exit code; ``TimeoutExpired`` after ``timeout_s``. Often run by a thread working for the main
    one (the test files of a verify run side by side), which a Ctrl-C cannot interrupt: it looks for one between
    short waits and raises KeyboardInterrupt, so a stopping run does not wait its tests out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return proc.wait(timeout=max(0.0, min(interrupts.POLL_S, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            if interrupts.received.is_set():
                raise KeyboardInterrupt("Ctrl-C: the sandboxed process group was killed") from None
            if time.monotonic() >= deadline:
                raise


def run_sandboxed(cmd: list[str], cwd: Path, limits: Limits, timeout_s: float,
                  env: dict[str, str] | None = None, output_chars: int = 8000,
                  confinement: Confinement | None = None, pass_fds: tuple[int, ...] = ()) -> SandboxedRun:
    """Run a command over model-written files (a regression test's pytest) with the workers' containment.

    The same allow-listed environment, namespaces, file-system confinement, resource limits
    and dropped privileges as a policy process (applied by ``envs.limited`` before it execs
    the command). It starts in ``cwd``, bound read-only with ``confinement.readable``; nothing
    else is bound. ``pass_fds`` are inherited (the test kit's channel to heurist). Its
    own process group is killed with SIGKILL at the wall-clock limit, and its output is read
    back from a size-limited log heurist opened.
    """
    if interrupts.received.is_set():  # queued behind a thread's earlier work, after the Ctrl-C: nothing starts
        raise KeyboardInterrupt("Ctrl-C: the sandboxed process was not started")
    confinement = confinement or Confinement()
    if not any(Path(cwd).resolve() == p.resolve() for p in confinement.readable):
        confinement = confinement.model_copy(update={"readable": [*confinement.readable, Path(cwd)]})
    started = time.perf_counter()
    dirs = SandboxDirs(limits)
    log: OutputLog | None = None
    cgroups = SandboxCgroups({})
    try:
        log = dirs.log("output.log")
        full_env = sandbox_env(dirs.home) | (env or {})
        cgroups = SandboxCgroups.create(limits)
        prefix = [*cgroups.prefix(), *isolation_prefix(limits, confinement, cwd)]
        reaped = needs_reaper(dirs, cgroups)
        proc = subprocess.Popen([*prefix, sys.executable, "-m", "envs.limited", *(["--reap"] if reaped else []),
                                 limit_args(limits, cgroups, cpu_s=int(timeout_s) + 1), "--", *cmd],
                                cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=log.fd, stderr=log.fd,
                                start_new_session=True, close_fds=True, pass_fds=pass_fds)
        timed_out = False
        try:
            code = _wait_unless_stopping(proc, timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            if proc.returncode is None:  # the time limit, or a Ctrl-C: the tree does not outlive this call
                code = end_tree(proc, reaped)
        output = log.tail(output_chars)
    finally:
        cgroups.remove()
        if log is not None:
            log.close()
        dirs.remove()
    if timed_out:
        reason = f"wall-clock limit of {timeout_s:g} s exceeded; the process group was killed"
    elif code == 0:
        reason = "exited with code 0"
    else:
        code = unwrapped_returncode(code, prefix)
        reason = signal_reason(code) if code < 0 else f"exited with code {code}"
    return SandboxedRun(returncode=code, timed_out=timed_out, output=redact(output), reason=reason,
                        wall_s=time.perf_counter() - started)
