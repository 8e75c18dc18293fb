"""What the loop records about itself: ledger lines found or counted, and an iteration as the ledger keeps it.

Every node may run twice after a crash, so a ledger line is written only if the run's ledger
does not hold it yet (``recorded``); what a run has spent is counted from records that survive
a kill (``spent_by``): env steps from the ledger, tokens and dollars from the transcripts.
"""

from __future__ import annotations

import time
from typing import Any

from common.events import LedgerEvent, read_events, steps_in
from graph.context import Services
from graph.state import RunState, Spent

MAX_RECORDED_CHARS = 50_000  # an edit's diff or a test file, as the ledger keeps it


def oneline(text: str, limit: int = 72) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def events(s: Services) -> list[LedgerEvent]:
    return read_events(s.ledger)[0]


def recorded(s: Services, kind: type[LedgerEvent], records: list[LedgerEvent] | None = None, **match: Any) -> bool:
    """Whether this run's ledger already holds the record (a node run again must not add it twice)."""
    records = events(s) if records is None else records
    return any(isinstance(r, kind) and getattr(r, "run_id", None) == s.run_id
               and all(getattr(r, k) == v for k, v in match.items()) for r in records)


def spent_by(s: Services, records: list[LedgerEvent]) -> Spent:
    """What the run has spent so far (the state's ``spent``)."""
    env_steps = sum(steps_in(r) for r in records)
    elapsed = s.elapsed_before + (time.monotonic() - s.session_started)
    return {"env_steps": env_steps, "tokens": s.usage.tokens, "usd": round(s.usage.usd, 6),
            "unpriced_tokens": s.usage.unpriced_tokens, "estimated_tokens": s.usage.estimated_tokens,
            "llm_calls": s.usage.calls, "elapsed_s": round(elapsed, 1)}


def kept_tests(state: RunState) -> list[str]:
    """The new tests verify kept (fail-to-pass), in name order."""
    decisions = (state.get("verification") or {}).get("new_tests") or {}
    return sorted(name for name in (state.get("tests") or {}) if decisions.get(name, {}).get("kept"))


def what_was_tried(state: RunState) -> dict[str, Any]:
    """The iteration's analyses, edit and tests as the ledger keeps them, so a report can show a rejected edit too."""
    candidate = state.get("candidate") or {}
    edit = (state.get("coder") or {}).get("edit") or {}
    return {"baseline_sha256": state["baseline"]["sha256"], "rationale": edit.get("rationale"),
            "candidate_sha256": ((state.get("verification") or {}).get("candidate") or {}).get("sha256"),
            "analyses": {role: oneline(report.get("summary", ""), 600)
                         for role, report in (state.get("analyses") or {}).items()},
            "diff": candidate.get("diff", "")[:MAX_RECORDED_CHARS],
            "tests_written": {name: source[:MAX_RECORDED_CHARS] for name, source in (state.get("tests") or {}).items()},
            "check_error": state.get("check_error")}
