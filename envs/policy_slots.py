"""The policies of the episodes one policy process serves at once: one fresh instance per episode.

An evaluation worker runs several episodes in lockstep (``envs.lockstep``): each step, one
message carries an observation for every episode in flight and one reply carries their actions,
so one wake-up of the policy process serves many env steps. Each episode has a slot here, and
each slot its own ``PolicyRunner``: a Policy built from a fresh module (the source is compiled
once), reset with the episode's seed, so no state of the policy's own crosses episodes.

What a policy could still share between the episodes of one process is the global random
generators of ``random`` and ``numpy.random``: a policy that calls ``np.random.seed(seed)`` in
``reset`` and draws in ``act`` would, interleaved, draw from another episode's stream. So where
the source names ``random``, each slot gets its own pair of generators, switched in before the
slot's code runs (``SlotRandom``); a source that never names them pays nothing.

Diagnostics stay here until they are needed: each step the slot keeps a snapshot of the policy's
``diagnostics`` (the same value the env process used to receive every step; numpy numbers in it
are converted only if read, ``envs.wire.snapshot_diag``) in a ring as long as the trace window,
and counts its mode. The env process asks for a window's diagnostics when it
records a failure event, and for the mode counts when the episode ends, instead of receiving and
parsing them on every step. All of it is the policy's own account of itself, bounded again where
the env process reads it (``envs.wire``).
"""

from __future__ import annotations

import builtins
import errno
import importlib
import importlib.util
import inspect
import os
import pickle
import random
import resource
import signal
import sys
import time
import traceback
import types
from collections import Counter, deque
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

from envs.import_rule import allowed_import
from envs.wire import read_diag, snapshot_diag, snapshot_mode

POLICY_MODULE = "heurist_policy"


class PolicyFailed(Exception):
    """The policy's own code failed (load, reset or act); the message says where and how. ``shared``: it ran out of
    something the episodes of one process share (memory, descriptors, disk), so the failure may be its neighbours'."""

    def __init__(self, message: str, shared: bool = False) -> None:
        super().__init__(message)
        self.shared = shared


# What the episodes in flight in one policy process share: a failure for want of one of these in a group may be the
# group's, not the episode's (an honest policy's 500 MB table failed 4 of 20 episodes at width 32, none alone).
_SHARED_ERRNOS = frozenset({errno.ENOMEM, errno.EMFILE, errno.ENFILE, errno.ENOSPC, errno.EDQUOT, errno.EAGAIN})
GROUP_RAN_OUT = 75  # the policy process's exit status when a group ran out of them: its episodes run again alone


def ran_out_of_shared(exc: BaseException) -> bool:
    return isinstance(exc, MemoryError) or (isinstance(exc, OSError) and exc.errno in _SHARED_ERRNOS)


def blame_no_one(failure: PolicyFailed, others: int) -> None:
    """A failure for want of what the process's episodes share, with ``others`` episodes beside it: not recorded as
    this episode's. The process ends, and the evaluator runs each episode of the group again alone
    (``envs.scheduling``: a group that fails blames no one), where such a failure is the episode's own."""
    if failure.shared and others > 0:
        try:
            sys.stderr.write(f"heurist: ran out beside {others} other episode(s): {failure}\n"[:1000])
            sys.stderr.flush()
        finally:
            os._exit(GROUP_RAN_OUT)


def _frozen(value: Any) -> tuple[bytes, list[bytes]]:
    """The set-up's value, pickled once; numpy arrays' data out of band, as immutable ``bytes``."""
    buffers: list[bytes] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            buffers.append(bytes(buffer.raw()))  # immutable: arrays over it cannot be made writable
            return False
        except BufferError:  # not contiguous: copied in-band instead
            return True

    try:
        return pickle.dumps(value, protocol=5, buffer_callback=out_of_band), buffers
    except Exception as exc:
        raise TypeError(f"its value cannot be copied into each episode ({type(exc).__name__}: {exc}); setup() must "
                        f"return plain data, numpy arrays or instances of classes defined at the top of the policy "
                        f"file") from None


class SetupFailed(Exception):
    """The policy's ``setup()`` failed earlier in this process; the message is its failure, said once for all."""


