"""How a structured request is put to an OpenAI-compatible server, and what the server's refusals mean.

Servers differ in what they accept. OpenAI takes a JSON schema as ``response_format`` and
refuses ``temperature`` and ``max_tokens`` for its reasoning models; llama-cpp-python's server
refuses a ``json_schema`` response format (it takes ``{"type": "json_object", "schema": ...}``)
and fails on a message whose content is a list of parts; some servers stream without usage.
``Capabilities`` holds what heurist uses of one endpoint: it starts from the config (``auto``
starts from the strongest) and narrows, one feature at a time, when the server refuses a
request as invalid; a feature the config fixes never narrows, and its refusal names the setting.
Every narrowing is recorded in the transcript of the call that met it.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from common.files import atomic_write
from common.paths import heurist_home
from common.safe_text import without_url_passwords

StructuredMode = Literal["json_schema", "json_object_schema", "json_object", "text"]
# Strongest first: the server is given the schema to follow (OpenAI's json_schema without `strict`, which holds
# the model to it as far as the model goes: heurist validates every reply and asks again), then is given it as a
# plain key, then is asked for JSON, then nothing.
MODES: tuple[StructuredMode, ...] = ("json_schema", "json_object_schema", "json_object", "text")

# OpenAI's reasoning models by name: the gpt-5 family and the o-series, less the chat variants
# (gpt-5-chat-latest takes a temperature). A provider prefix ("openai/gpt-5-mini") is ignored.
_REASONING_NAME = re.compile(r"^(gpt-5|o[1-9])(?![0-9])(?!.*-chat)", re.I)


def reasoning_model(model: str) -> bool:
    """Whether the model name is one of OpenAI's reasoning models (they refuse max_tokens and temperature)."""
    return bool(_REASONING_NAME.match(model.rsplit("/", 1)[-1]))


# Words in a refusal that name what was refused (lower case).
_NAMES = {
    "reasoning_effort": ("reasoning_effort", "reasoning effort"),
    "stream_usage": ("stream_options", "include_usage"),
    "temperature": ("temperature",),
    "seed": ("'seed'", '"seed"', "seed parameter", "parameter seed"),
    # Renamed only where the server says the parameter is not taken ("too large" is about its value).
    "max_tokens": ("use 'max_completion_tokens'", "use max_completion_tokens", "'max_tokens' is not supported",
                   "unsupported parameter: 'max_tokens'"),
    # vLLM started without --enable-auto-tool-choice ('"auto" tool choice requires ...'), llama.cpp without --jinja
    # ("tools param requires --jinja flag"): the coder's agent then asks for each tool call as JSON.
    "tools": ("'tools'", '"tools"', "tool_choice", "tool choice", "tools param", "tool calling", "function calling",
              "tools are not supported", "does not support tools", "tool calls are not supported"),
    "structured": ("response_format", "json_schema", "json_object", "schema"),
    "images": ("image", "image_url", "multimodal", "vision"),
    "stream": (),  # matched as a whole word below: "upstream" is not a refusal of streaming
}
# Words of a server error that is the request's fault, not a passing fault of the server ("requires --": a server
# started without the flag a feature needs, as llama.cpp's 500 "tools param requires --jinja flag").
_INVALID_WORDS = ("validation error", "invalid", "unsupported", "not supported", "unrecognized", "unknown parameter",
                  "extra inputs are not permitted", "does not support", "response_format", "requires --")
# Words of a refusal about something other than images: no image is given up for them (a max_tokens too large
# turned images off for the rest of a run). A context length passed still gives the images up, as their tokens may
# be what passed it; so does a request too large, as their bytes may be.
_NOT_IMAGES = ("max_tokens", "max_completion_tokens", "string too long", "maximum length")


# Features given up by switching them off, and what the transcript says of it.
_SWITCHED_OFF = {
    "stream": "streaming -> one response",
    "seed": "seed -> not sent (re-asks differ by temperature and wording only)",
    "temperature": "temperature -> the model's default",
    "reasoning_effort": "reasoning_effort -> the model's default",
    "tools": "tools -> each tool call asked for as a JSON object",
}


