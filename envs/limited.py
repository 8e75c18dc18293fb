"""Limits and least privilege for untrusted code, and ``python -m envs.limited [--reap] LIMITS_JSON -- CMD ...``.

``confine_self`` is how a sandboxed process limits itself before it reads any untrusted code:
resource limits (``apply_limits``), then ``drop_privileges``. The sandboxed policy process (``envs.policy_host``)
calls it at start; the command form is started by ``envs.sandbox.run_sandboxed`` inside the
sandbox, applies the same and ``exec``s the command (a model-written test's pytest), which
inherits all of it, as does everything it starts.

``become_reaper`` is for a machine where nothing else ends what a sandbox leaves behind (no PID namespace from
bubblewrap, no cgroup to empty): a trusted process stays above the sandboxed one and ends every process it left.

Least privilege by construction: when heurist runs as root, bubblewrap's child would keep
almost every capability (it could remount a read-only bind read-write, read ``/etc/shadow``,
write into heurist's code). ``drop_privileges`` switches to an unprivileged uid and gid with
no supplementary groups, empties every capability set (bounding set included), and sets
``no_new_privs`` so no setuid binary or file capability can give any back; then it checks
``/proc/self/status`` and refuses to go on if anything is left.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4
_PR_SET_SECCOMP = 22
_PR_SET_CHILD_SUBREAPER = 36
_SECCOMP_MODE_FILTER = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


class PrivilegeError(RuntimeError):
    """The process could not be made unprivileged; it must not run untrusted code."""


def apply_limits(memory_mb: int, fsize_mb: int, nofile: int) -> None:
    """Resource limits only: what the trusted env process puts on itself."""
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * 2**20, memory_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_mb * 2**20, fsize_mb * 2**20))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))


def confine_self(limits: dict) -> None:
    """What a process about to run untrusted code does first: the limits, then no privileges at all."""
    apply_limits(limits["memory_mb"], limits["fsize_mb"], limits["nofile"])
    drop_privileges(limits.get("uid"), limits.get("gid"))
    if limits.get("max_processes") is not None and os.getuid() != 0:
        # RLIMIT_NPROC counts every process and thread of the user, so the cap is "what runs now + this many".
        cap = _my_tasks() + int(limits["max_processes"])
        resource.setrlimit(resource.RLIMIT_NPROC, (cap, cap))


def drop_privileges(uid: int | None, gid: int | None) -> None:
    """Become ``uid``/``gid`` (when root) with no capabilities and no way to gain any; raise if that fails."""
    libc = ctypes.CDLL(None, use_errno=True)
    if os.getuid() == 0 or os.geteuid() == 0:
        if not uid or not gid:
            raise PrivilegeError("running as root, and no unprivileged uid and gid to switch to")
        last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
        for cap in range(last + 1):  # while CAP_SETPCAP is still held
            if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
                raise PrivilegeError(f"could not drop capability {cap} from the bounding set "
                                     f"({os.strerror(ctypes.get_errno())})")
        os.setgroups([])
        os.setresgid(gid, gid, gid)
        os.setresuid(uid, uid, uid)  # clears the permitted and effective sets
    libc.prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    header, data = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0), (_CapData * 2)()
    if libc.capset(ctypes.byref(header), data) != 0:  # the inheritable set too
        raise PrivilegeError(f"could not clear the capability sets ({os.strerror(ctypes.get_errno())})")
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise PrivilegeError(f"could not set no_new_privs ({os.strerror(ctypes.get_errno())})")
    deny_new_namespaces(libc)
    left = privileges_left()
    if left:
        raise PrivilegeError("still privileged after dropping: " + ", ".join(left))


# --------------------------------------------------------------------------- no new user namespaces
#
# Without capabilities a process can still create a user namespace and hold every capability inside it:
# nothing of the host is reachable that way (read-only binds stay locked), but it opens the kernel's
# namespace code to untrusted code. A seccomp filter refuses it, as container runtimes' default profiles do:
# unshare and clone with CLONE_NEWUSER fail with EPERM, setns with EPERM, clone3 with ENOSYS (its flags are
# in memory a filter cannot read; glibc then falls back to clone), and any other system-call ABI (32-bit
# calls on x86_64) with EPERM. The program is classic BPF, written here because Python has no seccomp
# binding in its standard library and this one filter does not warrant a dependency.

_SYSCALLS = {  # machine -> (audit arch, unshare, clone, clone3, setns)
    "x86_64": (0xC000003E, 272, 56, 435, 308),
    "aarch64": (0xC00000B7, 97, 220, 435, 268),
}
_CLONE_NEWUSER = 0x10000000
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06  # BPF_LD|W|ABS, BPF_JMP|JEQ|K ..., BPF_RET|K


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def namespace_filter(machine: str) -> list[tuple[int, int, int, int]] | None:
    """The filter's instructions (code, jt, jf, k) for this machine, or None where heurist has no table."""
    if machine not in _SYSCALLS:
        return None
    arch, unshare, clone, clone3, setns = _SYSCALLS[machine]
    eperm, enosys = _RET_ERRNO | 1, _RET_ERRNO | 38
    x32 = 0x40000000 if machine == "x86_64" else 0xFFFFFFFF
    return [
        (_LD_ABS, 0, 0, 4),             # 0: A = seccomp_data.arch
        (_JEQ, 1, 0, arch),             # 1: our ABI: go on (-> 3); else
        (_RET, 0, 0, eperm),            # 2:   refuse every call of another ABI
        (_LD_ABS, 0, 0, 0),             # 3: A = seccomp_data.nr
        (_JGE, 7, 0, x32),              # 4: x32 numbering: refuse (-> 12)
        (_JEQ, 7, 0, clone3),           # 5: clone3 (-> 13)
        (_JEQ, 5, 0, setns),            # 6: setns (-> 12)
        (_JEQ, 1, 0, unshare),          # 7: unshare (-> 9)
        (_JEQ, 0, 2, clone),            # 8: clone (-> 9), anything else (-> 11)
        (_LD_ABS, 0, 0, 16),            # 9: A = low 32 bits of the first argument: the flags
        (_JSET, 1, 0, _CLONE_NEWUSER),  # 10: a new user namespace (-> 12)
        (_RET, 0, 0, _RET_ALLOW),       # 11: allowed
        (_RET, 0, 0, eperm),            # 12: refused
        (_RET, 0, 0, enosys),           # 13: "not implemented": glibc falls back to clone
    ]


