"""What every role is: a name, a stage, the facts it reads and produces, typed input and output, and ``run``.

The loop builds a ``RoleContext`` and hands it to the role: the model client (None when the
run is offline), the memory store, the role's transcript, the run's config and the way to
score policy sources on chosen dev seeds. No role builds its own client or store, which is
what lets a test swap the model for a scripted server and ``heurist replay`` swap it for
recorded replies. What each stage gives and takes is ``roles.stages``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from pydantic import BaseModel
from pydantic_core import to_json

from envs.tasks import TaskSpec
from roles.stages import Fact, Scorer, Stage
from store.config import RunConfig
from store.transcripts import Decision, RoleTranscript

if TYPE_CHECKING:  # typing only: the store and the client load where a run executes
    from memory.store import MemoryStore
    from roles.coder_tools import Workbench
    from roles.llm import LLMClient
    from roles.llm_replay import ReplayClient

PROMPTS = Path(__file__).parent / "prompts"

In = TypeVar("In", bound=BaseModel)
Out = TypeVar("Out", bound=BaseModel)


@dataclass(frozen=True)
class RoleContext:
    """What a role may use for one iteration; everything else it needs is in its input."""

    task: TaskSpec
    iteration: int
    config: RunConfig
    transcript: RoleTranscript  # transcripts/<iteration>/<role>.jsonl: every model call and decision
    llm: LLMClient | ReplayClient | None  # None offline
    memory: MemoryStore | None
    score: Scorer  # scores policy sources on dev seeds through the sandboxed evaluator (env steps counted)
    search_key: str  # seeds offline search; a replay uses the recorded run's, to reach its decisions
    workbench: Workbench | None = None  # the code stage's: what the coder's tools reach (roles.coder_tools)

    @property
    def offline(self) -> bool:
        return self.llm is None

    def decide(self, summary: str, **details: object) -> None:
        """Record an offline decision (what was decided and from what) in the transcript."""
        self.transcript.write(Decision, summary=summary, details=details)


class Role(ABC, Generic[In, Out]):
    """Subclass with ``name``, ``stage``, ``Input``, ``Output`` and ``run``; put the prompt in roles/prompts/<name>.md.

    ``Input`` and ``Output`` are the stage's models (``roles.stages.STAGE_IO``) or subclasses of
    them. ``produces`` names the facts an analyse role fills in; ``reads`` the facts a role of a
    later stage needs (``roles.stages.FACTS``)."""

    name: ClassVar[str]
    stage: ClassVar[Stage]
    Input: ClassVar[type[BaseModel]]
    Output: ClassVar[type[BaseModel]]
    reads: ClassVar[frozenset[Fact]] = frozenset()
    produces: ClassVar[frozenset[Fact]] = frozenset()
    prompt_file: ClassVar[str | None] = None

    def prompt(self) -> str:
        """The role's system prompt template (its own file, so prompts are read and edited as text)."""
        return self.prompt_of(self.prompt_file or f"{self.name}.md")

    @staticmethod
    def prompt_of(file: str) -> str:
        """Another prompt of the role's (roles/prompts/<file>), for a role with more than one mode."""
        return (PROMPTS / file).read_text()

    @abstractmethod
    def run(self, data: In, ctx: RoleContext) -> Out:
        """Do the role's work on ``data``; record what was decided through ``ctx``."""


# What one role's answer may weigh, as JSON: an answer is kept in the run's state and checkpointed after every node
# (a plug-in's 40 MB report made a 441 MB checkpoint in one iteration). Far above any of heurist's own: a coder's
# edit holds at most a policy of 1 MiB twice over (envs.contract.MAX_SOURCE_BYTES).
MAX_ANSWER_CHARS = 4 * 2**20


class RoleOutputError(Exception):
    """A role (a plug-in's, most likely) returned what its stage cannot take: the role's failure, not heurist's."""


def answer(role: Role, data: BaseModel, ctx: RoleContext) -> BaseModel:
    """What ``role.run`` returns, checked before anything acts on it: an instance of the role's ``Output``, valid
    field by field (a model made with ``model_construct`` skips every check: a reviewer's ``accept="no"`` committed
    an edit, being truthy), in strict mode (no "no" read as False either), and no larger than ``MAX_ANSWER_CHARS``.
    Every node asks its roles through this; RoleOutputError says what was wrong."""
    out = role.run(data, ctx)
    if not isinstance(out, role.Output):
        raise RoleOutputError(f"role {role.name} returned {type(out).__name__}, not {role.Output.__name__}")
    # The declared fields under their aliases, as validation takes them: a computed field (a property a plug-in's
    # subclass adds) is not one, and a field excluded from dumps still is; NaN and infinities are kept as such.
    fields = {field.alias or name: getattr(out, name, None) for name, field in type(out).model_fields.items()}
    try:
        text = to_json(fields, inf_nan_mode="constants", serialize_unknown=True).decode()
    except (ValueError, TypeError) as exc:  # pydantic_core's serialisation error
        raise RoleOutputError(f"role {role.name} returned a {type(out).__name__} that cannot be written as JSON: "
                              f"{' '.join(str(exc).split())[:300]}") from None
    if len(text) > MAX_ANSWER_CHARS:
        raise RoleOutputError(f"role {role.name} returned {len(text):,} characters of JSON, more than "
                              f"{MAX_ANSWER_CHARS:,}")
    try:
        return type(out).model_validate_json(text, strict=True)
    except ValueError as exc:  # pydantic's ValidationError
        first = exc.errors()[0] if hasattr(exc, "errors") else {"loc": (), "msg": str(exc)}
        where = ".".join(str(p) for p in first["loc"]) or "(the whole answer)"
        raise RoleOutputError(f"role {role.name} returned a {type(out).__name__} whose {where} is invalid: "
                              f"{first['msg']}") from None