@dataclass
class Capabilities:
    """What heurist uses of one endpoint (thread-safe: roles call in parallel)."""

    structured: StructuredMode = "json_schema"
    images: bool = True
    stream: bool = True
    stream_usage: bool = True
    temperature: bool = True
    seed: bool = True
    max_tokens_param: Literal["max_tokens", "max_completion_tokens"] = "max_tokens"
    reasoning_effort: bool = True  # sent where the role sets one
    effort_with_tools: bool = True  # sent beside `tools` too (gpt-5.4 and later refuse the two together there)
    tools: bool = True  # chat completions `tools`; without them the coder's agent asks for each tool call as JSON
    fixed: frozenset[str] = frozenset()  # features the config fixed: never narrowed
    version: int = 0  # grows with each narrowing: a refusal of an older version is not narrowed again
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def snapshot(self) -> Capabilities:
        """A consistent copy to build one request from (roles call in parallel while another narrows)."""
        with self._lock:
            return replace(self, _lock=threading.Lock())

    def narrow(self, message: str, had_images: bool, seen: int, guess_images: bool = True,
               had_tools: bool = False) -> str | None:
        """Give up the feature a refusal names; what was given up, or None. A refusal of a request built
        before another call narrowed (``seen`` < ``version``) gives nothing up: it is sent again as it is now.
        ``guess_images``: a refusal that names nothing is taken for the images' when the request had some, unless
        its words are about the request's size. ``had_tools``: a refusal of the reasoning effort beside tools gives
        up the effort on tool turns only (gpt-5.4's "Function tools with reasoning_effort are not supported")."""
        text = message.lower()
        named = [f for f, words in _NAMES.items() if any(w in text for w in words)]
        if re.search(r"\bstream\b(?!_)", text):
            named.append("stream")
        if "reasoning_effort" in named and had_tools and self.effort_with_tools:
            named = ["effort_with_tools"]  # before "tools", which the same words name: the tools stay
        guess = had_images and guess_images and not any(w in text for w in _NOT_IMAGES)
        order = named or (("images",) if guess else ())
        with self._lock:
            if seen < self.version:
                return "nothing: another call narrowed first; sent again as it is now"
            for feature in order:
                given_up = self._give_up(feature, had_images)
                if given_up:
                    self.version += 1
                    return given_up
        return None

    def _give_up(self, feature: str, had_images: bool) -> str | None:
        if feature in self.fixed:
            return None
        if feature == "structured" and self.structured != "text":
            before = self.structured
            self.structured = MODES[MODES.index(before) + 1]
            return f"structured output {before} -> {self.structured}"
        if feature == "effort_with_tools" and self.effort_with_tools and self.reasoning_effort:
            self.effort_with_tools = False
            return "reasoning_effort -> not sent with tools (the model's default on tool turns)"
        if feature == "images" and self.images and had_images:
            self.images = False
            return "images -> described by path in text"
        if feature == "stream_usage" and self.stream and self.stream_usage:
            self.stream_usage = False
            return "usage in the stream -> counted from the text"
        if feature in _SWITCHED_OFF and getattr(self, feature):
            setattr(self, feature, False)
            return _SWITCHED_OFF[feature]
        if feature == "max_tokens" and self.max_tokens_param == "max_tokens":
            self.max_tokens_param = "max_completion_tokens"
            return "max_tokens -> max_completion_tokens"
        return None

    def summary(self) -> dict[str, Any]:
        """What is used of the endpoint now (the bookkeeping fields left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("fixed", "version", "_lock")}


def looks_invalid(message: str) -> bool:
    """Whether a server error's words say the request itself was refused (so retrying it cannot help)."""
    text = message.lower()
    return any(word in text for word in _INVALID_WORDS)


def schema_note(schema: type[BaseModel]) -> str:
    """The schema as text, for modes where the server is not given it (it goes into the system message)."""
    return ("Reply with one JSON object and nothing else (no prose, no code fence), matching this JSON schema:\n"
            + json.dumps(schema.model_json_schema(), separators=(",", ":")))


