"""Where a campaign stands: each planned run's state from the campaign ledger and its own run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from campaign.budget import run_best, run_spent
from campaign.engine import AGAIN
from campaign.record import CampaignDir, CampaignEnded, RunEnded, RunLaunched
from store.rundir import run_status


def campaign_status(directory: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """One row per planned run, and the campaign's totals and state."""
    campaign = CampaignDir(directory)
    record = campaign.record()
    events, unreadable = campaign.events_read()
    rows = []
    driven = campaign.driven()
    for planned in record.runs:
        attempts = sum(1 for e in events if isinstance(e, RunLaunched) and e.key == planned.key)
        ends = [e for e in events if isinstance(e, RunEnded) and e.key == planned.key]
        run_dir = campaign.run_dir(planned.key)
        inside = campaign.run_inside(planned.key)  # a run folder linked out of the campaign is not read
        spent = run_spent(run_dir) if inside and run_dir.exists() else {"env_steps": 0, "tokens": 0, "usd": 0.0,
                                                                        "estimated_tokens": 0}
        final = ends[-1] if ends and ends[-1].status not in AGAIN else None
        if not inside:
            status, reason, best = "not read", "its folder is a link out of the campaign", None
        elif final is not None:  # a run failed or cut off still has the best its own records show
            status, reason = final.status, final.reason
            best = final.best_mean if final.best_mean is not None else run_best(run_dir)
        elif attempts:
            live = run_status(run_dir) if run_dir.exists() else "created"
            last = ends[-1].status if ends else "stopped"
            if live == "running":
                status = "running"
            elif driven and not campaign.stop_requested():
                # the driver holds the campaign and starts it again itself (it read "resume it"), unless asked to stop
                status = f"{last}; the driver starts it again"
            else:
                status = f"{last} (resume it)"
            reason, best = (ends[-1].reason if ends else None), run_best(run_dir)
        else:
            status, reason, best = "not started", None, None
        rows.append({"key": planned.key, "task": planned.task, "status": status, "attempts": attempts,
                     "env_steps": int(spent["env_steps"]), "tokens": int(spent["tokens"]), "usd": spent["usd"],
                     "estimated_tokens": int(spent["estimated_tokens"]),
                     "best_mean": best, "reason": reason})
    ended = [e for e in events if isinstance(e, CampaignEnded)]
    if driven:
        state = "running"
    elif ended and not any(isinstance(e, RunLaunched) for e in events[events.index(ended[-1]):]):
        state = ended[-1].status
    else:
        state = "stopped (resume it)" if events else "created"
    final = ("finished", "paused", "failed", "skipped", "stopped", "out_of_time")
    summary = {"name": record.name, "state": state, "runs": len(rows),
               "ended": sum(1 for r in rows if r["status"] in final),
               "env_steps": sum(r["env_steps"] for r in rows), "tokens": sum(r["tokens"] for r in rows),
               "unreadable": unreadable}
    return rows, summary
