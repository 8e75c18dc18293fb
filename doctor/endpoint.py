"""What an LLM endpoint can do, each found with one small call: structured output (json_schema, json_object
with a schema, json_object, plain text), images, streaming (and usage in it), tool calls.

``heurist doctor`` prints the mode heurist will use and records it (``$HEURIST_HOME/endpoints.json``);
a run starts from that record, so a llama.cpp server is asked in its own mode from the first call
instead of refusing the first request of every run. The probes go through the real ``openai`` client
and the same request shapes the roles use (``roles.llm_requests``).
"""

from __future__ import annotations

import base64
import os
import time
from datetime import datetime, timezone
from typing import Any

from pydantic import BaseModel, ConfigDict

from doctor.checks import Check, NoReplyInTime, as_shown, within
from roles.llm_requests import (
    MODES,
    Capabilities,
    EndpointProfile,
    json_text,
    looks_invalid,
    reasoning_model,
    record_profile,
    response_format,
    shaped_messages,
)


def _image() -> str:
    """A 64x64 PNG as base64: vision processors refuse images smaller than their patch (28 px for Qwen2-VL)."""
    import cv2
    import numpy as np

    ok, data = cv2.imencode(".png", np.full((64, 64, 3), 200, dtype=np.uint8))
    return base64.b64encode(data.tobytes()).decode()
ASK = "Is the sky blue on a clear day? Answer as JSON with the field ok."


class Probe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    ok: bool


def _client(base_url: str | None, key: str | None, timeout_s: float) -> Any:
    import openai

    return openai.OpenAI(api_key=key or "not-needed", base_url=base_url, timeout=timeout_s, max_retries=0)


def _try(call, seconds: float) -> tuple[bool, str]:
    """(accepted, what was seen): a refusal is the server's words, redacted and cut short. A fault that may pass (a
    timeout, a dropped connection, a 429, a 5xx whose words do not blame the request, such as a server still
    loading its model) is tried once more before it counts as not supported. Each try has ``seconds`` in all
    (``doctor.checks.within``); a reply of a shape no chat completion has is the server's fault, not doctor's."""
    import openai

    for attempt in range(2):
        try:
            return True, within(call, seconds)
        except openai.APIStatusError as exc:
            seen = as_shown(f"refused ({exc.status_code}: {getattr(exc, 'message', exc)})", 200)
            passing = exc.status_code == 429 or (exc.status_code >= 500 and not looks_invalid(seen))
        except (openai.APITimeoutError, openai.APIConnectionError) as exc:
            seen, passing = as_shown(f"{type(exc).__name__}: {exc}", 200), True
        except NoReplyInTime as exc:  # trying again would wait as long again
            seen, passing = as_shown(str(exc), 200), False
        except (openai.APIError, ValueError) as exc:
            seen, passing = as_shown(f"{type(exc).__name__}: {exc}", 200), False
        except Exception as exc:  # a reply the client reads into something else than a completion ({}, a string)
            seen, passing = as_shown(f"the reply is no chat completion ({type(exc).__name__}: {exc})", 200), False
        if not passing or attempt == 1:
            return False, seen
        time.sleep(2.0)
    return False, seen


def _limit(base_url: str | None, model: str, tokens: int) -> dict[str, int]:
    """A reply's token limit as the endpoint takes it: OpenAI's API and its reasoning models refuse max_tokens,
    and a reasoning model's limit counts its reasoning, so it gets room to think before it answers."""
    if reasoning_model(model):
        return {"max_completion_tokens": max(tokens, 2048)}
    return {"max_completion_tokens": tokens} if base_url is None else {"max_tokens": tokens}


def _answered(reply: Any) -> Any:
    """A completion's first message; ValueError for a reply that holds none (``{}``, choices that are no list)."""
    choices = getattr(reply, "choices", None)
    message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
    if message is None:
        raise ValueError("the reply is no chat completion: it holds no choice with a message")
    return message


def _tool_call(client: Any, model: str, limit: dict[str, int]) -> str:
    """A tool the model must call: a server that takes `tools` but leaves the call in the text (as some local
    servers do) is no use to the coder's agent, which then asks for each call as a JSON object instead."""
    tool = {"type": "function", "function": {"name": "ping", "description": "Say that you are here.",
                                             "parameters": {"type": "object", "properties": {}}}}
    reply = client.chat.completions.create(model=model, **limit, tools=[tool], messages=[
        {"role": "user", "content": "Call the function ping now."}])
    calls = _answered(reply).tool_calls
    if not any(getattr(getattr(c, "function", None), "name", None) == "ping"
               for c in (calls if isinstance(calls, list) else [])):
        raise ValueError("the server takes `tools` but the model answered in text, not with a tool call")
    return "the model called the tool"


