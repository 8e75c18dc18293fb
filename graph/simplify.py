"""The simplify stage: after every ``simplify.every`` accepted edits, a shorter, clearer policy with the same
behaviour, kept only if it loses nothing.

A run that only ever adds rules grows a ball of mud. Here the simplify role (``roles.simplifier``: mechanical
rules offline, the model in a simplify mode otherwise) proposes a simplification of the incumbent, and it is kept
only if all of these hold:

- it applies, parses, keeps the contract and adds no seed special case (``graph.candidates.checked``, whose smoke
  episode runs in the sandbox);
- its complexity falls: none of lines, branches and AST nodes rises, and at least one falls
  (``envs.complexity``); it uses nothing that runs code made from data or reaches names by strings (``exec``,
  ``getattr``, ``__doc__``, ``zlib``, ...) that the incumbent did not, and what its code and docstrings say,
  compressed with names aside (``said``), grows by no more than ``SAID_SLACK``: so code packed into a string, a
  number or a docstring is not simpler;
- on the same dev seeds, through the sandboxed evaluator, it passes the non-inferiority gate
  (``roles.reviewer.non_inferiority_gate``: no new failed episode, no seed worse beyond ``seed_tolerance``, the
  mean not lower beyond ``mean_tolerance`` by a paired test);
- every accepted regression test passes on it;
- on ``simplify.screen_episodes`` seeds no model has seen, drawn for this stage from a secret of the run's, it passes
  the same gate beside the incumbent: the simplifier is shown the dev seeds' returns and nothing reviews its edit, so
  a policy fitted to the dev seeds alone must meet seeds it could not fit.

A kept simplification is committed with a ``Heurist-Simplify: N`` trailer (N: the iteration it followed) and
becomes the incumbent; every attempt leaves one ``simplify`` ledger line. The stage may run twice after a crash:
its commit is found by its trailer, its ledger line by its iteration, its evaluations come from the cache.
"""

from __future__ import annotations

from typing import Any

from common.events import SimplifyDone
from common.files import atomic_write
from envs.complexity import Complexity, complexity, dynamic_uses, said
from graph.bookkeeping import MAX_RECORDED_CHARS, events, oneline, recorded, spent_by
from graph.candidates import checked
from graph.context import Services, per_seed, scored, seeds_of
from graph.state import RunState
from graph.testing import run_accepted_tests
from roles.base import answer
from roles.llm_usage import LLMError
from roles.reviewer import non_inferiority_gate
from roles.stages import ReviewInput, SimplifyInput, SimplifyOutput, Verdict
from store.workspace import POLICY_FILE, SIMPLIFY_TRAILER


# How much more what a simplification says may be than what the incumbent said (``envs.complexity.said``): duplicated
# code merged into a helper can compress a little worse than the duplicate did (zlib had found the repeat), and a
# docstring's measured numbers rewritten can too; packing code into a string costs far more (15-60%).
SAID_SLACK = 0.05


def simplify_due(state: RunState, every: int) -> bool:
    """Whether this iteration ends with a simplify stage: ``every`` accepted edits since the last one ran."""
    if every <= 0 or not (state.get("outcome") or {}).get("accepted"):
        return False
    since = state.get("simplified_at", 0)
    accepted = sum(1 for h in state.get("history", []) if h["accepted"] and h["iteration"] > since)
    return accepted >= every


def falls(before: Complexity, after: Complexity) -> bool:
    """Simpler: no measure grows and at least one shrinks."""
    pairs = [(before.lines, after.lines), (before.branches, after.branches), (before.ast_nodes, after.ast_nodes)]
    return all(b >= a for b, a in pairs) and any(b > a for b, a in pairs)


def run_simplify(s: Services, state: RunState) -> dict[str, Any]:
    """The stage's whole work; what changed in the state (the incumbent, if a simplification was kept), and what the
    run has spent after it, so the budgets judged next count the stage's evaluations, tests and model calls."""
    changed = _simplify(s, state)
    return {**changed, "spent": spent_by(s, events(s))}


