"""What the coder agent's tools reach in a run (``roles.coder_tools.Workbench``), over the run's services.

Everything goes through what verify and the evaluator already use: evaluations through
``Services.evaluate_cached`` (sandboxed, dev seeds only, recorded in the ledger and so counted in the
run's budget), tests through ``graph.testing.run_test_files`` on the same sandbox. The incumbent comes
from git, never from the working tree, so no tool can touch it.
"""

from __future__ import annotations

import hashlib
from typing import Any

from common.events import IterationDone, read_events
from envs.results import EvalResult
from envs.scenario_files import ScenarioError, load_scenario
from graph.bookkeeping import events, spent_by
from graph.context import Services, seeds_of
from graph.state import RunState
from graph.testing import run_accepted_tests
from roles.coder_tools import TestOutcome

MAX_HISTORY_FILES = 30
MAX_SCENARIOS = 40  # listed to the coder


class RunWorkbench:
    def __init__(self, services: Services, state: RunState, role: str):
        self.s, self.role = services, role
        self.commit = state["incumbent"]["commit"]
        self.iteration = state["iteration"]
        self.incumbent = services.workspace.source_at(self.commit)
        self.dev_seeds = services.dev_seeds()
        self.incumbent_scores = seeds_of(state["incumbent"])
        self.films = services.config.eval.video
        self.recalled = set(state.get("recalled_scenarios") or {})
        self._scenarios: dict[str, str] | None = None

    def files(self) -> dict[str, str]:
        files = dict(self.s.workspace.tests_at(self.commit))
        done = [r for r in read_events(self.s.ledger)[0]
                if isinstance(r, IterationDone) and r.run_id == self.s.run_id and r.iteration < self.iteration]
        for r in done[-MAX_HISTORY_FILES:]:
            files[f"history/{r.iteration:04d}.md"] = _history(r)
        return files

    def evaluate(self, source: str, seeds: list[int] | None = None, video: bool = False) -> tuple[EvalResult, int]:
        seeds = self.dev_seeds if seeds is None else seeds
        fresh = not self.s.cache_file(hashlib.sha256(source.encode()).hexdigest(), "dev", seeds, video).is_file()
        result = self.s.evaluate_cached(self.s.candidate_file(source), "dev", seeds, video=video)
        return result, result.env_steps if fresh else 0

    def run_tests(self, source: str) -> tuple[list[TestOutcome], int]:
        accepted = self.s.workspace.tests_at(self.commit)
        if not accepted:
            return [], 0
        full, spent = self.evaluate(source)  # a test's episodes come from the candidate's dev evaluation
        candidate = self.s.policy_under_test(source, full)
        on_candidate = run_accepted_tests(self.s, accepted, candidate, self.iteration, "the coder's run_tests tool")
        outcomes = [TestOutcome(name, r.passed, r.reason, r.output or "") for name, r in sorted(on_candidate.items())]
        return outcomes, spent + candidate.scenario_steps

    def scenarios(self) -> dict[str, str]:
        if self._scenarios is None:  # read once: scenarios are saved after the code stage, never during it
            self._scenarios = self._describe_scenarios()
        return self._scenarios

    def _describe_scenarios(self) -> dict[str, str]:
        described = {}
        for name in self.s.scenario_menu(self.recalled)[:MAX_SCENARIOS]:
            try:
                moment = load_scenario(self.s.scenario_folder, name)
            except ScenarioError:
                continue
            described[name] = (f"seed {moment.seed}: {moment.event_kind} at step {moment.event_step}, saved "
                               f"{moment.event_step - moment.start} steps before"
                               + (", an earlier run's, recalled from memory" if name in self.recalled else ""))
        return described

    def run_scenario(self, source: str, name: str, film: bool = False) -> tuple[dict[str, Any], int]:
        return self.s.replay_scenario(source, name, self.iteration, "the coder's scenario tool", film=film)

    def run_budget_spent(self) -> str | None:
        budget = self.s.config.budget
        if budget.env_steps is None and budget.hours is None:
            return None
        spent = spent_by(self.s, events(self.s))  # the ledger's count, as the loop's routers read it
        if budget.env_steps is not None and spent["env_steps"] >= budget.env_steps:
            return f"env steps spent ({spent['env_steps']:,} of {budget.env_steps:,})"
        if budget.hours is not None and spent["elapsed_s"] >= budget.hours * 3600:
            return f"wall time spent ({spent['elapsed_s'] / 3600:.2f} of {budget.hours:g} h)"
        return None

    def event(self, kind: str, **fields: Any) -> None:
        self.s.event(kind, role=self.role, **fields)


def _history(r: IterationDone) -> str:
    """One earlier iteration as the agent reads it: the verdict, the reason, the edit and its diff."""
    verdict = "accepted" if r.accepted else "rejected"
    lines = [f"# Iteration {r.iteration}: {verdict}", "",
             f"dev mean before {r.mean_before}, candidate {r.mean_candidate}, after {r.mean_after}",
             f"reason: {r.reason}", f"edit: {r.rationale or r.edit or 'none'}"]
    if r.check_error:
        lines.append(f"check error: {r.check_error}")
    if r.diff:
        lines += ["", "```diff", r.diff[:8000], "```"]
    return "\n".join(lines)
