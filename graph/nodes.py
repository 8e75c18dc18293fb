"""The graph's nodes: each does one stage of an iteration and returns what changed in the state.

Nodes are thin: the work is in the roles, the evaluator and the workspace. Every node is
safe to run twice, because after a crash the checkpoint resumes at the node that did not
finish: the workspace is first put back at the incumbent's commit, evaluations come from
the cache, commits and ledger records are made once (found by iteration), and memory
records have content-hash ids.
"""

from __future__ import annotations

import errno
import hashlib
import json
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from common.errors import HeuristError
from common.events import (
    IterationDone,
    RunFinished,
    RunPaused,
    RunStarted,
    TestsRun,
)
from common.files import atomic_write
from envs.results import CONTROL_ALPHA, EvalResult, differs_p
from envs.scenario_files import ScenarioError, file_name, load_scenario
from graph.bookkeeping import events, kept_tests, oneline, recorded, spent_by, what_was_tried
from graph.budget import stop_reason
from graph.candidates import checked, focus_of, ranked_candidates
from graph.context import MEMORY_SCENARIO_BYTES, Services, per_seed, scored, seeds_of
from graph.simplify import run_simplify
from graph.state import CodeOutcome, RunState
from graph.testing import (
    FIRST_TEST,
    judge_new_tests,
    new_test_name,
    replayed_scenarios,
    run_test_files,
    scenario_test_name,
)
from graph.workbench import RunWorkbench
from memory.lessons import distil, teaches, template_statement
from memory.records import FailureRecord, FixRecord, Recall, ScenarioRecord
from roles.base import Role, RoleOutputError, answer
from roles.edits import Edit, unified_diff
from roles.lesson_writer import general_line
from roles.llm_usage import BudgetSpent, LLMError
from roles.registry import BUILT_IN
from roles.stages import (
    AnalyseInput,
    CoderInput,
    FailureFinding,
    LessonInput,
    ReviewInput,
    Sighting,
    TestWriterInput,
    gather,
)
from roles.test_writer import scenario_test
from store.summary import write_summary
from store.transcripts import Decision, RoleFailed, TranscriptRecorder
from store.workspace import POLICY_FILE, object_name


# What a full or broken disk raises: heurist's own failure wherever it surfaces (a role's scoring writes the candidate
# and the ledger), which stops the run with the way to resume it.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO})


def role_failed(role: Role, exc: Exception) -> bool:
    """Whether ``exc`` is a plug-in role's own failure (its bug, an answer its stage cannot take), which costs that
    role's part of the iteration, rather than heurist's, which stops the run as it always did: anything a built-in
    role raises, heurist's own errors (``HeuristError``: a refused repository, a ledger that cannot be written), a
    full or read-only disk, memory run out. A model's failure (LLMError) each node handles on its own."""
    if type(role) in BUILT_IN:
        return False
    if isinstance(exc, (RoleOutputError, RoleContractError)):
        return True
    if isinstance(exc, (HeuristError, MemoryError)):
        return False
    return not (isinstance(exc, OSError) and exc.errno in DISK_ERRNOS)


def record_failure(ctx, exc: Exception) -> str:
    """A role's failure in its transcript (with the traceback, for whoever reads it); its one line."""
    line = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:1000]
    ctx.transcript.write(RoleFailed, error=line, traceback=traceback.format_exc()[-3000:])
    return line


class RoleContractError(HeuristError):
    """A role that returned something other than what it declares."""


