"""The graph's state: what one run knows between nodes, as plain JSON types so every checkpoint is readable.

Every sub-record is a ``TypedDict``: typed for the reader and the type checker, and still
plain JSON in LangGraph's SQLite checkpoints. Everything a node needs that is not state (the
config, the task, the workspace, the memory store, the model client, the transcripts) lives
in ``graph.context.Services``, rebuilt from the run directory on every start or resume.
"""

from __future__ import annotations

from typing import Annotated, Any, NotRequired, TypedDict

# An analyse role's report as JSON (a roles.stages.AnalyseOutput or a subclass of it).
AnalysisReport = dict[str, Any]


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
    unrunnable: NotRequired[str]  # a start only: why no dev episode completed, where no role here can change that


class CodeOutcome(TypedDict, total=False):
    """The code stage's answer (a roles.stages.CoderOutput as JSON), or why there is none."""

    edit: dict[str, Any] | None  # a roles.edits.Edit as JSON
    reason: str
    search: dict[str, Any]
    llm_failed: bool  # the model failed (not the budget): counts toward a pause


class Candidate(TypedDict):
    """The edited policy once it passed the check."""

    source: str
    diff: str
    summary: str


class FileVerdict(TypedDict):
    passed: bool
    reason: str


class NewTestDecision(TypedDict):
    kept: bool
    reason: str


class Verification(TypedDict, total=False):
    """What verify measured: the candidate's score, the accepted tests' verdicts, each new test's fate."""

    candidate: Scored
    tests_passed: bool
    tests_report: str
    tests_reason: str
    test_files: dict[str, FileVerdict]
    new_tests: dict[str, NewTestDecision]
    test_writer_error: str  # the test stage failed on the model: no new test this iteration


class Verdict(TypedDict):
    accept: bool
    reasons: list[str]
    by_role: dict[str, dict[str, Any]]  # review role -> its roles.stages.Verdict as JSON
    llm_failed: bool


class Outcome(TypedDict):
    accepted: bool
    reason: str
    commit: str | None


class Spent(TypedDict):
    """Counted by trusted code: env steps from the ledger, tokens and dollars from the transcripts."""

    env_steps: int
    tokens: int
    usd: float  # of calls to priced models
    unpriced_tokens: NotRequired[int]  # tokens of models with no price (absent in runs made before it was counted)
    estimated_tokens: NotRequired[int]  # of ``tokens``, those heurist estimated: the server gave no counts
    llm_calls: int
    elapsed_s: float


class HistoryEntry(TypedDict):
    iteration: int
    accepted: bool
    reason: str
    edit: str | None  # the rationale, one line
    mean_before: float | None
    mean_candidate: float | None
    mean_after: float | None
    commit: str | None


class RunState(TypedDict, total=False):
    run_id: str
    status: str  # running | finished | paused
    stop_reason: str | None
    iteration: int  # the iteration in progress (1-based); 0 before the first
    incumbent: Scored  # the best policy so far: only improvements are ever committed
    start: Scored  # the starting policy, for the summary
    baseline: Scored  # the incumbent when this iteration began
    analyses: Annotated[dict[str, AnalysisReport], merge_reports]  # analyse role -> its report
    recall: dict[str, Any] | None  # a memory.records.Recall as JSON
    recalled_scenarios: dict[str, str]  # earlier runs' failure scenarios the recall brought into RUN_DIR/scenarios
    coder: CodeOutcome | None
    # code.parallel > 1: each side-by-side coder's proposal by branch; the checked candidates still waiting,
    # best first ({"coder", "candidate", "name"}); what was rejected or dropped before the one at the gate.
    proposals: Annotated[dict[str, CodeOutcome], merge_reports]
    queue: list[dict[str, Any]]
    tried: list[str]
    branch_name: str | None
    attempts: int  # coder attempts this iteration
    check_error: str | None
    candidate: Candidate | None
    tests: dict[str, str]  # test files this iteration adds, path -> source
    verification: Verification | None
    verdict: Verdict | None
    outcome: Outcome | None
    since_improvement: int
    llm_failures: int  # consecutive iterations that failed on the model
    spent: Spent  # counted at each iteration's end
    simplified_at: int  # the iteration the last simplify stage followed (graph.simplify), 0 before any
    simplifications: list[dict[str, Any]]  # each simplify stage: iteration, accepted, reason, complexity before/after
    history: list[HistoryEntry]
