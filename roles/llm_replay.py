"""``heurist replay``: a run whose model answers from another run's transcripts, in order per iteration and
role, so it reaches the same decisions without a network or a key (and counts the recorded calls' cost).

Structured replies come from the recorded ``Parsed`` lines; the coder agent's turns, native or JSON, from
its recorded ``AgentTurn`` lines by loop and number (the tools are run again, so the replay checks that they
still answer the same)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from roles.llm import Reply
from roles.llm_usage import LLMError, ReplayEnded, Usage
from store.transcripts import AgentTurn, LLMCall, Parsed, RoleTranscript, TranscriptRecorder

T = TypeVar("T", bound=BaseModel)


class ReplayClient:
    """Answers each role's calls with the replies recorded in another run's transcripts, in order."""

    replays = True

    def __init__(self, recorded_run: Path, usage: Usage):
        self.usage = usage
        self._recorder = TranscriptRecorder(recorded_run)
        self._cursor: dict[tuple[int, str, str], int] = {}
        self._lock = threading.Lock()

    def _next(self, transcript: RoleTranscript, kind: str) -> int:
        key = (transcript.iteration, transcript.role, kind)
        with self._lock:
            index = self._cursor.get(key, 0)
            self._cursor[key] = index + 1
        return index

    def structured(self, transcript: RoleTranscript, messages: list[dict], schema: type[T]) -> T:
        entries = self._recorder.read(transcript.iteration, transcript.role)
        # A reused answer repeats one given earlier (a node run again after a crash): the run acted on it once.
        recorded = [e for e in entries if isinstance(e, Parsed) and not e.reused]
        index = self._next(transcript, "parsed")
        if index >= len(recorded):
            raise LLMError(f"replay: the recorded run has no reply number {index + 1} for {transcript.role} "
                           f"in iteration {transcript.iteration}")
        calls = [e for e in entries if isinstance(e, LLMCall) and e.response and not e.tool_calls]
        tokens = sum((e.prompt_tokens or 0) + (e.completion_tokens or 0) for e in calls[index:index + 1])
        usd = sum(e.usd or 0.0 for e in calls[index:index + 1])
        unpriced = any(e.priced is False for e in calls[index:index + 1])
        estimated = any(e.tokens_estimated for e in calls[index:index + 1])  # the recorded server gave no counts
        self.usage.add(tokens, None if unpriced else usd, estimated=estimated)
        try:
            parsed = schema.model_validate(recorded[index].parsed)
        except ValidationError as exc:  # a transcript damaged or edited since: not this heurist's own failure
            raise LLMError(f"replay: the recorded reply number {index + 1} of {transcript.role} in iteration "
                           f"{transcript.iteration} is not a valid {schema.__name__} ({exc.error_count()} problem(s), first "
                           f"at {'.'.join(map(str, exc.errors()[0]['loc'])) or 'the top'}); its transcript was "
                           f"changed since the run") from None
        transcript.write(Parsed, attempt=0, parsed=parsed.model_dump(mode="json"), replayed=True,
                         tokens=tokens, usd=usd, unpriced_tokens=tokens if unpriced else 0,
                         estimated_tokens=tokens if estimated else 0)
        return parsed

    def tools_supported(self, role: str) -> bool:
        return True  # what the recorded run used decides, turn by turn (``turn``)

    def takes_images(self, role: str) -> bool:
        return False  # the answers are recorded: nothing is shown to a model

    def turn(self, transcript: RoleTranscript, messages: list[dict], tools: list[dict[str, Any]],
             loop: str = "", index: int = 0) -> Reply:
        """Turn number ``index`` of the recorded coder loop ``loop`` (its tool calls as they were made, asked
        natively or as JSON): by name and number, so loops that ran side by side, and a replay resumed in
        the middle of a loop, get the turns that were theirs."""
        turns = [e for e in self._recorder.read(transcript.iteration, transcript.role)
                 if isinstance(e, AgentTurn) and e.loop == loop]
        if index >= len(turns):
            raise ReplayEnded(f"the recorded loop {loop} ended after {len(turns)} turns")
        recorded = turns[index]
        self.usage.add(recorded.tokens, recorded.usd)
        return Reply(recorded.content, "tool_calls" if recorded.tool_calls else "stop", None,
                     [dict(c) for c in recorded.tool_calls], mode=recorded.mode)
