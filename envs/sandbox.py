"""Worker subprocesses that run untrusted policy code, and the means to stop them.

Containment, in order of strength:
- its own process: a policy never runs in heurist's process, nor in the env process that
  keeps its score (``WorkerProcess`` is a pair; ``envs/wire.py`` is all they share), so an
  exception, a hang, ``os._exit`` or a segfault ends a policy process, not heurist, and
  whatever it patches changes only its own actions;
- its own process group (``start_new_session``): a timeout kills the whole group,
  children included, with SIGKILL, which nothing can catch;
- no privileges (``envs.limited.confine_self``): before it reads untrusted code the process
  drops to an unprivileged user (``nobody`` when heurist runs as root, else heurist's own
  user), with every capability set empty and ``no_new_privs``, so ``mount``, raw devices and
  root-only files stay out of reach;
- resource limits the process puts on itself at the same moment: address space, CPU
  seconds per episode, file size (so output is bounded), open files, no core dumps;
- a scrubbed environment built from an allow-list, so API keys and tokens are not inherited;
- a confined file system where bubblewrap works (Debian's ``bubblewrap``): only the system,
  the interpreter and its packages and heurist's sandbox-side code (``envs/``), read-only,
  plus what a job needs (a throwaway copy of a test); a private, size-limited ``/tmp`` that
  is also its home; ``$HEURIST_HOME`` and the run directory hidden; its own PID, IPC, UTS and
  network namespaces, so it sees no other process and no network;
- else no network through a new network namespace (``unshare -n``) where this machine
  allows it;
- cgroups where they can be made (``SandboxCgroups``): pids (a fork bomb stops at
  ``Limits.max_processes``; else RLIMIT_NPROC, which the kernel enforces for the unprivileged
  user), memory (the whole tree and its RAM folders) and cpu (the whole tree at ``Limits.cpus``).

What a sandboxed process prints goes to a file heurist opened before it started, in a folder
it cannot see, and heurist reads it back through its own descriptor: a process that replaces
its log with a link (to ``/proc/self/environ``, to a user's file) changes nothing heurist reads.
``containment()`` says which of these this machine gives.
"""

from __future__ import annotations

import itertools
import json
import os
import queue
import random
import shutil
import signal
import site
import subprocess
import sys
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from envs.errors import HeuristError
from envs.safe_text import redact
from envs.wire import observation_pipe

HEURIST_ROOT = Path(__file__).resolve().parent.parent
# The only part of heurist a sandboxed process runs (``envs.limited``, ``envs.policy_host``, ``envs.wire``);
# the rest of a checkout (its ``runs/``, say) stays out of sight.
SANDBOX_CODE = Path(__file__).resolve().parent
# Who sandboxed processes run as when heurist is root: the conventional unprivileged ``nobody``.
NOBODY = 65534

# Variables a worker may inherit; everything else (OPENAI_API_KEY, AWS_*, tokens...) is dropped.
ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "MUJOCO_GL", "PYOPENGL_PLATFORM", "EGL_PLATFORM",
             "SDL_VIDEODRIVER", "SDL_AUDIODRIVER", "LD_LIBRARY_PATH", "VIRTUAL_ENV")


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    episode_timeout_s: float = 300.0
    episode_cpu_s: float = 300.0
    memory_mb: int = 4096
    fsize_mb: int = 64
    nofile: int = 256
    max_processes: int = 256  # processes and threads of one sandboxed tree
    tmp_mb: int = 256  # the private /tmp, which is also the home: RAM-backed, so bounded
    cpus: float = 1.0  # CPU time of a whole sandbox per period, in cores (a cpu cgroup's quota, where one applies)
    network_isolation: bool = True
    filesystem_isolation: bool = True


class Confinement(BaseModel):
    """What one sandboxed process may see beyond the system and heurist's code (both read-only)."""

    model_config = ConfigDict(extra="forbid")

    readable: list[Path] = []  # files or folders, read-only
    hidden: list[Path] = []  # out of sight even where they lie under a readable root
    # Nothing is ever bound writable: a sandboxed process writes only its private /tmp, and heurist takes
    # back nothing but what it asked for, over a pipe, read as untrusted data.


