"""Language-model calls for roles: the real ``openai`` client, structured outputs, retries, cost, transcripts.

``LLMClient.structured`` asks for a JSON object matching a pydantic model, validates the reply,
and asks again when it does not match: with the error quoted and a different seed (a local server
answers the same request the same way), keeping only the last failed reply so the prompt does not
grow; a reply cut off at ``max_tokens`` is said to be cut off and asked again with room to finish.

Calls stream, and the timeout is on silence: a slow model that keeps producing tokens is never cut
off, a dead one is found within ``timeout_s``, and an abandoned stream is closed, so the server
stops working on it. What the endpoint accepts (``roles.llm_requests.Capabilities``) narrows when
the server refuses a request as invalid; such a refusal is never retried as if it were passing.
Passing faults (429 with Retry-After, 5xx, timeouts, refused connections) are retried with
backoff; a 5xx that repeats word for word is taken for a refusal. Every attempt, abandoned ones
included, goes to the role's transcript with its tokens (counted from the text where the server
gives none), cost and time, and into the run's usage.

What calls cost and when they must stop is ``roles.llm_usage``; ``roles.llm_replay`` answers from a
recorded run instead of a model.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, TypeVar

from pydantic import BaseModel, ValidationError

from common import interrupts
from common.safe_text import cut, redact
from roles.llm_requests import (
    Capabilities,
    capabilities_from,
    json_text,
    looks_invalid,
    reasoning_model,
    recorded_profile,
    response_format,
    shaped_messages,
)
from roles.llm_usage import LLMError, ToolsUnsupported, Usage
from store.config import LLMConfig
from store.transcripts import LLMCall, Parsed, RoleTranscript, ValidationFailed

T = TypeVar("T", bound=BaseModel)
# progress(role, fields): a call under way (attempt, elapsed_s, tokens so far, the text's tail), at most ~4 a second.
ProgressFn = Callable[[str, dict[str, Any]], None]
PROGRESS_EVERY_S = 0.25
CHARS_PER_TOKEN = 3  # where the server gives no counts (``_Attempt.tokens``): over a budget rather than under it


def image_part(path: Path) -> dict:
    """An image for a vision model, as a data URL (the transcript records the path, not the bytes)."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    return {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{data}"}}


def _loggable(messages: list[dict]) -> list[dict]:
    """Messages as the transcript keeps them: images by path, never base64."""
    shown = []
    for message in messages:
        content = message.get("content")
        if isinstance(content, list):
            content = [{"type": "image", "path": part.get("path")} if part.get("type") == "image_url" else part
                       for part in content]
        shown.append({**message, "content": content})
    return shown


def _redacted(message: dict) -> dict:
    content = message.get("content")
    if content is None:  # an assistant turn that only called tools
        return message
    if isinstance(content, str):
        return {**message, "content": redact(content)}
    return {**message, "content": [{**part, "text": redact(part["text"])} if part.get("type") == "text" else part
                                   for part in content]}


@dataclass(frozen=True)
class RoleSettings:
    """One role's model settings: the run's, with the role's overrides."""

    model: str
    temperature: float
    max_tokens: int
    base_url: str | None
    reasoning: bool  # OpenAI's reasoning models: max_completion_tokens, no temperature, reasoning_effort
    reasoning_effort: str | None
    timeout_s: float
    key: str | None  # the key this role's server gets: the run's key only goes to the run's server


@dataclass
class Reply:
    content: str
    finish_reason: str | None
    refusal: str | None = None
    # Tool calls the model made (chat completions `tools`): {"id", "name", "arguments"} with arguments as sent.
    tool_calls: list[dict[str, str]] = field(default_factory=list)
    mode: str | None = None  # a replayed coder turn: how the recorded loop asked ("tools" or "json")


class _Refused(Exception):
    """The server refused the request as invalid: retrying it unchanged cannot help."""


class _Fatal(Exception):
    """A fault no retry or narrowing mends (a refused key, no such model)."""


class _Passing(Exception):
    """A fault that may pass: worth a retry after a wait."""

    def __init__(self, message: str, wait: float | None = None, server_error: bool = False, billed: bool = False):
        super().__init__(message)
        # billed: the server was working on it (a stream cut off, a timeout): its tokens and time count.
        self.wait, self.server_error, self.billed = wait, server_error, billed


