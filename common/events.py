"""The ledger's records, typed: every line of a ``ledger.jsonl`` is one of these, told apart by ``event``.

Writers build a record and append it (``common.ledger.Ledger.append``); readers get records back
through ``read_events``, so a renamed or missing field is an error where it is written, not a
silent ``None`` where it is read. A line that is not one of these records (torn by a crash,
edited by hand, written by another version) is counted as damaged, as a line that is not
JSON is, and every reader says so once.

Nested values that are records of other layers (a verdict, a holdout summary, the budget
spent) are kept as JSON objects here: this module sits below them all. Fields added after a record
was first written have defaults, so a ledger written by an earlier heurist is still read whole.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from common.clock import now_iso
from common.ledger import Ledger

Json = dict[str, Any]


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    time: str = Field(default_factory=now_iso)


# ---------------------------------------------------------------------------------------------- evaluations

class EvalStarted(_Event):
    """Written before any episode runs, so an evaluation killed in between shows as started, never finished."""

    event: Literal["eval_started"] = "eval_started"
    eval_id: str
    task: str
    protocol: str
    obs_mode: str
    split: str
    seeds: list[int]
    policy_path: str
    policy_sha256: str
    protected_split: bool
    protected_uses_before: int  # earlier evaluations of this task on this protected split
    versions: dict[str, str]
    git: dict[str, str | bool | None]
    protocol_settings: dict[str, Any] = Field(default_factory=dict)  # every setting of the protocol (envs.tasks)
    max_steps: int | None = None  # episodes cut after this many steps (heurist eval --max-steps): not the protocol's
    policy_files: dict[str, str] = Field(default_factory=dict)  # a policy folder's data files: sha256 by path
    limits: dict[str, float] = Field(default_factory=dict)  # each episode's time limits, as sized (envs.evaluator)


class EpisodeLine(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    seed: int
    status: str
    return_: float | None = Field(None, alias="return")
    length: int
    error: str | None = None


class EvalFinished(_Event):
    """An evaluation's results, without traces; ``env_steps`` includes the clips' re-simulation."""

    event: Literal["eval_finished"] = "eval_finished"
    eval_id: str
    task: str
    protocol: str
    split: str
    seeds: list[int]
    policy: str
    policy_sha256: str
    status: str
    episodes: int
    episodes_failed: int
    mean: float | None
    std: float | None
    median: float | None
    min: float | None
    max: float | None
    ci95: tuple[float, float] | None
    hns_mean: float | None
    target: float | None
    env_steps: int
    clip_env_steps: int = 0  # the clips' re-simulation, counted in env_steps (since 89d7c5e)
    max_steps: int | None = None  # episodes cut after this many steps: not the protocol's score
    setup_runs: int = 0  # times the policy's setup() ran (once per policy process)
    wall_s: float
    failures: dict[str, int]
    clips: list[str]
    clip_errors: list[str] = []  # clips that were not made, and why (since 2026-12-05)
    per_episode: list[EpisodeLine]


class EvalInterrupted(_Event):
    event: Literal["eval_interrupted"] = "eval_interrupted"
    eval_id: str
    reason: str
    wall_s: float


# ---------------------------------------------------------------------------------------------- runs

class RunStarted(_Event):
    event: Literal["run_started"] = "run_started"
    run_id: str
    task: str
    protocol: str
    dev_seeds: list[int]
    start: Json  # the starting policy as scored (graph.state.Scored)
    offline: bool


class RunResumed(_Event):
    event: Literal["run_resumed"] = "run_resumed"
    run_id: str
    at: list[str]  # the nodes the run continued at
    iteration: int | None
    after: Literal["pause"] | None = None


class TestsRun(_Event):
    """One verify step's regression tests: each file's verdict on the candidate, and each new test's fate."""

    event: Literal["tests_run"] = "tests_run"
    run_id: str
    iteration: int
    passed: bool
    reason: str
    files: dict[str, Json] = Field(default_factory=dict)  # path -> {passed, reason}
    new_tests: dict[str, Json] = Field(default_factory=dict)  # path -> {kept, reason}
    wall_s: float
    # Before tests reached the policy through the evaluator (9b2bbe0) they ran their own episodes, counted
    # here; now their episodes are evaluations, counted in eval_finished lines, and this stays 0.
    env_steps: int = 0
    candidate_sha256: str | None = None  # which candidate (side by side, an iteration may test several)


