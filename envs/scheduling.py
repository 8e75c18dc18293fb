"""Which worker runs which seed, how many at once, and what happens when a worker dies.

Each worker (a thread here, a pair of processes there: ``envs.worker_pair``) keeps up to
``width`` episodes in flight, in lockstep (``envs.lockstep``), taking seeds from one shared
queue as its episodes end, so workers stay busy until the queue is empty and no worker takes
more than its share of a short evaluation.

An episode's result must not depend on the episodes beside it, so anything that ends a whole
group (the policy process killed by its CPU limit or memory, a crash, a hang) is never blamed
on the group: the worker is replaced, lockstep is switched off for the rest of the evaluation,
and every episode that was in flight runs again alone, where a crash or a timeout is that
episode's own result, as it would have been with no lockstep at all. Env steps the lost group
took are still counted: each re-run episode carries those of its own slot.

Time limits: an episode alone has ``episode_timeout_s`` from the moment the env process takes
it. No episode in a group gets more than it would alone: a group is cut, and its episodes run
again alone, once one of them has been in flight longer than its wall-clock limit or its CPU
limit (on its one core it cannot have used more CPU than that), or when its env steps stop
advancing for ``episode_timeout_s``. A result a group returns therefore came in less time than
the episode would have had alone. The evaluation's own limit cuts whatever is in flight, with
no grace, and nothing runs again.

Pairs after the first start only if seeds still wait ``stagger_s`` (default ``STAGGER_S``) after
the first pair's first episode got under way (its env process took it, after the pair's start-up
and the policy's set-up), or after ``STAGGER_CAP_S`` if none has by then (a slow set-up, a pair
that dies before taking one). A pair's start-up costs about 0.35 CPU-seconds (an interpreter,
numpy, the simulator, the policy's import and set-up), more than the episodes of most small
evaluations on a fast simulator: one pair finishes eight CartPole episodes in lockstep within a
few hundred milliseconds, and the second pair would only have doubled the CPU spent. An
evaluation long enough that every pair would run ``STAGGER_GROUPS`` full groups or more starts
all its pairs at once (``default_stagger``): that much work outweighs a start-up on any
simulator, and the wait took a 600-episode CartPole evaluation from 1.58-1.72 times one pair's
speed to 1.48. A staggered evaluation loses at most ``STAGGER_CAP_S + stagger_s`` of its
parallel time. Which pair runs a seed never changes its result (each episode depends on its
seed alone), so this decides cost, never scores; ``setup_runs`` counts the pairs that ran, so it
may differ between two runs.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

from common import interrupts
from common.safe_text import redact
from envs.results import EpisodeResult
from envs.worker_pair import MAX_SLOTS, WorkerDied, WorkerProcess, pair_cpus

POLL_S = 2.0  # how often a waiting group is checked for progress and for its limits
START_POLL_S = 0.05  # how often a lone episode's worker is checked for having taken it
STARTUP_S = 10.0  # how long a worker may take to start up and take an episode, beyond the episode's limit
STAGGER_S = 0.5  # how long episodes step before a second pair starts, if seeds still wait (see the docstring)
STAGGER_CAP_S = 3.0  # the most a second pair waits for the first pair's first episode to get under way
STAGGER_GROUPS = 2  # full groups a pair would run from which every pair starts at once (see the docstring)


def wall_grace(episode_timeout_s: float) -> float:
    """What a lone episode gets beyond its wall-clock limit, so that a policy burning CPU is stopped by its
    CPU limit first (a crash that says so) and only one that waits is stopped by the wall clock; the
    default limits are equal. At most 10 s, and never more than the limit itself, so short limits stay short."""
    return min(10.0, episode_timeout_s)


@dataclass
class Flight:
    seed: int
    slot: int
    sent_at: float
    alone: bool  # sent to run alone (not in a group), where a crash or a timeout is its own
    started_at: float | None = None  # when the env process took it, at the earliest (its clock starts then)
    unstarted_at: float = 0.0  # the last time it was seen not yet taken


@dataclass
class Schedule:
    """What one evaluation's episodes need from the evaluator."""

    seeds: list[int]
    workers: int
    width: int  # episodes in flight per worker, at most
    episode_timeout_s: float
    episode_cpu_s: float
    deadline: float  # perf_counter time when the evaluation's own limit is reached
    eval_timeout_s: float
    job: Callable[[int, int], dict]  # (seed, slot) -> the episode job
    start_worker: Callable[[int], WorkerProcess]  # cpu -> a new worker
    progress: Callable[[EpisodeResult], None] | None = None
    stagger_s: float | None = None  # 0: every pair starts at once; None: default_stagger's choice
    results: dict[int, EpisodeResult] = field(default_factory=dict)
    setup_runs: int = 0  # the policy's set-ups the workers completed, killed workers' included


