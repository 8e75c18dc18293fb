"""The graph's state: what one run knows between nodes, as plain JSON types so every checkpoint is readable.

Everything a node needs that is not state (the config, the task, the workspace, the
memory store, the LLM client, the transcript recorder) lives in ``graph.nodes.Services``,
rebuilt from the run directory on every start or resume.
"""

from __future__ import annotations

from typing import Annotated, Any, TypedDict


def merge_reports(old: dict | None, new: dict | None) -> dict:
    """Analyse roles run in parallel and each adds its report; ``None`` starts a new iteration's set."""
    if new is None:
        return {}
    return {**(old or {}), **new}


class Scored(TypedDict):
    """A policy version and its dev-seed results."""

    commit: str
    sha256: str
    mean: float | None
    per_seed: dict[str, float | None]  # JSON keys are strings; seeds as text
    status: str  # the evaluation's: complete, partial or broken


class RunState(TypedDict, total=False):
    run_id: str
    status: str  # running | finished | paused
    stop_reason: str | None
    iteration: int  # the iteration in progress (1-based); 0 before the first
    incumbent: Scored  # the best policy so far: only improvements are ever committed
    start: Scored  # the starting policy, for the summary
    baseline: Scored  # the incumbent when this iteration began
    analyses: Annotated[dict[str, Any], merge_reports]
    recall: dict[str, Any] | None
    coder: dict[str, Any] | None  # the coder's output (edit, reason, search evidence)
    attempts: int  # coder attempts this iteration
    check_error: str | None
    candidate: dict[str, Any] | None  # {"source", "sha256", "diff"} once the edit passed the check
    tests: dict[str, str]  # test files this iteration adds, path -> source
    verification: dict[str, Any] | None
    verdict: dict[str, Any] | None
    outcome: dict[str, Any] | None  # {"accepted", "reason", "commit"}
    since_improvement: int
    llm_failures: int  # consecutive iterations that failed on the model
    spent: dict[str, float]  # env_steps, tokens, usd, elapsed_s: counted at each iteration's end
    history: list[dict[str, Any]]