def deny_new_namespaces(libc) -> None:
    """Install the filter; raise if the kernel refuses it (never run untrusted code without it where it applies)."""
    program = namespace_filter(os.uname().machine)
    if program is None:
        return
    filters = (_SockFilter * len(program))(*[_SockFilter(*ins) for ins in program])
    prog = _SockFprog(len(program), filters)
    if libc.prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) != 0:
        raise PrivilegeError(f"could not install the seccomp filter ({os.strerror(ctypes.get_errno())})")


def privileges_left() -> list[str]:
    """What this process still holds that untrusted code must not: root, capabilities, a way to gain more."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines() if ":" in line)
    left = [f"{field} {status[field].strip()}" for field in ("CapInh", "CapPrm", "CapEff", "CapAmb")
            if int(status[field], 16)]
    if 0 in (os.getuid(), os.geteuid(), os.getgid(), os.getegid()):
        left.append("uid or gid 0")
    if status.get("NoNewPrivs", "0").strip() != "1":
        left.append("no_new_privs unset")
    return left


def _my_tasks() -> int:
    """Processes and threads this user runs now (the count RLIMIT_NPROC is checked against)."""
    count = 0
    for proc_dir in Path("/proc").iterdir():
        try:
            if proc_dir.name.isdigit() and proc_dir.stat().st_uid == os.getuid():
                count += len(os.listdir(proc_dir / "task"))
        except OSError:
            continue  # it ended while we looked
    return count


# --------------------------------------------------------------------------- a reaper where nothing else ends the tree
#
# Under bubblewrap the sandbox has its own PID namespace, which the kernel empties when its first process ends; where
# a cgroup could be made, heurist kills whatever is left in it. Where neither applies, a process a policy or a test
# detached (a double fork, ``setsid``) outlived its sandbox: its process group is killed, and it is no longer in it.
# ``become_reaper`` forks before anything is confined: the child goes on to run the sandboxed code; the parent stays
# as it was (root, where heurist is: the sandbox's user cannot signal it), is made a "child subreaper", so that every
# process of the tree whose parent ends is handed to it rather than to init, and when the child has ended (or heurist
# sends SIGTERM) it kills what is left, down to the last descendant, and exits as the child did.

_reaped_child: list[int] = []  # the sandboxed child while it may run: its pidfd, else its pid (the SIGTERM handler's)


def _on_sigterm(signum, frame) -> None:
    """heurist asks for the tree's end: the child is killed, and the reaper goes on as when a child ends. Through a
    pidfd where the kernel has them: a pid the reaper has waited for may be another process's by now."""
    for handle in _reaped_child:
        try:
            if hasattr(signal, "pidfd_send_signal") and handle >= 0:
                signal.pidfd_send_signal(handle, signal.SIGKILL)
            else:
                os.kill(-handle, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, OSError):
            pass