def _simplify(s: Services, state: RunState) -> dict[str, Any]:
    iteration, incumbent = state["iteration"], state["incumbent"]
    done: dict[str, Any] = {"simplified_at": iteration}
    kept = s.workspace.commit_for_iteration(iteration, SIMPLIFY_TRAILER)
    if kept is not None:  # committed before a crash: it is the incumbent, scored from the cache
        return {**done, **_resumed(s, state, kept)}
    if recorded(s, SimplifyDone, events(s), iteration=iteration):  # decided (and not kept) before a crash
        return done
    s.workspace.reset_to(incumbent["commit"])
    source = s.workspace.source_at(incumbent["commit"])
    before = complexity(source)
    tests = s.workspace.tests_at(incumbent["commit"])
    role = s.role("simplify")
    s.event("role", role=role.name)
    data = SimplifyInput(task=s.spec.id, task_description=s.spec.description, policy_source=source,
                         complexity=before.model_dump(), incumbent=seeds_of(incumbent), tests=sorted(tests))
    try:
        out = answer(role, data, s.context(iteration, role))
    except LLMError as exc:
        out = SimplifyOutput(reason=f"the simplifier's model failed: {exc}")
    except Exception as exc:  # a plug-in's (or the rules') bug, or an answer it cannot take, costs this simplification
        out = SimplifyOutput(reason=f"the {role.name} role failed: {type(exc).__name__}: {exc}"[:1000])
    record = {"run_id": s.run_id, "iteration": iteration, "applied": out.applied,
              "complexity_before": before.model_dump(), "mean_before": incumbent["mean"],
              "policy_sha256_before": incumbent["sha256"]}

    def decided(accepted: bool, reason: str, **more: Any) -> None:
        s.ledger.append(SimplifyDone(**record, accepted=accepted, reason=reason[:2000], **more))  # none yet: above
        s.event("simplified", iteration=iteration, accepted=accepted, message=oneline(reason, 200))
        after = more.get("complexity_after")
        done["simplifications"] = [*state.get("simplifications", []), {
            "iteration": iteration, "accepted": accepted, "reason": oneline(reason, 300),
            "before": before.model_dump(), "after": after}]

    if out.edit is None:
        decided(False, out.reason or "no simplification proposed")
        return done
    candidate, error = checked(s, incumbent["commit"], out.edit)
    if candidate is None:
        decided(False, error or "the simplification failed the check")
        return done
    after = complexity(candidate["source"])
    diff = candidate["diff"][:MAX_RECORDED_CHARS]
    if not falls(before, after):
        decided(False, f"not simpler: lines {before.lines} -> {after.lines}, branches {before.branches} -> "
                       f"{after.branches}, AST nodes {before.ast_nodes} -> {after.ast_nodes}",
                complexity_after=after.model_dump(), diff=diff)
        return done
    added = sorted(dynamic_uses(candidate["source"]) - dynamic_uses(source))
    if added:
        decided(False, f"not a simplification: it adds {', '.join(added)}, which run code made from data or reach "
                       f"names by strings; a simpler policy needs nothing of the kind it did not need before",
                complexity_after=after.model_dump(), diff=diff)
        return done
    said_before, said_after = said(source), said(candidate["source"])
    if said_after.total > said_before.total * (1 + SAID_SLACK):
        decided(False, f"not simpler: it says more, its tokens compressed going from {said_before.total} to "
                       f"{said_after.total} bytes (code and docstrings, names aside), more than "
                       f"{SAID_SLACK:.0%} above (code packed into a string or a number looks short to the other "
                       f"measures)", complexity_after=after.model_dump(), diff=diff)
        return done
    result = s.evaluate_cached(s.candidate_file(candidate["source"]))
    under_test = s.policy_under_test(candidate["source"], result)
    on_candidate = run_accepted_tests(s, tests, under_test, iteration, "the simplify stage's tests")
    failed = [r for r in on_candidate.values() if not r.passed]
    verdict = non_inferiority_gate(
        ReviewInput(task=s.spec.id, incumbent=seeds_of(incumbent), candidate=per_seed(result),
                    tests_passed=not failed, tests_report="\n".join(f"{r.name}: {r.reason}" for r in failed)),
        s.config.simplify.seed_tolerance, s.config.simplify.mean_tolerance, s.config.simplify.alpha)
    outcome = {"complexity_after": after.model_dump(), "mean_after": result.stats.mean if result.stats else None,
               "policy_sha256_after": result.policy_sha256, "verdict": verdict.model_dump(mode="json"), "diff": diff}
    if not verdict.accept:
        decided(False, "; ".join(verdict.reasons), **outcome)
        return done
    screen = _screened(s, iteration, source, candidate["source"])
    if screen is not None:
        seeds, screened = screen
        outcome.update(screen_seeds=seeds, screen_verdict=screened.model_dump(mode="json"))
        if not screened.accept:
            decided(False, f"on {len(seeds)} seeds no model has seen: " + "; ".join(screened.reasons), **outcome)
            return done
        verdict.reasons.append(f"and on {len(seeds)} seeds no model has seen: " + "; ".join(screened.reasons))
    commit = _commit(s, iteration, candidate["source"], result.policy_sha256, incumbent["commit"], before, after,
                     out, verdict.reasons)
    decided(True, "; ".join(verdict.reasons), commit=commit, **outcome)
    return {**done, "incumbent": scored(commit, result)}


