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
(``abandoned``). It refuses what the real API refuses (``stream_options`` without ``stream``, a
``json_schema`` without a name, ``json_object`` with no "json" in the messages), and with
``profile="llama.cpp"`` also what llama-cpp-python's server refuses: a ``json_schema`` response
format (a 500 naming the request's validation) and a message whose content is a list of parts (its
chat template fails, a 500 that says nothing of why).
"""

from __future__ import annotations

import hashlib
import json
import re
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


def refusal(body: dict, profile: str) -> dict | None:
    """The error reply a real server gives this request, or None if it accepts it."""
    fmt = body.get("response_format") or {}
    if body.get("stream_options") is not None and not body.get("stream"):
        return _error(400, "The 'stream_options' parameter is only allowed when 'stream' is enabled.")
    if profile == "llama.cpp":
        if fmt.get("type") == "json_schema":  # llama-cpp-python validates response_format as its own union
            return _error(500, "1 validation error for CreateChatCompletionRequest\nresponse_format\n  Input "
                               "should be a valid dictionary or instance of ResponseFormat")
        if any(isinstance(m.get("content"), list) for m in body.get("messages", [])):
            return _error(500, "can only concatenate str (not \"list\") to str")
        return None
    if fmt.get("type") == "json_schema" and not (fmt.get("json_schema") or {}).get("name"):
        return _error(400, "Missing required parameter: 'response_format.json_schema.name'.")
    if fmt.get("type") == "json_object" and "json" not in json.dumps(body.get("messages", [])).lower():
        return _error(400, "'messages' must contain the word 'json' in some form, to use 'response_format' of type "
                           "'json_object'.")
    return None


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
    chunks += [{**base, "choices": [{"index": 0, "delta": {"content": content[i:i + size]}, "finish_reason": None}]}
               for i in range(0, len(content), size)]
    refused = (choice.get("message") or {}).get("refusal")
    if refused:
        chunks.append({**base, "choices": [{"index": 0, "delta": {"refusal": refused}, "finish_reason": None}]})
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
                    self._send(reply.get("status", 200), reply["raw"].encode(), reply.get("headers"))
                elif body.get("stream") and reply.get("status", 200) == 200:
                    self._stream(reply, bool((body.get("stream_options") or {}).get("include_usage")))
                else:
                    self._send(reply.get("status", 200), reply.get("json", {}), reply.get("headers"))

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
                    for i, event in enumerate(events):
                        if stall_after is not None and i == stall_after:
                            time.sleep(reply.get("stall_s", 30))  # silent, as a server stuck mid-reply is
                        self.wfile.write(event)
                        self.wfile.flush()
                        time.sleep(reply.get("chunk_delay", 0))
                except (BrokenPipeError, ConnectionResetError):  # the client closed the stream: counted
                    with server._lock:
                        server.abandoned += 1
                    server.client_left.set()

            def _send(self, status, payload, headers=None):
                data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for key, value in (headers or {}).items():
                        self.send_header(key, value)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self.base_url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    def __enter__(self) -> "ScriptedOpenAI":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def queue(self, *replies: dict) -> None:
        with self._lock:
            self.replies.extend(replies)