class IterationDone(_Event):
    """What one iteration tried and decided; the only record of a rejected edit once it is rolled back."""

    event: Literal["iteration"] = "iteration"
    run_id: str
    iteration: int
    accepted: bool
    reason: str
    edit: str | None
    mean_before: float | None
    mean_candidate: float | None
    mean_after: float | None
    commit: str | None
    tests_added: list[str]
    verdict: Json | None
    policy_sha256: str
    spent: Json
    # What was tried, recorded since 1128b7a (the report shows a rejected edit from these).
    baseline_sha256: str | None = None
    rationale: str | None = None
    candidate_sha256: str | None = None
    analyses: dict[str, str] = Field(default_factory=dict)  # analyse role -> its summary
    diff: str = ""
    tests_written: dict[str, str] = Field(default_factory=dict)
    check_error: str | None = None


class ScenariosSaved(_Event):
    """The failure scenarios saved for some of the incumbent's failed seeds (``envs.scenario_files``), and the env
    steps their replay and verification took."""

    event: Literal["scenarios_saved"] = "scenarios_saved"
    run_id: str
    iteration: int
    policy_sha256: str
    seeds: list[int] = Field(default_factory=list)  # the seeds whose failures were asked for
    scenarios: dict[str, list[str]] = Field(default_factory=dict)  # seed -> scenario names
    discarded: dict[str, str] = Field(default_factory=dict)  # what could not be a scenario, and why
    env_steps: int = 0


class ScenarioSteps(_Event):
    """Env steps of failure scenarios replayed outside verify (by regression tests in the coder's ``run_tests`` tool
    and the simplify stage, and by the coder's ``scenario`` tool), which no ``tests_run`` line counts."""

    event: Literal["scenario_steps"] = "scenario_steps"
    run_id: str
    iteration: int
    where: str
    env_steps: int


class SimplifyDone(_Event):
    """A simplify stage after an iteration (``graph.simplify``): what it proposed, and whether it was kept."""

    event: Literal["simplify"] = "simplify"
    run_id: str
    iteration: int  # the iteration it followed
    accepted: bool
    reason: str
    applied: list[str] = Field(default_factory=list)  # what was simplified, one line each
    complexity_before: dict[str, int]  # lines, branches, ast_nodes (envs.complexity)
    complexity_after: dict[str, int] | None = None
    mean_before: float | None = None
    mean_after: float | None = None
    policy_sha256_before: str
    policy_sha256_after: str | None = None
    commit: str | None = None
    verdict: Json | None = None
    # The seeds no model had seen (``simplify.screen_episodes``), drawn for this stage, and the gate's verdict there.
    screen_seeds: list[int] | None = None
    screen_verdict: Json | None = None
    diff: str = ""


class RunPaused(_Event):
    event: Literal["run_paused"] = "run_paused"
    run_id: str
    iteration: int | None = None  # recorded since b8433ad
    reason: str


class RunFinished(_Event):
    event: Literal["run_finished"] = "run_finished"
    run_id: str
    reason: str
    best_mean: float | None
    holdout: Json | None
    spent: Json


LedgerEvent = Annotated[Union[EvalStarted, EvalFinished, EvalInterrupted, RunStarted, RunResumed, TestsRun,
                              IterationDone, SimplifyDone, ScenariosSaved, ScenarioSteps, RunPaused, RunFinished],
                        Field(discriminator="event")]
_EVENT = TypeAdapter(LedgerEvent)


# Every record that carries env steps heurist ran: evaluations (their clips' re-simulation included), regression
# tests' own episodes, scenarios saved and replayed. The one definition of a run's steps: its own budget (``graph``),
# a campaign's share of its budget (``campaign.budget``) and the report's axes all count these.
STEP_RECORDS = (EvalFinished, TestsRun, ScenariosSaved, ScenarioSteps)


def steps_in(record: LedgerEvent) -> int:
    """The env steps one record says were run (0 for a record of another kind)."""
    return record.env_steps if isinstance(record, STEP_RECORDS) else 0


def read_events(ledger: Ledger) -> tuple[list[LedgerEvent], int]:
    """Every record of the ledger in order, and how many lines are damaged (not JSON, or not a record)."""
    raw, bad = ledger.read()
    events: list[LedgerEvent] = []
    for record in raw:
        try:
            events.append(_EVENT.validate_python(record))
        except ValidationError:
            bad += 1
    return events, bad