def _screened(s: Services, iteration: int, incumbent: str, candidate: str) -> tuple[list[int], Verdict] | None:
    """The gate again on seeds no model has seen, drawn for this stage (None where ``simplify.screen_episodes`` is 0).

    The simplifier's brief lists the dev seeds' returns, and nothing reviews its edit, so a policy that reproduces
    the incumbent on those seeds alone (a table keyed by the first observation, a seed kept where the seed rule does
    not look) would pass the dev gate; it must lose nothing here as well. The seeds are fresh for each stage, so
    none a later model might learn of is used again."""
    n = s.config.simplify.screen_episodes
    if n == 0:
        return None
    seeds = list(s.spec.seeds.unseen(s.screen_key, f"simplify after iteration {iteration}", n))
    before, after = (per_seed(s.evaluate_cached(s.candidate_file(source), "custom", seeds))
                     for source in (incumbent, candidate))
    config = s.config.simplify
    verdict = non_inferiority_gate(ReviewInput(task=s.spec.id, incumbent=before, candidate=after, tests_passed=True),
                                   config.seed_tolerance, config.mean_tolerance, config.alpha, seeds_named="unseen")
    return seeds, verdict


def _resumed(s: Services, state: RunState, kept: str) -> dict[str, Any]:
    """A simplification committed before a crash: the incumbent, and its ledger line if the crash came first."""
    iteration, incumbent = state["iteration"], state["incumbent"]
    source = s.workspace.source_at(kept)
    result = s.evaluate_cached(s.candidate_file(source))
    before = complexity(s.workspace.source_at(incumbent["commit"])).model_dump()
    after = complexity(source).model_dump()
    reason = "kept; committed before an interruption, so its gate's reasons are in the commit message"
    if not recorded(s, SimplifyDone, iteration=iteration):
        s.ledger.append(SimplifyDone(run_id=s.run_id, iteration=iteration, accepted=True, reason=reason,
                                     complexity_before=before, complexity_after=after, mean_before=incumbent["mean"],
                                     mean_after=result.stats.mean if result.stats else None,
                                     policy_sha256_before=incumbent["sha256"],
                                     policy_sha256_after=result.policy_sha256, commit=kept))
    entry = {"iteration": iteration, "accepted": True, "reason": reason, "before": before, "after": after}
    known = [e for e in state.get("simplifications", []) if e["iteration"] != iteration]
    return {"incumbent": scored(kept, result), "simplifications": [*known, entry]}


def _commit(s: Services, iteration: int, source: str, sha256: str, incumbent_commit: str, before: Complexity,
            after: Complexity, out: SimplifyOutput, reasons: list[str]) -> str:
    """Commit the scored bytes (from ``RUN_DIR/candidates``) as the simplification; check the commit holds them."""
    s.workspace.reset_to(incumbent_commit)
    data = s.candidate_file(source).read_bytes()
    atomic_write(s.workspace.policy, data.decode())
    body = (f"{out.reason}\n\nLines {before.lines} -> {after.lines}, branches {before.branches} -> {after.branches}, "
            f"AST nodes {before.ast_nodes} -> {after.ast_nodes}.\nGate: " + "; ".join(reasons))
    commit = s.workspace.commit(iteration, f"Simplify after iteration {iteration}: {oneline(out.reason, 40)}", body,
                                trailer=SIMPLIFY_TRAILER)
    s.check_commit(incumbent_commit, commit, sha256, {POLICY_FILE}, "the simplification's commit")
    return commit


__all__ = ["falls", "run_simplify", "simplify_due"]
