"""What crosses between the env process and the sandboxed policy process, and in which form.

The env process (``envs.worker``, heurist's code only) owns the environment, the reward
and the bookkeeping. Each step it sends the policy process an observation; the policy
process (``envs.policy_host``, which runs the untrusted file) answers with an action and
its diagnostics, nothing else. The two directions differ on purpose:

- env → policy: pickle, because the sender is trusted and pickle carries numpy arrays and
  the env's ``info`` dict exactly and fast. Only the policy process unpickles.
- policy → env: one JSON line of at most ``MAX_REPLY_BYTES``, because the sender is not
  trusted: unpickling its bytes would run its code in the process that keeps the score.
  Actions keep their exact values (JSON floats round-trip; float32 arrays keep their dtype).
"""

from __future__ import annotations

import fcntl
import json
import os
import pickle
import re
from typing import IO, Any

import numpy as np

MAX_REPLY_BYTES = 1 << 16  # one action and its diagnostics; a longer line is a broken protocol
MAX_DIAG_CHARS = 2048  # what the env process keeps of one step's diagnostics, whatever the policy sends
MAX_MODES = 64  # distinct diagnostic modes counted per episode; the rest are counted together
OTHER_MODES = "<other modes>"


class ProtocolBroken(Exception):
    """The other side sent something that is not a message of this protocol, or hung up."""


class Opaque:
    """An action the policy process could not put into JSON (an object, a dict...): kept as its text and type name."""

    __slots__ = ("text", "type_name")

    def __init__(self, text: str, type_name: str) -> None:
        self.text, self.type_name = text, type_name

    def __str__(self) -> str:
        return self.text


def describe(action: Any) -> str:
    """How an error message names an action: its text and its type, as the policy returned it."""
    if isinstance(action, Opaque):
        return f"{action.text!r} ({action.type_name})"
    return f"{str(action)[:60]!r} ({type(action).__name__})"


# --------------------------------------------------------------------------- values as JSON

def jsonable(value: Any, depth: int = 0) -> Any:
    """Diagnostics and actions as JSON; anything exotic becomes a short string rather than an error."""
    if value is None or isinstance(value, (bool, int, str)):
        return value if not isinstance(value, str) else value[:200]
    if isinstance(value, float):
        return round(value, 6) if np.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return jsonable(value.item(), depth)
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist(), depth) if value.size <= 64 else f"<array {value.shape} {value.dtype}>"
    if depth < 3 and isinstance(value, dict):
        return {str(k)[:60]: jsonable(v, depth + 1) for k, v in list(value.items())[:30]}
    if depth < 3 and isinstance(value, (list, tuple)):
        return [jsonable(v, depth + 1) for v in value[:64]]
    return str(value)[:200]


_PLAIN = (str, int, float, bool, type(None))


def plain_diag(diag: Any) -> Any:
    """Diagnostics as JSON: a small flat dict of plain values passes as is; anything else is converted."""
    if diag is None:
        return None
    if diag.__class__ is dict and len(diag) <= 30 and all(
            k.__class__ is str and v.__class__ in _PLAIN and (v.__class__ is not str or len(v) <= 200)
            for k, v in diag.items()):
        return diag
    return jsonable(diag)


def _trimmed_diag(diag: Any) -> Any:
    """Diagnostics from a reply too long to keep as sent: converted, then cut to ``MAX_DIAG_CHARS``."""
    trimmed = jsonable(diag)
    text = json.dumps(trimmed)
    return trimmed if len(text) <= MAX_DIAG_CHARS else {"truncated": text[:MAX_DIAG_CHARS]}


def _without_surrogates(value: Any) -> Any:
    """Every string of a decoded reply as valid text: a lone surrogate (JSON allows ``\\udc00``) becomes '?'."""
    if isinstance(value, str):
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, dict):
        return {_without_surrogates(k): _without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_surrogates(v) for v in value]
    return value


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def mode_key(diag: Any, seen: dict) -> str | None:
    """The mode a step counts under: its ``mode`` as short text, at most ``MAX_MODES`` distinct ones an episode."""
    if diag.__class__ is not dict:
        return None
    mode = diag.get("mode")
    key = mode if mode is None or (mode.__class__ is str and len(mode) <= 60) else str(mode)[:60]
    if key not in seen and len(seen) >= MAX_MODES:
        return OTHER_MODES
    return key


# --------------------------------------------------------------------------- actions

_NUMERIC = "biuf"


