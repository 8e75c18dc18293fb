"""What a sandboxed process can see: its namespaces, its confined file system, and the user it runs as.

Where bubblewrap works (Debian's ``bubblewrap``) a sandboxed process sees only the system, the
interpreter and its packages and heurist's sandbox-side code (``envs/``), read-only, plus what a
job needs (``Confinement``); a private, size-limited ``/tmp`` that is also its home;
``$HEURIST_HOME`` and the run directory hidden; its own PID, IPC, UTS and network namespaces, so
it sees no other process and no network. Else, where this machine allows it, only a new network
namespace (``unshare -n``). ``isolation_prefix`` is the command prefix that applies whichever works.
"""

from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
import tempfile
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict

from envs.limits import Limits

# The only part of heurist a sandboxed process runs (``envs.limited``, ``envs.policy_host``, ``envs.wire``);
# the rest of a checkout (its ``runs/``, say) stays out of sight.
SANDBOX_CODE = Path(__file__).resolve().parent
# What the rest of envs/ imports (errors, paths, redaction), readable too: a policy that imports heurist's
# env code (to try to tamper with it in its own process) gets the same modules it would get outside.
SHARED_CODE = SANDBOX_CODE.parent / "common"
# Who sandboxed processes run as when heurist is root: the conventional unprivileged ``nobody``.
NOBODY = 65534


class Confinement(BaseModel):
    """What one sandboxed process may see beyond the system and heurist's code (both read-only)."""

    model_config = ConfigDict(extra="forbid")

    readable: list[Path] = []  # files or folders, read-only
    hidden: list[Path] = []  # out of sight even where they lie under a readable root
    # Nothing is ever bound writable: a sandboxed process writes only its private /tmp, and heurist takes
    # back nothing but what it asked for, over a pipe, read as untrusted data.


@lru_cache(maxsize=1)
def netns_prefix() -> tuple[str, ...]:
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


def sandbox_user() -> tuple[int, int]:
    """The uid and gid sandboxed processes run as: ``nobody`` when heurist is root, else heurist's own user."""
    if os.geteuid() == 0:
        return NOBODY, NOBODY
    return os.getuid(), os.getgid()


def _system_roots() -> list[str]:
    """What every sandboxed Python needs to read: the system, the interpreter, its packages, heurist's ``envs/``
    and the ``common/`` it imports.

    An allow-list: never ``sys.path`` as a whole (a checkout on it would show its ``runs/``, a user's
    folder on ``PYTHONPATH`` their files), never the whole disk or the whole temp folder.
    """
    roots = {"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/etc", "/sys", "/opt", sys.base_prefix,
             sys.prefix, sys.exec_prefix, sys.base_exec_prefix, *site.getsitepackages(), str(SANDBOX_CODE),
             str(SHARED_CODE)}
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
    from common.paths import heurist_home

    bwrap = _bwrap() if limits.filesystem_isolation else None
    if bwrap is None:
        return list(netns_prefix()) if limits.network_isolation else []
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
    for hidden in dict.fromkeys(p.resolve() for p in [heurist_home(), *confinement.hidden]):
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
