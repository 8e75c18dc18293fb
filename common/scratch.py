"""Scratch folders heurist makes in the system's temp folder, and the sweep of those whose maker died.

An evaluation's scratch folder (its sandboxes' private folders: the policy's log, its step counts) and a fork
server's home are removed by the process that made them when it is done. A process killed with kill -9, or a Ray
worker killed mid-shard (a forced cancel, a node's memory monitor), cannot, and nothing removed them after it.

Each such folder holds a lock file that its maker keeps ``flock``'d for the folder's life. A folder whose lock no
process holds is an orphan: the next heurist process to make a scratch folder of that kind removes it. A lock, not a
pid: a pid can be reused, or belong to another PID namespace sharing the temp folder, and a live evaluation's folder
must never be taken. The lock file is locked before it takes its name, so a sweep never sees one not yet held.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import threading
from pathlib import Path

OWNER = ".heurist-owner"  # the lock file: present only once its maker holds it
_swept: set[str] = set()  # the kinds this process has swept (once each: a sweep lists the temp folder)
_sweeping = threading.Lock()


class ScratchDir:
    """A folder ``heurist-KIND-...`` in the temp folder, held by this process until ``remove``."""

    def __init__(self, kind: str) -> None:
        sweep_orphans(kind)
        self.path = Path(tempfile.mkdtemp(prefix=f"heurist-{kind}-"))
        self._fd = -1
        try:
            claim = self.path / f"{OWNER}.new"
            self._fd = os.open(claim, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            fcntl.flock(self._fd, fcntl.LOCK_EX)  # held for the folder's life; released by the kernel if this dies
            os.rename(claim, self.path / OWNER)
        except BaseException:  # a full disk, say: no folder left half made
            self.remove()
            raise

    def remove(self) -> None:
        """The folder and everything in it, then the lock."""
        shutil.rmtree(self.path, ignore_errors=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def sweep_orphans(kind: str) -> list[Path]:
    """Remove this kind's scratch folders whose maker has ended (their lock is free); what was removed. Folders
    without a lock file (another version's, or someone else's) are left alone."""
    with _sweeping:
        if kind in _swept:
            return []
        _swept.add(kind)
    removed = []
    for folder in Path(tempfile.gettempdir()).glob(f"heurist-{kind}-*"):
        try:
            fd = os.open(folder / OWNER, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError:  # no lock file (not one of these), a link, no permission
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its maker is alive
            os.close(fd)
            continue
        try:
            if not folder.is_symlink():
                shutil.rmtree(folder, ignore_errors=True)
                removed.append(folder)
        finally:
            os.close(fd)
    return removed


__all__ = ["OWNER", "ScratchDir", "sweep_orphans"]