# ITIMER_PROF counts down on the clock the kernel checks RLIMIT_CPU against: user and system time charged a tick at a
# time to whichever process is running when the tick comes. getrusage does not show that clock (it rescales to the
# scheduler's exact runtime), and the two part on a core shared with processes that wake often, such as another
# evaluation's pair: there the ticks land on the busy process, which was charged 4.1 s for 3.0 s run here. A limit
# set from getrusage then came early, and earlier with each episode a process ran, since the difference adds up.
PROF_HORIZON_S = 10_000_000.0
_prof_origin: float | None = None  # the process's CPU seconds (getrusage) when it armed its ITIMER_PROF


def charged_cpu_s() -> float:
    """CPU seconds this process has been charged, on RLIMIT_CPU's own clock.

    The timer is armed at the first call (``envs.policy_host`` makes it first thing, before any policy code runs,
    when the two clocks still agree). The policy can reach the timer: disarmed, the clock starts again from getrusage
    and its own limit comes sooner; shortened, the reading is held to three times the exact time (ticks never came
    near that here), so it gains no more than calling setrlimit on its own soft limit would, which it can. The
    parent's wall-clock kill is the guarantee either way."""
    global _prof_origin
    usage = resource.getrusage(resource.RUSAGE_SELF)
    exact = usage.ru_utime + usage.ru_stime
    remaining = signal.getitimer(signal.ITIMER_PROF)[0]
    if _prof_origin is None or remaining <= 0:
        _prof_origin = exact
        signal.setitimer(signal.ITIMER_PROF, PROF_HORIZON_S)  # SIGPROF would end the process: not in 115 days
        return exact
    return min(max(exact, _prof_origin + PROF_HORIZON_S - remaining), 3 * exact + 1)


def cpu_soft_limit(charged_s: float, cpu_s: float, hard: int) -> int:
    """The soft RLIMIT_CPU giving ``cpu_s`` more from ``charged_s``: whole seconds, rounded up, at most ``hard``."""
    soft = int(charged_s + cpu_s) + 1
    return soft if hard == resource.RLIM_INFINITY else min(soft, hard)  # inside run_sandboxed: bounds the test run


def limit_cpu(cpu_s: float) -> None:
    """RLIMIT_CPU counts the whole process, so a new episode moves the soft limit to 'charged so far + budget',
    on the kernel's own clock (``charged_cpu_s``).

    In lockstep the budget is that of every episode in flight together: the process cannot tell
    which episode spent its CPU. An episode that overruns kills the process, and the evaluator
    runs each episode that was in flight again alone, under its own budget (``envs.scheduling``)."""
    hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_soft_limit(charged_cpu_s(), cpu_s, hard), hard))


def load_policy(path: str, code, offered: dict[str, Callable[[], Any]],
                setup: Callable[[], Any] | None = None) -> tuple[Any, types.ModuleType]:
    """Execute the compiled policy file in a fresh module and construct its Policy; the Policy and its module.

    ``Policy.__init__`` is given what it declares of ``offered`` (``action_space``, ``simulator_model``: each made
    only if declared), and, where it declares ``setup``, this episode's own copy of the set-up's value (``setup()``,
    see ``PolicySlots``)."""
    module = fresh_module(path)
    exec(code, module.__dict__)
    cls = getattr(module, "Policy", None)
    if cls is None or not isinstance(cls, type):
        raise TypeError(f"{path} defines no class Policy")
    parameters = inspect.signature(cls).parameters
    kwargs = {name: make() for name, make in offered.items() if name in parameters}
    if "setup" in parameters:
        if setup is None:
            raise TypeError("Policy.__init__ takes setup, which is given only to a policy loaded by heurist")
        kwargs["setup"] = setup()
    return cls(**kwargs), module


def fresh_module(path: str) -> types.ModuleType:
    """An empty module for the policy's code, current under the policy's module name."""
    module = types.ModuleType(POLICY_MODULE)
    module.__file__ = path
    # The policy's own import statements (wherever they run, a function's included) go through this: the import
    # rule is enforced where an import happens, while the libraries it imports import what they need freely.
    module.__builtins__ = {**builtins.__dict__, "__import__": _policy_import}
    # dataclasses resolve string annotations through sys.modules, so the module must be there.
    sys.modules[POLICY_MODULE] = module
    return module


