"""What this machine's sandbox actually gives, asked rather than assumed, for results and ``heurist doctor``.

``containment()`` says in words which of the layers of ``envs/sandbox.py`` apply here;
``probe_privileges()`` asks a sandboxed process what it holds; ``require_usable()`` refuses,
in one line with its fix, a machine where sandboxed processes cannot start.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from common.errors import HeuristError
from envs.cgroups import cgroups_available, pids_cgroups_work
from envs.isolation import filesystem_confined, netns_prefix, sandbox_user
from envs.limits import Limits
from envs.sandbox import run_sandboxed


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


def containment(limits: Limits | None = None) -> dict[str, str]:
    """What this machine actually gives a worker, in words, for results and `heurist doctor`."""
    limits = limits or Limits()
    confined = filesystem_confined(limits)
    if limits.network_isolation and confined:
        net = "network namespace (bubblewrap)"
    elif limits.network_isolation and netns_prefix():
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
        "process": "policy in its own process apart from the env and the score; process groups SIGKILLed on timeout; "
                   + ("what a sandbox leaves behind ends with it: " + ("its PID namespace" if confined else
                      "its cgroups" if cgroups_available() else "a reaper above it")),
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
