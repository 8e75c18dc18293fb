"""What each stage of an iteration gives its roles and takes back, and the facts analyse roles share.

A role of a stage takes that stage's input model and returns its output model (or a subclass
of it); that is what lets any role of any stage, the coder and test writer included, be
replaced by a plug-in. Analyse roles also declare the *facts* they produce: typed fields of
``AnalyseOutput`` that later stages and the loop read by name (``failures``,
``seeds_by_kind``, ``sightings``), never by asking for a particular role. Roles declare the
facts they read; ``roles.registry.check_stages`` refuses, at start, a configuration in which
something reads a fact no analyse role produces.
"""

from __future__ import annotations

import ast
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from envs.results import EvalResult
from roles.edits import Edit

Stage = Literal["analyse", "code", "test", "review", "simplify", "lesson"]
STAGES: tuple[Stage, ...] = ("analyse", "code", "test", "review", "simplify", "lesson")
# A fact is a field of AnalyseOutput that some analyse role fills in (None where no role did).
Fact = Literal["failures", "seeds_by_kind", "sightings"]
FACTS: tuple[Fact, ...] = ("failures", "seeds_by_kind", "sightings")

# scorer(sources, seeds) -> one {seed: return or None} per source, through the sandboxed evaluator.
Scorer = Callable[[list[str], list[int]], list[dict[int, float | None]]]


class RoleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---------------------------------------------------------------------------------------------- analyse

class ScenarioReplay(RoleModel):
    """A saved failure scenario (an earlier policy's failure, or an earlier run's) replayed with the incumbent and
    filmed around the moment of that failure: whether the failure happened again, and its clip."""

    name: str
    seed: int
    step: int = Field(..., description="The step of the recorded failure (the clip ends shortly after it).")
    kind: str
    description: str
    failed_again: bool
    mp4: str | None = None
    png: str | None = None
    frames: int = 0
    error: str | None = Field(None, description="Why it could not be replayed (such a replay is not shown).")


class AnalyseInput(RoleModel):
    """What every role of the analyse stage gets: the incumbent's evaluation on the dev seeds, and the saved failure
    scenarios that no accepted test holds it to, replayed with it."""

    task: str
    task_description: str
    policy_source: str
    evaluation: EvalResult = Field(..., description="The incumbent's evaluation on the dev seeds, clips included.")
    scenarios: list[ScenarioReplay] = Field(default_factory=list, description="Old failures' saved moments replayed "
                                            "with the incumbent (filmed where clips are recorded).")


class FailureFinding(RoleModel):
    """One failure seen in an episode: where it happened and what it was (the ``failures`` fact)."""

    seed: int
    step: int
    kind: str
    description: str
    active_mode: str | None = None


class Sighting(RoleModel):  # the ``sightings`` fact; its docstring is the vision model's schema description
    """What was seen going wrong around a step of an episode's clip."""

    seed: int
    step: int
    what_went_wrong: str
    evidence: str = ""


class AnalyseOutput(RoleModel):
    """What an analyse role returns: a summary line the coder reads, the facts it declares, its own details."""

    summary: str
    failures: list[FailureFinding] | None = Field(None, description="Failures, worst seeds first (fact).")
    seeds_by_kind: dict[str, list[int]] | None = Field(None, description="Failure kind -> dev seeds (fact).")
    sightings: list[Sighting] | None = Field(None, description="What clips show going wrong (fact).")
    details: dict[str, Any] = Field(default_factory=dict, description="Anything else, shown as it is.")


def _carried(report: dict[str, Any], fact: Fact) -> Any:
    """The fact in one report. A report checkpointed by the previous version (a run resumed mid-iteration)
    kept the log parser's failures and the video analyst's sightings under ``findings``."""
    if report.get(fact) is not None:
        return report[fact]
    old = report.get("findings")
    if isinstance(old, list) and old and isinstance(old[0], dict):
        shape = "failures" if "kind" in old[0] else "sightings" if "what_went_wrong" in old[0] else None
        return old if shape == fact else None
    return None


def gather(analyses: dict[str, dict[str, Any]], fact: Fact) -> Any:
    """One fact over every analyse report that carries it (reports as the state keeps them, JSON), in role
    order: ``failures`` and ``sightings`` as lists of their models (a role's subclass cut down to the fact's
    fields), ``seeds_by_kind`` as one merged table."""
    values = [value for report in analyses.values() if (value := _carried(report, fact)) is not None]
    if fact == "seeds_by_kind":
        merged: dict[str, list[int]] = {}
        for table in values:
            for kind, seeds in table.items():
                merged[kind] = [*merged.get(kind, []), *(s for s in seeds if s not in merged.get(kind, []))]
        return merged
    model = FailureFinding if fact == "failures" else Sighting
    return [model.model_validate({k: item[k] for k in model.model_fields if k in item})
            for items in values for item in items]


# ---------------------------------------------------------------------------------------------- code

