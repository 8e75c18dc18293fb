"""What every role is: a name, a stage, typed input and output, a prompt template, and ``run``.

The graph builds a ``RoleContext`` and hands it to the role: the LLM client (None when the
run is offline), the memory store, the role's transcript and the run's paths. No role
builds its own client or store, which is what lets a test swap the model for a scripted
server and ``heurist replay`` swap it for recorded replies.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from envs.tasks import TaskSpec

Stage = Literal["analyse", "code", "test", "review"]
PROMPTS = Path(__file__).parent / "prompts"

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


class RoleModel(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnalyseInput(RoleModel):
    """What every role of the analyse stage gets: the incumbent's evaluation on the dev seeds."""

    task: str
    task_description: str
    policy_source: str
    eval_result: dict[str, Any] = Field(..., description="An EvalResult as JSON (envs/evaluator.py), clips included.")


class AnalyseOutput(RoleModel):
    """What the coder reads from an analyse role: a summary line plus the role's own structured findings."""

    summary: str
    details: dict[str, Any] = Field(default_factory=dict)


@dataclass
class RoleContext:
    task: TaskSpec
    run_dir: Path
    workspace: Path
    iteration: int
    llm: Any | None  # graph.llm.LLMClient or ReplayClient; None offline
    memory: Any | None  # memory.MemoryStore
    transcript: Any  # graph.transcripts.RoleTranscript
    config: Any  # graph.config.RunConfig
    seed: int = 0
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def offline(self) -> bool:
        return self.llm is None

    def decide(self, summary: str, **details: Any) -> None:
        """Record an offline decision (what was decided and from what) in the transcript."""
        self.transcript.write("decision", summary=summary, **details)


class Role(ABC, Generic[In, Out]):
    """Subclass with ``name``, ``stage``, ``Input``, ``Output`` and ``run``; put the prompt in roles/prompts/<name>.md."""

    name: ClassVar[str]
    stage: ClassVar[Stage]
    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    prompt_file: ClassVar[str | None] = None

    def prompt(self) -> str:
        """The role's system prompt template (its own file, so prompts are read and edited as text)."""
        path = PROMPTS / (self.prompt_file or f"{self.name}.md")
        return path.read_text()

    @abstractmethod
    def run(self, data: In, ctx: RoleContext) -> Out:
        """Do the role's work on ``data``; record what was decided through ``ctx``."""