def action_to_wire(action: Any) -> dict[str, Any]:
    """An action as a JSON object the env side can rebuild exactly: ``a`` (plain), ``np`` (a numpy
    scalar or array, with its dtype) or ``opaque`` (text and type name of anything else)."""
    if action.__class__ is int:  # the common case (discrete tasks), first
        return {"a": action}
    if isinstance(action, np.ndarray) and action.dtype.kind in _NUMERIC:
        return {"np": action.tolist(), "dtype": action.dtype.str, "scalar": False}
    if isinstance(action, np.generic) and action.dtype.kind in _NUMERIC:
        return {"np": action.item(), "dtype": action.dtype.str, "scalar": True}
    if isinstance(action, (bool, float, str)) or action is None:
        return {"a": action}
    if isinstance(action, (list, tuple)):
        try:
            arr = np.asarray(action)
        except (TypeError, ValueError):
            arr = None
        if arr is not None and arr.dtype.kind in _NUMERIC:
            return {"np": arr.tolist(), "dtype": arr.dtype.str, "scalar": False, "sequence": type(action).__name__}
    return {"opaque": str(action)[:60], "type": type(action).__name__[:60]}


def action_from_wire(message: dict[str, Any]) -> Any:
    """The policy's action as the env side validates it; raises ProtocolBroken on anything malformed."""
    try:
        if "a" in message:
            value = message["a"]
            if value is None or isinstance(value, (bool, int, float, str)):
                return value
        elif "np" in message:
            dtype = np.dtype(str(message["dtype"])[:40])
            if dtype.kind not in _NUMERIC or dtype.shape:
                raise ProtocolBroken(f"an action of dtype {dtype}")
            if message.get("scalar"):
                return dtype.type(message["np"])
            arr = np.asarray(message["np"], dtype=dtype)
            if message.get("sequence"):
                return arr.tolist() if message["sequence"] == "list" else tuple(arr.tolist())
            return arr
        elif "opaque" in message:
            return Opaque(str(message["opaque"])[:60], str(message.get("type", "object"))[:60])
    except ProtocolBroken:
        raise
    except Exception as exc:  # untrusted text: numpy raises TypeError, ValueError, even SyntaxError on odd dtypes
        raise ProtocolBroken(f"an action that cannot be read ({type(exc).__name__}: {str(exc)[:100]})") from None
    raise ProtocolBroken("a reply without an action")


# --------------------------------------------------------------------------- framing

def observation_pipe() -> tuple[int, int]:
    """A pipe for env → policy wide enough for one Atari frame (100 KiB): with the default 64 KiB the
    writer blocks mid-message and every step costs two more context switches."""
    read_end, write_end = os.pipe()
    try:
        fcntl.fcntl(write_end, fcntl.F_SETPIPE_SZ, 1 << 20)
    except OSError:  # above /proc/sys/fs/pipe-max-size for an unprivileged user: slower, still correct
        pass
    return read_end, write_end


def send_to_policy(stream: IO[bytes], message: tuple) -> None:
    """env → policy: one pickled tuple (trusted sender; only the policy process unpickles)."""
    pickle.dump(message, stream, protocol=pickle.HIGHEST_PROTOCOL)
    stream.flush()


def receive_from_env(stream: IO[bytes]) -> tuple | None:
    """The next message from the env process, or None when it has hung up."""
    try:
        return pickle.load(stream)
    except EOFError:
        return None


def send_to_env(stream: IO[bytes], reply: dict[str, Any]) -> None:
    """policy → env: one JSON line. A diagnostics value JSON cannot hold is converted, not fatal."""
    try:
        line = json.dumps(reply, separators=(",", ":"))
    except (TypeError, ValueError):  # diagnostics with keys or values JSON cannot hold
        line = json.dumps({**reply, "d": jsonable(reply.get("d"))}, separators=(",", ":"))
    stream.write(line.encode() + b"\n")
    stream.flush()


def receive_from_policy(stream: IO[bytes]) -> dict[str, Any]:
    """The policy process's next reply, read as untrusted data: bounded, JSON only, an object, valid text, and
    diagnostics of at most ``MAX_DIAG_CHARS``. Bounded here, in the env process, because the policy process's
    own trimming (``plain_diag``) runs where the policy can patch it."""
    line = stream.readline(MAX_REPLY_BYTES + 1)
    if not line:
        raise EOFError("the policy process hung up")
    if not line.endswith(b"\n"):
        raise ProtocolBroken(f"a reply longer than {MAX_REPLY_BYTES} bytes" if len(line) > MAX_REPLY_BYTES
                             else "a reply cut off before its end")
    try:
        reply = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ProtocolBroken(f"a reply that is not JSON ({str(exc)[:80]})") from None
    if not isinstance(reply, dict):
        raise ProtocolBroken("a reply that is not a JSON object")
    if _SURROGATE_ESCAPE.search(line):  # rare: checked on the raw bytes, so the common reply costs one scan
        reply = _without_surrogates(reply)
    if len(line) > MAX_DIAG_CHARS and reply.get("d") is not None:  # a short reply holds short diagnostics
        reply["d"] = _trimmed_diag(reply["d"])
    return reply
