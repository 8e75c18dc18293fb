"""The campaign's budget, shared out: each run gets its share when it starts, as its own run budget.

A run's share of each kind is what is left (the budget, less what ended runs spent and what runs
in flight were given) divided by the runs not yet started. Runs in flight count at their whole
share, so the runs' iterations stay within the budget (a run's holdout and control evaluations at its end come
after its budget stops it, and are counted in what it spent, not held to its share: docs/campaigns.md); a run
that ends under its share leaves the rest to the runs after it. What a run spent is counted from what survives
a kill: env steps from its ledger, tokens and dollars from its transcripts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from campaign.plan import CampaignBudget
from common.events import IterationDone, RunStarted, read_events, steps_in
from common.ledger import Ledger
from store.transcripts import TranscriptRecorder, call_costs

KINDS = ("env_steps", "tokens", "usd")


def run_spent(run_dir: Path) -> dict[str, float | int]:
    """What one run has spent, from its own records."""
    env_steps = 0
    if (run_dir / "ledger.jsonl").is_file():
        records = read_events(Ledger(run_dir / "ledger.jsonl"))[0]
        env_steps = sum(steps_in(r) for r in records)  # as the run counts its own (graph.bookkeeping.spent_by)
    costs = list(call_costs(TranscriptRecorder(run_dir).read())) if (run_dir / "transcripts").is_dir() else []
    return {"env_steps": env_steps, "tokens": sum(c.tokens for c in costs), "usd": round(sum(c.usd for c in costs), 6),
            "estimated_tokens": sum(c.estimated_tokens for c in costs)}


def run_best(run_dir: Path) -> float | None:
    """A run's best dev mean so far, from its own ledger: its last iteration's incumbent, else its start's (what
    `heurist runs` shows). None where it has scored nothing yet."""
    if not (run_dir / "ledger.jsonl").is_file():
        return None
    records = read_events(Ledger(run_dir / "ledger.jsonl"))[0]
    iterations = [r for r in records if isinstance(r, IterationDone)]
    if iterations:
        return iterations[-1].mean_after
    started = next((r for r in records if isinstance(r, RunStarted)), None)
    start = started.start if started is not None and isinstance(started.start, dict) else {}
    mean = start.get("mean")
    return float(mean) if isinstance(mean, (int, float)) and not isinstance(mean, bool) else None


def share(budget: CampaignBudget, ended: list[dict[str, Any]], in_flight: list[dict[str, Any]],
          not_started: int) -> dict[str, float | int | None] | None:
    """The next run's share of each budgeted kind (None where the campaign sets no limit), or None when the
    campaign has nothing left to give it."""
    out: dict[str, float | int | None] = {}
    for kind in KINDS:
        limit = getattr(budget, kind)
        if limit is None:
            out[kind] = None
            continue
        if kind == "usd":
            used = sum(float(s.get(kind) or 0) for s in ended) + sum(float(a.get(kind) or 0) for a in in_flight)
            part = round((limit - used) / max(1, not_started), 6)
        else:  # counts: whole numbers throughout (a float past 2**53 rounded a share above the budget)
            used = sum(int(s.get(kind) or 0) for s in ended) + sum(int(a.get(kind) or 0) for a in in_flight)
            part = (limit - used) // max(1, not_started)
        if part <= 0:
            return None
        out[kind] = part
    return out


def with_share(config: dict[str, Any], allotment: dict[str, float | int | None], hours_left: float | None) -> dict:
    """The run's config with each budget no larger than its share (and the campaign's hours left)."""
    budget = dict(config.get("budget") or {})
    limits = dict(allotment)
    limits["hours"] = hours_left
    for kind, part in limits.items():
        if part is None:
            continue
        own = budget.get(kind)
        budget[kind] = part if own is None else min(own, part)
    return {**config, "budget": budget}