class WorkerDied(Exception):
    """The worker process ended or was killed; ``reason`` says why in words."""

    def __init__(self, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


@lru_cache(maxsize=1)
def _netns_prefix() -> tuple[str, ...]:
    """``unshare -n`` if this machine lets us create a network namespace (root, or user namespaces)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for prefix in ((unshare, "-n"), (unshare, "-r", "-n")):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


@lru_cache(maxsize=1)
def _bwrap() -> str | None:
    """bubblewrap, if it is installed and this machine lets it make the namespaces heurist asks for."""
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return None
    # Every option heurist uses: --size arrived in bubblewrap 0.7 and --perms in 0.5; an older one fails here,
    # and heurist says the file system is not confined rather than failing every sandbox it starts.
    probe = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net",
             "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--size", str(2**20),
             "--tmpfs", "/tmp", "--perms", "0755", "--dir", "/tmp/probe", "--chdir", "/tmp", "true"]
    try:
        return bwrap if subprocess.run(probe, capture_output=True, timeout=10).returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def filesystem_confined(limits: Limits | None = None) -> bool:
    """Whether sandboxed processes get the confined file system (bubblewrap works here and is not switched off)."""
    return (limits or Limits()).filesystem_isolation and _bwrap() is not None


def process_count_bounded() -> bool:
    """Whether a fork bomb stops at ``Limits.max_processes``: a pids cgroup, or RLIMIT_NPROC, which binds the
    sandbox's user (never root: ``sandbox_user``)."""
    return pids_cgroups_work() or sandbox_user()[0] != 0


_PROBE = """
import ctypes, json, os
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines() if ":" in line)
try:
    open("/etc/shadow").read(1)
    shadow = True
except OSError:
    shadow = False
userns = os.fork()
if userns == 0:  # in a child: a new user namespace, if one is allowed, changes nothing of the parent's
    os._exit(0 if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) == 0 else 1)
userns = os.waitpid(userns, 0)[1] == 0
print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(),
                  "caps": {k: status[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")},
                  "no_new_privs": status.get("NoNewPrivs", "").strip() == "1", "shadow_readable": shadow,
                  "user_namespaces": userns, "seccomp": status.get("Seccomp", "0").strip() == "2"}))
"""


class SandboxUnusable(HeuristError):
    """Sandboxed processes cannot start here; the message says why and what to change."""


def require_usable(limits: Limits) -> None:
    """Raise ``SandboxUnusable`` if the sandbox's user cannot run this Python. Only the case without
    bubblewrap can fail: heurist as root drops sandboxed processes to ``nobody``, which cannot pass
    through a folder such as /root (pyenv) unless bubblewrap lays the path out for it."""
    if filesystem_confined(limits) or sandbox_user()[0] == os.getuid():
        return
    problem = _unprivileged_python_problem()
    if problem:
        raise SandboxUnusable(f"the sandbox's user (uid {sandbox_user()[0]}) cannot run {sys.executable}: {problem}; "
                              f"install bubblewrap (scripts/bootstrap does), or use a Python and virtual environment "
                              f"that other users can read")


@lru_cache(maxsize=1)
def _unprivileged_python_problem() -> str | None:
    found = probe_privileges(Limits(filesystem_isolation=False))
    return found.get("error")


def probe_privileges(limits: Limits | None = None) -> dict:
    """What a sandboxed process actually holds, asked from inside one: its user, groups, capability sets,
    ``no_new_privs``, whether it can read ``/etc/shadow`` or make a user namespace, and whether a seccomp
    filter applies; ``{"error": ...}`` if it did not start."""
    ran = run_sandboxed([sys.executable, "-c", _PROBE], Path(tempfile.gettempdir()), limits or Limits(), timeout_s=60)
    try:
        return json.loads(ran.output.strip().splitlines()[-1])
    except (ValueError, IndexError):
        last = ran.output.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"{ran.reason}: {last[0][-300:]}"}


