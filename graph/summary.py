"""The run's summary: what was reached, on which seeds, at what cost, written when the run finishes.

Every score names its task, protocol, split, seeds and episodes. ``summary.json`` is for
tools; ``summary.md`` is what a person reads in the morning.
"""

from __future__ import annotations

import json
from typing import Any

from envs.safe_text import redact, redact_deep
from graph.services import Services
from graph.workspace import atomic_write


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def write_summary(s: Services, state: dict[str, Any], holdout: dict[str, Any] | None) -> dict[str, Any]:
    history = state.get("history", [])
    dev = s.dev_seeds()
    summary = {
        "run_id": s.run_id, "task": s.spec.id, "protocol": s.protocol, "target": s.spec.target,
        "offline": s.llm is None, "status": state.get("status"), "stop_reason": state.get("stop_reason"),
        "dev": {"split": "dev", "seeds": dev, "episodes": len(dev), "start_mean": state["start"]["mean"],
                "best_mean": state["incumbent"]["mean"]},
        "holdout": holdout, "iterations": state.get("iteration", 0),
        "accepted": sum(1 for h in history if h["accepted"]),
        "rejected": sum(1 for h in history if not h["accepted"]),
        "best_commit": state["incumbent"]["commit"], "best_policy": str(s.run_dir / "best_policy.py"),
        "best_sha256": state["incumbent"]["sha256"],  # of the bytes scored, committed and copied to best_policy.py
        "spent": state.get("spent"), "history": history,
    }
    atomic_write(s.run_dir / "summary.json", json.dumps(redact_deep(summary), indent=2))
    lines = [f"# heurist run {s.run_id}", "",
             f"Task {s.spec.id}, protocol {s.protocol}, {'offline roles' if s.llm is None else 'model roles'}. "
             f"Stopped: {summary['stop_reason']}.", "",
             f"- Dev split, seeds {dev[0]}..{dev[-1]} ({len(dev)} episodes): mean {_fmt(summary['dev']['start_mean'])}"
             f" at the start, {_fmt(summary['dev']['best_mean'])} for the best policy (target {s.spec.target})."]
    if holdout:
        lines.append(f"- Holdout split, seeds {holdout['seeds'][0]}..{holdout['seeds'][-1]} ({holdout['episodes']} "
                     f"episodes, evaluated once): mean {_fmt(holdout['mean'])} ± {_fmt(holdout['std'])}, "
                     f"{holdout['episodes_failed']} failed.")
    spent = state.get("spent") or {}
    lines += [f"- Iterations: {summary['iterations']} ({summary['accepted']} accepted, {summary['rejected']} rejected).",
              f"- Spent: {int(spent.get('env_steps', 0)):,} env steps, {int(spent.get('tokens', 0)):,} LLM tokens, "
              f"${spent.get('usd', 0):.4f}, {spent.get('elapsed_s', 0) / 60:.1f} min.",
              f"- Best policy: {summary['best_policy']} (workspace commit {summary['best_commit'][:10]}, tag heurist-final).",
              "", "| iteration | verdict | dev mean before | candidate | reason |", "|---|---|---|---|---|"]
    for h in history:
        lines.append(f"| {h['iteration']} | {'accepted' if h['accepted'] else 'rejected'} | {_fmt(h['mean_before'])} | "
                     f"{_fmt(h['mean_candidate'])} | {h['reason'].replace('|', '/')[:160]} |")
    atomic_write(s.run_dir / "summary.md", redact("\n".join(lines) + "\n"))
    return summary
