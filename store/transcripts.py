"""Per-role transcripts: every model call and every offline role decision, typed and written as it happens.

``RUN_DIR/transcripts/<iteration>/<role>.jsonl``, one line a record, appended and fsync'ed
through the same locked append as the ledger, so a process killed mid-iteration loses
nothing that was written and never leaves a half line that readers trip on. Each line is
one of the ``TranscriptLine`` models, told apart by ``kind``; lines that are not (torn,
edited by hand) are skipped by every reader.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from common.ledger import Ledger


class _Line(BaseModel):
    model_config = ConfigDict(extra="forbid")

    time: float  # epoch seconds
    iteration: int
    role: str


class Decision(_Line):
    """What a role decided without a model, or a node's own record (recall), and from what."""

    kind: Literal["decision"] = "decision"
    summary: str
    details: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _details_inline(cls, data: Any) -> Any:
        """Lines written before transcripts were typed put the details beside the summary: gather them."""
        if isinstance(data, dict):
            own = set(cls.model_fields)
            extra = {k: v for k, v in data.items() if k not in own}
            if extra:
                data = {**{k: v for k, v in data.items() if k in own},
                        "details": {**data.get("details", {}), **extra}}
        return data


class LLMCall(_Line):
    """One request to the model: what was sent and what came back, or the error; never retried silently."""

    kind: Literal["llm_call"] = "llm_call"
    model: str
    attempt: int
    messages: list[dict[str, Any]]
    latency_s: float
    response: str | None = None
    refusal: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    usd: float | None = None  # None where the model has no price: its tokens are reported instead
    priced: bool | None = None
    cached_tokens: int | None = None
    error: str | None = None
    retry_in_s: float | None = None
    partial: str | None = None  # the text that arrived before an abandoned or broken stream ended
    tool_calls: list[dict[str, Any]] | None = None  # the tools the model called (the coder's agent)
    tokens_estimated: bool | None = None  # the server gave no counts: three characters a token (roles.llm)
    narrowed: str | None = None  # what heurist gave up of the endpoint after this refusal


class ValidationFailed(_Line):
    """A reply that did not match the schema; the model is asked again with this error."""

    kind: Literal["validation_error"] = "validation_error"
    attempt: int
    error: str
    response: str


class Parsed(_Line):
    """The reply a role used, as its schema parsed it; a replay's carries the recorded call's cost."""

    kind: Literal["parsed"] = "parsed"
    attempt: int
    parsed: dict[str, Any]
    replayed: bool = False
    tokens: int = 0
    usd: float = 0.0
    unpriced_tokens: int = 0
    estimated_tokens: int = 0  # a replay's: of ``tokens``, those the recorded run estimated (its server gave none)
    # The request it answers (a hash of its messages and schema) and the session that asked it: a node run again
    # after a crash asks the same request, and takes this answer instead of paying for another (``reused``), so
    # the run acts on the answer a replay gives it (``roles.llm.LLMClient.structured``).
    ask: str | None = None
    session: str | None = None
    reused: bool | None = None


class AgentTurn(_Line):
    """One turn of the coder's tool loop: what the model said and the tools it called (the journal a resumed
    loop is rebuilt from, so no paid turn is asked twice; a replay's carries the recorded turn's cost)."""

    kind: Literal["agent_turn"] = "agent_turn"
    loop: str  # which loop of the iteration ("attempt-1", ...)
    turn: int
    mode: Literal["tools", "json"]  # chat completions `tools`, or each call asked for as a JSON object
    content: str = ""
    tool_calls: list[dict[str, str]] = Field(default_factory=list)  # {"id", "name", "arguments"}
    tokens: int = 0
    usd: float | None = 0.0
    latency_s: float = 0.0
    replayed: bool = False


