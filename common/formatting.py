"""Numbers as every human-facing view prints them (summary, live view, `heurist runs`)."""

from __future__ import annotations


def score_text(value: float | None) -> str:
    """A mean return, or ``n/a`` where there is none (no completed episode)."""
    return "n/a" if value is None else f"{value:.2f}"
