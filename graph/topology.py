"""Every edge of the graph, in one file, and the routers that choose between nodes.

One iteration: evaluate -> analyse (each analyse role in parallel) -> recall -> code ->
check (back to code with the error, a bounded number of times) -> write_tests -> verify ->
review -> commit or roll_back -> remember -> evaluate again, or finish (freeze, holdout,
summary), or pause (too many model failures in a row; `heurist resume` continues). After every
``simplify.every`` accepted edits, ``simplify`` comes between remember and the next evaluate: a
shorter policy with the same behaviour, kept only through the non-inferiority gate (``graph.simplify``).
With ``code.parallel`` > 1 and a model, recall sends one ``code_branch`` per candidate, side by
side; ``choose`` checks and scores them all, and the best goes to write_tests; a candidate the
gate rejects hands over to the next best (``next_candidate``) before the iteration rolls back.

Routers are module-level functions of the state and the run's context (LangGraph's
``Runtime``: the config and task, never the outside world), so a resumed run takes the same
turns; each returns a ``Literal`` of the nodes it may choose, which is also how LangGraph
draws the edges.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import Send

from graph.budget import budget_spent, cannot_start, goal_reached, stop_reason
from graph.context import Services
from graph.nodes import Nodes
from graph.simplify import simplify_due
from graph.state import RunState


def after_begin(state: RunState, runtime: Runtime[Services]) -> Literal["evaluate", "finish"]:
    s = runtime.context
    return "finish" if stop_reason(state, s.config, s.spec) else "evaluate"


def after_code(state: RunState) -> Literal["check", "roll_back"]:
    return "check" if (state.get("coder") or {}).get("edit") else "roll_back"


def after_recall(state: RunState, runtime: Runtime[Services]) -> Literal["code"] | list[Send]:
    """One coder, or ``code.parallel`` agents side by side (LangGraph ``Send``, each with its branch) where the
    code role has a model; the offline search and the single call propose one (K of them would be alike)."""
    s = runtime.context
    code = s.config.code
    if code.parallel > 1 and code.mode == "agent" and s.context(0, s.role("code")).llm is not None:
        return [Send("code_branch", {**state, "branch": k}) for k in range(code.parallel)]
    return "code"


def after_choose(state: RunState) -> Literal["write_tests", "roll_back"]:
    return "write_tests" if state.get("candidate") else "roll_back"


def after_check(state: RunState, runtime: Runtime[Services]) -> Literal["write_tests", "code", "roll_back"]:
    if state.get("candidate"):
        return "write_tests"
    return "code" if state.get("attempts", 0) <= runtime.context.config.check_retries else "roll_back"


def after_review(state: RunState) -> Literal["commit", "next_candidate", "roll_back"]:
    if state["verdict"]["accept"]:
        return "commit"
    return "next_candidate" if state.get("queue") else "roll_back"


def after_remember(state: RunState,
                   runtime: Runtime[Services]) -> Literal["evaluate", "simplify", "finish", "pause"]:
    """Pause on a failing model; the end once a budget is spent (a simplification would spend more) or the start can
    get nowhere (``cannot_start``); else simplify
    when due (``simplify.every`` accepted edits; also when the goal was just reached, so the final policy is the
    simpler one); else the next iteration, or the end at the goal."""
    s = runtime.context
    if state.get("llm_failures", 0) >= s.config.llm.max_consecutive_failures:
        return "pause"
    if budget_spent(state, s.config) or cannot_start(state, s.spec):
        return "finish"
    if simplify_due(state, s.config.simplify.every):
        return "simplify"
    return "finish" if goal_reached(state, s.config, s.spec) else "evaluate"


def after_simplify(state: RunState, runtime: Runtime[Services]) -> Literal["evaluate", "finish"]:
    s = runtime.context
    return "finish" if stop_reason(state, s.config, s.spec) else "evaluate"


def announced(name: str, node: Callable[[RunState], dict[str, Any]],
              services: Services) -> Callable[[RunState], dict[str, Any]]:
    """The node, telling the live view it started (LangGraph's stream reports a node only when it ends)."""
    def run(state: RunState) -> dict[str, Any]:
        services.event("stage", node=name, iteration=state.get("iteration", 0))
        return node(state)

    run.__name__ = name
    return run


STEPS = ("recall", "code", "check", "code_branch", "choose", "next_candidate", "write_tests", "verify", "review",
         "commit", "roll_back", "remember", "simplify", "pause", "finish")


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
    graph.add_conditional_edges("recall", after_recall, ["code", "code_branch"])
    graph.add_conditional_edges("code", after_code)
    graph.add_conditional_edges("check", after_check)
    graph.add_edge("code_branch", "choose")  # waits for every branch: they run in one step
    graph.add_conditional_edges("choose", after_choose)
    graph.add_edge("next_candidate", "write_tests")
    graph.add_edge("write_tests", "verify")
    graph.add_edge("verify", "review")
    graph.add_conditional_edges("review", after_review)
    graph.add_edge("commit", "remember")
    graph.add_edge("roll_back", "remember")
    graph.add_conditional_edges("remember", after_remember)
    graph.add_conditional_edges("simplify", after_simplify)
    graph.add_edge("pause", END)
    graph.add_edge("finish", END)
    return graph.compile(checkpointer=checkpointer)