@dataclass
class _Attempt:
    """What one request cost, however it ended (the transcript and the usage get it either way)."""

    started: float = field(default_factory=time.perf_counter)
    pieces: list[str] = field(default_factory=list)
    chunks: int = 0
    sent: list[dict] = field(default_factory=list)  # the request's messages, images by path (not base64)
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int = 0  # prompt tokens the server read from its cache (priced lower)
    last_progress: float = 0.0
    progressed: float = 0.0  # when a streamed reply last grew (its text, a tool call, reasoning, its end)

    def counted(self, usage: Any) -> None:
        """The server's counts (its cached prompt tokens too, where it gives them), where they are counts at all:
        a server's word, which a broken or hostile one can make negative, fractional, NaN or text (a negative
        count took a run past its budget; a NaN stopped it on every resume)."""
        self.prompt_tokens = server_count(getattr(usage, "prompt_tokens", None))
        self.completion_tokens = server_count(getattr(usage, "completion_tokens", None))
        details = getattr(usage, "prompt_tokens_details", None)
        self.cached_tokens = min(server_count(getattr(details, "cached_tokens", None)) or 0, self.prompt_tokens or 0)

    def tokens(self) -> tuple[int, int, bool]:
        """(prompt, completion, estimated): the server's counts, else three characters a token (an image counted
        as 1,000), which errs over a budget rather than under it: prompts of code and JSON run about 3.2 characters a
        token (Qwen2.5-Coder's tokenizer counted 87,715 where four characters a token made 68,433, a budget overrun by
        28%; a real-model review, 2026-12-06). A count of 0 for text that was sent or received is no count: a
        server that says 0 would otherwise never meet a budget."""
        completion = self.chunks or -(-len("".join(self.pieces)) // CHARS_PER_TOKEN)
        given_completion = self.completion_tokens if self.completion_tokens or not completion else None
        if self.prompt_tokens:
            return self.prompt_tokens, given_completion if given_completion is not None else completion, \
                given_completion is None
        images = json.dumps(self.sent, default=str).count('"type": "image"')
        return -(-len(json.dumps(self.sent, default=str)) // CHARS_PER_TOKEN) + 1000 * images, completion, True


class _Watchdog:
    """Ends a stream whose bytes keep coming with nothing of the reply in them for twice ``silence_s`` (SSE
    keep-alive comments, a byte at a time): the read timeout counts bytes, so only this ends it (twice, so that a
    server silent altogether meets the read timeout first, as before). It shuts the connection's
    socket down from its own thread, which wakes the read blocked on it (closing a stream from another thread would
    wait for that very read); the loop then ends as the server's failure to reply, billed for what came."""

    def __init__(self, stream: Any, attempt: "_Attempt", silence_s: float) -> None:
        self.stream, self.attempt, self.silence_s = stream, attempt, silence_s
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="heurist-llm-watchdog", daemon=True)

    def __enter__(self) -> "_Watchdog":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()

    def chunks(self) -> Iterator[Any]:
        """The stream's chunks; once this has shut the connection down, the reason (the stream then ends early,
        with an error or without one, by the HTTP library's reading of the shut socket)."""
        try:
            yield from self.stream
        except Exception:
            if not self.fired:
                raise
        if self.fired:
            raise _Passing(f"the server sent nothing of the reply for {2 * self.silence_s:g} s (twice "
                           f"llm.timeout_s), though it kept its connection busy", billed=True)

    def _watch(self) -> None:
        while not self._done.wait(min(1.0, self.silence_s / 4)):
            if time.perf_counter() - self.attempt.progressed > 2 * self.silence_s:
                self.fired = True
                try:
                    network = self.stream.response.extensions.get("network_stream")
                    network.get_extra_info("socket").shutdown(socket.SHUT_RDWR)
                except Exception:  # no socket to reach (another transport): the read timeout is all there is
                    pass
                return


def _reasons(delta: Any) -> bool:
    """Whether a streamed delta carries reasoning, under the names OpenAI-compatible servers give it: the reply's
    progress too, though not its text."""
    extra = getattr(delta, "model_extra", None) or {}
    return any(bool(getattr(delta, name, None) or extra.get(name)) for name in ("reasoning_content", "reasoning"))


MAX_CALL_TOKENS = 10_000_000  # no one call's prompt or reply comes near this; a count past it is no count


def server_count(value: Any) -> int | None:
    """A token count as a server gave it, if it is one (a whole number from 0 to ``MAX_CALL_TOKENS``), else None:
    counted from the text instead."""
    return value if type(value) is int and 0 <= value <= MAX_CALL_TOKENS else None


class LLMClient:
    replays = False  # a ReplayClient answers from a recorded run instead
    def __init__(self, config: LLMConfig, usage: Usage, on_progress: ProgressFn | None = None):
        self.config, self.usage, self.on_progress = config, usage, on_progress
        self._key = os.environ.get(config.api_key_env)
        if not self._key and config.base_url is None and not any(r.base_url for r in config.roles.values()):
            raise LLMError(f"no ${config.api_key_env} and no --base-url: set one, or run offline")
        self._clients: dict[tuple[str | None, float, str | None], Any] = {}
        self._capabilities: dict[tuple[str | None, str, bool], Capabilities] = {}
        self._asked: dict[tuple[int, str], int] = {}  # (iteration, role) -> seeds used so far
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ settings

    def settings_for(self, role: str) -> RoleSettings:
        o, c = self.config.roles.get(role), self.config
        model = (o and o.model) or c.model
        reasoning = next((v for v in (o and o.reasoning, c.reasoning) if v is not None), reasoning_model(model))
        return RoleSettings(model=model,
                            temperature=o.temperature if o and o.temperature is not None else c.temperature,
                            max_tokens=(o and o.max_tokens) or c.max_tokens or (16384 if reasoning else 4096),
                            base_url=(o and o.base_url) or c.base_url, reasoning=reasoning,
                            reasoning_effort=(o and o.reasoning_effort) or c.reasoning_effort,
                            # A reasoning model streams nothing while it thinks (minutes at a high effort on a long
                            # prompt): 120 s of silence abandoned, billed and re-sent its calls (a review, 2026-12-06).
                            timeout_s=(o and o.timeout_s) or c.timeout_s or (600.0 if reasoning else 120.0),
                            key=os.environ.get(o.api_key_env) if o and o.base_url and o.api_key_env else
                            None if o and o.base_url and o.base_url != c.base_url else self._key)

    def capabilities(self, s: RoleSettings) -> Capabilities:
        """What heurist uses of this endpoint and model: the config's fixed choices, and for the rest what
        `heurist doctor` recorded, else the strongest (narrowed as the server refuses)."""
        key = (s.base_url, s.model, s.reasoning)
        with self._lock:
            if key not in self._capabilities:
                c, fixed = self.config, set()
                caps = capabilities_from(recorded_profile(s.base_url, s.model))
                # Decided before the first call, not learnt from a 400: a reasoning model refuses max_tokens and
                # any temperature; OpenAI's own API takes max_completion_tokens for every model.
                if s.reasoning:
                    caps.temperature = False
                if s.reasoning or s.base_url is None:
                    caps.max_tokens_param = "max_completion_tokens"
                if c.structured_mode != "auto":
                    caps.structured, fixed = c.structured_mode, fixed | {"structured"}
                if c.images is not None:
                    caps.images, fixed = c.images, fixed | {"images"}
                if c.stream is not None:
                    caps.stream, fixed = c.stream, fixed | {"stream"}
                caps.fixed = frozenset(fixed)
                self._capabilities[key] = caps
            return self._capabilities[key]

    def _client(self, s: RoleSettings) -> Any:
        import openai

        with self._lock:
            key = (s.base_url, s.timeout_s, s.key)
            if key not in self._clients:
                # The read timeout is the silence allowed between two bytes: a streamed reply that keeps coming
                # is never cut off. max_retries=0: retries are ours, so each attempt reaches the transcript.
                timeout = openai.Timeout(s.timeout_s, connect=min(s.timeout_s, 30.0))  # the HTTP library openai uses
                self._clients[key] = openai.OpenAI(api_key=s.key or "not-needed", base_url=s.base_url,
                                                   timeout=timeout, max_retries=0)
            return self._clients[key]

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> float | None:
        """US dollars, or None for a model with no price (reported in tokens, never as $0)."""
        price = self.config.price(model)
        if price is None:
            return None
        cached = min(cached_tokens, prompt_tokens)
        cached_price = price.input if price.cached_input is None else price.cached_input
        return ((prompt_tokens - cached) * price.input + cached * cached_price
                + completion_tokens * price.output) / 1e6

    # ------------------------------------------------------------------ the structured call

    def structured(self, transcript: RoleTranscript, messages: list[dict], schema: type[T]) -> T:
        """A reply parsed into ``schema``; asked again, differently, when it does not match or was cut off."""
        s = self.settings_for(transcript.role)
        caps = self.capabilities(s)
        # Nothing secret of heurist's environment is ever sent, whatever a prompt was built from.
        conversation = [_redacted(m) for m in messages]
        # A node cut off before its checkpoint asks again, on resume, what it asked before: the answer it got then
        # was paid for, and a replay of the run gives it, so the run takes it too (RoleTranscript.answered_before).
        ask = hashlib.sha256(json.dumps([schema.__name__, conversation], sort_keys=True, default=str)
                             .encode()).hexdigest()[:16]
        earlier = transcript.answered_before(ask)
        if earlier is not None:
            try:
                parsed = schema.model_validate(earlier)
            except ValidationError:  # recorded under another schema (heurist changed between sessions): asked anew
                parsed = None
            if parsed is not None:
                transcript.write(Parsed, attempt=0, parsed=parsed.model_dump(mode="json"), ask=ask,
                                 session=transcript.session, reused=True)
                return parsed
        follow_up: list[dict] = []  # what the next attempt says about the last one (only the last one)
        max_tokens = s.max_tokens
        # The role's later calls this iteration (the coder again after a failed check) start where this one's
        # seeds end: a local server answers one request the same way each time, whatever the prompt adds.
        with self._lock:
            first = self._asked.get((transcript.iteration, transcript.role), 0)
            self._asked[(transcript.iteration, transcript.role)] = first + self.config.validation_retries + 1
        for attempt in range(self.config.validation_retries + 1):
            reply = self._complete(transcript, s, caps, conversation + follow_up, schema, max_tokens, attempt,
                                   variant=first + attempt)
            if reply.finish_reason == "length":
                transcript.write(ValidationFailed, attempt=attempt, response=reply.content[-4000:],
                                 error=f"the reply was cut off at max_tokens={max_tokens} before it was complete "
                                       f"(raise llm.max_tokens for this role if this repeats)")
                follow_up = [{"role": "user", "content": f"Your last reply was cut off after {max_tokens} tokens. "
                                                         "Reply again with one complete, shorter JSON object."}]
                max_tokens = min(max_tokens * 2, s.max_tokens * 4)
                continue
            try:
                parsed = schema.model_validate_json(json_text(reply.content, caps))
            except ValidationError as exc:
                problem = "; ".join(f"{'.'.join(map(str, e['loc'])) or '(reply)'}: {e['msg']}" for e in exc.errors()[:5])
                transcript.write(ValidationFailed, attempt=attempt, error=problem, response=reply.content[:4000])
                follow_up = [{"role": "assistant", "content": reply.content[:4000]},
                             {"role": "user", "content": f"That reply is not valid for the required JSON schema: "
                                                         f"{problem}. Reply again with one JSON object that matches "
                                                         f"the schema."}]
                continue
            transcript.write(Parsed, attempt=attempt, parsed=parsed.model_dump(mode="json"), ask=ask,
                             session=transcript.session)
            return parsed
        raise LLMError(f"{transcript.role}: {s.model} gave no reply matching {schema.__name__} in "
                       f"{self.config.validation_retries + 1} tries")

    # ------------------------------------------------------------------ a tool-using turn

    def tools_supported(self, role: str) -> bool:
        """Whether this role's endpoint is (still) sent chat completions `tools`."""
        return self.capabilities(self.settings_for(role)).tools

    def takes_images(self, role: str) -> bool:
        """Whether this role's endpoint is (still) sent images."""
        return self.capabilities(self.settings_for(role)).images

    def turn(self, transcript: RoleTranscript, messages: list[dict], tools: list[dict], loop: str = "",
             index: int = 0) -> Reply:
        """One turn of a conversation with tools: the model's text and the tools it called. Raises
        ``ToolsUnsupported`` once the endpoint has refused `tools` (the caller then asks for calls as JSON)."""
        s = self.settings_for(transcript.role)
        with self._lock:
            variant = self._asked.get((transcript.iteration, transcript.role), 0)
            self._asked[(transcript.iteration, transcript.role)] = variant + 1
        return self._complete(transcript, s, self.capabilities(s), [_redacted(m) for m in messages], None,
                              s.max_tokens, 0, variant=variant, tools=tools)

    def _complete(self, transcript: RoleTranscript, s: RoleSettings, caps: Capabilities, messages: list[dict],
                  schema: type[BaseModel] | None, max_tokens: int, ask: int, variant: int = 0,
                  tools: list[dict] | None = None) -> Reply:
        """One reply with content, through passing faults (retried) and refusals (narrowed, then sent again)."""
        delay, retries, last_error, last_server_error = self.config.retry_base_s, 0, "", None
        had_images = any(isinstance(m["content"], list) for m in messages)
        while True:
            self.usage.check()
            now = caps.snapshot()  # one consistent view for this request, however others narrow meanwhile
            if tools and not now.tools:
                raise ToolsUnsupported(f"{s.base_url or 'the OpenAI API'} does not take tools for {s.model}")
            shaped = shaped_messages(messages, now, schema)
            request = self._request(s, now, shaped, schema, max_tokens, seed=variant + retries, tools=tools)
            attempt = _Attempt(sent=_loggable(shaped_messages(messages, now, schema, keep_paths=True)))
            try:
                reply = self._send(transcript, s, now, request, attempt, ask)
            except _Refused as exc:
                given_up = caps.narrow(str(exc), had_images, now.version, had_tools=bool(tools))
                self._record(transcript, s, attempt, messages, ask, billed=False, error=str(exc)[:500],
                             narrowed=given_up)
                if given_up:
                    continue  # the same question, put as the server can take it
                raise LLMError(f"{transcript.role}: {s.base_url or 'the OpenAI API'} refused the request as invalid "
                               f"({str(exc)[:300]}) with {caps.summary()}; set llm.structured_mode, llm.images or "
                               f"llm.stream in the run config to what it accepts (`heurist doctor` probes it)") from None
            except _Fatal as exc:
                self._record(transcript, s, attempt, messages, ask, billed=False, error=str(exc)[:500])
                raise LLMError(f"{transcript.role}: {exc}") from None
            except KeyboardInterrupt:
                # A Ctrl-C mid-call (wherever it landed: the stream's loop checks for one after each chunk). The server
                # worked on the request as far as it got, and a resumed run counts what was spent from the
                # transcripts, so the attempt is recorded and billed before the Ctrl-C goes on: its prompt, and what
                # streamed, estimated where the server gave no count (over rather than under the budget).
                try:
                    self._record(transcript, s, attempt, messages, ask, billed=True,
                                 error=f"interrupted by Ctrl-C after {attempt.chunks} chunks, "
                                       f"{time.perf_counter() - attempt.started:.1f} s")
                except Exception:  # a transcript that cannot be written (a full disk) must not replace the Ctrl-C
                    pass
                raise
            except _Passing as exc:
                last_error = str(exc)[:500]
                # The same 500 twice is the request's fault (502-504 are a proxy's or a loading server's: they pass);
                # it gives up only what its words name, or the images a text-only template fails on.
                repeated = exc.server_error and last_error == last_server_error and " 500:" in f" {last_error}"
                last_server_error = last_error if exc.server_error else None
                given_up = caps.narrow(last_error, had_images, now.version, had_tools=bool(tools)) if repeated else None
                if given_up:
                    self._record(transcript, s, attempt, messages, ask, billed=exc.billed, error=last_error,
                                 narrowed=given_up)
                    continue
                wait = exc.wait if exc.wait is not None else delay
                self._record(transcript, s, attempt, messages, ask, billed=exc.billed, error=last_error,
                             retry_in_s=wait)
                if retries >= self.config.max_retries:
                    raise LLMError(f"{transcript.role}: {s.model} failed after {retries + 1} attempts: "
                                   f"{last_error}") from None
                retries += 1
                interrupts.sleep(wait)  # a Ctrl-C stops the wait, wherever the kernel delivered it
                delay *= 2
                continue
            self._record(transcript, s, attempt, messages, ask, billed=True, reply=reply)
            if reply.finish_reason == "length":  # cut off, even before any content: the caller gives it room
                return reply
            if reply.refusal or not (reply.content or reply.tool_calls):
                last_error = f"the model refused: {reply.refusal}" if reply.refusal else "empty reply"
                if retries >= self.config.max_retries:
                    raise LLMError(f"{transcript.role}: {s.model} failed after {retries + 1} attempts: {last_error}")
                retries += 1
                continue
            return reply

    def _request(self, s: RoleSettings, caps: Capabilities, messages: list[dict], schema: type[BaseModel] | None,
                 max_tokens: int, seed: int, tools: list[dict] | None = None) -> dict[str, Any]:
        request: dict[str, Any] = {"model": s.model, "messages": messages, caps.max_tokens_param: max_tokens}
        if caps.seed:  # a re-ask differs from the ask: a local server answers one request the same way each time
            request["seed"] = seed
        if s.reasoning and s.reasoning_effort and caps.reasoning_effort and (caps.effort_with_tools or not tools):
            request["reasoning_effort"] = s.reasoning_effort
        if caps.temperature:
            # A re-ask runs warmer: a server that answered one way at this temperature may answer the same again.
            request["temperature"] = max(s.temperature, min(s.temperature + 0.2 * seed, 1.0))
        fmt = response_format(caps, schema) if schema is not None else None
        if fmt is not None:
            request["response_format"] = fmt
        if tools:
            request["tools"], request["tool_choice"] = tools, "auto"
        if caps.stream:
            request["stream"] = True
            if caps.stream_usage:
                request["stream_options"] = {"include_usage": True}
        return request

    def _send(self, transcript: RoleTranscript, s: RoleSettings, caps: Capabilities, request: dict[str, Any],
              attempt: _Attempt, ask: int) -> Reply:
        import openai

        client = self._client(s)
        try:
            if not request.get("stream"):
                response = client.chat.completions.create(**request)
                if response.usage:
                    attempt.counted(response.usage)
                choice = response.choices[0] if response.choices else None
                if choice is None or choice.message is None:
                    raise _Passing("a response with no message", billed=True)
                content = _content(choice.message.content) or ""
                attempt.pieces.append(content)
                calls = [_call(c.id, c.function.name, c.function.arguments)
                         for c in choice.message.tool_calls or () if getattr(c, "function", None)]
                return Reply(content, _text(choice.finish_reason, "finish_reason"),
                             _text(getattr(choice.message, "refusal", None), "refusal"), calls)
            return self._stream(transcript, client, request, attempt, ask)
        except openai.APIStatusError as exc:
            raise self._classified(exc, s) from None
        except openai.APITimeoutError as exc:  # openai wraps its HTTP library's timeouts, mid-stream too
            # A server that never took the connection did no work; one that took it and fell silent did.
            connected = "connect" not in type(exc.__cause__).__name__.lower()
            raise _Passing(f"{type(exc).__name__}: no reply for {s.timeout_s:g} s (llm.timeout_s, the silence "
                           f"allowed): abandoned and closed after {attempt.chunks} chunks, "
                           f"{time.perf_counter() - attempt.started:.1f} s", billed=connected) from None
        except openai.APIConnectionError as exc:  # a stream broken mid-reply cost what it sent
            raise _Passing(f"{type(exc).__name__}: {exc}", billed=attempt.chunks > 0) from None
        except (openai.APIResponseValidationError, ValueError) as exc:  # a truncated body is a JSONDecodeError
            raise _Passing(f"malformed response: {type(exc).__name__}: {exc}", billed=attempt.chunks > 0) from None
        except openai.APIError as exc:  # an error sent inside a stream (data: {"error": ...})
            message = f"{type(exc).__name__}: {exc}"[:500]
            if looks_invalid(message):
                raise _Refused(message) from None
            raise _Passing(message, billed=attempt.chunks > 0) from None
        except (TypeError, AttributeError, KeyError) as exc:  # a chunk of a shape the client did not expect
            raise _Passing(f"unexpected response shape: {type(exc).__name__}: {exc}",
                           billed=attempt.chunks > 0) from None

    def _stream(self, transcript: RoleTranscript, client: Any, request: dict[str, Any], attempt: _Attempt,
                ask: int) -> Reply:
        finish, refusal, content = None, [], []
        calls: dict[int, dict[str, str]] = {}  # a tool call streams as pieces under its index
        # A server that keeps sending chunks with nothing of the reply in them (no choices, empty deltas), or more
        # reply than max_tokens allows, is never silent, so the read timeout never ends the call: these two bound it.
        silence_s = self.settings_for(transcript.role).timeout_s
        most = request.get("max_completion_tokens") or request.get("max_tokens")
        most_chunks = 2 * most + 256 if isinstance(most, int) else None  # a chunk is a token or less, as sent
        progressed = attempt.progressed = time.perf_counter()
        # The context closes the response however the loop ends: the server sees the client leave and stops.
        with client.chat.completions.create(**request) as stream, _Watchdog(stream, attempt, silence_s) as watchdog:
            for chunk in watchdog.chunks():
                before = (attempt.chunks, len(refusal), finish)
                thinking = False  # reasoning a server streams apart (vLLM's reasoning_content, Ollama's reasoning)
                if getattr(chunk, "usage", None) is not None:
                    attempt.counted(chunk.usage)
                for choice in chunk.choices or ():
                    thinking = thinking or _reasons(choice.delta)
                    delta = choice.delta
                    if delta is not None and delta.content:
                        attempt.pieces.append(_text(delta.content, "a chunk's content"))
                        content.append(delta.content)
                        attempt.chunks += 1
                    if delta is not None and getattr(delta, "refusal", None):
                        refusal.append(_text(delta.refusal, "a chunk's refusal"))
                    for piece in (getattr(delta, "tool_calls", None) or ()) if delta is not None else ():
                        call = calls.setdefault(piece.index or 0, {"id": "", "name": "", "arguments": ""})
                        call["id"] = piece.id or call["id"]
                        if piece.function is not None:
                            call["name"] += piece.function.name or ""
                            call["arguments"] += piece.function.arguments or ""
                            attempt.pieces.append(piece.function.arguments or "")
                            attempt.chunks += 1
                    finish = choice.finish_reason or finish
                now = time.perf_counter()
                if (attempt.chunks, len(refusal), finish) != before or thinking \
                        or getattr(chunk, "usage", None) is not None:
                    progressed = attempt.progressed = now
                elif now - progressed > silence_s:
                    raise _Passing(f"the server sent chunks with nothing of the reply in them for {silence_s:g} s",
                                   billed=True)
                if most_chunks is not None and attempt.chunks > most_chunks:
                    raise _Passing(f"the server sent {attempt.chunks} chunks of reply, past the {most} tokens asked "
                                   "for at most", billed=True)
                self._progress(transcript, attempt, ask)
                interrupts.check()  # a Ctrl-C another thread took, or one swallowed, ends a long stream here
        if finish is None:
            raise _Passing(f"the stream ended before the reply did ({attempt.chunks} chunks)", billed=True)
        return Reply("".join(content), _text(finish, "finish_reason"), "".join(refusal) or None,
                     [_call(calls[i]["id"], calls[i]["name"], calls[i]["arguments"]) for i in sorted(calls)])

    def _progress(self, transcript: RoleTranscript, attempt: _Attempt, ask: int) -> None:
        now = time.perf_counter()
        if self.on_progress is None or now - attempt.last_progress < PROGRESS_EVERY_S:
            return
        attempt.last_progress = now
        tail = cut("".join(attempt.pieces), 160, keep="end")  # redacted whole, then cut: no half of a secret
        self.on_progress(transcript.role, {"attempt": ask + 1, "elapsed_s": round(now - attempt.started, 1),
                                           "call_tokens": attempt.completion_tokens or attempt.chunks, "tail": tail,
                                           "timeout_s": self.settings_for(transcript.role).timeout_s})

    def _classified(self, exc: Any, s: RoleSettings) -> Exception:
        where = s.base_url or "the OpenAI API"
        message = f"{exc.status_code}: {getattr(exc, 'message', exc)}"  # the words a server gives, checked below
        if exc.status_code == 429:
            wait = None
            retry_after = (getattr(getattr(exc, "response", None), "headers", None) or {}).get("retry-after")
            if retry_after:
                try:
                    wait = min(max(float(retry_after), 0.0), 600.0)  # a server's word, bounded
                except ValueError:
                    pass
            return _Passing(f"{type(exc).__name__} {message}", wait=wait)
        if exc.status_code in (401, 403):
            return _Fatal(f"{where} refused the key in ${self.config.api_key_env} ({message}); set a valid key")
        if exc.status_code == 404:
            if "v1/responses" in message:  # gpt-5-codex, gpt-5-pro, o3-pro: served by the Responses API alone
                return _Fatal(f"{s.model!r} is served only by the Responses API ({message}), and heurist calls chat "
                              f"completions; choose a model chat completions serve in llm.model (gpt-5, gpt-5-mini, "
                              f"gpt-4.1)")
            return _Fatal(f"{where} has no model {s.model!r} or no chat completions there ({message}); check "
                          f"llm.model and llm.base_url (`heurist doctor` tries them)")
        if exc.status_code in (408, 409) or (exc.status_code >= 500 and not looks_invalid(message)):
            return _Passing(f"{type(exc).__name__} {message}", server_error=exc.status_code >= 500)
        return _Refused(message)

    def _record(self, transcript: RoleTranscript, s: RoleSettings, attempt: _Attempt, messages: list[dict],
                ask: int, billed: bool, reply: Reply | None = None, **outcome: Any) -> None:
        """The attempt in the transcript, and in the usage when the server worked on it (an abandoned call
        costs too, counted from its text where the server gave no count)."""
        prompt, completion, estimated = attempt.tokens()
        cost = self.cost(s.model, prompt, completion, attempt.cached_tokens) if billed else 0.0
        if billed:
            self.usage.add(prompt + completion, cost, estimated=estimated)
        counts: dict[str, Any] = {"prompt_tokens": prompt, "completion_tokens": completion, "usd": cost,
                                  "cached_tokens": attempt.cached_tokens or None,
                                  "tokens_estimated": estimated} if billed else {}
        if reply is not None:
            counts.update(response=reply.content, refusal=reply.refusal, finish_reason=reply.finish_reason,
                          tool_calls=reply.tool_calls or None)
        elif attempt.pieces:
            counts["partial"] = "".join(attempt.pieces)[-4000:]
        # What was sent, as shaped for this endpoint (images left out where it takes none, the schema in the prompt
        # where it takes no json_schema), not what the role asked: a transcript showed images a server never got.
        transcript.write(LLMCall, model=s.model, attempt=ask, messages=attempt.sent or _loggable(messages),
                         latency_s=time.perf_counter() - attempt.started, priced=self.config.price(s.model) is not None,
                         **counts, **outcome)


def _text(value: object, what: str) -> str | None:
    """A field of the server's reply that must be text or absent. The client does not type what a server sends (a
    number as a call's id or name, a list of anything but text parts as the content): any other type is a reply of
    an unexpected shape, which fails its attempt (``_send``) rather than the run further on."""
    if value is None or isinstance(value, str):
        return value
    raise TypeError(f"{what} is {type(value).__name__}, not text")


def _content(value: object) -> str | None:
    """A message's content: text, or the list of text parts some servers send in its place, joined."""
    if isinstance(value, list) and all(isinstance(p, dict) and isinstance(p.get("text"), str) for p in value):
        return "".join(p["text"] for p in value)
    return _text(value, "the message's content")


def _call(call_id: object, name: object, arguments: object) -> dict[str, str]:
    """A tool call the server sent, as text (arguments sent as a JSON object, as some proxies do, written as JSON)."""
    if isinstance(arguments, dict):
        arguments = json.dumps(arguments)
    return {"id": _text(call_id, "a tool call's id") or "", "name": _text(name, "a tool call's name") or "",
            "arguments": _text(arguments, "a tool call's arguments") or ""}
