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

from envs.results import EvalResult, TraceWindow
from roles.base import Role, RoleContext
from roles.stages import AnalyseInput, AnalyseOutput, FailureFinding


class SeedFinding(FailureFinding):
    """A failing seed's first failure, with what the policy saw, did and reported at that step."""

    status: str
    return_: float | None = Field(None, alias="return")
    length: int
    diagnostics: Any = None
    observation: Any = None
    action: Any = None

    model_config = {"extra": "forbid", "populate_by_name": True}


class FailureReport(AnalyseOutput):
    """The log parser's report: the ``failures`` and ``seeds_by_kind`` facts, counted from the evaluation."""

    task: str
    episodes: int
    kind_counts: dict[str, int]
    seeds_by_kind: dict[str, list[int]]
    mode_share: dict[str, float] = Field(default_factory=dict, description="Share of steps spent in each mode.")
    failures: list[SeedFinding] = Field(default_factory=list, description="Worst seeds first.")


def _step_at(windows: list[TraceWindow], step: int) -> dict | None:
    """The traced step closest to (at or before) ``step``."""
    best = None
    for window in windows:
        for record in window.steps:
            if record["t"] <= step and (best is None or record["t"] > best["t"]):
                best = record
    return best


def parse_failures(evaluation: EvalResult, max_findings: int = 8) -> FailureReport:
    episodes = evaluation.episodes
    kinds: Counter = Counter()
    seeds_by_kind: dict[str, list[int]] = {}
    modes: Counter = Counter()
    findings: list[SeedFinding] = []
    for episode in episodes:
        trace = episode.trace
        modes.update({str(k): v for k, v in (trace.mode_counts if trace else {}).items()})
        events = [(e.step, e.kind, e.description) for e in episode.events]
        if episode.status != "ok":  # a crash, a timeout or an invalid action is a failure too, at the end
            events.insert(0, (episode.length, episode.status, episode.error or episode.status))
        for _step, kind, _description in events:
            kinds[kind] += 1
            seeds_by_kind.setdefault(kind, [])
            if episode.seed not in seeds_by_kind[kind]:
                seeds_by_kind[kind].append(episode.seed)
        if not events:
            continue
        step, kind, description = events[0]
        at = _step_at(trace.windows if trace else [], step) or {}
        diag = at.get("diag")
        findings.append(SeedFinding(
            seed=episode.seed, status=episode.status, return_=episode.return_, length=episode.length, kind=kind,
            step=step, description=description, diagnostics=diag,
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
    return FailureReport(task=evaluation.task, episodes=len(episodes), kind_counts=dict(kinds),
                         seeds_by_kind=seeds_by_kind, mode_share=mode_share, failures=findings[:max_findings],
                         summary=summary)


class LogParser(Role[AnalyseInput, FailureReport]):
    name = "log_parser"
    stage = "analyse"
    Input = AnalyseInput
    Output = FailureReport
    produces = frozenset({"failures", "seeds_by_kind"})

    def run(self, data: AnalyseInput, ctx: RoleContext) -> FailureReport:
        report = parse_failures(data.evaluation)
        ctx.decide(report.summary, kind_counts=report.kind_counts, seeds=[f.seed for f in report.failures])
        return report
