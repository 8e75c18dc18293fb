"""Language-model calls for roles: the real ``openai`` client, structured outputs, retries, cost, transcripts.

``LLMClient.structured`` asks for a JSON object matching a pydantic model (JSON-schema
structured output), validates the reply, and on a validation error asks again with the
error quoted, a bounded number of times. Transport faults (429 with Retry-After, 5xx,
timeouts, refused connections) are retried with exponential backoff. Every attempt, its
tokens, cost and latency go to the role's transcript as it happens.

``ReplayClient`` answers from a recorded run's transcripts instead of a model, so
``heurist replay`` reaches the same decisions without a network or a key.
"""

from __future__ import annotations

import base64
import os
import threading
import time
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from common.errors import HeuristError
from common.safe_text import redact
from store.config import LLMConfig
from store.transcripts import LLMCall, Parsed, RoleTranscript, TranscriptRecorder, ValidationFailed

T = TypeVar("T", bound=BaseModel)


class LLMError(HeuristError):
    """A model call that failed after its retries, or a reply that never matched its schema."""


class BudgetSpent(LLMError):
    """The run's token or USD budget is spent: no further model call is made."""


class Usage:
    """Tokens and dollars spent, shared by every role of a run (thread-safe: analysts run in parallel).

    With limits set, ``check`` refuses a call once either is reached, which makes the token
    and USD budgets hard stops: the call that would overrun them is never sent.
    """

    def __init__(self, tokens: int = 0, usd: float = 0.0, calls: int = 0,
                 max_tokens: int | None = None, max_usd: float | None = None):
        self._lock = threading.Lock()
        self.tokens, self.usd, self.calls = tokens, usd, calls
        self.max_tokens, self.max_usd = max_tokens, max_usd

    def check(self) -> None:
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            raise BudgetSpent(f"token budget spent ({self.tokens:,} of {self.max_tokens:,})")
        if self.max_usd is not None and self.usd >= self.max_usd:
            raise BudgetSpent(f"USD budget spent (${self.usd:.4f} of ${self.max_usd:.2f})")

    def add(self, tokens: int, usd: float) -> None:
        with self._lock:
            self.tokens += tokens
            self.usd += usd
            self.calls += 1


