"""A Ctrl-C stops a heurist process soon, whichever of its threads the kernel gave it to, and even if some library
swallowed the KeyboardInterrupt it raised.

Python runs signal handlers in the main thread only, when that thread next executes bytecode. The kernel may
hand a process's SIGINT to any thread that does not block it (under load, often a thread that just spawned a
process: ``_posixsubprocess`` blocks every signal around its fork and unblocks them after, which makes that thread
the one that takes a pending signal). The main thread, blocked in a lock's wait with no time limit (a future's
``result()``), is then never woken: the Ctrl-C waits until the evaluation or the tests it waits for end by
themselves, an hour for a slow policy. And a KeyboardInterrupt raised inside a native module's first import comes
out as that module's ImportError, which an optional import (``try: import x / except ImportError:``) swallows.

So heurist's commands run with ``on_sigint`` as their handler (``remembering``), which remembers the Ctrl-C
before raising as Python's own handler does; long waits in the main thread go in short steps (``results``,
``sleep``) and call ``check`` between them, which runs a handler the interpreter has not run yet and raises again
for a Ctrl-C that was seen and swallowed; and the loop that runs the graph's nodes, and a streamed model reply,
call ``check`` too. Threads doing work for the main thread (sandboxed tests) look at ``received`` to stop their
processes rather than wait them out. Where the main thread takes locks that those threads need to end
(``concurrent.futures``' own, in ``results`` and around a pool's ``submit``; an evaluation's stop), a
KeyboardInterrupt is held to the end of the block (``deferred``): raised inside, it could leave a lock held, and
the threads, and the Ctrl-C with them, blocked for ever.
"""

from __future__ import annotations

import ctypes
import os
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

POLL_S = 0.2  # how often a waiting main thread looks for a Ctrl-C that reached another thread


class Flag:
    """``threading.Event``'s ``set``, ``is_set`` and ``clear`` without its lock, for signal handlers. An Event's
    ``set`` takes a lock that is not re-entrant, and a second signal's handler, run inside the first handler's
    ``set`` (two signals close together: a double Ctrl-C, or a Ctrl-C to the process group and a supervisor's
    SIGTERM), waited on it for ever. No one waits on this flag: threads look at it between their own steps. A bool
    read or written is one step under the GIL."""

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set

    def clear(self) -> None:
        self._set = False


received = Flag()  # a Ctrl-C reached this process: it is stopping, whatever caught the first raise
stopped_by: list[int] = []  # the signal that stopped it (SIGINT, or a SIGTERM or SIGHUP taken as one)

# Asked to stop by something other than a person: `timeout`, systemd, a batch scheduler or `docker stop` send
# SIGTERM, a closed terminal SIGHUP. Taken as a Ctrl-C, so a run or an evaluation records its interruption and
# removes its temporary folders; by default they ended the process at once, leaving both behind.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


# A stop signal this soon after the one heurist is stopping for is that same stop: recorded, not raised again. A
# second Ctrl-C pressed at once, or a Ctrl-C to the process group with a supervisor's SIGTERM, raised inside the
# stop's own clean-up (LangGraph's executor joining its threads, the pairs being killed): tracebacks, and once a
# thread's lock left held and the process hung at its exit (a red-team review, 2026-12-06). One later than this
# breaks in, for a stop that is stuck or a first KeyboardInterrupt that some library swallowed.
REPEAT_S = 5.0
# time.monotonic() when a stop's KeyboardInterrupt was last raised (kept after its command, for ``_after_stop``)
_stopping_since: float | None = None
_acted_on: int | None = None  # the signal of the stop whose KeyboardInterrupt was raised (``exit_code``)


def on_sigint(signum: int, frame: Any) -> None:
    """The SIGINT handler: remember it, then raise KeyboardInterrupt as Python's default handler does (unless a stop
    is under way, ``REPEAT_S``)."""
    received.set()
    stopped_by.append(signum)
    _stop(KeyboardInterrupt(), signum)


def on_stop_signal(signum: int, frame: Any) -> None:
    """The SIGTERM and SIGHUP handler: as a Ctrl-C, its KeyboardInterrupt naming the signal."""
    received.set()
    stopped_by.append(signum)
    _stop(KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}"), signum)


def _stopping_signal() -> int:
    """The signal whose KeyboardInterrupt is stopping this process (the one the ledger's record names), rather than a
    later one that repeated it: else the last one recorded."""
    if _acted_on is not None:
        return _acted_on
    return stopped_by[-1] if stopped_by else signal.SIGINT


def what_stopped() -> str:
    """In words: "Ctrl-C", or the signal taken as one."""
    signum = _stopping_signal()
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


def exit_code() -> int:
    """The exit status of a process a signal stopped, as the shell reports one: 128 + the signal (130 for Ctrl-C)."""
    return 128 + _stopping_signal()


