"""When a run must stop: the one place budgets and targets are judged, from the state and config alone."""

from __future__ import annotations

from envs.tasks import TaskSpec
from graph.state import RunState
from store.config import RunConfig


def stop_reason(state: RunState, config: RunConfig, spec: TaskSpec) -> str | None:
    """Why the run must stop now, or None. Each budget is a hard stop, checked at every iteration's end."""
    return goal_reached(state, config, spec) or cannot_start(state, spec) or budget_spent(state, config)


def cannot_start(state: RunState, spec: TaskSpec) -> str | None:
    """The run can get nowhere: its starting policy completed no dev episode, only the offline coder works on it
    (``Nodes.begin`` marks such a start), and an iteration of its search over the numbers the policy declares found
    no version that completes one. A crash a number causes (a gain divided by) is still searched away in that
    iteration; a policy written for another task ran to its budget, holdout included, and exited 0 (a review,
    2026-12-06). The advice comes before the policy's error, so a cut summary line keeps it."""
    start = state.get("start") or {}
    why = start.get("unrunnable")
    if not why or state.get("iteration", 0) < 1 or (state.get("incumbent") or {}).get("commit") != start.get("commit"):
        return None
    return (f"the starting policy completed none of its dev episodes, and the offline coder's search over the numbers "
            f"it declares found no version that does: start from a policy written for {spec.id}, or run with a "
            f"model, whose coder can fix the code (its first error: {why})")


def goal_reached(state: RunState, config: RunConfig, spec: TaskSpec) -> str | None:
    """The run has nothing left to gain (``budget.stop_when``): the maximum return, or the target if asked."""
    budget = config.budget
    incumbent = state.get("incumbent") or {}
    mean = incumbent.get("mean")
    # The mean is over the episodes that completed: while any dev episode fails, making it complete is a gain the
    # gate accepts, so there is something left (a policy crashing on 16 of 20 seeds "reached" 500 before).
    failed = sum(r is None for r in (incumbent.get("per_seed") or {}).values())
    if budget.stop_when != "never" and mean is not None and not failed:
        if spec.max_return is not None and mean >= spec.max_return:
            return f"maximum return reached: dev mean {mean:g} = {spec.max_return:g}, nothing left to gain"
        if budget.stop_when == "target" and spec.target is not None and mean >= spec.target:
            return f"target reached: dev mean {mean:g} >= {spec.target:g}"
    return None


def budget_spent(state: RunState, config: RunConfig) -> str | None:
    """A budget is spent: nothing more may be spent, a simplification included."""
    budget, spent = config.budget, state.get("spent") or {}
    iteration = state.get("iteration", 0)
    if budget.iterations is not None and iteration >= budget.iterations:
        return f"iteration budget spent ({iteration} of {budget.iterations})"
    if budget.hours is not None and spent.get("elapsed_s", 0) >= budget.hours * 3600:
        return f"wall-time budget spent ({spent['elapsed_s'] / 3600:.2f} of {budget.hours:g} h)"
    if budget.env_steps is not None and spent.get("env_steps", 0) >= budget.env_steps:
        return f"env-step budget spent ({spent['env_steps']:,} of {budget.env_steps:,})"
    if budget.tokens is not None and spent.get("tokens", 0) >= budget.tokens:
        return f"token budget spent ({spent['tokens']:,} of {budget.tokens:,})"
    if budget.usd is not None and spent.get("usd", 0) >= budget.usd:
        return f"USD budget spent (${spent['usd']:.2f} of ${budget.usd:.2f})"
    if budget.patience is not None and state.get("since_improvement", 0) >= budget.patience:
        return f"patience spent: {state['since_improvement']} iterations without an accepted edit"
    return None