def fresh_signals(python: bool) -> None:
    """Signals as a process started from a terminal has them: none blocked, none ignored; and, for this Python
    (``python``), Ctrl-C as KeyboardInterrupt and SIGPIPE and SIGXFSZ ignored, as Python's own start sets them.

    A sandboxed process inherits through fork and exec the signals its parent blocks and ignores: a Ray worker
    blocks SIGINT, and a script's background job ignores SIGINT and SIGQUIT. A policy's own use of signals then
    behaved otherwise there (a red-team review, 2026-12-05: a policy raising SIGINT in itself scored 500 locally,
    9.75 on Ray), and the results of one policy must not depend on how heurist was started."""
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    for sig in signal.valid_signals():
        if sig in (signal.SIGKILL, signal.SIGSTOP):
            continue
        try:
            if signal.getsignal(sig) is signal.SIG_IGN:
                signal.signal(sig, signal.SIG_DFL)
        except (OSError, ValueError, RuntimeError):  # a signal this platform reserves
            pass
    if python:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        if hasattr(signal, "SIGXFSZ"):
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


def become_reaper() -> None:
    """Fork. Returns in the child, which goes on to confine itself and run the sandboxed code; the parent never
    returns: it waits for the child, ends every process the tree left behind, and exits with the child's status."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise PrivilegeError(f"could not become the sandbox's reaper ({os.strerror(ctypes.get_errno())})")
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # inherited as ignored, children would be reaped unseen
    # Held off across the fork, so that a SIGTERM from heurist is never lost: it is taken once the child is known.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    signal.signal(signal.SIGTERM, _on_sigterm)
    child = os.fork()
    if child == 0:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        libc.prctl(_PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)  # the sandboxed code adopts nothing: it is all the reaper's
        return
    os.closerange(3, _highest_fd() + 1)  # the sandbox's pipes are its own: the other end must see it hang up
    try:
        pidfd: int | None = os.pidfd_open(child)
        _reaped_child.append(pidfd)
    except (AttributeError, OSError):
        pidfd = None
        _reaped_child.append(-child)  # no pidfds (Linux before 5.3): the pid, which is ours until waited for
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    status = _wait_for(child, pidfd)
    if pidfd is None:
        _reaped_child.clear()
    _end_all_children()
    _exit_as(status)


def ended_children() -> Iterator[tuple[int, int]]:
    """Every child that has ended and can be reaped, reaped now without waiting, as (pid, wait status)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def _wait_for(child: int, pidfd: int | None) -> int:
    """The child's wait status; orphans handed to this process on the way are reaped as they end (a zombie still
    counts against the sandbox user's process limit). Where the kernel has pidfds the wait is on the child's: a
    child that another process of the sandbox's user traces is not reported to waitpid until the tracer lets go
    (which it need never do), but its pidfd says it has ended, and /proc says how. A SIGCHLD wakes the wait (through
    a pipe the signal writes to), so orphans are reaped as they end, not a poll's timeout later."""
    if pidfd is None:
        while True:
            try:
                found, status = os.waitpid(-1, 0)
            except ChildProcessError:
                return 0x9  # not ours to wait for any more: only a lost child, which counts as killed
            if found == child:
                return status
    woken, wake = os.pipe()
    for fd in (woken, wake):
        os.set_blocking(fd, False)
    signal.set_wakeup_fd(wake)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a handler, so the signal writes to the pipe
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    poller.register(woken, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll(1000)}
        if woken in ready:
            try:
                while os.read(woken, 512):
                    pass
            except BlockingIOError:
                pass
        for pid, status in ended_children():
            if pid == child:
                return status
        if pidfd in ready:  # ended, and not reaped: held by a tracer
            return _status_in_proc(child)


