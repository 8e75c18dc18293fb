"""What crosses between the env process and the sandboxed policy process, and in which form.

The env process (``envs.worker``, heurist's code only) owns the environment, the reward
and the bookkeeping. Each step it sends the policy process an observation; the policy
process (``envs.policy_host``, which runs the untrusted file) answers with an action and
its diagnostics, nothing else. The two directions differ on purpose:

- env → policy: pickle, because the sender is trusted and pickle carries numpy arrays and
  the env's ``info`` dict exactly and fast. Only the policy process unpickles.
- policy → env: one JSON line of at most ``MAX_REPLY_BYTES`` per episode, because the sender
  is not trusted: unpickling its bytes would run its code in the process that keeps the score.
  Actions keep their exact values (JSON floats round-trip; float32 arrays keep their dtype).

Episodes run in lockstep (``envs.lockstep``), so a message carries a batch: the observations
of every episode in flight, and the reply their actions (``actions_to_wire``). Observations
that are all arrays of one shape travel as one stacked array, and large ones (Atari frames)
through shared memory of a sealed, fixed size that the policy process maps read-only (``ObservationChannel``): only a small
header crosses the pipe, and the policy process copies the frames out, so what it keeps of
one step is never overwritten by the next.
"""

from __future__ import annotations

import base64
import binascii
import fcntl
import json
import mmap
import os
import pickle
import re
from typing import IO, Any

import numpy as np

MAX_SLOTS = 64  # episodes one worker runs at once, at most: the step file has a count for each
SETUP_RUNS = MAX_SLOTS  # the step file's last count: the policy's set-ups the env process saw complete (setup())

MAX_REPLY_BYTES = 1 << 16  # one episode's action, or one step's diagnostics; a longer line is a broken protocol
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
        item = value.item()
        # np.longdouble's item() is an np.longdouble again: its text, rather than recursing until Python stops it.
        return str(value)[:200] if isinstance(item, np.generic) else jsonable(item, depth)
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


class Deferred:
    """One step's diagnostics kept as the policy gave them, converted (``jsonable``) only if a window reads them."""

    __slots__ = ("value",)

    def __init__(self, value: dict) -> None:
        self.value = value


# numpy's scalar types, by exact type: their values cannot change, so converting one later gives what converting it
# now would. Subclasses (the policy's own) are converted at once, as anything else is; so are the extended-precision
# types, whose conversion is text rather than a number.
_NUMPY_SCALARS = frozenset(t for t in set(np.sctypeDict.values()) if issubclass(t, (np.number, np.bool_))
                           and t not in (np.longdouble, np.clongdouble))
_KEEPABLE = frozenset(_PLAIN) | _NUMPY_SCALARS


def snapshot_diag(diag: Any) -> Any:
    """One step's diagnostics as the policy process keeps them until the env process asks (``read_diag``).

    What a trace window later reads is what ``plain_diag`` made of the diagnostics at this step. A small flat dict of
    plain values is copied (it is sent as it is); a dict of numbers, numpy scalars and short lists or tuples of them
    (the diagnostics a policy computing with numpy gives) is copied and converted only if read: most steps leave the
    ring unread, and converting on every step was a tenth of a Breakout step. Anything else is converted now, since
    the policy may change what it holds in place. Types are read with ``type()``, which an object cannot fake as it
    can ``__class__``: a value that only says it is a number is converted at once. Diagnostics that are no dict
    (a string, a number) are kept as converted: before, copying them as a dict failed and took the policy process
    down with it."""
    if type(diag) is not dict or len(diag) > 30:
        return plain_diag(diag)
    plain = True
    for key, value in diag.items():
        kind = type(value)
        if type(key) is not str:
            return plain_diag(diag)
        if kind in _PLAIN:
            if kind is str and len(value) > 200:
                plain = False
        elif kind in _NUMPY_SCALARS or ((kind is list or kind is tuple) and len(value) <= 64
                                        and all(type(v) in _KEEPABLE for v in value)):
            plain = False
        else:
            return plain_diag(diag)
    if plain:
        return dict(diag)  # a copy: the policy may change its dict in place later
    return Deferred({k: list(v) if type(v) is list else v for k, v in diag.items()})


