"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 for tests of the real ``openai`` client.

Chat completions answer from a queue of scripted replies (a JSON body, an HTTP status with
headers, a delay, raw bytes that are not JSON, or a dropped connection), and when the queue
is empty from ``responder(request_body)`` if one is given (benchmarks/soak.py answers every
role that way); embeddings are computed: a hashed bag of words, so texts that share words get
similar vectors. Every request is recorded.

A request with ``stream: true`` gets its reply as server-sent events, the content in pieces, as
the real API sends it (usage last, when ``stream_options.include_usage`` asks for it); a reply may
stall after some chunks (``stall_after``, ``stall_s``: the connection stays open and silent) or
drip them slowly (``chunk_delay``), and the server counts the streams a client left early
(``abandoned``); a whole reply may drip a byte at a time (``drip_s``). It refuses what the real API refuses (``stream_options`` without ``stream``, a
``json_schema`` without a name, ``json_object`` with no "json" in the messages), and with
``profile="openai"`` (the default) it is strict as the real API is: unknown request fields, ``max_tokens``
or a temperature other than 1 for a reasoning model's name, ``reasoning_effort`` for another model,
unknown keys in messages and content parts, tool messages that answer no tool call and tool calls left
unanswered are refused with the API's 400. ``tool_call_reply`` scripts a reply that calls tools (streamed
as the API streams them). With ``profile="llama.cpp"`` it refuses what llama-cpp-python's server refuses: a ``json_schema`` response
format (a 500 naming the request's validation) and a message whose content is a list of parts (its
chat template fails, a 500 that says nothing of why).
"""

from __future__ import annotations

import hashlib
import json
import re
import select
import threading
import time
from collections import deque
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

EMBEDDING_DIM = 64


def hashed_bag_of_words(text: str, dim: int = EMBEDDING_DIM) -> list[float]:
    vector = np.zeros(dim)
    for word in re.findall(r"[a-z]+", text.lower()):
        vector[int(hashlib.md5(word.encode()).hexdigest(), 16) % dim] += 1.0
    return (vector / max(np.linalg.norm(vector), 1e-9)).tolist()


# What the real chat completions API takes; anything else is refused with a 400, as the API does.
REQUEST_FIELDS = {
    "model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stream",
    "stream_options", "stop", "presence_penalty", "frequency_penalty", "logit_bias", "logprobs", "top_logprobs",
    "user", "seed", "response_format", "tools", "tool_choice", "parallel_tool_calls", "reasoning_effort",
    "service_tier", "store", "metadata", "modalities", "audio", "prediction", "verbosity", "prompt_cache_key",
    "safety_identifier", "web_search_options"}
MESSAGE_FIELDS = {"role", "content", "name", "tool_calls", "tool_call_id", "refusal"}
PART_FIELDS = {"text": {"type", "text"}, "image_url": {"type", "image_url"}}
IMAGE_URL_FIELDS = {"url", "detail"}
REASONING_MODEL = re.compile(r"^(gpt-5|o[1-9])(?![0-9])(?!.*-chat)")


def refusal(body: dict, profile: str) -> dict | None:
    """The error reply a real server gives this request, or None if it accepts it."""
    fmt = body.get("response_format") or {}
    if body.get("stream_options") is not None and not body.get("stream"):
        return _error(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.")
    conversation = _conversation_refusal(body.get("messages") or [])
    if conversation is not None:
        return conversation
    if profile == "llama.cpp":
        if fmt.get("type") == "json_schema":  # llama-cpp-python validates response_format as its own union
            return _error(500, "1 validation error for CreateChatCompletionRequest\nresponse_format\n  Input "
                               "should be a valid dictionary or instance of ResponseFormat")
        if any(isinstance(m.get("content"), list) for m in body.get("messages", [])):
            return _error(500, "can only concatenate str (not \"list\") to str")
        return None
    unknown = sorted(set(body) - REQUEST_FIELDS)
    if unknown:
        return _error(400, f"Unrecognized request argument supplied: {unknown[0]}")
    reasoning = bool(REASONING_MODEL.match(str(body.get("model", "")).rsplit("/", 1)[-1]))  # as routers name them
    if reasoning and "max_tokens" in body:
        return _error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. Use "
                           "'max_completion_tokens' instead.")
    if reasoning and body.get("temperature", 1) != 1:
        return _error(400, f"Unsupported value: 'temperature' does not support {body['temperature']} with this "
                           f"model. Only the default (1) value is supported.")
    if not reasoning and "reasoning_effort" in body:
        return _error(400, "Unsupported parameter: 'reasoning_effort' is not supported with this model.")
    tools = _tools_refusal(body)
    if tools is not None:
        return tools
    if fmt.get("type") == "json_schema" and not (fmt.get("json_schema") or {}).get("name"):
        return _error(400, "Missing required parameter: 'response_format.json_schema.name'.")
    if fmt.get("type") == "json_object" and "json" not in json.dumps(body.get("messages", [])).lower():
        return _error(400, "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                           "'json_object'.")
    return None


def _conversation_refusal(messages: list[dict]) -> dict | None:
    """Unknown keys in a message or a content part; a tool message that answers no tool call; a tool call
    left unanswered. Every server refuses these (llama.cpp's templates fail on them too)."""
    open_calls: set[str] = set()
    for i, message in enumerate(messages):
        unknown = sorted(set(message) - MESSAGE_FIELDS)
        if unknown:
            return _error(400, f"Unrecognized request argument supplied: messages[{i}].{unknown[0]}")
        content = message.get("content")
        for j, part in enumerate(content if isinstance(content, list) else []):
            allowed = PART_FIELDS.get(part.get("type"))
            if allowed is None:
                return _error(400, f"Invalid value: '{part.get('type')}'. Supported values are: 'text' and "
                                   f"'image_url'. (messages[{i}].content[{j}].type)")
            extra = sorted(set(part) - allowed) or sorted(set(part.get("image_url") or {}) - IMAGE_URL_FIELDS)
            if extra:
                return _error(400, f"Unrecognized request argument supplied: messages[{i}].content[{j}].{extra[0]}")
        if message.get("role") == "tool":
            if message.get("tool_call_id") not in open_calls:
                return _error(400, "Invalid parameter: messages with role 'tool' must be a response to a preceding "
                                   "message with 'tool_calls'.")
            open_calls.discard(message["tool_call_id"])
            continue
        if open_calls:
            return _error(400, "An assistant message with 'tool_calls' must be followed by tool messages responding "
                               f"to each 'tool_call_id'. The following tool_call_ids did not have response messages: "
                               f"{', '.join(sorted(open_calls))}")
        if message.get("role") == "assistant":
            open_calls = {call["id"] for call in message.get("tool_calls") or []}
    return None


def _tools_refusal(body: dict) -> dict | None:
    for i, tool in enumerate(body.get("tools") or []):
        function = tool.get("function") or {}
        if tool.get("type") != "function" or not re.fullmatch(r"[a-zA-Z0-9_-]{1,64}", function.get("name", "")):
            return _error(400, f"Invalid 'tools[{i}]': a function with a name of letters, digits, _ or -.")
        extra = sorted(set(function) - {"name", "description", "parameters", "strict"})
        if extra:
            return _error(400, f"Unrecognized request argument supplied: tools[{i}].function.{extra[0]}")
    if body.get("tool_choice") is not None and not body.get("tools"):
        return _error(400, "Invalid value for 'tool_choice': 'tool_choice' is only allowed when 'tools' are "
                           "specified.")
    return None


def tool_call_reply(*calls: tuple[str, dict], content: str = "", prompt_tokens: int = 800,
                    completion_tokens: int = 60, call_ids: list[str] | None = None) -> dict:
    """A scripted chat completion that calls tools, as the real API returns one."""
    ids = call_ids or [f"call_{hashlib.md5(json.dumps([n, a, i]).encode()).hexdigest()[:10]}"
                       for i, (n, a) in enumerate(calls)]
    tool_calls = [{"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
                  for call_id, (name, args) in zip(ids, calls)]
    return {"json": {"id": "chatcmpl-tools", "object": "chat.completion", "created": 0, "model": "scripted",
                     "choices": [{"index": 0, "message": {"role": "assistant", "content": content or None,
                                                          "tool_calls": tool_calls},
                                  "finish_reason": "tool_calls"}],
                     "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                               "total_tokens": prompt_tokens + completion_tokens}}}


def _error(status: int, message: str) -> dict:
    kind = "invalid_request_error" if status < 500 else "server_error"
    return {"status": status, "json": {"error": {"message": message, "type": kind, "param": None, "code": None}}}


def stream_events(reply: dict, include_usage: bool) -> list[bytes]:
    """A chat completion as the server-sent events of a streamed reply."""
    body = reply.get("json", {})
    choice = (body.get("choices") or [{}])[0]
    content = (choice.get("message") or {}).get("content") or ""
    size = reply.get("chunk_chars", 8)
    base = {"id": body.get("id", "c1"), "object": "chat.completion.chunk", "created": 0,
            "model": body.get("model", "scripted")}
    chunks = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    # Reasoning streamed apart from the reply, as vLLM's reasoning parser sends it (no content while it thinks).
    chunks += [{**base, "choices": [{"index": 0, "delta": {"reasoning_content": "."}, "finish_reason": None}]}
               for _ in range(reply.get("reasoning_chunks", 0))]
    chunks += [{**base, "choices": [{"index": 0, "delta": {"content": content[i:i + size]}, "finish_reason": None}]}
               for i in range(0, len(content), size)]
    for index, call in enumerate((choice.get("message") or {}).get("tool_calls") or []):
        # As the API streams a tool call: its id and name first, then the arguments in pieces.
        arguments = call["function"]["arguments"]
        chunks.append({**base, "choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [{
            "index": index, "id": call["id"], "type": "function",
            "function": {"name": call["function"]["name"], "arguments": ""}}]}}]})
        chunks += [{**base, "choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [{
            "index": index, "function": {"arguments": arguments[i:i + size * 2]}}]}}]}
            for i in range(0, len(arguments), size * 2)]
    refused = (choice.get("message") or {}).get("refusal")
    if refused:
        chunks.append({**base, "choices": [{"index": 0, "delta": {"refusal": refused}, "finish_reason": None}]})
    # A server that goes on sending chunks with nothing of the reply in them (no choices), as a broken one can.
    chunks += [{**base, "choices": []} for _ in range(reply.get("empty_chunks", 0))]
    chunks.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": choice.get("finish_reason", "stop")}]})
    if include_usage and body.get("usage"):
        chunks.append({**base, "choices": [], "usage": body["usage"]})
    return [f"data: {json.dumps(c)}\n\n".encode() for c in chunks] + [b"data: [DONE]\n\n"]


