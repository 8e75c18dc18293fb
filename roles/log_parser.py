"""The log parser: episode traces, policy diagnostics and failure events into a structured failure report.

It is code in every mode (no model): what it reports is counted, not guessed. For each
failing seed it names the first failure event, the policy's diagnostics mode at that step
(which rule was active), and the observation it acted on; across seeds, how often each
failure kind occurs and which modes the policy spent its steps in.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from pydantic import Field

from roles.base import AnalyseInput, Role, RoleContext, RoleModel


class SeedFinding(RoleModel):
    seed: int
    status: str
    return_: float | None = Field(None, alias="return")
    length: int
    kind: str
    step: int
    description: str
    active_mode: str | None = None
    diagnostics: Any = None
    observation: Any = None
    action: Any = None

    model_config = {"extra": "forbid", "populate_by_name": True}


class FailureReport(RoleModel):
    task: str
    episodes: int
    kind_counts: dict[str, int]
    seeds_by_kind: dict[str, list[int]]
    mode_share: dict[str, float] = Field(default_factory=dict, description="Share of steps spent in each mode.")
    findings: list[SeedFinding] = Field(default_factory=list, description="Worst seeds first.")
    summary: str


def _step_at(windows: list[dict], step: int) -> dict | None:
    """The traced step closest to (at or before) ``step``."""
    best = None
    for window in windows:
        for record in window.get("steps", []):
            if record["t"] <= step and (best is None or record["t"] > best["t"]):
                best = record
    return best


def parse_failures(eval_result: dict[str, Any], max_findings: int = 8) -> FailureReport:
    episodes = eval_result["episodes"]
    kinds: Counter = Counter()
    seeds_by_kind: dict[str, list[int]] = {}
    modes: Counter = Counter()
    findings: list[SeedFinding] = []
    for episode in episodes:
        trace = episode.get("trace") or {}
        modes.update({str(k): v for k, v in (trace.get("mode_counts") or {}).items()})
        events = list(episode.get("events") or [])
        if episode["status"] != "ok":
            events.insert(0, {"step": episode.get("length", 0), "kind": episode["status"],
                              "description": episode.get("error") or episode["status"]})
        for event in events:
            kinds[event["kind"]] += 1
            seeds_by_kind.setdefault(event["kind"], [])
            if episode["seed"] not in seeds_by_kind[event["kind"]]:
                seeds_by_kind[event["kind"]].append(episode["seed"])
        if not events:
            continue
        first = events[0]
        at = _step_at(trace.get("windows") or [], first["step"]) or {}
        diag = at.get("diag")
        findings.append(SeedFinding(
            seed=episode["seed"], status=episode["status"], return_=episode.get("return"),
            length=episode.get("length", 0), kind=first["kind"], step=first["step"],
            description=first["description"], diagnostics=diag,
            active_mode=str(diag.get("mode")) if isinstance(diag, dict) and "mode" in diag else None,
            observation=at.get("obs"), action=at.get("action")))
    findings.sort(key=lambda f: (f.return_ is not None, f.return_ if f.return_ is not None else 0.0, f.step))
    total_steps = sum(modes.values())
    mode_share = {m: round(n / total_steps, 4) for m, n in modes.most_common()} if total_steps else {}
    failing = len({f.seed for f in findings})
    if kinds:
        counted = ", ".join(f"{k} on {len(seeds_by_kind[k])}/{len(episodes)} seeds" for k, _ in kinds.most_common())
        summary = f"{failing} of {len(episodes)} episodes had failure events: {counted}."
        worst = findings[0]
        summary += (f" Worst: seed {worst.seed}, {worst.kind} at step {worst.step}"
                    + (f" in mode {worst.active_mode!r}" if worst.active_mode else "") + f": {worst.description}.")
    else:
        summary = f"no failure events in {len(episodes)} episodes."
    return FailureReport(task=eval_result["task"], episodes=len(episodes), kind_counts=dict(kinds),
                         seeds_by_kind=seeds_by_kind, mode_share=mode_share, findings=findings[:max_findings],
                         summary=summary)


class LogParser(Role[AnalyseInput, FailureReport]):
    name = "log_parser"
    stage = "analyse"
    Input = AnalyseInput
    Output = FailureReport

    def run(self, data: AnalyseInput, ctx: RoleContext) -> FailureReport:
        report = parse_failures(data.eval_result)
        ctx.decide(report.summary, kind_counts=report.kind_counts, seeds=[f.seed for f in report.findings])
        return report