def _structured(client: Any, model: str, limit: dict[str, int], deadline: float) -> tuple[str | None, list[str]]:
    """The strongest mode whose reply parses, and what each weaker attempt met."""
    seen = []
    for mode in MODES:
        caps = Capabilities(structured=mode)
        messages = shaped_messages([{"role": "user", "content": ASK}], caps, Probe)
        request: dict[str, Any] = {"model": model, "messages": messages, **limit}
        fmt = response_format(caps, Probe)
        if fmt is not None:
            request["response_format"] = fmt

        def ask() -> str:
            reply = _answered(client.chat.completions.create(**request)).content or ""
            Probe.model_validate_json(json_text(reply, caps))
            return "parsed"

        accepted, what = _try(ask, deadline)
        if accepted:
            return mode, seen
        seen.append(f"{mode}: {what}")
    return None, seen


def probe_endpoint(base_url: str | None, model: str, api_key_env: str = "OPENAI_API_KEY",
                   timeout_s: float = 60) -> list[Check]:
    """One check per capability, and the profile recorded for runs; nothing when no endpoint is configured."""
    key = os.environ.get(api_key_env)
    if not key and base_url is None:
        return []
    client = _client(base_url, key, timeout_s)
    started = time.perf_counter()
    limit = _limit(base_url, model, 40)
    deadline = 2 * timeout_s  # each call's time in all: its timeout counts only the silence between two reads
    mode, refused = _structured(client, model, limit, deadline)
    checks = [Check(name="LLM structured output", status="ok" if mode == MODES[0] else "warn" if mode else "fail",
                    detail=(f"heurist will use {mode}" if mode else "no mode gave a reply that parses")
                    + (f" ({'; '.join(refused)})" if refused else ""),
                    fix="" if mode == MODES[0] else "nothing to do: heurist validates and re-asks; or fix the mode "
                                                    "with llm.structured_mode" if mode else
                    "use a model that can answer in JSON, or check the server's log")]
    image = [{"type": "text", "text": ASK}, {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{_image()}"}}]
    images, seen = _try(lambda: _answered(client.chat.completions.create(
        model=model, **limit, messages=[{"role": "user", "content": image}])) and "accepted", deadline)
    checks.append(Check(name="LLM images", status="ok" if images else "warn", detail=seen,
                        fix="" if images else "the video analyst then describes its clips by path and measurement"))
    usage: list[Any] = []

    def stream(with_usage: bool) -> str:
        extra = {"stream_options": {"include_usage": True}} if with_usage else {}
        replied = 0
        with client.chat.completions.create(model=model, **limit, stream=True, **extra,
                                            messages=[{"role": "user", "content": ASK}]) as chunks:
            for chunk in chunks:
                if getattr(chunk, "usage", None) is not None:
                    usage.append(chunk.usage)
                replied += any(getattr(getattr(c, "delta", None), "content", None) for c in chunk.choices or [])
        if not replied:  # it answered stream=true with no chunk of a reply: the run's streamed calls would fail
            raise ValueError("the server sent no chunk of a reply to stream=true (it does not stream); set "
                             "llm.stream = false")
        return "streams" + (", with usage" if usage else ", without usage (tokens are counted from the text)")

    streams, seen = _try(lambda: stream(True), deadline)
    if not streams:  # a server that streams but refuses the usage option (older vLLM forbids unknown fields)
        usage.clear()
        streams, seen = _try(lambda: stream(False), deadline)
    checks.append(Check(name="LLM streaming", status="ok" if streams else "warn", detail=seen,
                        fix="" if streams else "calls then wait for whole replies; set llm.timeout_s above the "
                                               "slowest reply"))
    tools, seen = _try(lambda: _tool_call(client, model, limit), deadline)
    checks.append(Check(name="LLM tool calls", status="ok" if tools else "warn", detail=seen,
                        fix="" if tools else "nothing to do: the coder's agent asks for each tool call as a JSON "
                                             "object; or set code.mode = \"single\""))
    if mode is not None:
        record_profile(EndpointProfile(base_url=base_url, model=model, structured=mode, images=images, stream=streams,
                                       stream_usage=bool(usage), tools=tools,
                                       probed_at=datetime.now(timezone.utc).isoformat(timespec="seconds")))
        checks[0].detail += f"; recorded for runs ({time.perf_counter() - started:.1f} s of probes)"
    return checks