def snapshot_mode(snapshot: Any, seen: dict) -> str | None | bool:
    """The mode a kept snapshot counts under (``mode_key`` of what it converts to); False when that is no dict."""
    if snapshot.__class__ is Deferred:
        return mode_key({"mode": jsonable(snapshot.value.get("mode"))}, seen)
    return mode_key(snapshot, seen) if snapshot.__class__ is dict else False


def read_diag(snapshot: Any) -> Any:
    """A kept snapshot as sent to the env process: a deferred one converted now."""
    return jsonable(snapshot.value) if snapshot.__class__ is Deferred else snapshot


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


def receive_from_policy(stream: IO[bytes], limit: int = MAX_REPLY_BYTES) -> dict[str, Any]:
    """The policy process's next reply, read as untrusted data: at most ``limit`` bytes, JSON only, an object,
    valid text. Bounded here, in the env process, because the policy process's own trimming (``plain_diag``)
    runs where the policy can patch it; diagnostics are bounded by ``bounded_diagnostics``."""
    line = stream.readline(limit + 1)
    if not line:
        raise EOFError("the policy process hung up")
    if not line.endswith(b"\n"):
        raise ProtocolBroken(f"a reply longer than {limit} bytes" if len(line) > limit
                             else "a reply cut off before its end")
    try:
        # Decoded here, strictly, as UTF-8: json.loads on bytes guesses UTF-16 and UTF-32 too and decodes with
        # 'surrogatepass', so a raw lone surrogate would pass the check below for escaped ones, and text no JSON
        # writer can hold (the results' error strings) would reach the evaluation's record.
        reply = json.loads(line.decode("utf-8"))
        if _SURROGATE_ESCAPE.search(line):  # rare: checked on the raw bytes, so the common reply costs one scan
            reply = _without_surrogates(reply)  # recursive: a deeply nested reply is refused with the rest
    except (ValueError, RecursionError) as exc:
        raise ProtocolBroken(f"a reply that is not JSON ({str(exc)[:80]})") from None
    if not isinstance(reply, dict):
        raise ProtocolBroken("a reply that is not a JSON object")
    return reply


def bounded_diagnostics(diagnostics: Any, n: int) -> list:
    """The ``n`` diagnostics of a window as the policy process sent them, each cut to ``MAX_DIAG_CHARS``."""
    if not isinstance(diagnostics, list) or len(diagnostics) != n:
        raise ProtocolBroken(f"{_count(diagnostics)} diagnostics for {n} steps")
    return [d if d is None or len(json.dumps(d)) <= MAX_DIAG_CHARS else _trimmed_diag(d) for d in diagnostics]


def bounded_modes(modes: Any, steps: int) -> dict[str, int]:
    """An episode's mode counts as the policy process sent them: at most ``MAX_MODES`` + 1 short names,
    counts that add up to no more than the steps taken."""
    if not isinstance(modes, dict) or len(modes) > MAX_MODES + 1:
        raise ProtocolBroken(f"mode counts that are not an object of at most {MAX_MODES} modes")
    counts = {str(k)[:60]: v for k, v in modes.items()}
    if not all(v.__class__ is int and v > 0 for v in counts.values()) or sum(counts.values()) > steps:
        raise ProtocolBroken("mode counts that are not counts of the steps taken")
    return counts


# --------------------------------------------------------------------------- batches of actions