def sandbox_user() -> tuple[int, int]:
    """The uid and gid sandboxed processes run as: ``nobody`` when heurist is root, else heurist's own user."""
    if os.geteuid() == 0:
        return NOBODY, NOBODY
    return os.getuid(), os.getgid()


def _system_roots() -> list[str]:
    """What every sandboxed Python needs to read: the system, the interpreter, its packages, heurist's ``envs/``.

    An allow-list: never ``sys.path`` as a whole (a checkout on it would show its ``runs/``, a user's
    folder on ``PYTHONPATH`` their files), never the whole disk or the whole temp folder.
    """
    roots = {"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/sys", "/opt", sys.base_prefix,
             sys.prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages(), str(SANDBOX_CODE)}
    if site.ENABLE_USER_SITE:
        roots.add(site.getusersitepackages())
    temp = os.path.realpath(tempfile.gettempdir())
    roots = {r for r in roots if r != "/" and not (temp + "/").startswith(r.rstrip("/") + "/")}
    # A root inside another is bound by its parent already.
    chosen = sorted(r for r in roots if os.path.exists(r))
    return [r for r in chosen if not any(r != o and r.startswith(o.rstrip("/") + "/") for o in chosen)]


def isolation_prefix(limits: Limits, confinement: Confinement, chdir: Path | str) -> list[str]:
    """The command prefix that puts a process in its namespaces: bubblewrap, else ``unshare -n``, else nothing.

    Under bubblewrap the process starts in ``chdir`` (a path inside the sandbox); its home is the
    private ``/tmp``.
    """
    from envs.paths import heurist_home

    bwrap = _bwrap() if limits.filesystem_isolation else None
    if bwrap is None:
        return list(_netns_prefix()) if limits.network_isolation else []
    roots = _system_roots()
    args = [bwrap, "--die-with-parent", "--unshare-pid", "--unshare-ipc", "--unshare-uts"]
    if limits.network_isolation:
        args.append("--unshare-net")
    # The private /tmp first: heurist itself (a checkout, its virtual environment) may live under /tmp.
    # It is RAM, so it is bounded; world-writable, since the sandbox's user is not the one who mounts it.
    args += ["--dev", "/dev", "--proc", "/proc", "--perms", "1777", "--size", str(limits.tmp_mb * 2**20),
             "--tmpfs", "/tmp", "--perms", "1777", "--size", str(limits.tmp_mb * 2**20), "--tmpfs", "/dev/shm"]
    # /dev/shm, where multiprocessing keeps its semaphores, must be writable by the unprivileged user too.
    binds = [("--ro-bind", root) for root in roots]
    binds += [("--ro-bind", str(path.resolve())) for path in confinement.readable]
    # bubblewrap makes the folders above a mount point 0700, which the sandbox's unprivileged user
    # could not pass through (a pyenv interpreter under /root): make them 0755 first.
    args += _parent_folders([target for _, target in binds], roots)
    for option, target in binds:
        args += [option, target, target]
    for hidden in [heurist_home(), *confinement.hidden]:
        hidden = hidden.resolve()
        # Never a folder that holds the system or heurist's code (a ledger kept in the repository's root).
        covers_code = any(root == str(hidden) or root.startswith(str(hidden).rstrip("/") + "/") for root in roots)
        if hidden.exists() and not covers_code and any(_inside(str(hidden), target) for _, target in binds):
            args += ["--size", str(2**16), "--tmpfs", str(hidden)]
    return args + ["--chdir", str(chdir), "--"]


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _parent_folders(targets: list[str], roots: list[str]) -> list[str]:
    """``--perms 0755 --dir`` for every folder above a mount point that no read-only root provides."""
    made: list[str] = []
    for target in targets:
        for parent in reversed(Path(target).parents):
            folder = str(parent)
            if folder in ("/", "/tmp") or folder in made or any(_inside(folder, root) for root in roots):
                continue
            made.append(folder)
    return [arg for folder in made for arg in ("--perms", "0755", "--dir", folder)]


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


