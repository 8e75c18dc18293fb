"""Every edge of the graph, in one file, and the pure functions that route between nodes.

One iteration: evaluate -> analyse (each analyse role in parallel) -> recall -> code ->
check (back to code with the error, a bounded number of times) -> write_tests -> verify ->
review -> commit or roll_back -> remember -> evaluate again, or finish (freeze, holdout,
summary), or pause (too many model failures in a row; `heurist resume` continues).
Routing reads only the state and the config, never the outside world, so a resumed run
takes the same turns.
"""

from __future__ import annotations

from typing import Any, Callable

from langgraph.graph import END, START, StateGraph

from envs.tasks import TaskSpec
from graph.config import RunConfig
from graph.nodes import Nodes
from graph.state import RunState


def stop_reason(state: RunState, config: RunConfig, spec: TaskSpec) -> str | None:
    """Why the run must stop now, or None. Each budget is a hard stop, checked at every iteration's end."""
    budget, spent = config.budget, state.get("spent") or {}
    iteration = state.get("iteration", 0)
    mean = (state.get("incumbent") or {}).get("mean")
    if budget.stop_when != "never" and mean is not None:
        if spec.max_return is not None and mean >= spec.max_return:
            return f"maximum return reached: dev mean {mean:g} = {spec.max_return:g}, nothing left to gain"
        if budget.stop_when == "target" and spec.target is not None and mean >= spec.target:
            return f"target reached: dev mean {mean:g} >= {spec.target:g}"
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


def build(nodes: Nodes, config: RunConfig, spec: TaskSpec, checkpointer: Any = None):
    """The compiled graph for one run's roles and config."""
    analysts = nodes.s.roles["analyse"]

    def after_begin(state: RunState) -> str:
        return "finish" if stop_reason(state, config, spec) else "evaluate"

    def after_code(state: RunState) -> str:
        return "check" if (state.get("coder") or {}).get("edit") else "roll_back"

    def after_check(state: RunState) -> str:
        if state.get("candidate"):
            return "write_tests"
        return "code" if state.get("attempts", 0) <= config.check_retries else "roll_back"

    def after_review(state: RunState) -> str:
        return "commit" if state["verdict"]["accept"] else "roll_back"

    def after_remember(state: RunState) -> str:
        if state.get("llm_failures", 0) >= config.llm.max_consecutive_failures:
            return "pause"
        return "finish" if stop_reason(state, config, spec) else "evaluate"

    def announced(name: str, node: Callable[[RunState], dict[str, Any]]) -> Callable[[RunState], dict[str, Any]]:
        """The node, telling the live view it started (LangGraph's stream reports a node only when it ends)."""
        def run(state: RunState) -> dict[str, Any]:
            nodes.s.event("stage", node=name, iteration=state.get("iteration", 0))
            return node(state)

        run.__name__ = name
        return run

    graph = StateGraph(RunState)
    graph.add_node("begin", announced("begin", nodes.begin))
    graph.add_node("evaluate", announced("evaluate", nodes.evaluate))
    analyse_nodes = []
    for role in analysts:
        name = f"analyse_{role.name}"
        graph.add_node(name, announced(name, nodes.analyse_with(role)))
        analyse_nodes.append(name)
    for name in ("recall", "code", "check", "write_tests", "verify", "review", "commit", "roll_back", "remember",
                 "pause", "finish"):
        graph.add_node(name, announced(name, getattr(nodes, name)))

    graph.add_edge(START, "begin")
    graph.add_conditional_edges("begin", after_begin, ["evaluate", "finish"])
    for name in analyse_nodes:  # fan out: the analysts run in parallel ...
        graph.add_edge("evaluate", name)
    graph.add_edge(analyse_nodes or "evaluate", "recall")  # ... and recall waits for all of them
    graph.add_edge("recall", "code")
    graph.add_conditional_edges("code", after_code, ["check", "roll_back"])
    graph.add_conditional_edges("check", after_check, ["write_tests", "code", "roll_back"])
    graph.add_edge("write_tests", "verify")
    graph.add_edge("verify", "review")
    graph.add_conditional_edges("review", after_review, ["commit", "roll_back"])
    graph.add_edge("commit", "remember")
    graph.add_edge("roll_back", "remember")
    graph.add_conditional_edges("remember", after_remember, ["evaluate", "finish", "pause"])
    graph.add_edge("pause", END)
    graph.add_edge("finish", END)
    return graph.compile(checkpointer=checkpointer)