def actions_to_wire(actions: list, failed: dict[int, str]) -> dict[str, Any]:
    """The actions of one lockstep step as a JSON object: ``a`` (all plain ints, the common case),
    ``b`` (all numeric arrays of one shape and dtype: their bytes, base64) or ``w`` (each its own
    ``action_to_wire``); ``e`` maps the position of each episode whose policy failed to its error."""
    reply: dict[str, Any]
    first = actions[0] if actions else None
    if not failed and all(a.__class__ is int for a in actions):
        reply = {"a": actions}
    elif not failed and isinstance(first, np.ndarray) and first.ndim >= 1 and first.dtype.kind in _NUMERIC and all(
            a.__class__ is np.ndarray and a.shape == first.shape and a.dtype == first.dtype for a in actions):
        batch = np.ascontiguousarray(np.stack(actions))
        reply = {"b": base64.b64encode(batch.tobytes()).decode(), "dtype": batch.dtype.str, "shape": list(batch.shape)}
    else:
        reply = {"w": [{"a": None} if i in failed else action_to_wire(a) for i, a in enumerate(actions)]}
    if failed:
        reply["e"] = {str(i): message for i, message in failed.items()}
    return reply


def actions_from_wire(reply: dict[str, Any], n: int) -> tuple[list, dict[int, str]]:
    """The ``n`` actions of a lockstep reply and the policy's failures by position, read as untrusted data;
    raises ProtocolBroken on anything malformed."""
    failed: dict[int, str] = {}
    errors = reply.get("e")
    if errors is not None:
        if not isinstance(errors, dict):
            raise ProtocolBroken("failures that are not an object")
        for key, message in errors.items():
            if not (isinstance(key, str) and key.isascii() and key.isdigit() and len(key) < 4 and int(key) < n):
                raise ProtocolBroken(f"a failure for an episode it was not asked about ({key[:20]!r})")
            failed[int(key)] = str(message)[:2000]
    if "a" in reply:
        actions = reply["a"]
        if not isinstance(actions, list) or len(actions) != n:
            raise ProtocolBroken(f"{_count(actions)} actions for {n} episodes")
        for action in actions:
            if action is not None and action.__class__ not in (int, float, bool, str):
                raise ProtocolBroken("an action that is not a plain value")
        return actions, failed
    if "b" in reply:
        return _array_actions(reply, n), failed
    if "w" in reply:
        messages = reply["w"]
        if not isinstance(messages, list) or len(messages) != n:
            raise ProtocolBroken(f"{_count(messages)} actions for {n} episodes")
        return [None if i in failed else action_from_wire(m if isinstance(m, dict) else {})
                for i, m in enumerate(messages)], failed
    raise ProtocolBroken("a reply without actions")


def _count(value: Any) -> str:
    return str(len(value)) if isinstance(value, list) else "no list of"


