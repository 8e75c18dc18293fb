"""Numbers as every human-facing view prints them (summary, live view, `heurist runs`)."""

from __future__ import annotations

import math
from typing import Any


def score_text(value: float | None) -> str:
    """A mean return, or ``n/a`` where there is none (no completed episode) or what a damaged record holds is no
    number (a ledger edited by hand: "internal error" was all `heurist show` said of it)."""
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:.2f}"


def tokens_text(tokens: int, estimated_tokens: int = 0) -> str:
    """LLM tokens spent, saying how many heurist estimated (a server that streams without counts, as llama.cpp's
    does): a total shown as if the server had counted it read as exact, and ran about a fifth low."""
    text = f"{tokens:,} LLM tokens"
    if not estimated_tokens:
        return text
    share = "all" if estimated_tokens >= tokens else f"{estimated_tokens:,}"
    return f"{text} ({share} estimated from the text: the server gave no counts)"


def at_word(text: str, most: int) -> str:
    """``text`` cut to at most ``most`` characters, ending at a word where one ends in the cut's second half (a reason
    cut mid-word lost what it said); the caller adds the mark that says it was cut."""
    cut = text[:most]
    return cut[:cut.rindex(" ")] if " " in cut[most // 2:] else cut


def cost_text(usd: float | None, unpriced_tokens: int = 0, digits: int = 4) -> str:
    """Money spent on models, never $0 for a model with no price: its tokens are named instead."""
    if usd is None or (not usd and unpriced_tokens):
        return f"unpriced ({unpriced_tokens:,} tokens)" if unpriced_tokens else "unpriced"
    text = f"${usd:.{digits}f}"
    return text + (f" + {unpriced_tokens:,} unpriced tokens" if unpriced_tokens else "")


def finite_number(value: Any) -> float | int | None:
    """A finite number from a record's free-form part (a ledger's ``spent``, a holdout), or None: a record edited by
    hand or damaged must not stop a page or a table at its formatting ("internal error")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) and abs(value) < 1e300 else None