class SandboxCgroups:
    """The pids, memory and cpu cgroups around one sandboxed process tree, where this machine lets heurist make them.

    RLIMIT_NPROC counts a user's processes machine-wide (every sandbox runs as the same user, so one
    could starve another), RLIMIT_AS bounds one process, not a tree of them nor the RAM its private
    /tmp takes, and RLIMIT_CPU one process's CPU time, not how much of the machine a tree of them takes
    at once. A pids cgroup bounds the tree's processes; a memory cgroup bounds the tree's memory, its
    tmpfs pages included, at ``memory_mb + tmp_mb`` (swap not allowed); a cpu cgroup bounds its share of
    the machine at ``cpus`` cores, so a test that forks busy children cannot starve the test files run
    beside it. The tree joins them through a shell that writes its own pid into each ``cgroup.procs``
    and then execs the sandbox, so nothing starts outside them.
    """

    def __init__(self, paths: dict[str, Path]):
        self.paths = paths  # controller -> the cgroup folder that applies it (one folder for both on cgroup v2)

    @classmethod
    def create(cls, limits: Limits) -> "SandboxCgroups":
        name = f"heurist-{os.getpid()}-{next(_cgroup_serial)}"
        memory = str((limits.memory_mb + limits.tmp_mb) * 2**20)
        # In the order they must be written (v1 wants memsw at least the memory limit); absent files are skipped.
        quota = str(max(1000, int(limits.cpus * 100_000)))
        values = {"pids.max": str(limits.max_processes), "memory.limit_in_bytes": memory,
                  "memory.memsw.limit_in_bytes": memory, "memory.max": memory, "memory.swap.max": "0",
                  "cpu.cfs_period_us": "100000", "cpu.cfs_quota_us": quota, "cpu.max": f"{quota} 100000"}
        paths: dict[str, Path] = {}
        for controller, required in (("pids", ("pids.max",)), ("memory", ("memory.limit_in_bytes", "memory.max")),
                                     ("cpu", ("cpu.cfs_quota_us", "cpu.max"))):
            for parent in _cgroup_parents(controller):
                path = parent / name
                made = not path.exists()
                try:
                    path.mkdir(exist_ok=True)
                    present = [f for f in values if f.startswith(controller + ".") and (path / f).exists()]
                    if not set(required) & set(present):
                        raise OSError(f"{path} does not apply the {controller} controller")
                    for file in present:
                        (path / file).write_text(values[file])
                    paths[controller] = path
                    break
                except OSError:
                    if made:
                        try:
                            path.rmdir()
                        except OSError:
                            pass
        return cls(paths)

    def __contains__(self, controller: str) -> bool:
        return controller in self.paths

    def prefix(self) -> list[str]:
        folders = sorted({str(p) for p in self.paths.values()})
        if not folders:
            return []
        join = 'n=$1; shift; while [ "$n" -gt 0 ]; do echo $$ > "$1/cgroup.procs" || exit 125; shift; n=$((n-1)); done; ' \
               'exec "$@"'
        return ["/bin/sh", "-c", join, "sh", str(len(folders)), *folders]

    def remove(self) -> None:
        """Kill whatever is left in them (processes that left the process group) and remove them."""
        folders = sorted(set(self.paths.values()))
        for _ in range(50):
            pids: set[int] = set()
            for folder in folders:
                try:
                    pids.update(int(p) for p in (folder / "cgroup.procs").read_text().split())
                except OSError:
                    pass
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.02)
        for folder in folders:
            try:
                folder.rmdir()
            except OSError:
                pass


_cgroup_serial = itertools.count()


@lru_cache(maxsize=4)
def _cgroup_parents(controller: str) -> tuple[Path, ...]:
    """Folders where a cgroup with this controller might be made: this process's own cgroup and the root of
    the controller's cgroup v1 hierarchy, then this process's cgroup v2 where it offers the controller.
    Empty cgroups left there by a heurist process that was killed (``kill -9`` skips the clean-up) are
    removed on the way."""
    found = _find_cgroup_parents(controller)
    for parent in found:
        _remove_orphans(parent)
    return found