def reclaim(before: dict[int, Any]) -> None:
    """After a library installed handlers of its own (``ray.init`` makes SIGTERM a ``sys.exit(15)``, which skipped
    a campaign's stop and its record): heurist's, where they were heurist's ``before`` (``signal.getsignal`` of each
    stop signal, taken before the call)."""
    if threading.current_thread() is not threading.main_thread():
        return
    for signum, handler in before.items():
        if handler is on_stop_signal and signal.getsignal(signum) is not on_stop_signal:
            signal.signal(signum, on_stop_signal)


@contextmanager
def library_init() -> Iterator[None]:
    """Around a call that installs a SIGTERM handler of its own at its start and runs on for seconds (``ray.init``:
    ``sys.exit(signum)``): a SIGTERM meanwhile is taken as heurist's stop, and heurist's handlers are back after it,
    whether the call returned or raised."""
    before = handlers()
    try:
        yield
    except SystemExit as exc:
        if before.get(signal.SIGTERM) is on_stop_signal and exc.code == signal.SIGTERM:
            received.set()
            stopped_by.append(signal.SIGTERM)
            _stopping_now(signal.SIGTERM)
            raise KeyboardInterrupt("stopped by SIGTERM") from None
        raise
    finally:
        reclaim(before)


def handlers() -> dict[int, Any]:
    """The stop signals' handlers now, for ``reclaim``."""
    return {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}


@contextmanager
def remembering() -> Iterator[None]:
    """``on_sigint`` as this process's SIGINT handler for the block, unless SIGINT is ignored or handled by someone
    else (a process started to ignore Ctrl-C keeps ignoring it), and ``on_stop_signal`` for SIGTERM and SIGHUP where
    they have their default action (``nohup`` leaves SIGHUP ignored); after it, the handlers as they were and nothing
    remembered, but where the block was stopped: SIGTERM and SIGHUP ignored where one of them stopped it, and SIGINT
    ``_after_stop`` (the process is ending). heurist's commands run in it; a caller of ``cli.main.main`` in a process
    of its own (a test) gets that process back as it was, so a simulated Ctrl-C there later is not remembered for
    ever."""
    main = threading.current_thread() is threading.main_thread()
    ours = main and signal.getsignal(signal.SIGINT) in (signal.default_int_handler, _default_int_handler, _after_stop)
    if ours:
        signal.signal(signal.SIGINT, on_sigint)
    taken = [s for s in STOP_SIGNALS if main and signal.getsignal(s) is signal.SIG_DFL]
    for signum in taken:
        signal.signal(signum, on_stop_signal)
    global _stopping_since, _acted_on
    if ours or taken:
        _stopping_since = None  # a command before this one in the process was stopped: not this one's stop
    try:
        yield
    finally:
        # After a stop, another signal is not given its default action at once: the process is ending, and what it
        # does at its exit (closing its fork servers, Ray's shutdown) would be cut short, a second Ctrl-C's with a
        # traceback. A second SIGTERM (systemd and `timeout` may send one) is ignored; a Ctrl-C, only within
        # REPEAT_S of the stop (``_after_stop``), so an exit that is stuck can still be ended from the keyboard. A
        # caller of ``cli.main.main`` in a process of its own sets them back.
        if stopped_by and _stopping_since is None:  # stopped, but nothing raised yet (a signal held to the end)
            _stopping_since = time.monotonic()
        if ours and signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, _after_stop if stopped_by else signal.default_int_handler)
        after = signal.SIG_IGN if any(s in STOP_SIGNALS for s in stopped_by) else signal.SIG_DFL
        for signum in taken:
            if signal.getsignal(signum) is on_stop_signal:
                signal.signal(signum, after)
        if ours or taken:
            received.clear()
            stopped_by.clear()
            _acted_on = None


def check() -> None:
    """At a safe point: raise KeyboardInterrupt for a Ctrl-C this process got and has not acted on.

    In the main thread, first run the handler of any signal the interpreter has seen but not yet handled (one
    taken by another thread while this one was blocked): ``PyErr_CheckSignals`` does that, and through ctypes'
    ``pythonapi`` (which holds the GIL and raises the error a call leaves) its KeyboardInterrupt comes out here."""
    if threading.current_thread() is threading.main_thread():
        ctypes.pythonapi.PyErr_CheckSignals()
    if received.is_set():
        _stopping_now(stopped_by[-1] if stopped_by else signal.SIGINT)
        raise KeyboardInterrupt("Ctrl-C (acted on at the next safe point)")


