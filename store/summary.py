"""The run's summary: what was reached, on which seeds, at what cost, written when the run finishes.

Every score names its task, protocol, split, seeds and episodes. ``summary.json`` is for
tools; ``summary.md`` is what a person reads in the morning.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from common.files import atomic_write
from common.formatting import at_word, cost_text, finite_number, score_text, tokens_text
from common.safe_text import printable, redact, redact_deep
from envs.tasks import TaskSpec


_MARKDOWN = re.compile(r"([\\`*_\[\]()!<>|#~])")  # what markdown or a table would read: links, images, tags, cells


def _inert(text: str, limit: int = 600) -> str:
    """Text a model or a policy wrote, in one line of markdown that shows it and does nothing else: redacted first
    (an escaped secret is no longer itself), control characters visible (``printable``), no line breaks, and every
    character markdown would read escaped. Past ``limit`` characters it ends at a word, with an ellipsis saying so
    (a reason cut mid-word at 160 lost what it said about the tests)."""
    text = printable(" ".join(redact(str(text)).split()))
    if len(text) > limit:
        text = at_word(text, limit) + " …"
    return _MARKDOWN.sub(r"\\\1", text)


_ESCAPED = re.compile(r"\\([\\`*_\[\]()!<>|#~])")


def as_text(markdown: str) -> str:
    """summary.md as a terminal shows it: the escapes ``_inert`` added taken out again (``-\\>``, ``\\(2 of 2\\)``
    read as noise there), nothing else changed; control characters stay as ``printable`` made them visible."""
    return _ESCAPED.sub(r"\1", markdown)


def _failed(scored: dict[str, Any]) -> int:
    """Dev episodes a scored policy failed (its per-seed return is None)."""
    return sum(r is None for r in (scored.get("per_seed") or {}).values())


def _failed_text(failed: int, episodes: int) -> str:
    return f" (over {episodes - failed} of {episodes} episodes: {failed} failed)" if failed else ""


def control_sentences(control: Any) -> tuple[str, str | None] | None:
    """The holdout's control (``eval.holdout_control``) in a sentence, and a warning where the holdout differs from
    it; None where there is none. Plain text, for summary.md and ``heurist show``."""
    if not isinstance(control, dict) or not control.get("episodes"):
        return None
    line = (f"Control, {control['episodes']} seeds no model has seen (drawn from the run's secret), beside the "
            f"holdout: mean {score_text(control.get('mean'))} ± {score_text(control.get('std'))}, "
            f"{control.get('episodes_failed', 0)} failed.")
    if control.get("differs") is not True:
        return line, None
    p = finite_number(control.get("p_value"))
    return line, (f"The holdout differs from its control beyond chance (p={'n/a' if p is None else format(p, '.2g')}, "
                  f"returns and failures compared): seeds of one task differ only by chance unless the policy tells "
                  f"them apart, and the holdout's are public, so its holdout score is not to be taken as what it "
                  f"scores on seeds it cannot know.")


def _control_lines(control: Any) -> list[str]:
    found = control_sentences(control)
    if found is None:
        return []
    line, warning = found
    return [f"- {line}", *([f"- **{warning}**"] if warning else [])]


def write_summary(run_dir: Path, run_id: str, spec: TaskSpec, protocol: str, offline: bool, dev: list[int],
                  state: dict[str, Any], holdout: dict[str, Any] | None) -> dict[str, Any]:
    """``summary.json`` and ``summary.md`` for the final ``state``; ``dev`` are the dev seeds every mean is on."""
    history = state.get("history", [])
    summary = {
        "run_id": run_id, "task": spec.id, "protocol": protocol, "target": spec.target,
        "offline": offline, "status": state.get("status"), "stop_reason": state.get("stop_reason"),
        # Means over the episodes that completed, with how many failed: a mean that says nothing of them read as a
        # policy at its ceiling when 16 of 20 episodes crashed.
        "dev": {"split": "dev", "seeds": dev, "episodes": len(dev), "start_mean": state["start"]["mean"],
                "start_failed": _failed(state["start"]), "best_mean": state["incumbent"]["mean"],
                "best_failed": _failed(state["incumbent"])},
        "holdout": holdout, "iterations": state.get("iteration", 0),
        "accepted": sum(1 for h in history if h["accepted"]),
        "rejected": sum(1 for h in history if not h["accepted"]),
        "best_commit": state["incumbent"]["commit"], "best_policy": str(run_dir / "best_policy.py"),
        "best_sha256": state["incumbent"]["sha256"],  # of the bytes scored, committed and copied to best_policy.py
        "spent": state.get("spent"), "history": history,
    }
    summary["simplifications"] = state.get("simplifications", [])
    atomic_write(run_dir / "summary.json", json.dumps(redact_deep(summary), indent=2))
    lines = [f"# heurist run {run_id}", "",
             f"Task {spec.id}, protocol {protocol}, {'offline roles' if offline else 'model roles'}. "
             f"Stopped: {_inert(summary['stop_reason'] or '', 400)}.", "",
             f"- Dev split, seeds {dev[0]}..{dev[-1]} ({len(dev)} episodes): mean {score_text(summary['dev']['start_mean'])}"
             f"{_failed_text(summary['dev']['start_failed'], len(dev))} at the start, "
             f"{score_text(summary['dev']['best_mean'])}{_failed_text(summary['dev']['best_failed'], len(dev))} for "
             f"the best policy (target {spec.target})."]
    if holdout:
        lines.append(f"- Holdout split, seeds {holdout['seeds'][0]}..{holdout['seeds'][-1]} ({holdout['episodes']} "
                     f"episodes, evaluated once): mean {score_text(holdout['mean'])} ± {score_text(holdout['std'])}, "
                     f"{holdout['episodes_failed']} failed.")
        lines += _control_lines(holdout.get("control"))
    elif (state.get("incumbent") or {}).get("status") == "broken":
        lines.append("- Holdout split: not evaluated, since the best policy completed no dev episode.")
    spent = state.get("spent") or {}
    lines += [f"- Iterations: {summary['iterations']} ({summary['accepted']} accepted, {summary['rejected']} rejected).",
              f"- Spent: {int(spent.get('env_steps', 0)):,} env steps, "
              f"{tokens_text(int(spent.get('tokens', 0)), int(spent.get('estimated_tokens', 0)))}, "
              f"{cost_text(spent.get('usd', 0), spent.get('unpriced_tokens', 0))}, "
              f"{spent.get('elapsed_s', 0) / 60:.1f} min.",
              f"- Best policy: {summary['best_policy']} (workspace commit {summary['best_commit'][:10]}, tag heurist-final)."]
    for done in summary["simplifications"]:
        b, a = done["before"], done.get("after")
        change = (f"lines {b['lines']} -> {a['lines']}, branches {b['branches']} -> {a['branches']}, AST nodes "
                  f"{b['ast_nodes']} -> {a['ast_nodes']}" if a else "nothing proposed or checked")
        lines.append(f"- Simplify after iteration {done['iteration']}: {'kept' if done['accepted'] else 'not kept'} "
                     f"({change}): {_inert(done['reason'])}")
    lines += ["", "| iteration | verdict | dev mean before | candidate | reason |", "|---|---|---|---|---|"]
    for h in history:
        lines.append(f"| {h['iteration']} | {'accepted' if h['accepted'] else 'rejected'} | {score_text(h['mean_before'])} | "
                     f"{score_text(h['mean_candidate'])} | {_inert(h['reason'])} |")
    atomic_write(run_dir / "summary.md", redact("\n".join(lines) + "\n"))
    return summary
