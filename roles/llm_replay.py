"""``heurist replay``: a run whose model answers from another run's transcripts, in order per iteration and
role, so it reaches the same decisions without a network or a key (and counts the recorded calls' cost)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from roles.llm_usage import LLMError, Usage
from store.transcripts import LLMCall, Parsed, RoleTranscript, TranscriptRecorder

T = TypeVar("T", bound=BaseModel)


class ReplayClient:
    """Answers each role's calls with the replies recorded in another run's transcripts, in order."""

    def __init__(self, recorded_run: Path, usage: Usage):
        self.usage = usage
        self._recorder = TranscriptRecorder(recorded_run)
        self._cursor: dict[tuple[int, str], int] = {}
        self._lock = threading.Lock()

    def structured(self, transcript: RoleTranscript, messages: list[dict], schema: type[T]) -> T:
        key = (transcript.iteration, transcript.role)
        entries = self._recorder.read(transcript.iteration, transcript.role)
        recorded = [e for e in entries if isinstance(e, Parsed)]
        with self._lock:
            index = self._cursor.get(key, 0)
            self._cursor[key] = index + 1
        if index >= len(recorded):
            raise LLMError(f"replay: the recorded run has no reply number {index + 1} for {transcript.role} "
                           f"in iteration {transcript.iteration}")
        calls = [e for e in entries if isinstance(e, LLMCall) and e.response]
        tokens = sum((e.prompt_tokens or 0) + (e.completion_tokens or 0) for e in calls[index:index + 1])
        usd = sum(e.usd or 0.0 for e in calls[index:index + 1])
        self.usage.add(tokens, usd)
        parsed = schema.model_validate(recorded[index].parsed)
        transcript.write(Parsed, attempt=0, parsed=parsed.model_dump(mode="json"), replayed=True,
                         tokens=tokens, usd=usd)
        return parsed