def shaped_messages(messages: list[dict], caps: Capabilities, schema: type[BaseModel] | None,
                    keep_paths: bool = False) -> list[dict]:
    """The conversation as this endpoint can take it: images as text where it takes none, the schema in the
    system message where the server is not given it (and "JSON" named, which json_object mode requires).
    ``keep_paths``: each image part keeps heurist's note of its file, for the transcript of what was sent."""
    shaped = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list) and not caps.images:
            content = "\n".join(part["text"] if part.get("type") == "text" else
                                f"[an image, not shown to this model: {part.get('path', 'unnamed')}]"
                                for part in content)
        if isinstance(content, list) and not keep_paths:  # the path is heurist's note for the transcript, not the API's
            content = [{k: v for k, v in part.items() if k != "path"} for part in content]
        shaped.append({**message, "content": content})
    if caps.structured in ("json_object", "text") and schema is not None:  # a tool turn has no reply schema
        note = schema_note(schema)
        if shaped and shaped[0]["role"] == "system" and isinstance(shaped[0]["content"], str):
            shaped[0] = {**shaped[0], "content": shaped[0]["content"] + "\n\n" + note}
        else:
            shaped.insert(0, {"role": "system", "content": note})
    return shaped


def response_format(caps: Capabilities, schema: type[BaseModel]) -> dict | None:
    if caps.structured == "json_schema":
        return {"type": "json_schema", "json_schema": {"name": schema.__name__, "schema": schema.model_json_schema()}}
    if caps.structured == "json_object_schema":  # llama.cpp's and llama-cpp-python's grammar-constrained JSON
        return {"type": "json_object", "schema": schema.model_json_schema()}
    if caps.structured == "json_object":
        return {"type": "json_object"}
    return None


_FENCE = re.compile(r"```(?:json)?\s*(\{.*\})\s*```", re.S)


def json_text(content: str, caps: Capabilities) -> str:
    """The JSON object in a reply: the reply itself, or in text mode the object inside a fence or prose."""
    if caps.structured != "text":
        return content
    fenced = _FENCE.search(content)
    if fenced:
        return fenced.group(1)
    start, end = content.find("{"), content.rfind("}")
    return content[start:end + 1] if 0 <= start < end else content


class EndpointProfile(BaseModel):
    """What ``heurist doctor`` found an endpoint to accept, recorded so a run starts from it."""

    model_config = ConfigDict(extra="forbid")

    base_url: str | None
    model: str
    probed_at: str
    structured: StructuredMode
    images: bool
    stream: bool
    stream_usage: bool
    tools: bool  # the model calls a tool it is given (else the coder's agent asks for calls as JSON)


def _profiles_path() -> Path:
    return heurist_home() / "endpoints.json"


def _key(base_url: str | None, model: str) -> str:
    # A password in the URL never reaches the file: the same server with it or without it is one key.
    return f"{without_url_passwords(base_url or 'https://api.openai.com/v1')} {model}"


def recorded_profile(base_url: str | None, model: str) -> EndpointProfile | None:
    try:
        data = json.loads(_profiles_path().read_text())
        return EndpointProfile.model_validate(data[_key(base_url, model)])
    except (OSError, ValueError, KeyError):  # never probed, or a damaged file: start from the strongest
        return None


def record_profile(profile: EndpointProfile) -> None:
    path = _profiles_path()
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        data = {}
    data[_key(profile.base_url, profile.model)] = profile.model_copy(
        update={"base_url": profile.base_url and without_url_passwords(profile.base_url)}).model_dump(mode="json")
    atomic_write(path, json.dumps(data, indent=2))


def capabilities_from(profile: EndpointProfile | None) -> Capabilities:
    caps = Capabilities()
    if profile is not None:
        caps.structured, caps.images = profile.structured, profile.images
        caps.stream, caps.stream_usage = profile.stream, profile.stream_usage
        caps.tools = profile.tools
    return caps
