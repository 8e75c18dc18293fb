"""The coder agent's tools: what each takes, what it reaches, and the compact text it answers with.

Each tool is a thin wrapper over a piece heurist already has, reached through a ``Workbench``
(implemented by the graph over the run's services, so this layer never imports it):

- ``read_file``: the incumbent ``policy.py``, the working ``candidate.py``, the accepted tests, and
  ``history/NNNN.md`` (each earlier iteration's diff and verdict, accepted or rejected);
- ``score``: the sandboxed evaluator on chosen dev seeds (holdout and audit seeds are refused; the env
  steps go to the run's ledger like every evaluation's);
- ``trace``: recorded steps of the incumbent or of the candidate (actions and rewards for every step,
  observations and diagnostics inside the windows the evaluator kept);
- ``frames``: the contact sheet of the clip nearest a step, as an image where the model takes images,
  else the moving objects measured in it, as text;
- ``scenario``: a saved failure scenario (this run's, or an earlier run's recalled from memory) replayed with
  the incumbent or the candidate from the moment before that failure, each step shown: a failure looked at and
  a fix tried in a few hundred steps, not a whole episode;
- ``edit``: SEARCH/REPLACE on the working candidate, answered with its diff against the incumbent or the
  precise failure (nearest lines); the incumbent is never touched;
- ``run_tests``: the accepted regression tests against the working candidate, sandboxed as verify runs them;
- ``submit``: ends the loop with the working candidate.

The arguments are pydantic models (``extra="forbid"``), so the JSON schemas the model is given are
said once, here, and a call with wrong arguments is answered with the error, never guessed at.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Protocol, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from envs.results import EvalResult
from roles.edits import SearchReplace

MAX_RESULT_CHARS = 6000  # one tool result, as the model reads it
MAX_SCORE_SEEDS = 20


class _Args(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReadFileArgs(_Args):
    path: str = Field(..., description="policy.py (the incumbent), candidate.py (your working copy), "
                                       "tests/<name>.py, history/<NNNN>.md, or '.' to list them.")


class ScoreArgs(_Args):
    seeds: list[int] = Field(..., min_length=1, max_length=MAX_SCORE_SEEDS, description="Dev seeds to run.")
    source: str | None = Field(None, description="A whole new policy file to make the working candidate first "
                                                 "(leave out to score the working candidate as it is).")


class TraceArgs(_Args):
    seed: int
    first_step: int = Field(..., ge=0)
    last_step: int = Field(..., ge=0)
    policy: Literal["candidate", "incumbent"] = "incumbent"


class FramesArgs(_Args):
    seed: int
    step: int = Field(..., ge=0)
    policy: Literal["candidate", "incumbent"] = "incumbent"


class ScenarioArgs(_Args):
    name: str = Field(..., description="A saved failure scenario's name (listed in the brief), or '.' to list them.")
    policy: Literal["candidate", "incumbent"] = "incumbent"
    first_step: int | None = Field(None, ge=0, description="Show steps from here (default: the last ones shown "
                                                           "before the recorded failure).")
    last_step: int | None = Field(None, ge=0)
    frames: bool = Field(False, description="Also film the replay around the failure's step, shown as frames.")


class EditArgs(_Args):
    blocks: list[SearchReplace] = Field(..., min_length=1, description="Applied in order to candidate.py; each "
                                                                       "SEARCH must match it exactly once.")


class RunTestsArgs(_Args):
    pass


class SubmitArgs(_Args):
    rationale: str = Field(..., min_length=1, description="What failure this fixes and the evidence that it does.")
    target_seeds: list[int] = Field(default_factory=list)
    target_kinds: list[str] = Field(default_factory=list)


TOOL_ARGS: dict[str, type[_Args]] = {
    "read_file": ReadFileArgs, "score": ScoreArgs, "trace": TraceArgs, "frames": FramesArgs,
    "scenario": ScenarioArgs, "edit": EditArgs, "run_tests": RunTestsArgs, "submit": SubmitArgs}
TOOL_DOCS: dict[str, str] = {
    "read_file": "Read a file of the workspace: the incumbent, your candidate, a test, or an earlier iteration's "
                 "diff and verdict.",
    "score": "Run the working candidate (sandboxed) on chosen dev seeds: per-seed returns beside the incumbent's, "
             "and the failure events. Costs env steps.",
    "trace": "The recorded steps of one episode between two steps: action and reward each step; observation and "
             "diagnostics near the failure events.",
    "frames": "The frames of the recorded clip nearest a step of one episode.",
    "scenario": "Replay a saved failure scenario with the incumbent or candidate.py, from the moment saved before "
                "that failure: whether it fails that way again, and each step's action and reward (and observation "
                "where it is small); with frames, the frames around the failure's step too. Costs a few env steps: "
                "the window and as long again.",
    "edit": "Apply SEARCH/REPLACE blocks to candidate.py; answers with the diff against the incumbent or why a "
            "block did not apply.",
    "run_tests": "Run the accepted regression tests against candidate.py, as the verify stage will.",
    "submit": "End this iteration with candidate.py as the proposed edit.",
}


def tool_request_model() -> type[BaseModel]:
    """One tool call as a JSON object, for endpoints that take no `tools`: ``{"thought", "call": {"tool",
    "arguments"}}`` where each tool's arguments have that tool's schema (a grammar-constrained server, such as
    llama.cpp, can then only write arguments that fit)."""
    calls = [create_model(f"Call_{name}", __config__=ConfigDict(extra="forbid"), tool=(Literal[name], ...),
                          arguments=(args, ...)) for name, args in TOOL_ARGS.items()]
    call = Annotated[Union[tuple(calls)], Field(discriminator="tool")]  # type: ignore[valid-type]
    return create_model("ToolRequest", __config__=ConfigDict(extra="forbid"),
                        thought=(str, Field("", description="What you want to learn or try, in one sentence.")),
                        call=(call, ...))


def tool_specs() -> list[dict[str, Any]]:
    """The tools as chat completions `tools` (function name, description, JSON schema of the arguments)."""
    specs = []
    for name, args in TOOL_ARGS.items():
        schema = args.model_json_schema()
        schema.pop("title", None)
        specs.append({"type": "function", "function": {"name": name, "description": TOOL_DOCS[name],
                                                       "parameters": schema}})
    return specs


class ToolFailed(ValueError):
    """A tool's work that failed after it had spent env steps: the reason (told to the model) and the steps, which
    the loop counts all the same."""

    def __init__(self, reason: str, env_steps: int = 0):
        super().__init__(reason)
        self.env_steps = env_steps


@dataclass
class TestOutcome:
    name: str
    passed: bool
    reason: str
    output: str


class Workbench(Protocol):
    """What the coder's tools reach in the run (the graph implements it over the run's services)."""

    incumbent: str  # the incumbent policy's source
    dev_seeds: list[int]
    incumbent_scores: dict[int, float | None]
    films: bool  # whether evaluations record clips (eval.video): without, the frames tool has nothing to show

    def files(self) -> dict[str, str]:
        """Readable files by path: the accepted tests (tests/...) and history/NNNN.md."""

    def evaluate(self, source: str, seeds: list[int] | None = None, video: bool = False) -> tuple[EvalResult, int]:
        """The source's sandboxed evaluation on these dev seeds, and the env steps it spent now (0 when it
        came from the run's cache; the steps are in the ledger either way)."""

    def run_tests(self, source: str) -> tuple[list[TestOutcome], int]:
        """The accepted regression tests against this source, each in its own sandbox, and the env steps
        spent now (the source's dev evaluation, which the tests' episodes come from)."""

    def scenarios(self) -> dict[str, str]:
        """The saved failure scenarios the ``scenario`` tool can replay: name -> what failed there."""

    def run_scenario(self, source: str, name: str, film: bool = False) -> tuple[dict[str, Any], int]:
        """One scenario replayed with this source, each step recorded (``envs.scenarios.run_scenario``; with
        ``film``, a clip of it as ``result["clip"]``: mp4, png, frames, label), and the env steps it took;
        ToolFailed says why it could not run, and what it had spent."""

    def run_budget_spent(self) -> str | None:
        """Which of the run's own budgets (env steps, hours) is spent, if one is."""

    def event(self, kind: str, **fields: Any) -> None:
        """Tell the live view what the loop does."""


def clipped(text: str, limit: int = MAX_RESULT_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 60] + f"\n… ({len(text) - limit + 60} more characters)"