def _policy_import(name, globals=None, locals=None, fromlist=(), level=0):
    """The policy's ``__import__``. C code that imports while the policy's frame is current (pickle finding the
    policy's own module, numpy loading a part of itself) comes here too: the policy's own module passes, and the
    libraries' parts are under their allowed names. A relative import is checked by the name it resolves to."""
    absolute = name
    if level > 0:
        package = (globals or {}).get("__package__") or ""
        try:
            absolute = importlib.util.resolve_name("." * level + name, package)
        except (ImportError, ValueError):
            absolute = name
    if absolute != POLICY_MODULE and (why := allowed_import(absolute)) is not None:
        raise ModuleNotFoundError(f"the policy {why}", name=absolute)  # what a missing module raises, too
    return builtins.__import__(name, globals, locals, fromlist, level)


def _failure(what: str, exc: BaseException, path: str) -> PolicyFailed:
    """The policy's failure, in one bounded line: its text crosses to the env process, which refuses long
    replies, and an exception whose ``str`` itself raises still says what it was."""
    try:
        text = str(exc)
    except BaseException:
        text = "(its message could not be read)"
    return PolicyFailed(f"{what}{where_in_policy(exc, path)}: {type(exc).__name__}: {text}"[:2000],
                        shared=ran_out_of_shared(exc))