class CoderInput(RoleModel):
    task: str
    task_description: str
    policy_source: str
    incumbent: dict[int, float | None] = Field(..., description="Dev seed -> the incumbent's return (None: failed).")
    analyses: dict[str, Any] = Field(default_factory=dict, description="Each analyse role's report, by role name.")
    recall: dict[str, Any] | None = None
    history: list[dict[str, Any]] = Field(default_factory=list)
    check_error: str | None = Field(None, description="Why the previous attempt this iteration failed the check.")
    previous_edit: Edit | None = None
    attempt: int = Field(1, ge=1, description="Which try of this iteration (a failed check sends the coder back).")
    branch: int = Field(0, ge=0, description="Which of the candidates proposed side by side (code.parallel).")
    focus: str | None = Field(None, description="The failure or hypothesis this candidate is to pursue, when "
                                                "several are proposed side by side.")


class CoderOutput(RoleModel):
    edit: Edit | None
    reason: str = Field(..., description="Why this edit, or why none.")
    search: dict[str, Any] = Field(default_factory=dict, description="Offline search evidence (seeds, scores).")


# ---------------------------------------------------------------------------------------------- test

class TestWriterInput(RoleModel):
    task: str
    iteration: int
    edit: Edit
    candidate_source: str
    incumbent: dict[int, float | None]
    failure_summary: str = ""
    seeds_by_kind: dict[str, list[int]] = Field(default_factory=dict)
    existing_tests: list[str] = Field(default_factory=list)
    candidate: dict[int, float | None] = Field(default_factory=dict, description="The candidate's return per dev "
                                               "seed (None: failed), measured before the test is written.")
    existing_test_sources: dict[str, str] = Field(default_factory=dict, description="The accepted test files.")
    scenarios: dict[int, list[str]] = Field(default_factory=dict, description="The incumbent's saved failure "
                                            "scenarios by dev seed, for run_scenario(name).")
    recalled_scenarios: dict[str, str] = Field(default_factory=dict, description="Earlier runs' failure scenarios "
                                               "of this task, recalled from memory: name -> what failed there.")


class TestFile(RoleModel):
    filename: str = Field("", description="a suggested name; heurist names the file tests/test_iteration_NNNN.py")
    source: str
    rationale: str
    seeds: list[int] = Field(default_factory=list)

    @field_validator("source")
    @classmethod
    def _parses(cls, value: str) -> str:
        try:
            tree = ast.parse(value)
        except SyntaxError as exc:
            raise ValueError(f"the test file does not parse: line {exc.lineno}: {exc.msg}") from None
        if not any(isinstance(n, ast.FunctionDef) and n.name.startswith("test_") for n in tree.body):
            raise ValueError("the test file defines no top-level test_ function")
        return value


# ---------------------------------------------------------------------------------------------- review

class ReviewInput(RoleModel):
    task: str
    incumbent: dict[int, float | None] = Field(..., description="Dev seed -> return; None where the episode failed.")
    candidate: dict[int, float | None]
    tests_passed: bool
    tests_report: str = ""
    diff: str = ""
    rationale: str = ""


class LLMReview(RoleModel):
    games_the_evaluation: bool = Field(..., description="True if the diff special-cases seeds, reads hidden state "
                                                        "the task forbids, or disables or weakens tests.")
    reasons: list[str]


class Verdict(RoleModel):
    accept: bool
    reasons: list[str]
    mean_before: float | None = None
    mean_after: float | None = None
    mean_delta: float | None = None
    p_value: float | None = None
    paired_seeds: int = 0
    new_failures: list[int] = Field(default_factory=list)
    llm_review: LLMReview | None = None


# ---------------------------------------------------------------------------------------------- simplify

class SimplifyInput(RoleModel):
    task: str
    task_description: str = ""
    policy_source: str = Field(..., description="The incumbent policy, to make shorter and clearer.")
    complexity: dict[str, int] = Field(default_factory=dict, description="Its lines, branches and AST nodes.")
    incumbent: dict[int, float | None] = Field(default_factory=dict, description="Dev seed -> return (None: failed); "
                                                                                 "the simplification must keep them.")
    tests: list[str] = Field(default_factory=list, description="The accepted regression test files it must pass.")


class SimplifyOutput(RoleModel):
    edit: Edit | None = Field(None, description="A shorter, clearer policy with the same behaviour; None: none found.")
    reason: str = ""
    applied: list[str] = Field(default_factory=list, description="What was simplified, one line each.")


# ---------------------------------------------------------------------------------------------- lesson

class LessonInput(RoleModel):
    """One remembered edit that teaches a lesson (accepted, or clearly worse), for its one general line."""

    task: str
    family: str
    task_description: str = ""
    edit: Edit
    diff_summary: str = ""
    accepted: bool
    reason: str = Field("", description="The verdict's reasons.")
    score_before: float
    score_after: float
    template: str = Field(..., description="heurist's own line for it (what the offline lesson writer says).")
    known: list[str] = Field(default_factory=list, description="The family's lessons nearest to it, verbatim: one "
                                                               "that says the same is answered word for word, so "
                                                               "the two merge into one lesson with more evidence.")


class LessonOutput(RoleModel):
    statement: str = Field(..., min_length=1, max_length=300, description="One general line, no numbers: heurist "
                                                                          "attaches the measured evidence.")
    reason: str = ""


STAGE_IO: dict[Stage, tuple[type[BaseModel], type[BaseModel]]] = {
    "analyse": (AnalyseInput, AnalyseOutput), "code": (CoderInput, CoderOutput),
    "test": (TestWriterInput, TestFile), "review": (ReviewInput, Verdict),
    "simplify": (SimplifyInput, SimplifyOutput), "lesson": (LessonInput, LessonOutput)}