class deferred:
    """A block in the main thread that a stop signal does not break into: the signal's handler runs, as ever, but its
    KeyboardInterrupt is held back and raised when the block ends.

    For blocks that take locks other threads need to finish. A handler's KeyboardInterrupt comes at the next bytecode
    boundary, which may fall just after a ``lock.acquire()`` and before the ``try`` or ``with`` that would release
    it: ``concurrent.futures.wait`` takes every future's condition in a loop, and a Ctrl-C between two of its steps
    left a condition held for ever. The worker thread finishing that future then blocked on it, and so did the
    pool's shutdown and the interpreter's exit, which join that worker: a Ctrl-C that hung heurist instead of
    stopping it (one suite run in many; tests/test_interrupts.py makes it happen in a few tries).

    heurist's handlers look at a counter rather than being swapped for the block: a signal that came while the
    handlers were being put back could leave the wrong one in place. Python's own SIGINT handler (a library caller
    that never entered ``remembering``) cannot look, so the block swaps it for ``_default_int_handler``, which is the
    same but for the counter, in an order that never leaves the stand-in behind (tests/test_interrupts.py sends 40
    signals at random points of such blocks). An ignored signal, or a handler someone else installed, is left as
    it is. Outside the main thread (where no handler runs) the block is a plain block. Keep such blocks short: a
    Ctrl-C during one is acted on at its end."""

    def __enter__(self) -> None:
        global _deferring
        if threading.current_thread() is not threading.main_thread():
            return
        _deferring += 1
        try:
            if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
                signal.signal(signal.SIGINT, _default_int_handler)
        except BaseException:  # Python's handler raised before the swap: not in the block, nothing held yet
            _deferring -= 1
            raise

    def __exit__(self, *exc_info: object) -> None:
        global _deferring
        if threading.current_thread() is not threading.main_thread():
            return
        try:
            if _deferring == 1 and signal.getsignal(signal.SIGINT) is _default_int_handler:
                signal.signal(signal.SIGINT, signal.default_int_handler)
        finally:  # also where Python's handler, just put back, raised for a signal that came then
            _deferring -= 1
            if not _deferring and _held:
                stop, signum = _held[0]
                _held.clear()
                _raise(stop, signum)


_deferring = 0  # how many ``deferred`` blocks the main thread is in
_held: list[tuple[KeyboardInterrupt, int | None]] = []  # what their handlers would have raised, first first


def _stop(stop: KeyboardInterrupt, signum: int | None = None) -> None:
    """A handler's last step: raise ``stop``, or hold it to the end of the ``deferred`` block it came in. ``signum``:
    heurist's handlers, which raise nothing for a signal that repeats a stop under way (``REPEAT_S``)."""
    if _deferring:
        _held.append((stop, signum))
        return
    _raise(stop, signum)


def _raise(stop: KeyboardInterrupt, signum: int | None) -> None:
    if signum is not None:
        if _stopping_since is not None and time.monotonic() - _stopping_since < REPEAT_S:
            return  # recorded by the handler (``received``, ``stopped_by``); the stop under way goes on
        _stopping_now(signum)
    raise stop


def _stopping_now(signum: int) -> None:
    """The KeyboardInterrupt of a stop by ``signum`` is being raised: signals in the next ``REPEAT_S`` repeat it."""
    global _stopping_since, _acted_on
    _stopping_since, _acted_on = time.monotonic(), signum


def _after_stop(signum: int, frame: Any) -> None:
    """SIGINT's handler once a stopped command has ended and its process is ending: a Ctrl-C within ``REPEAT_S`` of
    the stop repeats it and is ignored; a later one ends the process as Ctrl-C's default action does, at once."""
    if _stopping_since is not None and time.monotonic() - _stopping_since < REPEAT_S:
        return
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGINT)


def _default_int_handler(signum: int, frame: Any) -> None:
    """Python's SIGINT handler (a KeyboardInterrupt), but one that waits for the end of a ``deferred`` block."""
    _stop(KeyboardInterrupt())


def results(futures: Iterable[Future[T]]) -> list[T]:
    """Each future's result, in order, waiting in steps of POLL_S with a ``check`` after each, so that a Ctrl-C
    stops the wait within a step wherever it was delivered. The first failure is raised as soon as it happens.

    Each step is ``deferred``: ``concurrent.futures`` holds the futures' conditions there, and a KeyboardInterrupt
    raised while one is held would leave it held, so the thread running that future could never finish it."""
    futures = list(futures)
    pending = set(futures)
    while pending:
        with deferred():
            done, pending = wait(pending, timeout=POLL_S, return_when=FIRST_EXCEPTION)
            failures = [error for error in (future.exception() for future in done) if error is not None]
        if failures:
            raise failures[0]
        check()
    with deferred():
        return [future.result() for future in futures]


def sleep(seconds: float) -> None:
    """``time.sleep`` in steps of POLL_S with a ``check`` after each (a model server's Retry-After may be minutes)."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(POLL_S, left))
        check()