def _alone(flights: dict[int, Flight]) -> bool:
    """Whether a worker's one flight runs alone: its failure is its own, not a group's."""
    return len(flights) == 1 and next(iter(flights.values())).alone


def on_threads(serves: list[Callable[[], None]], interrupt: Callable[[], None]) -> None:
    """Each of ``serves`` on a thread of its own, until all return. On Ctrl-C or a bug, ``interrupt()``
    (which makes the other threads return soon) before the exception goes on."""
    pool = ThreadPoolExecutor(max_workers=len(serves), thread_name_prefix="heurist-eval")
    try:
        with interrupts.deferred():  # submit holds the pool's locks, which the interpreter's exit takes again
            futures = [pool.submit(serve) for serve in serves]
        # In steps, not one blocking wait: a Ctrl-C the kernel gave another thread still stops it (common/interrupts).
        interrupts.results(futures)
    except BaseException:
        interrupt()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def default_stagger(seeds: int, width: int, workers: int) -> float:
    """How long later pairs wait (``STAGGER_S``), or 0 where every pair would run ``STAGGER_GROUPS`` full groups of
    ``width`` episodes or more: an evaluation that long starts all its pairs at once."""
    full_groups = seeds // max(1, width)
    return 0.0 if workers <= 1 or full_groups >= STAGGER_GROUPS * workers else STAGGER_S