def _array_actions(reply: dict[str, Any], n: int) -> list:
    try:
        dtype = np.dtype(str(reply["dtype"])[:40])
        shape = [int(d) for d in reply["shape"]]
        raw = base64.b64decode(str(reply["b"]), validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ProtocolBroken(f"an action batch that cannot be read ({type(exc).__name__})") from None
    if dtype.kind not in _NUMERIC or dtype.shape or not shape or len(shape) > 8 or shape[0] != n or min(shape) < 0:
        raise ProtocolBroken(f"an action batch of dtype {dtype} and shape {shape[:9]} for {n} episodes")
    size = 1
    for d in shape:  # Python ints: numpy's product would wrap around
        size *= d
    if len(raw) != size * dtype.itemsize:
        raise ProtocolBroken("an action batch whose size does not match its shape")
    # A bytearray, so the actions are writable arrays, as single replies' actions are.
    batch = np.frombuffer(bytearray(raw), dtype=dtype).reshape(shape)
    return list(batch)


# --------------------------------------------------------------------------- batches of observations

SHARED_OBS_BYTES = 8192  # an observation this large goes through shared memory rather than the pipe


def stack_observations(observations: list) -> tuple:
    """A lockstep step's observations as ``("stack", array)`` when they are arrays of one shape and dtype
    (one pickled array instead of many), else ``("list", observations)``."""
    first = observations[0]
    if first.__class__ is np.ndarray:
        dtype = first.dtype
        # Identity of the dtype object is the cheap test (numpy keeps one per built-in type); anything
        # less certain travels as a list, exactly as it was.
        if all(o.__class__ is np.ndarray and o.dtype is dtype for o in observations):
            try:
                batch = np.array(observations)
            except ValueError:  # shapes that differ
                return ("list", observations)
            if batch.shape[1:] == first.shape and batch.dtype is dtype:
                return ("stack", batch)
    return ("list", observations)


class ObservationChannel:
    """The env process's side of the shared observation memory: a memfd it writes each step's frames into.

    The policy process gets a read-only descriptor of the same memory (``ObservationView``). The env
    process only ever writes here and never reads back, so nothing the policy does to the memory can
    reach the score. A batch larger than the memory goes over the pipe."""

    def __init__(self, fd: int) -> None:
        # Sized and sealed by the parent before either process started (``shared_memory_pair``): the policy
        # process can neither shrink it under this mapping nor change its seals.
        self.fd, self.size = fd, os.fstat(fd).st_size
        self.memory = mmap.mmap(fd, self.size) if self.size else None

    def pack(self, observations: list) -> tuple:
        """The observations as a message part: through shared memory when they are large arrays of one kind."""
        first = observations[0]
        if first.__class__ is not np.ndarray or first.nbytes < SHARED_OBS_BYTES:
            return stack_observations(observations)
        dtype, shape = first.dtype, first.shape
        if not all(o.__class__ is np.ndarray and o.dtype is dtype and o.shape == shape for o in observations):
            return ("list", observations)
        n = len(observations)
        if n * first.nbytes > self.size:
            return stack_observations(observations)
        rows = np.frombuffer(self.memory, dtype=dtype, count=n * first.size).reshape((n, *shape))
        for row, obs in zip(rows, observations):  # one copy, straight into the shared memory
            row[...] = obs
        return ("shared", (n, *shape), dtype.str)


class ObservationView:
    """The policy process's read-only map of the shared observations."""

    def __init__(self, fd: int | None) -> None:
        self.fd, self.size, self.memory = fd, 0, None  # no descriptor: observations come over the pipe only

    def unpack(self, payload: tuple) -> list:
        kind = payload[0]
        if kind == "list":
            return payload[1]
        if kind == "stack":
            # A copy each: views of one array shared a buffer, so one episode's policy could rewrite the
            # observations its neighbours in the round then acted on (``obs.base``; a red-team review, 2026-12-06).
            return [row.copy() for row in payload[1]]
        shape, dtype = payload[1], np.dtype(payload[2])
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if nbytes > self.size:
            if self.memory is not None:
                self.memory.close()
            self.size = os.fstat(self.fd).st_size
            self.memory = mmap.mmap(self.fd, self.size, prot=mmap.PROT_READ)
        # A private copy for each episode: what the policy keeps of one step is never overwritten by the next, and
        # no episode's observation shares a buffer with another's (see "stack" above).
        batch = np.frombuffer(self.memory, dtype=dtype, count=nbytes // dtype.itemsize).reshape(shape)
        return [row.copy() for row in batch]


SHARED_OBS_CAPACITY = 8 << 20  # 64 Atari frames and then some; pages are only allocated when written


def shared_memory_pair() -> tuple[int, int]:
    """A memfd for the observations: a read-write descriptor for the env process, a read-only one for the policy.

    Its size is fixed and sealed here, before any sandboxed process exists: a policy process could reopen
    its descriptor read-write through /proc, but it can neither shrink the memory under the env process's
    mapping (which would kill it with SIGBUS) nor add seals of its own. Where sealing is refused the size
    is 0 and observations go over the pipe."""
    fd = os.memfd_create("heurist-observations", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        try:
            os.ftruncate(fd, SHARED_OBS_CAPACITY)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL)
        except (OSError, AttributeError):
            os.ftruncate(fd, 0)  # still unsealed at 0 bytes: the env process never maps it
        read_only = os.open(f"/proc/self/fd/{fd}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        os.close(fd)
        raise
    return fd, read_only
