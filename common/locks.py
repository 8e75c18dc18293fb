"""One process at a time on a folder: an exclusive ``flock`` on its lock file, and whether someone holds it.

Run directories (``store.rundir``) and campaign directories (``campaign.record``) both use it. A
``flock`` goes away with the process that held it, so a kill -9 never leaves a folder locked.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from common.files import open_regular


@contextmanager
def exclusive(lock: Path, busy: Callable[[], Exception]) -> Iterator[None]:
    """Hold ``lock`` for the block; raise ``busy()`` at once when another process holds it."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise busy() from None
        yield
    finally:
        os.close(fd)


def held(lock: Path) -> bool:
    """Whether a process holds ``lock`` now (a missing lock file is held by no one)."""
    if not lock.exists():
        return False
    try:
        file = open_regular(lock)  # flock needs no write access: this works on a read-only disk
    except OSError:  # a FIFO or a device in the lock's place (a run directory from elsewhere): no process's lock
        return False
    fd = file.fileno()
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        file.close()
    return False
