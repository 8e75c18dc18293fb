"""Every edge of the graph, in one file, and the routers that choose between nodes.

One iteration: evaluate -> analyse (each analyse role in parallel) -> recall -> code ->
check (back to code with the error, a bounded number of times) -> write_tests -> verify ->
review -> commit or roll_back -> remember -> evaluate again, or finish (freeze, holdout,
summary), or pause (too many model failures in a row; `heurist resume` continues).

Routers are module-level functions of the state and the run's context (LangGraph's
``Runtime``: the config and task, never the outside world), so a resumed run takes the same
turns; each returns a ``Literal`` of the nodes it may choose, which is also how LangGraph
draws the edges.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime

from graph.budget import stop_reason
from graph.context import Services
from graph.nodes import Nodes
from graph.state import RunState


def after_begin(state: RunState, runtime: Runtime[Services]) -> Literal["evaluate", "finish"]:
    s = runtime.context
    return "finish" if stop_reason(state, s.config, s.spec) else "evaluate"


def after_code(state: RunState) -> Literal["check", "roll_back"]:
    return "check" if (state.get("coder") or {}).get("edit") else "roll_back"


def after_check(state: RunState, runtime: Runtime[Services]) -> Literal["write_tests", "code", "roll_back"]:
    if state.get("candidate"):
        return "write_tests"
    return "code" if state.get("attempts", 0) <= runtime.context.config.check_retries else "roll_back"


def after_review(state: RunState) -> Literal["commit", "roll_back"]:
    return "commit" if state["verdict"]["accept"] else "roll_back"


def after_remember(state: RunState, runtime: Runtime[Services]) -> Literal["evaluate", "finish", "pause"]:
    s = runtime.context
    if state.get("llm_failures", 0) >= s.config.llm.max_consecutive_failures:
        return "pause"
    return "finish" if stop_reason(state, s.config, s.spec) else "evaluate"


def announced(name: str, node: Callable[[RunState], dict[str, Any]],
              services: Services) -> Callable[[RunState], dict[str, Any]]:
    """The node, telling the live view it started (LangGraph's stream reports a node only when it ends)."""
    def run(state: RunState) -> dict[str, Any]:
        services.event("stage", node=name, iteration=state.get("iteration", 0))
        return node(state)

    run.__name__ = name
    return run


STEPS = ("recall", "code", "check", "write_tests", "verify", "review", "commit", "roll_back", "remember", "pause",
         "finish")


def build(nodes: Nodes, checkpointer: Any = None):
    """The compiled graph for one run's roles; run it with ``context=`` the same run's ``Services``."""
    graph = StateGraph(RunState, context_schema=Services)
    graph.add_node("begin", announced("begin", nodes.begin, nodes.s))
    graph.add_node("evaluate", announced("evaluate", nodes.evaluate, nodes.s))
    analyse_nodes = [f"analyse_{role.name}" for role in nodes.s.roles["analyse"]]
    for name, role in zip(analyse_nodes, nodes.s.roles["analyse"]):
        graph.add_node(name, announced(name, nodes.analyse_with(role), nodes.s))
    for name in STEPS:
        graph.add_node(name, announced(name, getattr(nodes, name), nodes.s))

    graph.add_edge(START, "begin")
    graph.add_conditional_edges("begin", after_begin)
    for name in analyse_nodes:  # fan out: the analysts run in parallel ...
        graph.add_edge("evaluate", name)
    graph.add_edge(analyse_nodes or "evaluate", "recall")  # ... and recall waits for all of them
    graph.add_edge("recall", "code")
    graph.add_conditional_edges("code", after_code)
    graph.add_conditional_edges("check", after_check)
    graph.add_edge("write_tests", "verify")
    graph.add_edge("verify", "review")
    graph.add_conditional_edges("review", after_review)
    graph.add_edge("commit", "remember")
    graph.add_edge("roll_back", "remember")
    graph.add_conditional_edges("remember", after_remember)
    graph.add_edge("pause", END)
    graph.add_edge("finish", END)
    return graph.compile(checkpointer=checkpointer)