class ToolRun(_Line):
    """One tool the coder's loop ran, with what it answered and the loop's state after it."""

    kind: Literal["tool_run"] = "tool_run"
    loop: str
    turn: int
    call_id: str
    name: str
    arguments: str
    result: str
    image: str | None = None  # a contact sheet shown to a vision model (by path)
    env_steps: int = 0
    seconds: float = 0.0
    state: dict[str, Any] = Field(default_factory=dict)


class RoleFailed(_Line):
    """An analyse role that raised: its report says it failed, the run goes on."""

    kind: Literal["error"] = "error"
    error: str
    traceback: str


class Resumed(_Line):
    """Where a later session of the run (after a kill, a stop or a pause) starts writing to this transcript."""

    kind: Literal["resumed"] = "resumed"


TranscriptLine = Annotated[Union[Decision, LLMCall, ValidationFailed, Parsed, AgentTurn, ToolRun, RoleFailed, Resumed],
                           Field(discriminator="kind")]
_LINE = TypeAdapter(TranscriptLine)
L = TypeVar("L", bound=_Line)


def _typed(records: list[dict[str, Any]]) -> list[TranscriptLine]:
    lines = []
    for record in records:
        try:
            lines.append(_LINE.validate_python(record))
        except ValidationError:
            continue  # a damaged line: skipped, as the ledger's readers skip theirs
    return lines


class TranscriptRecorder:
    """Bound to one run directory; ``for_role`` gives the writer a role uses in one iteration."""

    def __init__(self, run_dir: Path):
        self.root = Path(run_dir) / "transcripts"
        self.session = uuid.uuid4().hex[:12]  # this process's session of the run (a resume is another)
        # The time of the checkpoint this session resumed from (None for a fresh start): the answers written after
        # it went to nodes that were cut off and run again; those before it, to nodes whose results were kept.
        self.resumed_after: float | None = None
        self._cut_off: dict[Path, list[Parsed]] = {}  # per transcript, read once: earlier sessions' lines never change
        self._asked: dict[tuple[Path, str], int] = {}  # how often this session asked each request, per transcript
        self.skipped = 0  # the last read's damaged lines (not JSON, or no transcript line of a known kind)
        # The transcripts this session has written to: one found with lines in it was an earlier session's.
        self._ours: set[Path] = set()
        self._lock = threading.Lock()

    def answer_cut_off(self, path: Path, ask: str) -> dict[str, Any] | None:
        """See ``RoleTranscript.answered_before``; counts this ask."""
        if self.resumed_after is None:
            return None
        with self._lock:
            if path not in self._cut_off:
                lines = _typed(Ledger(path).read()[0]) if path.exists() else []
                self._cut_off[path] = [e for e in lines if isinstance(e, Parsed) and e.session != self.session
                                       and not e.reused and e.time > self.resumed_after]
            taken = self._asked.get((path, ask), 0)
            self._asked[(path, ask)] = taken + 1
            answers = [e.parsed for e in self._cut_off[path] if e.ask == ask]
        return answers[taken] if taken < len(answers) else None

    def claim(self, path: Path) -> bool:
        """Whether this session writes to ``path`` for the first time, over lines an earlier session wrote."""
        with self._lock:
            if path in self._ours:
                return False
            self._ours.add(path)
            return path.exists() and path.stat().st_size > 0

    def path(self, iteration: int, role: str) -> Path:
        return self.root / f"{iteration:04d}" / f"{role}.jsonl"

    def for_role(self, iteration: int, role: str) -> RoleTranscript:
        return RoleTranscript(self.path(iteration, role), iteration, role, self)

    def read(self, iteration: int | None = None, role: str | None = None) -> list[TranscriptLine]:
        """The lines of these transcripts, typed, in the order they were written (damaged ones skipped)."""
        stored = self.stored(iteration, role)
        lines = _typed(stored)
        self.skipped += len(stored) - len(lines)
        return sorted(lines, key=lambda line: (line.iteration, line.time))

    def roles(self) -> list[str]:
        """The roles with a transcript in any iteration, by name."""
        return sorted({file.stem for folder in self.root.glob("[0-9]" * 4) for file in folder.glob("*.jsonl")})

    def stored(self, iteration: int | None = None, role: str | None = None) -> list[dict[str, Any]]:
        """The lines exactly as stored (``heurist transcripts --json`` prints these)."""
        records: list[dict[str, Any]] = []
        self.skipped = 0
        for folder in sorted(self.root.glob("[0-9]" * 4)):
            if iteration is not None and int(folder.name) != iteration:
                continue
            for file in sorted(folder.glob("*.jsonl")):
                if role is None or file.stem == role:
                    found, bad = Ledger(file).read()
                    records += found
                    self.skipped += bad
        return sorted(records, key=_when)