def _remove_orphans(parent: Path) -> None:
    try:
        children = [p for p in parent.iterdir() if p.name.startswith("heurist-") and p.is_dir()]
    except OSError:
        return
    for child in children:
        try:
            os.kill(int(child.name.split("-")[1]), 0)
            continue  # its heurist process is alive
        except ProcessLookupError:
            pass
        except (ValueError, IndexError, PermissionError):
            continue
        try:
            child.rmdir()  # only an empty cgroup can be removed: nothing running is touched
        except OSError:
            pass


def _find_cgroup_parents(controller: str) -> tuple[Path, ...]:
    found: list[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return ()
    for line in lines:
        _, controllers, own = line.split(":", 2)
        if controller in controllers.split(","):
            root = Path("/sys/fs/cgroup") / controller
            found += [p for p in (root / own.strip().lstrip("/"), root) if (p / "cgroup.procs").exists()]
    for line in lines:
        if line.startswith("0::"):
            v2 = Path("/sys/fs/cgroup") / line.split("::", 1)[1].strip().lstrip("/")
            try:
                if controller in (v2 / "cgroup.controllers").read_text().split():
                    found.append(v2)
            except OSError:
                pass
    return tuple(dict.fromkeys(found))


@lru_cache(maxsize=1)
def cgroups_available() -> frozenset[str]:
    """The controllers heurist can put a sandbox under on this machine (``pids``, ``memory``)."""
    probe = SandboxCgroups.create(Limits())
    available = frozenset(probe.paths)
    probe.remove()
    return available


def pids_cgroups_work() -> bool:
    return "pids" in cgroups_available()


def containment(limits: Limits | None = None) -> dict[str, str]:
    """What this machine actually gives a worker, in words, for results and `heurist doctor`."""
    limits = limits or Limits()
    confined = filesystem_confined(limits)
    if limits.network_isolation and confined:
        net = "network namespace (bubblewrap)"
    elif limits.network_isolation and _netns_prefix():
        net = "network namespace (unshare -n)"
    else:
        net = "none: workers can reach the network"
    processes = (f"pids cgroup, at most {limits.max_processes}" if pids_cgroups_work()
                 else f"RLIMIT_NPROC {limits.max_processes} (shared by every sandbox: they run as one user)")
    memory = (f"memory cgroup: the whole sandbox, its /tmp included, at most {limits.memory_mb + limits.tmp_mb} MiB"
              if "memory" in cgroups_available() else "address space per process only (no memory cgroup)")
    cpu = (f"cpu cgroup: the whole sandbox at most {limits.cpus:g} core(s)" if "cpu" in cgroups_available()
           else "CPU seconds per process only (no cpu cgroup)")
    uid, gid = sandbox_user()
    rest = "no capabilities, no_new_privs, no new user namespaces (seccomp)"
    user = (f"uid {uid}, gid {gid} (nobody: heurist runs as root), {rest}" if os.geteuid() == 0
            else f"heurist's own user (uid {uid}), {rest}")
    return {
        "user": user,
        "process": "policy in its own process apart from the env and the score; process groups SIGKILLed on timeout",
        "environment": "allow-list (no API keys inherited)",
        "network": net,
        "filesystem": (f"bubblewrap: system, interpreter and heurist's envs/ read-only, private {limits.tmp_mb} MiB "
                       "/tmp as home, run directory and $HEURIST_HOME hidden"
                       if confined else "none: a worker can read and write wherever its user can"),
        "processes": processes,
        "memory": memory,
        "cpu": cpu,
        "limits": f"address space {limits.memory_mb} MiB, CPU {limits.episode_cpu_s:g} s/episode, "
                  f"files {limits.fsize_mb} MiB, {limits.nofile} open files",
    }


def _unwrapped(returncode: int, prefix: list[str]) -> int:
    """bubblewrap and the cgroup shell report a child killed by signal N as exit code 128 + N; undo that."""
    if prefix and returncode > 128 and returncode - 128 in signal.valid_signals():
        return -(returncode - 128)
    return returncode


def _signal_reason(returncode: int, who: str = "policy process") -> str:
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


def sandbox_env(home: Path) -> dict[str, str]:
    """The whole environment of a sandboxed process: the allow-list, a private HOME and TMPDIR, heurist importable."""
    env = {k: os.environ[k] for k in ENV_ALLOW if k in os.environ}
    env.update(HOME=str(home), TMPDIR=str(home), PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
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


def _limit_args(limits: Limits, cgroups: SandboxCgroups | None = None, **extra: int) -> str:
    """The limits a sandboxed process puts on itself (``envs.limited.confine_self``), who it becomes included.
    RLIMIT_NPROC only where no pids cgroup bounds the tree: it counts every sandbox's processes together."""
    uid, gid = sandbox_user()
    nproc = None if cgroups is not None and "pids" in cgroups else limits.max_processes
    return json.dumps({"memory_mb": limits.memory_mb, "fsize_mb": limits.fsize_mb, "nofile": limits.nofile,
                       "max_processes": nproc, "uid": uid, "gid": gid, **extra})


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
        proc = subprocess.Popen([*prefix, sys.executable, "-m", "envs.limited",
                                 _limit_args(limits, cgroups, cpu_s=int(timeout_s) + 1), "--", *cmd],
                                cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=log.fd, stderr=log.fd,
                                start_new_session=True, close_fds=True, pass_fds=pass_fds)
        timed_out = False
        try:
            code = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            code = proc.wait()
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
        code = _unwrapped(code, prefix)
        reason = _signal_reason(code) if code < 0 else f"exited with code {code}"
    return SandboxedRun(returncode=code, timed_out=timed_out, output=redact(output), reason=reason,
                        wall_s=time.perf_counter() - started)


def pair_cpus(n: int) -> list[int]:
    """A core for each of ``n`` workers, to pin its env process and policy process together.

    The two take turns and never run at once, and waking a process on the same core costs a
    quarter of waking it on another (20 against 80 microseconds per round trip on the 2-core
    machines measured; ``benchmarks/policy_ipc.py``), which is most of the price of keeping
    the policy apart. The first core is drawn at random, so two runs on one machine do not
    both start at core 0.
    """
    cpus = sorted(os.sched_getaffinity(0))
    start = random.randrange(len(cpus))
    return [cpus[(start + i) % len(cpus)] for i in range(n)]


class WorkerProcess:
    """One evaluation worker: a trusted env process and the sandboxed policy process it talks to.

    The env process (``envs.worker``) runs heurist's and the environment's code with a scrubbed
    environment and its own limits; the policy process (``envs.policy_host``) runs the untrusted
    source it is sent under the full containment (namespaces, confinement, cgroups, limits,
    no privileges). It is bound no file at all: the policy's source comes over the pipe. They
    share two pipes and nothing else; this process talks only to the env process, and ``run``
    sends a job and waits for its reply, at most ``timeout`` seconds.
    """

    def __init__(self, limits: Limits, scratch: Path, confinement: Confinement | None = None,
                 cpu: int | None = None) -> None:
        self.limits = limits
        self.dirs = SandboxDirs(limits, parent=scratch)
        self.log = self.env_log = self.step_file = None
        self.policy_proc = self.env_proc = None
        self.cgroups = SandboxCgroups({})
        self._job_w = self._res_r = -1
        try:
            self._start(confinement, cpu)
        except BaseException:  # nothing half-started is left behind: processes, descriptors, folders, cgroups
            if self._res_r >= 0:
                os.close(self._res_r)
            self.close()
            raise
        self._replies: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read_replies, daemon=True)
        self._reader.start()

    def _start(self, confinement: Confinement | None, cpu: int | None) -> None:
        limits = self.limits
        self.log = self.dirs.log("policy.log")  # what the policy printed, for the reasons of its death
        self.env_log = self.dirs.log("env.log")
        self.step_file = self.dirs.log("steps")  # the env process's step count of the job in progress
        os.ftruncate(self.step_file.fd, 8)
        self.cgroups = SandboxCgroups.create(limits)
        self.prefix = [*self.cgroups.prefix(), *isolation_prefix(limits, confinement or Confinement(), self.dirs.home)]
        pinned = ["--cpu", str(cpu)] if cpu is not None else []
        job_r, self._job_w = os.pipe()
        self._res_r, res_w = os.pipe()
        request_r, request_w = observation_pipe()
        reply_r, reply_w = os.pipe()
        try:
            self.policy_proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "envs.policy_host", "--request-fd", str(request_r),
                 "--reply-fd", str(reply_w), "--limits", _limit_args(limits, self.cgroups), *pinned],
                env=sandbox_env(self.dirs.home), cwd=self.dirs.private if self.dirs.confined else self.dirs.home,
                stdin=subprocess.DEVNULL, stdout=self.log.fd, stderr=self.log.fd, pass_fds=(request_r, reply_w),
                start_new_session=True, close_fds=True)
            self.env_proc = subprocess.Popen(
                [sys.executable, "-m", "envs.worker", "--job-fd", str(job_r), "--result-fd", str(res_w),
                 "--request-fd", str(request_w), "--reply-fd", str(reply_r), "--steps-fd", str(self.step_file.fd),
                 "--limits", _limit_args(limits), *pinned],
                env=sandbox_env(self.dirs.private), cwd=self.dirs.private, stdin=subprocess.DEVNULL,
                stdout=self.env_log.fd, stderr=self.env_log.fd,
                pass_fds=(job_r, res_w, request_w, reply_r, self.step_file.fd), start_new_session=True, close_fds=True)
        finally:
            for fd in (job_r, res_w, request_r, request_w, reply_r, reply_w):
                os.close(fd)  # each end now lives only in the process that uses it

    def _read_replies(self) -> None:
        with os.fdopen(self._res_r, "r") as replies:
            for line in replies:
                self._replies.put(line)
        self._replies.put(None)  # end of file: the env process is gone

    def run(self, job: dict, timeout: float) -> dict:
        try:
            os.write(self._job_w, (json.dumps(job) + "\n").encode())
        except (BrokenPipeError, OSError):
            raise WorkerDied(self._env_death_reason()) from None
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise WorkerDied(f"wall-clock limit of {timeout:g} s exceeded; the worker's process groups were killed",
                             timed_out=True) from None
        if line is None:
            raise WorkerDied(self._env_death_reason())
        reply = json.loads(line)
        if reply.get("status") == "policy_gone":
            if not reply["hung_up"]:  # it broke the protocol: what it sent is the reason, and it ends now
                self.kill()
                raise WorkerDied(reply["error"])
            raise WorkerDied(self._policy_death_reason())
        return reply

    def _policy_death_reason(self) -> str:
        """Why the policy process ended, from its exit status and its last output."""
        try:
            code = self.policy_proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # it closed its end of the pipe but lives on: end it
            self.kill()
            return "the policy process closed its pipe to the env process"
        tail = self.log_tail()
        return _signal_reason(_unwrapped(code, self.prefix)) + (f"; last output: {tail}" if tail else "")

    def _env_death_reason(self) -> str:
        try:
            code = self.env_proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.env_proc.wait()
        return "the env process " + _signal_reason(code, who="").lstrip()

    def steps_taken(self) -> int:
        """Env steps of the job in progress or last run, as the env process counted them (readable after a kill)."""
        if self.step_file is None:
            return 0
        try:
            return max(0, int.from_bytes(os.pread(self.step_file.fd, 8, 0), sys.byteorder, signed=True))
        except OSError:
            return 0

    def log_tail(self, chars: int = 300) -> str:
        """The policy's last lines of output (untrusted text: redacted here, escaped where it is shown)."""
        return redact(" | ".join(self.log.tail(chars).strip().splitlines()[-3:]))

    def kill(self) -> None:
        for proc in (self.policy_proc, self.env_proc):
            if proc is None:
                continue
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            proc.wait()
        self.cgroups.remove()

    def close(self) -> None:
        if self._job_w >= 0:
            try:
                os.close(self._job_w)  # end of input: a healthy env process exits, and the policy process after it
            except OSError:
                pass
            self._job_w = -1
        for proc in (self.env_proc, self.policy_proc):
            if proc is None:
                continue
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        for log in (self.log, self.env_log, self.step_file):
            if log is not None:
                log.close()
        self.dirs.remove()