class Nodes:
    """The node functions, bound to one run's services."""

    def __init__(self, services: Services, starting_source: str):
        self.s = services
        self.starting_source = starting_source

    # ------------------------------------------------------------------ begin

    def begin(self, state: RunState) -> RunState:
        """Create the workspace from the starting policy (a copy: the original is never touched) and score it."""
        s = self.s
        files = {".gitignore": "__pycache__/\n*.pyc\n",
                 "tests/test_policy_runs.py": FIRST_TEST.format(seed=s.dev_seeds()[0])}
        commit = s.workspace.create(self.starting_source, files)
        result = s.evaluate_cached(s.candidate_file(s.workspace.source_at(commit)), video=True)
        start = scored(commit, result)
        coder = s.role("code")
        if result.status == "broken" and coder.name == "coder" and s.context(0, coder).llm is None:
            # Only the search over its numbers can make it run: after an iteration that does not, the run stops,
            # saying why (graph.budget.cannot_start).
            first = next((e.error for e in result.episodes if e.error), "no episode completed")
            start["unrunnable"] = oneline(first, 300)
        records = events(s)
        if not recorded(s, RunStarted, records):
            s.ledger.append(RunStarted(run_id=s.run_id, task=s.spec.id, protocol=s.protocol, dev_seeds=s.dev_seeds(),
                                       start=start, offline=s.llm is None))
        return {"run_id": s.run_id, "status": "running", "stop_reason": None, "iteration": 0, "incumbent": start,
                "start": start, "since_improvement": 0, "llm_failures": 0, "history": [],
                "spent": spent_by(s, records)}

    # ------------------------------------------------------------------ 1. evaluate

    def evaluate(self, state: RunState) -> RunState:
        s = self.s
        iteration = state["iteration"] + 1
        s.workspace.reset_to(state["incumbent"]["commit"])
        s.event("iteration", iteration=iteration)
        source = s.workspace.source_at(state["incumbent"]["commit"])
        s.evaluate_cached(s.candidate_file(source), video=True)
        # Old failures' saved moments replayed with the incumbent, once here for every analyst (analyse_with reads
        # them back): an earlier policy's failure this one may have again, an earlier run's.
        s.scenario_replays(source, iteration, self._pinned(state))
        return {"iteration": iteration, "baseline": state["incumbent"], "analyses": None, "recall": None,
                "coder": None, "attempts": 0, "check_error": None, "candidate": None, "tests": {},
                "verification": None, "verdict": None, "outcome": None, "proposals": None, "queue": [],
                "tried": [], "branch_name": None}

    # ------------------------------------------------------------------ 2. analyse (one node per role)

    def analyse_with(self, role: Role) -> Callable[[RunState], RunState]:
        def analyse(state: RunState) -> RunState:
            s = self.s
            # Analysts run in parallel, so they read the incumbent from git and never touch the working tree.
            source = s.workspace.source_at(state["incumbent"]["commit"])
            result = s.evaluate_cached(s.candidate_file(source), video=True)
            data = AnalyseInput(task=s.spec.id, task_description=s.spec.description, policy_source=source,
                                evaluation=result,
                                scenarios=s.scenario_replays(source, state["iteration"], self._pinned(state)))
            ctx = s.context(state["iteration"], role)
            s.event("role", role=role.name)
            try:
                report = answer(role, data, ctx).model_dump(mode="json", by_alias=True, exclude_none=True)
                missing = [fact for fact in sorted(role.produces) if report.get(fact) is None]
                if missing:
                    raise RoleContractError(f"{role.name} declares that it produces {', '.join(missing)} but "
                                            f"returned none")
            except Exception as exc:  # an analyst that fails (a model down, a broken plug-in) costs its report only
                ctx.transcript.write(RoleFailed, error=f"{type(exc).__name__}: {exc}"[:1000],
                                     traceback=traceback.format_exc()[-3000:])
                report = {"summary": f"{role.name} failed: {type(exc).__name__}: {exc}"[:500], "failed": True}
            return {"analyses": {role.name: report}}

        analyse.__name__ = f"analyse_{role.name}"
        return analyse

    def _pinned(self, state: RunState) -> set[str]:
        """The scenarios the accepted tests replay."""
        return replayed_scenarios(self.s.workspace.tests_at(state["incumbent"]["commit"]))

    # ------------------------------------------------------------------ 3. recall

    def recall(self, state: RunState) -> RunState:
        s = self.s
        if s.memory is None:
            return {"recall": None, "recalled_scenarios": {}}
        query = " ".join(r.get("summary", "") for r in state["analyses"].values())[:2000] or s.spec.description
        found = self._recorded_recall(state["iteration"]) or s.memory.recall(query, k=5, family=s.spec.family)
        # Which records the coder was shown, by id: the report lists the memory each iteration used.
        used = ([{"id": h.failure.id, "type": "failure", "similarity": h.similarity} for h in found.failures]
                + [{"id": h.fix.id, "type": "fix", "similarity": h.similarity} for h in found.fixes]
                + [{"id": h.lesson.id, "type": "lesson", "similarity": h.similarity} for h in found.lessons])
        scenarios, left_out = self._recalled_scenarios(state["iteration"], found)
        recall = found.model_dump(mode="json")
        s.recorder.for_role(state["iteration"], "recall").write(
            Decision, summary=f"recalled {len(used)} memory records" + (
                f" and {len(scenarios)} saved failure scenarios" if scenarios else ""),
            details={"query": query, "used": used, "recall": recall, "scenarios": scenarios,
                     "scenarios_left_out": left_out})
        return {"recall": recall, "recalled_scenarios": scenarios}

    def _recalled_scenarios(self, iteration: int, found: Recall) -> tuple[dict[str, str], dict[str, str]]:
        """The saved moments of the recalled failures of this task (earlier runs'), brought into this run's folder
        to be replayed by name: the tests hold a fix to an old failure, the coder's scenario tool looks at it.
        A replay takes those its recorded run recalled, from that run's folder (its own memory has none). Memory
        that cannot be read or a folder that cannot be written costs the scenarios, never the iteration."""
        s = self.s
        try:
            if s.replay_of is not None:
                recorded = self._recorded_scenario_names(iteration)
                moments = []
                for name, description in recorded.items():
                    try:
                        moments.append((load_scenario(s.replay_of / "scenarios", name), description))
                    except ScenarioError:
                        continue
                return s.import_scenarios(moments)
            failures = [h.failure for h in found.failures] + [f for h in found.fixes for f in h.failures] + [
                f for h in found.failures for x in h.fixes for f in x.failures]
            records, unreadable = s.memory.scenarios_of(failures, s.spec.id, s.protocol)
            imported, left_out = s.import_scenarios([(r.scenario, r.description) for r in records])
            return imported, left_out | unreadable
        except Exception as exc:  # a record of a newer heurist, a shared store that fails: no scenarios this time
            return {}, {"(all)": f"{type(exc).__name__}: {exc}"[:300]}

    def _recorded_scenario_names(self, iteration: int) -> dict[str, str]:
        scenarios = self._recorded_recall_details(iteration).get("scenarios")
        return {str(k): str(v) for k, v in scenarios.items()} if isinstance(scenarios, dict) else {}

    def _recorded_recall(self, iteration: int) -> Recall | None:
        """In a replay, what the recorded run recalled at this iteration (None elsewhere, or where the recorded
        run did not keep it)."""
        details = self._recorded_recall_details(iteration)
        if "recall" not in details:
            return None
        try:
            return Recall.model_validate(details["recall"])
        except ValidationError:  # a recall transcript changed since the run: a replay cannot act on it
            raise LLMError(f"replay: the recall the recorded run wrote in iteration {iteration} is damaged; its "
                           f"transcript was changed since the run") from None

    def _recorded_recall_details(self, iteration: int) -> dict:
        """In a replay, the recall decision its recorded run wrote at this iteration ({} elsewhere)."""
        if self.s.replay_of is None:
            return {}
        for entry in TranscriptRecorder(self.s.replay_of).read(iteration, "recall"):
            if isinstance(entry, Decision) and "recall" in entry.details:
                return entry.details
        return {}

    # ------------------------------------------------------------------ 4. code

    def code(self, state: RunState) -> RunState:
        self.s.workspace.reset_to(state["incumbent"]["commit"])
        return {"coder": self._propose(state), "attempts": state.get("attempts", 0) + 1, "check_error": None}

    def code_branch(self, state: RunState) -> RunState:
        """One of ``code.parallel`` coders proposing side by side (a LangGraph ``Send`` carries its branch):
        each pursues a different failure or hypothesis, and never touches the working tree."""
        branch = int(state["branch"])  # type: ignore[typeddict-item]  # the Send's payload, not a channel
        focus = focus_of(branch, gather(state.get("analyses") or {}, "failures"))
        return {"proposals": {str(branch): self._propose(state, branch, focus)}}

    def _propose(self, state: RunState, branch: int = 0, focus: str | None = None) -> CodeOutcome:
        s = self.s
        coder = s.role("code")
        previous = (state.get("coder") or {}).get("edit") if not branch else None
        data = CoderInput(task=s.spec.id, task_description=s.spec.description,
                          policy_source=s.workspace.source_at(state["incumbent"]["commit"]),
                          incumbent=seeds_of(state["incumbent"]),
                          analyses=state.get("analyses") or {}, recall=state.get("recall"),
                          history=state.get("history", []), check_error=state.get("check_error"),
                          previous_edit=Edit.model_validate(previous) if previous else None,
                          attempt=state.get("attempts", 0) + 1, branch=branch, focus=focus)
        s.event("role", role=coder.name, branch=branch)
        # The agent's tools reach the run through the workbench: sandboxed evaluations and tests, dev seeds only.
        ctx = replace(s.context(state["iteration"], coder), workbench=RunWorkbench(s, state, coder.name))
        try:
            return answer(coder, data, ctx).model_dump(mode="json")
        except LLMError as exc:  # a spent budget is a stop, not a model failure: it must not pause the run
            return {"edit": None, "reason": f"the coder's model failed: {exc}",
                    "llm_failed": not isinstance(exc, BudgetSpent)}
        except Exception as exc:  # a plug-in coder's bug costs this iteration's edit, not the run
            if not role_failed(coder, exc):
                raise
            return {"edit": None, "reason": f"the coder {coder.name} failed: {record_failure(ctx, exc)}"[:1000]}

    # ------------------------------------------------------------------ 5. check

    def check(self, state: RunState) -> RunState:
        candidate, error = checked(self.s, state["incumbent"]["commit"], Edit.model_validate(state["coder"]["edit"]))
        return {"check_error": error, "candidate": candidate}

    # ------------------------------------------------------------------ 4-5 with candidates side by side

    def choose(self, state: RunState) -> RunState:
        """Every side-by-side proposal checked and scored on the dev seeds; the best goes on to the tests and the
        gate, the others wait best first (``next_candidate``) in case it is rejected."""
        s = self.s
        proposals = state.get("proposals") or {}
        ranked, notes = ranked_candidates(s, state["incumbent"]["commit"], seeds_of(state["incumbent"]), proposals)
        if not ranked:
            return {"coder": {"edit": None, "reason": "; ".join(notes) or "no candidate",
                              # a model failure only if no branch got an answer from it
                              "llm_failed": bool(proposals) and all(o.get("llm_failed") for o in proposals.values())},
                    "candidate": None, "queue": [], "tried": notes, "attempts": 1}
        first, *rest = ranked
        s.event("chosen", message=f"{first['name']} of {len(proposals)} goes to the tests and the gate first"
                + (f"; {'; '.join(notes)}" if notes else ""))
        return {"coder": first["coder"], "candidate": first["candidate"], "queue": rest, "tried": notes,
                "attempts": 1, "check_error": None, "branch_name": first["name"]}

    def next_candidate(self, state: RunState) -> RunState:
        """The gate rejected this candidate: the next best side-by-side one goes through tests and gate."""
        first, *rest = state["queue"]
        rejected = f"{state.get('branch_name', 'candidate')}: " + "; ".join(state["verdict"]["reasons"])[:600]
        return {"coder": first["coder"], "candidate": first["candidate"], "queue": rest,
                "tried": [*(state.get("tried") or []), rejected], "branch_name": first["name"],
                "tests": {}, "verification": None, "verdict": None}

    # ------------------------------------------------------------------ 6. write tests

    def write_tests(self, state: RunState) -> RunState:
        s = self.s
        writer = s.role("test")
        analyses = state.get("analyses") or {}
        # The failures as the analysts that found them summed them up (by fact, never by role name).
        failure_summary = " ".join(report["summary"] for report in analyses.values()
                                   if report.get("failures") is not None or report.get("seeds_by_kind") is not None)
        # The candidate is scored before its test is written, so the writer knows the gain to pin (verify reads
        # the same evaluation from the cache).
        scored_candidate = s.evaluate_cached(s.candidate_file(state["candidate"]["source"]))
        accepted = s.workspace.tests_at(state["incumbent"]["commit"])
        # The moment before the incumbent's failure on the seed the edit improved most, saved (envs.scenarios) for a
        # test that replays it: only where an edit improves a failed seed, so an iteration pays for no other.
        candidate, incumbent = per_seed(scored_candidate), seeds_of(state["incumbent"])
        gains = {seed: (candidate[seed] - (incumbent[seed] if incumbent.get(seed) is not None else -1e18))
                 for seed in candidate if candidate[seed] is not None and seed in incumbent
                 and (incumbent[seed] is None or candidate[seed] > incumbent[seed])}
        best = sorted(gains, key=lambda seed: (-gains[seed], seed))[: s.config.scenarios.tests_per_edit]
        incumbent_source = s.workspace.source_at(state["incumbent"]["commit"])
        scenarios = s.save_scenarios(incumbent_source, s.evaluate_cached(s.candidate_file(incumbent_source),
                                                                         video=True), state["iteration"], best)
        data = TestWriterInput(task=s.spec.id, iteration=state["iteration"],
                               edit=Edit.model_validate(state["coder"]["edit"]),
                               candidate_source=state["candidate"]["source"], incumbent=seeds_of(state["incumbent"]),
                               failure_summary=failure_summary, seeds_by_kind=gather(analyses, "seeds_by_kind"),
                               existing_tests=sorted(accepted), candidate=per_seed(scored_candidate),
                               existing_test_sources=accepted, scenarios=scenarios,
                               recalled_scenarios=state.get("recalled_scenarios") or {})
        s.event("role", role=writer.name)
        # heurist names every new test file (the writer's name is a suggestion): an accepted test is never
        # overwritten, and a new one cannot take an old one's place.
        taken = set(s.workspace.tests_at(state["incumbent"]["commit"]))
        tests: dict[str, str] = {}
        failed: dict = {}
        ctx = s.context(state["iteration"], writer)
        try:
            tests[new_test_name(taken, state["iteration"])] = answer(writer, data, ctx).source
        except LLMError as exc:  # no writer's test this time; heurist's own scenario tests below still are
            failed = {"verification": {"test_writer_error": str(exc)}}
        except Exception as exc:  # a plug-in writer's bug: as a model's failure, no test of its this time
            if not role_failed(writer, exc):
                raise
            failed = {"verification": {"test_writer_error": f"{writer.name} failed: {record_failure(ctx, exc)}"}}
        # Beside it, heurist's own test of that scenario, in a file of its own: kept, like any new test, only if it
        # fails on the incumbent and passes on the candidate.
        for _, names in sorted(scenarios.items()):
            tests[scenario_test_name(taken | set(tests), state["iteration"])] = scenario_test(state["iteration"],
                                                                                              names[0])
        # And of earlier runs' failures recalled with their saved moments, those no accepted test replays yet: the
        # edit is held to old failures too, and a test is kept for each one it fixes.
        # Not those this run saved again, nor those an accepted test replays already.
        skip = {name for names in scenarios.values() for name in names} | replayed_scenarios(accepted)
        waiting = [name for name in sorted(state.get("recalled_scenarios") or {}) if name not in skip]
        # Taken in turn across iterations: the same first ones every time would starve the rest when the incumbent
        # already survives those (their tests are not kept, so they would be first again).
        turn = (state["iteration"] * s.config.scenarios.recalled_per_edit) % len(waiting) if waiting else 0
        recalled = (waiting[turn:] + waiting[:turn])[: s.config.scenarios.recalled_per_edit]
        for name in recalled:  # one file each: fail-to-pass judges a file, and each old failure is its own case
            tests[scenario_test_name(taken | set(tests), state["iteration"])] = scenario_test(state["iteration"],
                                                                                              name, recalled=True)
        return {"tests": tests, **failed}

    # ------------------------------------------------------------------ 7. verify

    def verify(self, state: RunState) -> RunState:
        """Score the candidate from a copy out of every sandbox's reach, then run the regression tests.

        Every accepted test file runs against the candidate; each new one against the candidate and
        the incumbent, and is kept only if it fails on the incumbent and passes on the candidate
        (fail-to-pass: a test that cannot fail guards nothing). Each file runs alone, sandboxed, on
        a throwaway copy (``envs.regression``)."""
        s = self.s
        iteration, incumbent = state["iteration"], state["incumbent"]
        source = state["candidate"]["source"]
        result = s.evaluate_cached(s.candidate_file(source))
        if result.policy_sha256 != hashlib.sha256(source.encode()).hexdigest():
            raise HeuristError("the candidate scored is not the candidate the check accepted; the run stops "
                               "rather than commit bytes it did not score")
        candidate = s.policy_under_test(source, result)
        accepted = s.workspace.tests_at(incumbent["commit"])
        new = state.get("tests") or {}
        jobs = [(name, text, candidate) for name, text in {**accepted, **new}.items()]
        if new:  # the incumbent is needed only to see a new test fail on it (its evaluation is cached)
            old_source = s.workspace.source_at(incumbent["commit"])
            before = s.policy_under_test(old_source, s.evaluate_cached(s.candidate_file(old_source), video=True))
            jobs += [(name, text, before) for name, text in new.items()]
        s.event("testing", tests=len(accepted) + len(new))
        on_candidate, on_incumbent = run_test_files(s, jobs, candidate)
        old_failed = [on_candidate[name] for name in accepted if not on_candidate[name].passed]
        new_tests = judge_new_tests(new, on_candidate, on_incumbent)
        passed = not old_failed
        report = "\n".join(f"{r.name}: {r.reason}" + (f"\n{r.output[-1500:]}" if r.output else "")
                           for r in old_failed)
        files = {name: {"passed": r.passed, "reason": r.reason} for name, r in on_candidate.items()}
        # verify may run twice after a crash; side-by-side candidates each have their own record
        if not recorded(s, TestsRun, iteration=iteration, candidate_sha256=result.policy_sha256):
            s.ledger.append(TestsRun(
                run_id=s.run_id, iteration=iteration, passed=passed, candidate_sha256=result.policy_sha256,
                reason=(f"{len(old_failed)} of {len(accepted)} accepted test files failed" if old_failed else
                        f"all {len(accepted)} accepted test files passed"), files=files, new_tests=new_tests,
                env_steps=candidate.scenario_steps + (before.scenario_steps if new else 0),
                wall_s=round(sum(r.wall_s for r in [*on_candidate.values(), *on_incumbent.values()]), 3)))
        previous = state.get("verification") or {}
        return {"verification": {**previous, "tests_passed": passed, "tests_report": report[-3000:],
                                 "tests_reason": "; ".join(f"{r.name}: {r.reason}" for r in old_failed)[:1000],
                                 "test_files": files, "new_tests": new_tests,
                                 "candidate": scored("", result)}}

    # ------------------------------------------------------------------ 8. review

    def review(self, state: RunState) -> RunState:
        s = self.s
        verification = state["verification"]
        diff = state["candidate"]["diff"] + "".join(
            unified_diff("", source, name) for name, source in state["tests"].items())
        data = ReviewInput(task=s.spec.id, incumbent=seeds_of(state["incumbent"]),
                           candidate=seeds_of(verification["candidate"]), tests_passed=verification["tests_passed"],
                           tests_report=verification["tests_report"], diff=diff,
                           rationale=state["coder"]["edit"]["rationale"])
        verdicts, reasons, accept, llm_failed = {}, [], True, False
        for reviewer in s.roles["review"]:
            s.event("role", role=reviewer.name)
            ctx = s.context(state["iteration"], reviewer)
            try:
                verdict = answer(reviewer, data, ctx).model_dump(mode="json")
            except LLMError as exc:
                verdict = {"accept": False, "reasons": [f"{reviewer.name} could not review: {exc}"]}
                llm_failed = llm_failed or not isinstance(exc, BudgetSpent)
            except Exception as exc:  # a reviewer that fails accepts nothing: the edit is rolled back
                if not role_failed(reviewer, exc):
                    raise
                verdict = {"accept": False, "reasons": [f"{reviewer.name} failed: {record_failure(ctx, exc)}"[:1000]]}
            verdicts[reviewer.name] = verdict
            accept = accept and verdict["accept"]
            reasons += verdict["reasons"]
        if "test_writer_error" in verification:
            reasons.append(f"the test writer wrote no test: {verification['test_writer_error']}")
        for name, decision in (verification.get("new_tests") or {}).items():
            if not decision["kept"]:
                reasons.append(f"{name} is not kept as a regression test: {decision['reason'][:300]}")
        return {"verdict": {"accept": accept, "reasons": reasons, "by_role": verdicts, "llm_failed": llm_failed}}

    # ------------------------------------------------------------------ 9. commit or roll back

    def commit(self, state: RunState) -> RunState:
        """Commit the bytes that were scored and the kept tests; then check the commit holds exactly those."""
        s = self.s
        iteration = state["iteration"]
        edit = state["coder"]["edit"]
        verification, before = state["verification"], state["incumbent"]["mean"]
        kept = kept_tests(state)
        commit = s.workspace.commit_for_iteration(iteration)
        if commit is None:
            self._materialise(state)
            body = (f"{edit['rationale']}\n\nDev mean {before} -> {verification['candidate']['mean']} on "
                    f"{len(s.dev_seeds())} dev seeds.\nReview: " + "; ".join(state["verdict"]["reasons"])
                    + "\nTests added: " + (", ".join(kept) or "none"))
            commit = s.workspace.commit(iteration, f"Iteration {iteration}: {oneline(edit['rationale'], 58)}", body)
        s.check_commit(state["incumbent"]["commit"], commit, verification["candidate"]["sha256"],
                       {POLICY_FILE, *kept}, "commit")
        incumbent = {**verification["candidate"], "commit": commit}
        tried = [f"before it, {t}" for t in state.get("tried") or []]  # side-by-side candidates not taken
        return {"incumbent": incumbent, "since_improvement": 0,
                "outcome": {"accepted": True, "commit": commit,
                            "reason": "; ".join([*state["verdict"]["reasons"], *tried])}}

    def roll_back(self, state: RunState) -> RunState:
        s = self.s
        s.workspace.reset_to(state["incumbent"]["commit"])
        coder = state.get("coder") or {}
        tried = state.get("tried") or []  # side-by-side candidates rejected before this one, or never gated
        if state.get("verdict"):
            last = "; ".join(state["verdict"]["reasons"])
            reason = "; ".join([*tried, f"{state.get('branch_name')}: {last}"]) if tried else last
        elif coder.get("edit") is None:
            reason = f"no edit proposed: {coder.get('reason', 'the coder gave none')}"
        else:
            reason = f"the edit failed the check {state.get('attempts', 1)} times; last: {state.get('check_error')}"
        return {"since_improvement": state.get("since_improvement", 0) + 1,
                "outcome": {"accepted": False, "commit": None, "reason": reason}}

    # ------------------------------------------------------------------ 10. remember

    def remember(self, state: RunState) -> RunState:
        s = self.s
        iteration, outcome = state["iteration"], state["outcome"]
        coder = state.get("coder") or {}
        edit = coder.get("edit")
        baseline = state["baseline"]
        candidate = (state.get("verification") or {}).get("candidate") or {}
        failure_ids = self._remember_failures(state)
        if edit is not None and s.memory is not None:
            fix = FixRecord(
                run_id=s.run_id, rationale=edit["rationale"], diff_summary=(state.get("candidate") or {}).get(
                    "summary", "did not apply"), task=s.spec.id, family=s.spec.family, iteration=iteration,
                failure_ids=tuple(failure_ids), outcome="accepted" if outcome["accepted"] else "rejected",
                reason=outcome["reason"][:2000], score_before=baseline["mean"], score_after=candidate.get("mean"),
                policy_sha256_before=baseline["sha256"], policy_sha256_after=candidate.get("sha256", ""))
            fix = fix.model_copy(update={"id": s.memory.add_fix(fix)})
            if teaches(fix):  # an accepted or clearly worse edit teaches one line, the lesson writer's
                s.memory.add_lesson(distil(fix, edit, s.run_id, self._lesson_line(state, fix, edit)))
        if edit is not None and s.memory is not None:  # the lessons behind this edit, and whether it helped
            s.memory.note_lessons_used(self._lessons_behind(state), f"{s.run_id}:{iteration}",
                                       helped=bool(outcome["accepted"]))
        llm_failed = bool(coder.get("llm_failed") or (state.get("verdict") or {}).get("llm_failed"))
        entry = {"iteration": iteration, "accepted": outcome["accepted"], "reason": oneline(outcome["reason"], 300),
                 "edit": oneline(edit["rationale"], 200) if edit else None, "mean_before": baseline["mean"],
                 "mean_candidate": candidate.get("mean"), "mean_after": state["incumbent"]["mean"],
                 "commit": outcome["commit"]}
        records = events(s)
        spent = spent_by(s, records)
        if not recorded(s, IterationDone, records, iteration=iteration):
            s.ledger.append(IterationDone(
                run_id=s.run_id, **entry, tests_added=kept_tests(state) if outcome["accepted"] else [],
                verdict=state.get("verdict"), policy_sha256=state["incumbent"]["sha256"], spent=spent,
                **what_was_tried(state)))
        s.event("verdict", **entry, spent=spent)
        return {"history": [*state.get("history", []), entry], "spent": spent,
                "llm_failures": state.get("llm_failures", 0) + 1 if llm_failed else 0}

    # ------------------------------------------------------------------ 11. simplify (every simplify.every accepted)

    def simplify(self, state: RunState) -> RunState:
        """A shorter, clearer incumbent with the same behaviour, kept only if it loses nothing (``graph.simplify``)."""
        return run_simplify(self.s, state)

    def _lesson_line(self, state: RunState, fix: FixRecord, edit: dict) -> str:
        """The lesson writer's line for this fix (``roles.lesson_writer``); heurist's template where the role
        fails (a model down, a budget spent, a broken plug-in): the lesson is kept either way. A node run again
        after a crash takes the line its transcript holds, so the same fix never teaches two lessons."""
        s = self.s
        role = s.role("lesson")
        template = template_statement(fix, edit)
        ctx = s.context(state["iteration"], role)
        for entry in s.recorder.read(state["iteration"], role.name):
            if isinstance(entry, Decision) and entry.details.get("fix") == fix.id and entry.details.get("statement"):
                return str(entry.details["statement"])
        s.event("role", role=role.name)
        try:
            # The family's nearest lessons, to be reused word for word: only lines a model may write (a template
            # line can hold a number from a rationale, which a model's line may not), and only for a model.
            known = [] if ctx.offline else [h.lesson.statement for h in s.memory.recall(
                f"{fix.rationale}\n{template}", k=5, family=s.spec.family, types=("lesson",)).lessons
                if h.same_family and general_line(h.lesson.statement)]
            data = LessonInput(task=s.spec.id, family=s.spec.family, task_description=s.spec.description,
                               edit=Edit.model_validate(edit), diff_summary=fix.diff_summary,
                               accepted=fix.outcome == "accepted", reason=fix.reason, score_before=fix.score_before,
                               score_after=fix.score_after, template=template, known=known)
            statement = answer(role, data, ctx).statement
            if statement != template and not general_line(statement):  # any role's line, a plug-in's too
                raise ValueError(f"the line holds a number heurist did not measure: {statement[:200]!r}")
        except Exception as exc:  # a lesson writer that fails costs its wording only: the template stands in
            ctx.transcript.write(RoleFailed, error=f"{type(exc).__name__}: {exc}"[:1000],
                                 traceback=traceback.format_exc()[-3000:])
            statement = template
        ctx.decide(f"the lesson of {fix.id}: {statement}"[:500], fix=fix.id, statement=statement)
        return statement

    @staticmethod
    def _lessons_behind(state: RunState) -> list[str]:
        """The lessons an edit was made with: the one an offline search started from (it reads no statement),
        else every lesson the coder's brief showed (``roles.coder.recall_text`` puts them first)."""
        coder = state.get("coder") or {}
        if coder.get("search"):
            start = coder["search"].get("lesson_start")
            return [start] if start else []
        return [h["lesson"]["id"] for h in (state.get("recall") or {}).get("lessons") or []]

    def _remember_failures(self, state: RunState) -> list[str]:
        s = self.s
        analyses = state.get("analyses") or {}
        findings: list[FailureFinding] = gather(analyses, "failures")[:3]
        if s.memory is None:
            return []
        sightings: list[Sighting] = gather(analyses, "sightings")
        seen = {(v.seed, v.step): v.what_went_wrong for v in sightings}
        # The moments saved of this policy's failures (write_tests saves them where an edit fixed one) go into
        # memory with their failure, found or not among the analysts' first three: a later run can replay them.
        moments = {(m.seed, m.event_kind, m.event_step): m for m in s.saved_scenarios(state["baseline"]["sha256"],
                                                                                 state["iteration"])}
        failures = []
        for f in findings:
            text = f.description + (f" (mode {f.active_mode})" if f.active_mode else "")
            if (f.seed, f.step) in seen:
                text += f"; seen: {seen[(f.seed, f.step)]}"
            failures.append((f.seed, f.step, f.kind, text, moments.pop((f.seed, f.kind, f.step), None)))
        failures += [(m.seed, m.event_step, m.event_kind, m.event_description, m) for m in moments.values()]
        ids = []
        for seed, step, kind, text, moment in failures:
            description = f"{s.spec.id}: {text}"
            scenarios = ()
            if moment is not None and len(moment.model_dump_json()) <= MEMORY_SCENARIO_BYTES:
                try:
                    scenarios = (s.memory.add_scenario(ScenarioRecord(
                        run_id=s.run_id, task=s.spec.id, family=s.spec.family, protocol=s.protocol,
                        name=file_name(moment), description=description, scenario=moment)),)
                except Exception as exc:  # a store that refuses it (a server's request limit): the failure stays
                    s.event("warning", message=f"the scenario of seed {seed}'s {kind} was not kept in memory: "
                                               f"{type(exc).__name__}: {exc}"[:300])
            ids.append(s.memory.add_failure(FailureRecord(
                run_id=s.run_id, description=description, task=s.spec.id, family=s.spec.family,
                protocol=s.protocol, iteration=state["iteration"], seed=seed, step=step, kind=kind,
                policy_sha256=state["baseline"]["sha256"], scenarios=scenarios)))
        return ids

    # ------------------------------------------------------------------ the end

    def pause(self, state: RunState) -> RunState:
        reason = (f"paused after {state.get('llm_failures', 0)} iterations in a row failed on the model; "
                  f"check the server, then `heurist resume {self.s.run_dir}`")
        if not recorded(self.s, RunPaused, iteration=state["iteration"]):
            self.s.ledger.append(RunPaused(run_id=self.s.run_id, iteration=state["iteration"], reason=reason))
        return {"status": "paused", "stop_reason": reason}

    def finish(self, state: RunState) -> RunState:
        """Freeze the best policy, evaluate it once on the holdout seeds, and write the summary."""

        s = self.s
        reason = stop_reason(state, s.config, s.spec) or "stopped"
        s.workspace.reset_to(state["incumbent"]["commit"])
        s.workspace.git("tag", "-f", "heurist-final", object_name(state["incumbent"]["commit"]))
        best = s.run_dir / "best_policy.py"
        atomic_write(best, s.workspace.source_at(state["incumbent"]["commit"]))
        holdout = None
        # A best policy that completed no dev episode has nothing to confirm: its holdout and control would be 100
        # episodes of the same failure (each up to the episode limit, where it hangs), and the holdout's one use.
        if s.config.eval.holdout and state["incumbent"].get("status") != "broken":
            holdout_file = s.run_dir / "holdout.json"
            if holdout_file.is_file():  # the one holdout evaluation already happened before a crash
                holdout = json.loads(holdout_file.read_text())
            else:
                result = s.evaluate_cached(best, "holdout", list(s.spec.seeds.seeds("holdout")))
                holdout = result.summary()
                if s.config.eval.holdout_control:
                    holdout["control"] = self._control(best, result)
                atomic_write(holdout_file, json.dumps(holdout, indent=2))
        records = events(s)
        spent = spent_by(s, records)  # the holdout's env steps included
        final = {**state, "stop_reason": reason, "status": "finished", "spent": spent}
        write_summary(s.run_dir, s.run_id, s.spec, s.protocol, s.llm is None, s.dev_seeds(), final, holdout)
        if not recorded(s, RunFinished, records):
            s.ledger.append(RunFinished(run_id=s.run_id, reason=reason, best_mean=state["incumbent"]["mean"],
                                        holdout=holdout, spent=spent))
        return {"status": "finished", "stop_reason": reason, "spent": spent}

    def _control(self, best: Path, holdout: EvalResult) -> dict[str, Any]:
        """The best policy on seeds no model has seen, beside its holdout (``eval.holdout_control``).

        The holdout's seeds are public constants, and a policy can tell them apart (by the seed, or by the first
        observation, which numpy's generator gives for any seed), so it could play otherwise on exactly the seeds
        the run reports; seeds drawn from the run's secret cannot be told apart. A crash before holdout.json is
        written evaluates neither again: both come from the cache."""
        s = self.s
        seeds = list(s.spec.seeds.unseen(s.screen_key, "holdout control", s.config.eval.holdout_control))
        control = s.evaluate_cached(best, "custom", seeds)
        p = differs_p(holdout, control)
        return {**control.summary(), "p_value": p, "differs": p is not None and p < CONTROL_ALPHA}

    # ------------------------------------------------------------------ helpers

    def _materialise(self, state: RunState) -> None:
        """The workspace as the accepted candidate: the incumbent's commit, the scored bytes, the kept tests.

        The policy is copied from ``RUN_DIR/candidates`` (out of every sandbox's reach, checked against
        the scored hash); no file a sandboxed process could have written reaches the commit."""
        s = self.s
        s.workspace.reset_to(state["incumbent"]["commit"])
        scored_copy = s.candidate_file(state["candidate"]["source"])
        data = scored_copy.read_bytes()
        if hashlib.sha256(data).hexdigest() != state["verification"]["candidate"]["sha256"]:
            raise HeuristError(f"{scored_copy} is not the policy that was scored; the run stops rather than "
                               f"commit it")
        atomic_write(s.workspace.policy, data.decode())
        tests = state.get("tests") or {}
        for name in kept_tests(state):
            atomic_write(s.workspace.root / name, tests[name])