def _when(record: dict[str, Any]) -> tuple[float, float]:
    """Where a stored line sorts: by iteration, then time; a damaged line's values that are no numbers count as 0
    (it is shown where it falls, and left out of every typed read)."""
    def number(value: Any) -> float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0

    return number(record.get("iteration")), number(record.get("time"))


class CallCost(NamedTuple):
    time: float
    tokens: int
    usd: float  # of the priced calls
    unpriced_tokens: int  # tokens of a model with no price: reported as tokens, never as $0
    estimated_tokens: int = 0  # tokens heurist estimated from the text: the server gave no counts


def call_costs(lines: list[TranscriptLine]) -> Iterator[CallCost]:
    """What every model call in these lines cost; a replay's recorded calls count as calls."""
    for line in lines:
        if isinstance(line, LLMCall) and line.prompt_tokens is not None:
            tokens = line.prompt_tokens + (line.completion_tokens or 0)
            unpriced = line.priced is False and not line.usd
            yield CallCost(line.time, tokens, line.usd or 0.0, tokens if unpriced else 0,
                           tokens if line.tokens_estimated else 0)
        elif isinstance(line, Parsed) and line.replayed:
            yield CallCost(line.time, line.tokens, line.usd, line.unpriced_tokens, line.estimated_tokens)
        elif isinstance(line, AgentTurn) and line.replayed:  # a replayed turn has no call line of its own
            yield CallCost(line.time, line.tokens, line.usd or 0.0, line.tokens if line.usd is None else 0)


class RoleTranscript:
    def __init__(self, path: Path, iteration: int, role: str, recorder: TranscriptRecorder | None = None):
        self.path, self.iteration, self.role = path, iteration, role
        self._ledger = Ledger(path)
        self._recorder = recorder

    def write(self, kind: type[L], **fields: Any) -> L:
        """Append one line of this kind (``Decision``, ``LLMCall``, ...); it is checked before it is written.
        The first line a resumed session adds to a transcript is preceded by a ``Resumed`` mark."""
        if self._recorder is not None and self._recorder.claim(self.path):
            mark = Resumed(time=time.time(), iteration=self.iteration, role=self.role)
            self._ledger.append(mark.model_dump(mode="json", exclude_none=True))
        line = kind(time=time.time(), iteration=self.iteration, role=self.role, **fields)
        self._ledger.append(line.model_dump(mode="json", exclude_none=True))
        return line

    def entries(self) -> list[TranscriptLine]:
        return _typed(self._ledger.read()[0])

    @property
    def session(self) -> str | None:
        return self._recorder.session if self._recorder is not None else None

    def answered_before(self, ask: str) -> dict[str, Any] | None:
        """The answer this request got from a node that was cut off before its checkpoint and now runs again, not
        yet taken by this session: the n-th time this session asks it, the n-th such answer (a request asked twice
        is answered twice). Only answers written after the checkpoint this session resumed from count: one a node
        kept before it was used, and the same request asked by a later node is a new question. None where there is
        none, or where this session resumed from no checkpoint (a fresh run reads nothing for it)."""
        if self._recorder is None:
            return None
        return self._recorder.answer_cut_off(self.path, ask)
