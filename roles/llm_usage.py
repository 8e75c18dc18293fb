"""What model calls cost, shared by every role of a run, and the errors that end a call.

Tokens and dollars are counted as calls are made (abandoned ones included) and recounted from the
transcripts on resume (``runner.lifecycle.usage_from_transcripts``); the token and USD budgets are
checked before every call, so no call starts past them.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from common.errors import HeuristError


class LLMError(HeuristError):
    """A model call that failed after its retries, or a reply that never matched its schema."""


class ToolsUnsupported(LLMError):
    """The endpoint refused chat completions `tools`: a tool-using role asks for each call as JSON instead."""


class ReplayEnded(LLMError):
    """A replay asked for a coder turn past the recorded loop's last: the recorded loop stopped there."""


class BudgetSpent(LLMError):
    """The run's token or USD budget is spent: no further model call is made."""


@dataclass
class Meter:
    """What the calls made in one thread, inside ``Usage.metered``, cost (a coder loop's own turns, while other
    loops call beside it)."""

    tokens: int = 0
    usd: float = 0.0
    unpriced_tokens: int = 0


class Usage:
    """Tokens and dollars spent, shared by every role of a run (thread-safe: analysts run in parallel).

    With limits set, ``check`` refuses a call once either is reached, which makes the token
    and USD budgets hard stops: the call that would overrun them is never sent.
    """

    def __init__(self, tokens: int = 0, usd: float = 0.0, calls: int = 0,
                 max_tokens: int | None = None, max_usd: float | None = None, unpriced_tokens: int = 0,
                 estimated_tokens: int = 0):
        self._lock = threading.Lock()
        self.tokens, self.usd, self.calls = tokens, usd, calls
        self.unpriced_tokens = unpriced_tokens  # of models with no price: never counted as $0
        self.estimated_tokens = estimated_tokens  # counted by heurist from the text: the server gave no counts
        self.max_tokens, self.max_usd = max_tokens, max_usd
        self._meters = threading.local()

    @contextmanager
    def metered(self) -> Iterator[Meter]:
        """Count, besides the run's totals, what this thread's calls cost until the block ends."""
        meter = Meter()
        self._meters.current = meter
        try:
            yield meter
        finally:
            self._meters.current = None

    def check(self) -> None:
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            raise BudgetSpent(f"token budget spent ({self.tokens:,} of {self.max_tokens:,})")
        if self.max_usd is not None and self.usd >= self.max_usd:
            raise BudgetSpent(f"USD budget spent (${self.usd:.4f} of ${self.max_usd:.2f})")

    def add(self, tokens: int, usd: float | None, estimated: bool = False) -> None:
        """One call's tokens and cost (None: its model has no price); ``estimated``: the server gave no counts."""
        meter = getattr(self._meters, "current", None)
        with self._lock:
            self.tokens += tokens
            self.estimated_tokens += tokens if estimated else 0
            if usd is None:
                self.unpriced_tokens += tokens
            else:
                self.usd += usd
            self.calls += 1
        if meter is not None:
            meter.tokens += tokens
            meter.usd += usd or 0.0
            meter.unpriced_tokens += tokens if usd is None else 0
