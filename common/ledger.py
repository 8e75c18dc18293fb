"""The append-only trial ledger: one JSON line per event, never rewritten, never deleted.

Each evaluation writes an ``eval_started`` line before any episode runs and an
``eval_finished`` line at the end, so an evaluation killed in between is visible as
started-but-never-finished. Every line is redacted of secrets (``common.safe_text``) as it is
written; transcripts are written through the same append. Appends take an exclusive ``flock`` and are fsync'ed, so two
processes appending at once interleave whole lines; an append that fails (a full disk)
takes back what it wrote, and a reader skips (and counts) a torn last line left by a
crash mid-write rather than failing.
"""

from __future__ import annotations

import fcntl
import json
import os
from pathlib import Path
from typing import Any, BinaryIO, Callable, Iterator

from pydantic import BaseModel

from common.errors import LedgerError
from common.files import open_regular
from common.safe_text import redact_deep


class Ledger:
    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def append(self, record: BaseModel | dict[str, Any]) -> None:
        data = record.model_dump(mode="json", by_alias=True) if isinstance(record, BaseModel) else record
        # No secret of heurist's environment is ever written, whoever put it in the record (common.safe_text);
        # its strings are redacted, never its numbers or its structure.
        line = (json.dumps(redact_deep(data), separators=(",", ":")) + "\n").encode()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LedgerError(f"cannot write the ledger {self.path}: {exc.strerror}; choose a writable --ledger path") from exc
        size = None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            # A torn line from an earlier crash must not swallow this record: start on a fresh line.
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line
            view = memoryview(line)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except OSError as exc:
            if size is not None:  # a full disk took part of the line: take it back, so no torn line is left
                try:
                    os.ftruncate(fd, size)
                except OSError:
                    pass
            raise LedgerError(f"cannot append to the ledger {self.path}: {exc.strerror}") from exc
        finally:
            os.close(fd)

    def read(self) -> tuple[list[dict[str, Any]], int]:
        """All readable records (JSON objects) in order, and how many lines were not (torn or corrupt)."""
        if not self.path.exists():
            return [], 0
        records, bad = [], 0
        try:
            with open_regular(self.path) as fh:
                for raw in _lines(fh):
                    bad += _take(raw, records)
        except OSError as exc:  # a folder where the ledger should be, no permission: one line naming it
            raise LedgerError(f"cannot read the ledger {self.path}: {exc.strerror}") from None
        return records, bad


def check_ledger_file(path: Path) -> None:
    """Refuse to make ``path`` a ledger if it already holds something else: appends never rewrite, so a policy, a
    config or notes given by mistake (``heurist eval --ledger victim.py``) would have ledger lines added to their end
    for good. One of a ledger's first lines is a record (``{"time":...,"event":"..."}``, as ``append`` writes it); a
    missing or empty file is a new ledger."""
    try:
        with open_regular(path) as fh:
            head = fh.read(1 << 16)
    except OSError:  # none there (a new ledger), or a folder or a FIFO (append says why, naming the path)
        return
    # Any of its first lines, not just the first: a crash or a power cut can leave the first record torn or zeroed,
    # and appends go on after it (Ledger.read skips it); a record begins {"time": or {"event": as append writes it.
    if head.strip(b"\0\n") and not any(line.lstrip(b"\0").startswith((b'{"time":', b'{"event":'))
                                        for line in head.split(b"\n")[:64]):
        raise LedgerError(f"{path} is not a heurist ledger (none of its first lines is a ledger record), and a ledger "
                          f"is only ever appended to; give --ledger a new file or an existing ledger")


class LedgerTail:
    """A ledger read as it grows: each ``read`` parses only the lines appended since the last, so a process that
    reads its ledger often (a campaign's driver, several times per run it starts or ends) pays for the new lines,
    not for the whole file each time.

    Only whole lines are taken: a line still being written (no newline yet) is read once it is whole, and a torn
    one, which the next append ends with a newline, counts as unreadable then, as ``Ledger.read`` counts it. A file
    that is replaced or shorter than what was read (never by heurist: a ledger is append-only) is read again from
    its start."""

    def __init__(self, ledger: Ledger, parse: Callable[[dict[str, Any]], Any] = lambda record: record) -> None:
        self.ledger = ledger
        self.parse = parse  # each record as the reader keeps it (a typed event), or None to leave it out
        self.records: list[Any] = []
        self.bad = 0
        self._file: tuple[int, int] | None = None  # (device, inode) of the file read
        self._offset = 0  # bytes taken: up to the end of the last whole line
        self._skipping = False  # within a line longer than MAX_LINE_BYTES, counted once as damaged

    def read(self) -> tuple[list[Any], int]:
        """Every readable record so far as ``parse`` gave it, in order (a new list), and how many lines were not
        records (torn or corrupt; what ``parse`` leaves out is not counted)."""
        path = self.ledger.path
        try:
            with open_regular(path) as fh:
                stat = os.fstat(fh.fileno())
                if self._file != (stat.st_dev, stat.st_ino) or stat.st_size < self._offset:
                    self.records, self.bad, self._offset, self._skipping = [], 0, 0, False
                    self._file = (stat.st_dev, stat.st_ino)
                fh.seek(self._offset)
                while raw := fh.readline(MAX_LINE_BYTES + 1):
                    if self._skipping:  # the rest of a line too long to be heurist's, read past in pieces
                        self._offset += len(raw)
                        self._skipping = not raw.endswith(b"\n")
                        continue
                    if not raw.endswith(b"\n"):
                        if len(raw) <= MAX_LINE_BYTES:
                            break  # a line not yet whole: taken when it is
                        self._offset += len(raw)  # no writer of heurist's makes it: damaged, and not read again
                        self.bad += 1
                        self._skipping = True
                        continue
                    self._offset += len(raw)
                    taken: list[dict[str, Any]] = []
                    self.bad += _take(raw, taken)
                    for record in taken:
                        parsed = self.parse(record)
                        if parsed is not None:
                            self.records.append(parsed)
        except FileNotFoundError:
            self.records, self.bad, self._offset, self._file = [], 0, 0, None
        except OSError as exc:
            raise LedgerError(f"cannot read the ledger {path}: {exc.strerror}") from None
        return list(self.records), self.bad


MAX_LINE_BYTES = 64 << 20  # a ledger or transcript line longer than this is damaged (heurist's longest: a few MB)


def _lines(fh: BinaryIO) -> Iterator[bytes]:
    """The file's lines, each at most ``MAX_LINE_BYTES``: a longer one (a file with no newline for gigabytes) is read
    past in pieces and given as one damaged line, not held whole in memory."""
    while raw := fh.readline(MAX_LINE_BYTES + 1):
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            while raw and not raw.endswith(b"\n"):
                raw = fh.readline(1 << 20)
            yield b"\0 a line too long to read"
            continue
        yield raw


def _take(raw: bytes, records: list[dict[str, Any]]) -> int:
    """Add the record one ledger line holds to ``records``; 1 when the line holds none (torn or corrupt), else 0."""
    if not raw.strip():
        return 0
    try:
        record = json.loads(raw)
    except (ValueError, RecursionError):  # not JSON (bytes that are not text: UnicodeDecodeError),
        record = None  # or JSON nested deeper than the parser goes: a damaged line either way
    if isinstance(record, dict):
        records.append(record)
        return 0
    return 1