class Scheduler:
    """Runs a Schedule's seeds over its workers; ``run`` returns every seed's result."""

    def __init__(self, plan: Schedule) -> None:
        self.plan = plan
        n_workers = min(plan.workers, len(plan.seeds))
        share = -(-len(plan.seeds) // max(1, n_workers))  # no worker takes more than its share of the seeds
        self.n_workers = n_workers
        width = max(1, min(plan.width, share, MAX_SLOTS))
        # As many rounds of groups as that width needs, in groups as even as they can be: 100 HalfCheetah episodes
        # (all 1000 steps) on two pairs ran as 32 + 32 on one and 32 + 4 on the other, which then waited; 25 a
        # group runs 50 on each. Results never depend on the width (tests/test_lockstep.py).
        self.width = -(-share // max(1, -(-share // width)))
        self.stagger_s = default_stagger(len(plan.seeds), self.width, n_workers) if plan.stagger_s is None \
            else plan.stagger_s
        self.pending = list(reversed(plan.seeds))
        self.lock = threading.Lock()
        self.live: set[WorkerProcess] = set()
        self.stop = threading.Event()
        self.drained = threading.Event()  # no seed waits (or the evaluation stopped): no later pair is needed
        self.underway = threading.Event()  # an env process has taken an episode (or one ended), or drained
        self.alone = self.width == 1  # once a group fails, every episode runs alone
        self.wasted: dict[int, int] = {}  # env steps a lost group took, by seed

    def run(self) -> dict[int, EpisodeResult]:
        cpus = pair_cpus(self.n_workers)
        on_threads([partial(self._serve, cpu, later=i > 0) for i, cpu in enumerate(cpus)], self._interrupt)
        return self.plan.results

    # ------------------------------------------------------------------ one worker's thread

    def _wanted(self) -> bool:
        """For a pair after the first: whether seeds still wait once episodes have stepped for ``stagger_s``."""
        self.underway.wait(STAGGER_CAP_S)
        return not self.drained.wait(self.stagger_s)

    def _drain(self) -> None:
        self.drained.set()
        self.underway.set()

    def _serve(self, cpu: int, later: bool = False) -> None:
        if later and self.stagger_s > 0 and not self._wanted():
            return
        worker: WorkerProcess | None = None
        flights: dict[int, Flight] = {}  # by seed
        again: list[int] = []  # this thread's seeds to run again, alone
        try:
            while not self.stop.is_set():
                width = 1 if self.alone else self.width
                jobs: list[dict] = []  # sent together below, so that a group's episodes start in the same round
                while len(flights) < width and (seed := again.pop() if again else self._next_seed()) is not None:
                    if time.perf_counter() >= self.plan.deadline:
                        self._finish({}, EpisodeResult(seed=seed, status="not_run", error=self._eval_limit()))
                        continue
                    fresh = worker is None
                    if fresh:
                        worker = self.plan.start_worker(cpu)
                        with self.lock:  # the same lock as _interrupt's: it kills this pair, or this sees its stop
                            self.live.add(worker)
                            stopped = self.stop.is_set()
                        if stopped:  # Ctrl-C came while the pair started, before _interrupt could look
                            worker.kill()
                            return  # as for every seed not handed out once stopped: the stop's caller decides
                    slot = min(set(range(MAX_SLOTS)) - {f.slot for f in flights.values()})
                    sent = time.perf_counter()
                    flights[seed] = Flight(seed, slot, sent, width == 1, unstarted_at=sent)
                    job = self.plan.job(seed, slot)
                    if not fresh:
                        # The env process keeps the task and the source from a worker's first job; later jobs are
                        # a few hundred bytes, so a full group of them never fills the job pipe and blocks here.
                        job = {k: v for k, v in job.items() if k not in ("task", "policy_source")}
                    worker.clear_steps(slot)  # the last episode in this slot is over: its count is not this one's
                    jobs.append(job)
                if jobs:
                    try:
                        worker.send_group(jobs)
                    except WorkerDied:
                        pass  # the reply wait below reports the death
                if not flights:
                    return
                if self._wait(worker, flights, again):
                    self._retire(worker)
                    worker = None
        finally:
            if worker is not None:
                self._retire(worker)

    def _wait(self, worker: WorkerProcess, flights: dict[int, Flight], again: list[int]) -> bool:
        """Wait for the next result of this worker's flights and record it; True when the worker is gone."""
        alone = _alone(flights)
        progress, progress_at = self._progress(worker, flights), time.perf_counter()
        while True:
            now = time.perf_counter()
            for flight in flights.values():
                if flight.started_at is None:
                    if worker.started(flight.slot):
                        self.underway.set()
                        # Taken at some moment since it was last seen not taken: its clock starts at the earliest
                        # such moment, so no episode gets more time than it had, in a group or alone.
                        flight.started_at = flight.unstarted_at
                    else:
                        flight.unstarted_at = now
            wait = self._limit(flights, progress_at, now)[1]
            try:
                reply = worker.receive(max(0.0, wait)) if wait > 0 else None
            except WorkerDied as died:
                return self._lost(worker, flights, again, died)
            if reply is not None:
                self._arrived(worker, flights, reply)
                return False
            if self.stop.is_set():
                return True
            steps = self._progress(worker, flights)
            if steps != progress or not any(f.started_at is not None for f in flights.values()):
                # Env steps advanced, or the pair is still starting up: the group is not stalled.
                progress, progress_at = steps, time.perf_counter()
            limit = self._limit(flights, progress_at, time.perf_counter())[0]
            if time.perf_counter() < limit:
                continue
            worker.kill()
            if limit >= self.plan.deadline:  # the evaluation's own limit fired: nothing runs again
                for flight in list(flights.values()):
                    self._finish(flights, EpisodeResult(seed=flight.seed, status="timeout", error=self._eval_limit(),
                                                        env_steps=worker.steps_taken(flight.slot)))
                return True
            if alone and next(iter(flights.values())).started_at is None:
                return self._lost(worker, flights, again, WorkerDied(
                    f"the worker did not take the episode within {STARTUP_S + self.plan.episode_timeout_s:g} s of "
                    "it being sent; the worker's process groups were killed", timed_out=True))
            if alone:
                timeout = self.plan.episode_timeout_s
                return self._lost(worker, flights, again, WorkerDied(
                    f"wall-clock limit of {timeout:g} s (and {wall_grace(timeout):g} s of grace) exceeded; the "
                    "worker's process groups were killed", timed_out=True))
            return self._lost(worker, flights, again, WorkerDied("a group ran past its limits", timed_out=True))

    def _limit(self, flights: dict[int, Flight], progress_at: float, now: float) -> tuple[float, float]:
        """When this worker's flights run out of time, and how long to wait for a reply before looking again.

        An episode's clock starts when the env process takes it (``WorkerProcess.started``), so the pair's own
        start-up is not the policy's time; a pair that never takes it is given ``STARTUP_S`` more. A lone
        episode has its limit and ``wall_grace`` (CPU-bound policies meet their CPU limit first). The
        evaluation's own deadline has no grace. A group ends when one of its episodes has been in flight as
        long as it could run alone (see the module's docstring), or its env steps stop advancing for the
        limit; no grace there either, as a group that runs past these is not blamed, only run again alone."""
        timeout = self.plan.episode_timeout_s
        if _alone(flights):
            flight = next(iter(flights.values()))
            if flight.started_at is None:
                return min(flight.sent_at + STARTUP_S + timeout, self.plan.deadline), min(START_POLL_S, timeout)
            limit = min(flight.started_at + timeout + wall_grace(timeout), self.plan.deadline)
            return limit, limit - now
        alone_at_most = min(timeout + wall_grace(timeout), self.plan.episode_cpu_s)
        oldest = min((f.sent_at + STARTUP_S if f.started_at is None else f.started_at) + alone_at_most
                     for f in flights.values())
        limit = min(oldest, progress_at + timeout, self.plan.deadline)
        # While one is not taken yet, look often: when it is taken is when its clock starts.
        poll = START_POLL_S if any(f.started_at is None for f in flights.values()) else POLL_S
        return limit, min(poll, limit - now)

    def _lost(self, worker: WorkerProcess, flights: dict[int, Flight], again: list[int], died: WorkerDied) -> bool:
        """The worker died or was killed: one episode alone takes the blame; a group runs again, alone."""
        if _alone(flights):
            flight = next(iter(flights.values()))
            # The env process counted the steps it took before the policy died or time ran out: they were spent.
            self._finish(flights, EpisodeResult(seed=flight.seed, status="timeout" if died.timed_out else "crash",
                                                error=redact(died.reason), env_steps=worker.steps_taken(flight.slot)))
            return True
        with self.lock:
            self.alone = True
            for flight in flights.values():
                self.wasted[flight.seed] = self.wasted.get(flight.seed, 0) + worker.steps_taken(flight.slot)
        again.extend(sorted((f.seed for f in flights.values()), reverse=True))
        flights.clear()
        return True

    def _arrived(self, worker: WorkerProcess, flights: dict[int, Flight], reply: dict) -> None:
        seed = reply.get("seed")
        flight = flights.get(seed) if isinstance(seed, int) else None
        if flight is None:  # heurist's own failure outside any episode: every flight reports it
            for other in list(flights.values()):
                self._finish(flights, EpisodeResult(seed=other.seed, status="crash",
                                                    error=redact(f"worker error: {reply.get('error')}"),
                                                    env_steps=worker.steps_taken(other.slot)))
            return
        if reply.get("status") == "worker_error":
            result = EpisodeResult(seed=flight.seed, status="crash", error=f"worker error: {reply['error']}",
                                   env_steps=worker.steps_taken(flight.slot))
        else:
            result = EpisodeResult.model_validate(reply)
        if result.error:  # the policy's own words: no secret of ours may ride on them
            result.error = redact(result.error)
        self._finish(flights, result)

    def _finish(self, flights: dict[int, Flight], result: EpisodeResult) -> None:
        # An episode alone can be taken and end between two looks at whether it was taken: it was under way.
        self.underway.set()
        flights.pop(result.seed, None)
        with self.lock:
            result.env_steps += self.wasted.pop(result.seed, 0)
        self._record(result)

    # ------------------------------------------------------------------ shared

    def _record(self, result: EpisodeResult) -> None:
        if self.stop.is_set():
            return  # interrupted: a killed worker's episode is not a result
        with self.lock:
            self.plan.results[result.seed] = result
        if self.plan.progress:
            self.plan.progress(result)

    def _next_seed(self) -> int | None:
        with self.lock:
            seed = self.pending.pop() if self.pending and not self.stop.is_set() else None
            if not self.pending:  # (a stop drained already: _interrupt)
                self._drain()
            return seed

    @staticmethod
    def _progress(worker: WorkerProcess, flights: dict[int, Flight]) -> int:
        return worker.steps_in(f.slot for f in flights.values())

    def _eval_limit(self) -> str:
        return f"evaluation wall-clock limit of {self.plan.eval_timeout_s:g} s reached"

    def _retire(self, worker: WorkerProcess) -> None:
        runs = worker.setup_runs()  # read before close: the count lives in the pair's step file
        with self.lock:
            self.live.discard(worker)
            self.plan.setup_runs += runs
        worker.close()

    def interrupt(self) -> None:
        """Stop now, from another thread: no more seeds, and every worker pair killed."""
        self._interrupt()

    def _interrupt(self) -> None:
        # Ctrl-C or a bug: stop handing out seeds and kill every worker now, rather than
        # waiting for the episodes in flight to finish. Deferred: a second Ctrl-C raised inside these locks (the
        # scheduler's, the Events', a killed process's wait lock) could leave one held, and the pairs' threads, which
        # take them to end, would then hold up the pool's shutdown for ever (common/interrupts.py).
        with interrupts.deferred():
            with self.lock:
                self.stop.set()
                self._drain()
                doomed = list(self.live)
            for worker in doomed:
                worker.kill()