class ScriptedOpenAI:
    def __init__(self, responder: Callable[[dict], dict] | None = None, record: bool = True,
                 profile: str = "openai"):
        self.replies: deque[dict] = deque()
        self.responder = responder
        self.record = record  # a soak of thousands of calls keeps no list of them
        self.profile = profile
        self.requests: list[dict] = []
        self.abandoned = 0  # streams the client left before their end
        self.client_left = threading.Event()  # set when a client leaves a stream: tests wait on it, not on a clock
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if server.record:
                    with server._lock:
                        server.requests.append({"path": self.path, "body": body,
                                                "auth": self.headers.get("Authorization")})
                if self.path.endswith("/embeddings"):
                    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                    data = [{"object": "embedding", "index": i, "embedding": hashed_bag_of_words(t)}
                            for i, t in enumerate(inputs)]
                    self._send(200, {"object": "list", "data": data, "model": body.get("model"),
                                     "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})
                    return
                refused = refusal(body, server.profile)
                if refused is not None:
                    self._send(refused["status"], refused["json"])
                    return
                with server._lock:
                    reply = server.replies.popleft() if server.replies else None
                if reply is None:
                    reply = server.responder(body) if server.responder else {"status": 500, "json": {
                        "error": {"message": "scripted server has no reply queued", "type": "server_error"}}}
                time.sleep(reply.get("delay", 0))
                if reply.get("drop"):  # the connection closes with no response at all
                    self.close_connection = True
                    return
                if "raw" in reply:
                    self._send(reply.get("status", 200), reply["raw"].encode(), reply.get("headers"),
                               reply.get("drip_s"))
                elif body.get("stream") and reply.get("status", 200) == 200:
                    self._stream(reply, bool((body.get("stream_options") or {}).get("include_usage")))
                else:
                    self._send(reply.get("status", 200), reply.get("json", {}), reply.get("headers"),
                               reply.get("drip_s"))

            def _stream(self, reply, include_usage):
                events = stream_events(reply, include_usage)
                stall_after = reply.get("stall_after")
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Cache-Control", "no-cache")
                    self.end_headers()  # no Content-Length: the body ends when the connection closes
                    self.close_connection = True
                    if reply.get("stream_error"):  # a server that fails mid-reply says so inside the stream
                        events = events[:2] + [f"data: {json.dumps({'error': {'message': reply['stream_error']}})}\n\n"
                                               .encode()]
                    for _ in range(reply.get("keepalives", 0)):  # SSE comments: bytes, none of them a chunk
                        self.wfile.write(b": keep-alive\n\n")
                        self.wfile.flush()
                        time.sleep(reply.get("chunk_delay", 0))
                    for i, event in enumerate(events):
                        if stall_after is not None and i == stall_after:
                            if reply.get("stall_s") == "until_gone":  # silent until the client hangs up (60 s guard)
                                select.select([self.connection], [], [], 60)
                            else:
                                time.sleep(reply.get("stall_s", 30))  # silent, as a server stuck mid-reply is
                        self.wfile.write(event)
                        self.wfile.flush()
                        time.sleep(reply.get("chunk_delay", 0))
                except (BrokenPipeError, ConnectionResetError):  # the client closed the stream: counted
                    with server._lock:
                        server.abandoned += 1
                    server.client_left.set()

            def _send(self, status, payload, headers=None, drip_s=None):
                """The reply whole, or with ``drip_s`` a byte at a time, that many seconds apart (a read timeout,
                which counts the silence between reads, never fires on it)."""
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    if drip_s is None:
                        self.wfile.write(data)
                        return
                    for byte in data:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(drip_s)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    with server._lock:
                        server.abandoned += 1
                    server.client_left.set()

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        # shutdown() waits for serve_forever's next look at its flag: every 0.5 s by default, half a second added to
        # each of the many tests that start a server.
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    def __enter__(self) -> "ScriptedOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def queue(self, *replies: dict) -> None:
        with self._lock:
            self.replies.extend(replies)
