"""Files others read are written whole or not at all: a temp file in the same folder, renamed over."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import BinaryIO

# What atomic_write's temp files are called: "." + the file's name + "." + mkstemp's 8 characters + ".tmp".
_TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{8}\.tmp")


def open_regular(path: Path) -> BinaryIO:
    """``path`` opened for reading, if it is a regular file; otherwise OSError (EINVAL, "not a regular file").

    A run directory may come from elsewhere: a FIFO in a ledger's or a lock's place blocked its reader until someone
    wrote to it (`heurist show` hung), and a link to /dev/zero is a line without end. Opened without blocking, so
    that a FIFO is seen for what it is before anything waits on it."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def irregular_entries(root: Path) -> list[Path]:
    """Everything under ``root`` that is not a regular file or a folder (a link, a FIFO, a socket, a device), looked
    at without following links; OSError for a folder that cannot be listed or an entry that cannot be looked at,
    since ``os.walk`` would skip it silently and what it holds would go unseen. An entry or folder removed since it
    was listed is no longer there to check (git's and Chroma's own temporary files come and go).

    For folders heurist and its libraries write only plain files into (a workspace's ``.git``, a memory store),
    which may come from elsewhere: a link there made git or Chroma read or write outside, a FIFO wait for ever."""
    def unlistable(exc: OSError) -> None:
        if not isinstance(exc, FileNotFoundError):
            raise exc

    found = []
    for folder, dirs, files in os.walk(root, onerror=unlistable):  # a linked folder is listed, never entered
        for name in (*dirs, *files):
            entry = Path(folder, name)
            try:
                mode = entry.lstat().st_mode
            except FileNotFoundError:
                continue
            if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                found.append(entry)
    return found


def atomic_write(path: Path, text: str) -> None:
    """Write a file others may read: a temp file renamed over it, so it is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        _write_and_rename(path, text)
    except FileNotFoundError:
        # Its temp file was swept: a process that took the folder's lock (``heurist resume`` of a run whose page
        # ``heurist report`` was writing) sweeps what a kill left, and can meet a temp file before this write
        # holds it (the flock below). Written once more; a second sweep is not taken at the same moment.
        if not path.parent.is_dir():
            raise
        _write_and_rename(path, text)


def _write_and_rename(path: Path, text: str) -> None:
    # A unique temp name per call: nodes in parallel threads may write the same file at once.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # a write in progress: ``sweep_torn_writes`` leaves it (released at close)
        except OSError:  # a file system without locks (ENOLCK): written all the same, as before
            pass
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; these files are for the user's other tools and readers too
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
            os.replace(tmp, path)
    except BaseException:  # a full disk or a kill mid-write: leave the old file, not a stray temp
        Path(tmp).unlink(missing_ok=True)
        raise


def sweep_torn_writes(root: Path) -> list[Path]:
    """Remove the temp files of writes a kill cut short under ``root`` (the file each was for is whole: its
    old version or none); the removed paths. For a folder whose lock is held (a run directory): a write in
    progress by a process that does not take the lock (``heurist report``) holds its temp file's flock and is
    left alone. git's own folders are left alone."""
    removed = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git"]  # git's own, and large: not walked
        for name in files:
            path = Path(folder) / name
            if not _TEMP_NAME.fullmatch(name) or path.is_symlink() or _being_written(path):
                continue
            try:
                path.unlink(missing_ok=True)
            except OSError:  # a read-only disk: the run stops with its own clear error later
                continue
            removed.append(path)
    return removed


def _being_written(path: Path) -> bool:
    """Whether another process is writing ``path`` now (``atomic_write`` holds its temp file's flock until it is
    renamed): such a temp file is no torn write. One that cannot be opened is not known to be written."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False