def image_part(path: Path) -> dict:
    """An image for a vision model, as a data URL (the transcript records the path, not the bytes)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


def _loggable(messages: list[dict]) -> list[dict]:
    """Messages as the transcript keeps them: images by path, never base64."""
    shown = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [{"type": "image", "path": part.get("path")} if part.get("type") == "image_url" else part
                       for part in content]
        shown.append({**message, "content": content})
    return shown


def _redacted(message: dict) -> dict:
    content = message["content"]
    if isinstance(content, str):
        return {**message, "content": redact(content)}
    return {**message, "content": [{**part, "text": redact(part["text"])} if part.get("type") == "text" else part
                                   for part in content]}


def _json_schema_format(model: type[BaseModel]) -> dict:
    return {"type": "json_schema", "json_schema": {"name": model.__name__, "schema": model.model_json_schema()}}


class LLMClient:
    def __init__(self, config: LLMConfig, usage: Usage):
        import openai

        self.config, self.usage = config, usage
        key = os.environ.get(config.api_key_env)
        if not key and config.base_url is None:
            raise LLMError(f"no ${config.api_key_env} and no --base-url: set one, or run offline")
        # max_retries=0: retries are ours, so each attempt reaches the transcript.
        self._client = openai.OpenAI(api_key=key or "not-needed", base_url=config.base_url,
                                     timeout=config.timeout_s, max_retries=0)

    def model_for(self, role: str) -> tuple[str, float, int]:
        override = self.config.roles.get(role)
        model = (override and override.model) or self.config.model
        temperature = override.temperature if override and override.temperature is not None else self.config.temperature
        max_tokens = (override and override.max_tokens) or self.config.max_tokens
        return model, temperature, max_tokens

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        price = self.config.price(model)
        if price is None:
            return 0.0
        return (prompt_tokens * price.input + completion_tokens * price.output) / 1e6

    def structured(self, transcript: RoleTranscript, messages: list[dict], schema: type[T]) -> T:
        """A reply parsed into ``schema``; re-asks with the validation error when it does not match."""
        model, temperature, max_tokens = self.model_for(transcript.role)
        # Nothing secret of heurist's environment is ever sent, whatever a prompt was built from.
        conversation = [_redacted(m) for m in messages]
        for attempt in range(self.config.validation_retries + 1):
            content = self._complete(transcript, model, temperature, max_tokens, conversation, schema)
            try:
                parsed = schema.model_validate_json(content)
            except ValidationError as exc:
                problem = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(reply)'}: {e['msg']}" for e in exc.errors()[:5])
                transcript.write(ValidationFailed, attempt=attempt, error=problem, response=content[:4000])
                conversation = conversation + [
                    {"role": "assistant", "content": content},
                    {"role": "user", "content": f"That reply is not valid for the required JSON schema: {problem}. "
                                                "Reply again with one JSON object that matches the schema."}]
                continue
            transcript.write(Parsed, attempt=attempt, parsed=parsed.model_dump(mode="json"))
            return parsed
        raise LLMError(f"{transcript.role}: {model} gave no reply matching {schema.__name__} in "
                       f"{self.config.validation_retries + 1} tries")

    def _complete(self, transcript: RoleTranscript, model: str, temperature: float, max_tokens: int,
                  messages: list[dict], schema: type[BaseModel]) -> str:
        import openai

        delay = self.config.retry_base_s
        last_error = ""
        for attempt in range(self.config.max_retries + 1):
            self.usage.check()
            started = time.perf_counter()
            try:
                response = self._client.chat.completions.create(
                    model=model, messages=messages, temperature=temperature, max_tokens=max_tokens,
                    response_format=_json_schema_format(schema))
            except (openai.RateLimitError, openai.InternalServerError, openai.APITimeoutError,
                    openai.APIConnectionError) as exc:
                wait = delay
                retry_after = getattr(getattr(exc, "response", None), "headers", {}) or {}
                if retry_after.get("retry-after"):
                    try:
                        wait = float(retry_after["retry-after"])
                    except ValueError:
                        pass
                last_error = f"{type(exc).__name__}: {exc}"[:500]
                transcript.write(LLMCall, model=model, attempt=attempt, messages=_loggable(messages),
                                 error=last_error, latency_s=time.perf_counter() - started, retry_in_s=wait)
                if attempt < self.config.max_retries:
                    time.sleep(wait)
                    delay *= 2
                continue
            except openai.APIStatusError as exc:  # 4xx other than 429: retrying will not help
                last_error = f"{type(exc).__name__} {exc.status_code}: {exc.message}"[:500]
                transcript.write(LLMCall, model=model, attempt=attempt, messages=_loggable(messages),
                                 error=last_error, latency_s=time.perf_counter() - started)
                raise LLMError(f"{transcript.role}: {model} refused the request: {last_error}") from None
            except (openai.APIResponseValidationError, ValueError) as exc:  # a truncated body is a JSONDecodeError
                last_error = f"malformed response: {type(exc).__name__}: {exc}"[:500]
                transcript.write(LLMCall, model=model, attempt=attempt, messages=_loggable(messages),
                                 error=last_error, latency_s=time.perf_counter() - started)
                continue
            latency = time.perf_counter() - started
            usage = response.usage
            prompt_tokens = usage.prompt_tokens if usage else 0
            completion_tokens = usage.completion_tokens if usage else 0
            cost = self.cost(model, prompt_tokens, completion_tokens)
            self.usage.add(prompt_tokens + completion_tokens, cost)
            choice = response.choices[0] if response.choices else None
            content = (choice.message.content or "") if choice else ""
            refusal = getattr(choice.message, "refusal", None) if choice else None
            transcript.write(LLMCall, model=model, attempt=attempt, messages=_loggable(messages),
                             response=content, refusal=refusal, finish_reason=choice.finish_reason if choice else None,
                             prompt_tokens=prompt_tokens, completion_tokens=completion_tokens, usd=cost,
                             latency_s=latency, priced=self.config.price(model) is not None)
            if refusal or not content:
                last_error = f"the model refused: {refusal}" if refusal else "empty reply"
                continue
            return content
        raise LLMError(f"{transcript.role}: {model} failed after {self.config.max_retries + 1} attempts: {last_error}")


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