def where_in_policy(exc: BaseException, path: str) -> str:
    """'file.py:LINE in func' for the innermost frame inside the policy file."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == path]
    if not frames:
        return ""
    f = frames[-1]
    return f" at {Path(path).name}:{f.lineno} in {f.name}"


class SlotRandom:
    """Each slot's own global generators: ``random``'s module functions and ``numpy.random``'s.

    Both modules bind their functions to one hidden instance at import (``random._inst``,
    ``numpy.random.mtrand._rand``), so they are replaced once by functions that call the current
    slot's instance, and ``use`` switches the instance (two assignments). ``np.random.seed`` and
    everything that reaches ``mtrand._rand`` itself (scipy's default generator) follow the switch; a library object
    that captured the generator at import (``scipy.stats.norm``'s) keeps the original, shared by every slot."""

    def __init__(self) -> None:
        from numpy.random import mtrand

        self._mtrand = mtrand
        self.original_numpy = mtrand._rand  # the generator libraries captured at import (scipy.stats' distributions)
        self.python: random.Random = random._inst
        for name in dir(random):
            if getattr(getattr(random, name), "__self__", None) is random._inst:
                setattr(random, name, self._python_call(name))
        import numpy.random as np_random

        legacy = mtrand._rand
        for module in (np_random, mtrand):
            for name in dir(module):
                if getattr(getattr(module, name), "__self__", None) is legacy:
                    setattr(module, name, self._numpy_call(name))

    def _python_call(self, name: str):
        def call(*args, **kwargs):
            return getattr(self.python, name)(*args, **kwargs)
        call.__name__ = name
        return call

    def _numpy_call(self, name: str):
        mtrand = self._mtrand

        def call(*args, **kwargs):
            return getattr(mtrand._rand, name)(*args, **kwargs)
        call.__name__ = name
        return call

    @staticmethod
    def fresh() -> tuple:
        import numpy as np

        return random.Random(), np.random.RandomState()

    def import_with_originals(self, module: str) -> None:
        """Import ``module`` while the original generators are current: what it captures at import (scipy.stats'
        distributions keep ``mtrand._rand``) is then the process's own generator, which the set-up seeds, never one
        episode's."""
        saved = self.current()
        self.use((random._inst, self.original_numpy))
        try:
            importlib.import_module(module)
        except ImportError:
            pass
        finally:
            self.use(saved)

    @staticmethod
    def seeded(seed: int) -> tuple:
        import numpy as np

        return random.Random(seed), np.random.RandomState(seed)

    def current(self) -> tuple:
        return self.python, self._mtrand._rand

    def use(self, pair: tuple) -> None:
        self.python, self._mtrand._rand = pair


_SLOT_RANDOM: list[SlotRandom] = []


def slot_random() -> SlotRandom:
    """The process's one SlotRandom: the module functions are replaced once, whatever sources follow."""
    if not _SLOT_RANDOM:
        _SLOT_RANDOM.append(SlotRandom())
    return _SLOT_RANDOM[0]


class PolicyRunner:
    """One episode's policy: a fresh Policy from a fresh module, its step count, its diagnostics ring and modes.

    ``path`` names the file in tracebacks and as the module's ``__file__``; ``code`` is the source compiled once."""

    __slots__ = ("path", "code", "window", "policy", "module", "step", "ring", "modes", "rng")

    def __init__(self, path: str, code, window: int, rng: tuple | None = None) -> None:
        self.path, self.code, self.window, self.rng = path, code, window, rng
        self.policy: Any = None
        self.module: types.ModuleType | None = None
        self.step = 0
        self.ring: deque = deque(maxlen=window)  # (step, diagnostics snapshot, mode key)
        self.modes: Counter = Counter()

    def start(self, seed: int, offered: dict[str, Callable[[], Any]], setup: Callable[[], Any] | None = None) -> None:
        try:
            policy, self.module = load_policy(self.path, self.code, offered, setup)
            policy.reset(seed)
        except BaseException as exc:
            raise _failure("policy failed to load or reset", exc, self.path) from None
        self.policy = policy

    def act(self, obs, info) -> Any:
        """The policy's action, as returned; its diagnostics are kept here, as they were at this step."""
        try:
            action = self.policy.act(obs, info)
        except BaseException as exc:
            raise _failure(f"act() raised at step {self.step}", exc, self.path) from None
        try:
            diag = getattr(self.policy, "diagnostics", None)
            if diag is not None:
                # What the env process would have received at this step, kept as envs.wire's snapshot_diag says.
                snapshot = snapshot_diag(diag)
                key = snapshot_mode(snapshot, self.modes)
        except BaseException as exc:  # diagnostics whose conversion raises (a __str__ that does) took the process down
            raise _failure(f"its diagnostics could not be read at step {self.step}", exc, self.path) from None
        if diag is not None:
            if key is not False:
                self.modes[key] += 1
            self.ring.append((self.step, snapshot, key))
        self.step += 1
        return action

    def observe(self, reward: float, terminated: bool, truncated: bool, info) -> None:
        """What the last step returned, for a policy that defines ``observe``."""
        try:
            self.policy.observe(reward, terminated, truncated, info)
        except BaseException as exc:
            raise _failure(f"observe() raised after step {self.step - 1}", exc, self.path) from None

    @property
    def observes(self) -> bool:
        return callable(getattr(self.policy, "observe", None))

    def diagnostics(self, first: int, last: int) -> list:
        """The snapshots of steps ``first``..``last`` (None where the policy had none or the ring has moved on)."""
        kept = {step: snapshot for step, snapshot, _ in self.ring}
        return [read_diag(kept.get(step)) for step in range(first, last + 1)]

    def mode_counts(self, accepted: int) -> dict[str, int]:
        """Modes of the steps the env took: an act whose action was refused (step ``accepted``) is not counted."""
        modes = Counter(self.modes)
        for step, _, key in self.ring:
            if step >= accepted and key is not False:
                modes[key] -= 1
        return {str(k): v for k, v in modes.items() if v > 0}


class PolicySlots:
    """The runners of one policy source, by slot; what the policy process (or a local caller) serves.

    A policy's expensive, deterministic set-up (a planner's table, a parsed tree) is paid once per process, not
    once per episode: a policy file may define a top-level ``setup()``, and a ``Policy.__init__`` that declares
    ``setup`` receives its value. ``setup()`` runs once, at the first episode that asks, in a module of its own,
    with ``random`` and ``numpy.random`` seeded with 0, and is given what it declares of ``simulator_model`` and
    ``action_space``; so its value is the same in every worker whatever seeds ran before. Each episode then gets a
    fresh copy (pickled once, unpickled per episode), except numpy arrays' data, which every episode shares
    read-only (pickle's out-of-band buffers held as immutable ``bytes``; numpy refuses to make such an array
    writable), so a 145 MB table costs its memory once. What one episode does to its copy reaches no other."""

    def __init__(self, path: str, source: str) -> None:
        self.path, self.source = path, source
        self.code = None
        self.runners: dict[int, PolicyRunner] = {}
        self.random = slot_random() if "random" in source else None
        if self.random is not None and ("scipy.stats" in source or "from scipy import" in source):
            self.random.import_with_originals("scipy.stats")
        self._setup: tuple[bytes, list[bytes]] | None = None
        self._setup_failed: str | None = None
        self.setup_s: float | None = None  # CPU seconds of the set-up, once it ran; reported once (``take_setup``)
        self._setup_reported = False
        # Set by the policy process (None elsewhere): the CPU budget of the episodes in flight, armed again after the
        # set-up, and the set-up's own; and whether the set-up says in the log that it runs.
        self.cpu_budget: float | None = None
        self.setup_cpu_s: float | None = None
        self.announce = False

    def start(self, slot: int, seed: int, action_space, window: int, simulator_model: str | None = None) -> None:
        """A fresh Policy in ``slot`` for the episode of ``seed``; raises PolicyFailed."""
        self.runners.pop(slot, None)
        if self.code is None:
            try:
                self.code = compile(self.source, self.path, "exec")
            except BaseException as exc:
                raise PolicyFailed(f"policy failed to load or reset: {type(exc).__name__}: {exc}") from None
        rng = self.random.fresh() if self.random is not None else None
        runner = PolicyRunner(self.path, self.code, window, rng)
        offered = self._offered(action_space, simulator_model)
        if rng is not None:
            self.random.use(rng)
        try:
            runner.start(seed, offered, lambda: self._setup_copy(offered))
        except PolicyFailed as exc:
            blame_no_one(exc, len(self.runners))
            raise
        self.runners[slot] = runner

    @staticmethod
    def _offered(action_space: Any, simulator_model: str | None) -> dict[str, Callable[[], Any]]:
        """What a Policy (or ``setup()``) may declare, each made only if it is declared. The action space comes
        pickled and is unpickled for each taker (a space's sampler is its state, so each has its own copy), and only
        for a taker: unpickling it imports gymnasium, about 0.075 s of CPU at the start of every policy process that
        would not otherwise need it (most policies never ask for the space)."""
        def space() -> Any:
            return pickle.loads(action_space) if isinstance(action_space, bytes) else action_space

        return {"action_space": space, "simulator_model": lambda: simulator_model}

    def _setup_copy(self, offered: dict[str, Callable[[], Any]]) -> Any:
        """This episode's copy of the set-up's value, the set-up run first if no episode of this process ran it."""
        if self._setup is None and self._setup_failed is None:
            # The set-up gets a space of its own too (each maker call unpickles anew): what it does to it must not
            # reach this episode alone.
            self._run_setup(offered)
        if self._setup_failed is not None:  # the same reason for every episode; the set-up is not run again
            raise SetupFailed(self._setup_failed)
        data, buffers = self._setup
        try:
            return pickle.loads(data, buffers=buffers)  # classes resolve in the episode's module, current now
        except Exception as exc:
            raise SetupFailed(f"setup()'s value cannot be copied into this episode ({type(exc).__name__}: {exc}); "
                              f"the classes of what it returns must be defined at the top of the policy file") from None

    def _run_setup(self, offered: dict[str, Callable[[], Any]]) -> None:
        """Run ``setup()`` once, under a CPU budget of its own (``setup_cpu_s``, then the episode's budget is armed
        again, so the set-up costs no episode its time), with every global generator seeded with 0."""
        episode_module = sys.modules.get(POLICY_MODULE)
        started = time.process_time()
        if self.announce:  # the log's last line if the set-up is killed: the reason then names it
            print("heurist: running the policy's setup() (once per worker)", flush=True)
        if self.setup_cpu_s is not None:
            limit_cpu(self.setup_cpu_s)
        try:
            with self._seeded_globals():
                module = fresh_module(self.path)
                exec(self.code, module.__dict__)
                setup = module.__dict__.get("setup")
                if not callable(setup):
                    raise TypeError("Policy.__init__ takes setup, but the file defines no top-level function setup()")
                wanted = inspect.signature(setup).parameters
                value = setup(**{k: make() for k, make in offered.items() if k in wanted})
            self._setup = _frozen(value)
        except BaseException as exc:
            self._setup_failed = str(_failure("setup() failed", exc, self.path))
        finally:
            self.setup_s = time.process_time() - started
            sys.modules[POLICY_MODULE] = episode_module
            if self.cpu_budget is not None:
                limit_cpu(self.cpu_budget)
            if self.announce:
                print(f"heurist: setup() ended after {self.setup_s:.1f} CPU s", flush=True)

    @contextmanager
    def _seeded_globals(self):
        """Every global generator seeded with 0 for the set-up, and put back after: ``random``'s and
        ``numpy.random``'s as the policy's code reaches them, and numpy's original global generator, which
        libraries that captured it at import (``scipy.stats``' distributions) still draw from."""
        from numpy.random import mtrand

        python = random._inst
        numpy_original = self.random.original_numpy if self.random is not None else mtrand._rand
        saved = (python.getstate(), numpy_original.get_state())
        current = self.random.current() if self.random is not None else None
        python.seed(0)
        numpy_original.seed(0)
        if self.random is not None:
            self.random.use(self.random.seeded(0))
        try:
            yield
        finally:
            python.setstate(saved[0])
            numpy_original.set_state(saved[1])
            if current is not None:
                self.random.use(current)

    def take_setup(self) -> float | None:
        """The set-up's CPU seconds if it ran since this was last asked, else None: each run is reported once."""
        if self.setup_s is None or self._setup_reported:
            return None
        self._setup_reported = True
        return self.setup_s

    def act(self, slots: list[int], observations, infos: list,
            feedback: list | None = None) -> tuple[list, dict[int, str]]:
        """One action for each slot, in order (None where the policy failed), and the failures by position.

        ``feedback`` (for a policy that defines ``observe``): each slot's last step's (reward, terminated,
        truncated), None at an episode's first step; ``observe`` gets it, with the step's info, before ``act``."""
        actions: list = []
        failed: dict[int, str] = {}
        runners = self.runners
        switch = self.random.use if self.random is not None else None
        modules = sys.modules
        for i, (slot, obs, info) in enumerate(zip(slots, observations, infos)):
            runner = runners[slot]
            # Each slot's code sees its own module under the policy's module name, as it would alone: pickle
            # finds the policy's classes there, and dataclasses and typing resolve names through it.
            modules[POLICY_MODULE] = runner.module
            if switch is not None:
                switch(runner.rng)
            try:
                if feedback is not None and feedback[i] is not None and runner.observes:
                    runner.observe(*feedback[i], info)
                actions.append(runner.act(obs, info))
            except PolicyFailed as exc:
                blame_no_one(exc, len(runners) - 1)
                actions.append(None)
                failed[i] = str(exc)
        return actions, failed

    def diagnostics(self, slot: int, first: int, last: int) -> list:
        return self.runners[slot].diagnostics(first, last)

    def end(self, slot: int, accepted: int, final: list | None = None) -> tuple[dict[str, int], str | None]:
        """The episode in ``slot`` is over: its mode counts, and why ``observe`` failed on its last step (``final``:
        that step's reward, terminated, truncated and info), if it did; the slot is free."""
        runner = self.runners.pop(slot, None)
        if runner is None:
            return {}, None
        failed = None
        if final is not None and runner.observes:
            # As in act: the slot's own module and generators, so the episode is what it would be alone.
            sys.modules[POLICY_MODULE] = runner.module
            if self.random is not None:
                self.random.use(runner.rng)
            try:
                runner.observe(*final)
            except PolicyFailed as exc:
                blame_no_one(exc, len(self.runners))
                failed = str(exc)
        return runner.mode_counts(accepted), failed

    def observes(self, slot: int) -> bool:
        """Whether the Policy in ``slot`` has an ``observe`` (defined, inherited or assigned)."""
        runner = self.runners.get(slot)
        return runner is not None and runner.observes
