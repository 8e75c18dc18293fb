"""The two consoles every command prints to: results on stdout, progress and errors on stderr.

Text that did not come from heurist itself (a policy's error, a test's output, a model's reply,
a path the user gave) goes through ``shown``: control characters become visible escapes and
Rich markup is escaped, so it is displayed, never interpreted. ``RedactingStream`` wraps the
process's stdout and stderr in ``cli.main.main``, so no secret of heurist's environment reaches
the terminal whatever printed it.
"""

import fcntl
import io
import json
import os
import sys
from typing import Any

from rich.console import Console
from rich.markup import escape

from common.safe_text import one_line, printable, redact


class _Console(Console):
    """Rich's console, but a reader gone is no reason to stop heurist."""

    def on_broken_pipe(self) -> None:
        """The pipe's reader is gone (`heurist ... | tee LOG` stopped with heurist by a group's SIGTERM): what this
        console prints from now on goes nowhere, and the command goes on (a stop still recorded, its exit status its
        own). Rich's default raises SystemExit(1) wherever the print was, in the middle of recording a stop."""
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, self.file.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        finally:
            os.close(devnull)


# Piped output is read by grep and scripts: never truncate a task id to fit 80 columns.
out = _Console(width=None if sys.stdout.isatty() else 200, emoji=False)
err = _Console(stderr=True, emoji=False)


def shown(text: Any) -> str:
    """Untrusted text for a console string that may hold markup: inert, visible, never interpreted."""
    return escape(printable(str(text)))


def clipped(text: Any, chars: int) -> str:
    """At most ``chars`` of a recorded text (JSON for what is not text), and how much more there was: a reply of
    megabytes, or a 20 MB reason in a campaign ledger from elsewhere, printed whole held the terminal for minutes."""
    text = text if isinstance(text, str) else json.dumps(text, default=str)
    return text if len(text) <= chars else text[:chars] + f" … ({len(text) - chars} more chars)"


def shown_line(text: Any) -> str:
    """As ``shown``, for a place that is one line: its line breaks written out, so it cannot add a line of its own."""
    return escape(one_line(str(text)))


class RedactingStream(io.TextIOBase):
    """A text stream that writes through to another with every secret value redacted (``common.safe_text``)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        # Whatever the stream's encoding, a character it cannot take (a lone surrogate) is written as an escape.
        encoding = getattr(self._inner, "encoding", None) or "utf-8"
        self._inner.write(redact(text).encode(encoding, "backslashreplace").decode(encoding))
        return len(text)

    def flush(self) -> None:
        self._inner.flush()

    def isatty(self) -> bool:
        return self._inner.isatty()

    def fileno(self) -> int:
        return self._inner.fileno()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._inner.encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return self._inner.errors


def say_skipped(count: int, where: str, consequence: str) -> None:
    """The warning of a reader that skipped ``count`` lines of a ledger it could not read (``where``, a path or words,
    shown as text), and what their loss means for what it prints."""
    err.print(f"warning: {count} unreadable line(s) in {printable(where)} skipped (torn by a crash or damaged); "
              f"{consequence}", highlight=False, soft_wrap=True, markup=False)


_stopped_said = False


def new_command() -> None:
    """A command starts (``cli.main``): it has said nothing of being stopped yet, whatever one before it in this
    process said (tests run commands in-process one after another)."""
    global _stopped_said
    _stopped_said = False


def say_stopped(text: str) -> None:
    """The line that says heurist was stopped, once per command (a command that says how to continue, then exits
    130, is not followed by a bare "interrupted"), unwrapped (a path to resume is copied from it whole), where a
    terminal may already be gone (SIGHUP: a write then fails with EIO, which must not turn the stop into a traceback
    and another exit status)."""
    global _stopped_said
    if _stopped_said:
        return
    _stopped_said = True
    try:
        err.print(text, markup=False, highlight=False, soft_wrap=True)
    except OSError:
        pass


def stdout_for_json_only():
    """A text stream on this process's stdout, for a command's one JSON object; stdout itself (descriptor 1) goes
    to stderr from now on, for the rest of the process.

    ``--json`` promises one JSON object and nothing else on stdout, but a library prints where it likes: Ray's
    driver printed a lost node's raylet messages on stdout, before and after the JSON (a red-team review,
    2026-12-05). Not put back: Ray's threads print until the process ends. What is written here is redacted as
    everything heurist prints is (``RedactingStream``)."""
    if getattr(sys.stdout, "_inner", sys.stdout) is not sys.__stdout__:
        return _PrintedJson()  # a caller's own stream (the command run inside another program): printed to it
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError, AttributeError):  # AttributeError: no stderr at all (``2>&-``)
            pass
    # Above the three standard descriptors (with stderr closed, a plain dup took 2's place and the redirection
    # below put stdout back on 1) and not inherited by the processes heurist starts.
    kept = fcntl.fcntl(1, fcntl.F_DUPFD_CLOEXEC, 3)
    try:
        os.fstat(2)
        os.dup2(2, 1)
    except OSError:  # stderr closed: what libraries print goes nowhere, rather than into the JSON
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    return _RedactedJson(os.fdopen(kept, "w", encoding="utf-8"))


class _RedactedJson:
    def __init__(self, stream) -> None:
        self.stream = stream

    def print(self, text: str) -> None:
        self.stream.write(redact(text) + "\n")
        self.stream.flush()


class _PrintedJson:
    def print(self, text: str) -> None:
        print(text)
