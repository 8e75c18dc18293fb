"""Files others read are written whole or not at all: a temp file in the same folder, renamed over."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write(path: Path, text: str) -> None:
    """Write a file others may read: a temp file renamed over it, so it is whole or absent."""
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique temp name per call: nodes in parallel threads may write the same file at once.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; these files are for the user's other tools and readers too
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk or a kill mid-write: leave the old file, not a stray temp
        Path(tmp).unlink(missing_ok=True)
        raise
