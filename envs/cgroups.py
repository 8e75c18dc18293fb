"""The pids, memory and cpu cgroups that bound a whole sandboxed process tree, where this machine allows them.

Resource limits bind one process; a cgroup binds the tree: its process count (a fork bomb stops at
``Limits.max_processes``), its memory with its RAM folders, and its share of the CPUs. What this
machine offers is probed once (``cgroups_available``) and reported by ``envs.containment``.
"""

from __future__ import annotations

import itertools
import os
import signal
import time
from functools import lru_cache
from pathlib import Path

from envs.limits import Limits


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
        name = f"{_own_prefix()}{next(_cgroup_serial)}"
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
        # Killed processes leave the group within a millisecond or two: look again soon, then less often (at most
        # about a second in all, as before). A flat 20 ms was most of the time every pair spent closing.
        pauses = [0.001 * 2 ** min(i, 4) for i in range(8)] + [0.02] * 45
        for pause in pauses:
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
            time.sleep(pause)
        for folder in folders:
            try:
                folder.rmdir()
            except OSError:
                pass


_cgroup_serial = itertools.count()


def _own_prefix() -> str:
    """The start of the name of every sandbox cgroup this process makes (its pid: ``_remove_orphans`` reads it)."""
    return f"heurist-{os.getpid()}-"


def own_sandbox_cgroups() -> list[Path]:
    """The cgroups of this process's sandboxes that exist now, of every controller heurist uses."""
    return [group for controller in ("pids", "memory", "cpu") for parent in _cgroup_parents(controller)
            for group in parent.glob(f"{_own_prefix()}*")]


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
