"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 for tests of the real ``openai`` client.

Chat completions answer from a queue of scripted replies (a JSON body, an HTTP status with
headers, a delay, raw bytes that are not JSON, or a dropped connection), and when the queue
is empty from ``responder(request_body)`` if one is given (benchmarks/soak.py answers every
role that way); embeddings are computed: a hashed bag of words, so texts that share words get
similar vectors. Every request is recorded.
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


class ScriptedOpenAI:
    def __init__(self, responder: Callable[[dict], dict] | None = None, record: bool = True):
        self.replies: deque[dict] = deque()
        self.responder = responder
        self.record = record  # a soak of thousands of calls keeps no list of them
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
                if server.record:
                    with server._lock:
                        server.requests.append({"path": self.path, "body": body})
                if self.path.endswith("/embeddings"):
                    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
                    data = [{"object": "embedding", "index": i, "embedding": hashed_bag_of_words(t)}
                            for i, t in enumerate(inputs)]
                    self._send(200, {"object": "list", "data": data, "model": body.get("model"),
                                     "usage": {"prompt_tokens": len(inputs), "total_tokens": len(inputs)}})
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
                else:
                    self._send(reply.get("status", 200), reply.get("json", {}), reply.get("headers"))

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