def _stat_fields(pid: int | str) -> list[bytes]:
    """The fields of ``/proc/PID/stat`` from the third (the state) on, after a command name that may hold spaces and
    parentheses; none where the process has gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rpartition(b")")[2].split()
    except OSError:
        return []


def _status_in_proc(pid: int) -> int:
    """A zombie's wait status, as the kernel keeps it (``exit_code``, the 52nd field of ``/proc/PID/stat``)."""
    try:
        return int(_stat_fields(pid)[49])
    except (ValueError, IndexError):
        return 0x9


def _end_all_children() -> None:
    """Kill this process's children until none of them lives: each one killed hands its own children to this
    process (a subreaper), so the tree is ended from the top down, however it forked or detached. A zombie a
    tracer holds is left (it runs nothing; init reaps it once this process has gone)."""
    pause = 0.001
    while True:
        living = [pid for pid, zombie in _children() if not zombie]
        for pid in living:
            _kill(pid)
        for _ in ended_children():
            pass
        if not living:
            return
        time.sleep(pause)  # killed processes end within a millisecond or two; their children are ours then
        pause = min(pause * 2, 0.02)


def _children() -> list[tuple[int, bool]]:
    """This process's children, each with whether it is a zombie, from ``/proc`` (state and ``ppid`` are the third
    and fourth fields of ``/proc/PID/stat``, after a command name that may hold spaces and parentheses)."""
    me, found = os.getpid(), []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(entry.name)  # none for a process that ended while we looked
        if len(fields) > 1 and int(fields[1]) == me:
            found.append((int(entry.name), fields[0] in (b"Z", b"X")))
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _highest_fd() -> int:
    try:
        return max(int(fd) for fd in os.listdir("/proc/self/fd"))
    except (OSError, ValueError):
        return 1023


def _exit_as(status: int) -> None:
    """End this process as the child ended: the same exit code, or killed by the same signal (so heurist reads the
    reaper's status as the sandboxed process's)."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig != signal.SIGKILL and sig in signal.valid_signals():
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass
        os.kill(os.getpid(), sig)
        os._exit(128 + sig)  # a signal whose default is not to end a process
    os._exit(os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else 1)


def main() -> None:
    args = sys.argv[1:]
    reap = bool(args) and args[0] == "--reap"
    args = args[1:] if reap else args
    if len(args) < 3 or args[1] != "--":
        sys.exit("usage: python -m envs.limited [--reap] LIMITS_JSON -- CMD ...")
    limits = json.loads(args[0])
    fresh_signals(python=False)  # for the command it becomes (exec keeps what is blocked or ignored)
    try:
        if reap:
            become_reaper()
        confine_self(limits)
    except (PrivilegeError, OSError) as exc:
        sys.exit(f"heurist's sandbox refused to start: {exc}")
    cpu = int(limits["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    command = args[2:]
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
