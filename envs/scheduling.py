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

Time limits: an episode alone has ``episode_timeout_s``; a group shares one core, so an
episode in flight beside others may take that limit times the group's width, and a group
whose env steps stop advancing for ``episode_timeout_s`` is taken to hang.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from common.safe_text import redact
from envs.results import EpisodeResult
from envs.worker_pair import MAX_SLOTS, WorkerDied, WorkerProcess, pair_cpus

POLL_S = 2.0  # how often a waiting group is checked for progress and for its limits


@dataclass
class Flight:
    seed: int
    slot: int
    sent_at: float
    width: int  # the group's width when it was sent: its share of the core


@dataclass
class Schedule:
    """What one evaluation's episodes need from the evaluator."""

    seeds: list[int]
    workers: int
    width: int  # episodes in flight per worker, at most
    episode_timeout_s: float
    deadline: float  # perf_counter time when the evaluation's own limit is reached
    eval_timeout_s: float
    job: Callable[[int, int], dict]  # (seed, slot) -> the episode job
    start_worker: Callable[[int], WorkerProcess]  # cpu -> a new worker
    progress: Callable[[EpisodeResult], None] | None = None
    results: dict[int, EpisodeResult] = field(default_factory=dict)


def on_threads(serve: Callable[[int], None], cpus: list[int], interrupt: Callable[[], None]) -> None:
    """``serve(cpu)`` for each core, each on a thread of its own, until all return. On Ctrl-C or a bug,
    ``interrupt()`` (which makes the other threads return soon) before the exception goes on."""
    pool = ThreadPoolExecutor(max_workers=len(cpus), thread_name_prefix="heurist-eval")
    futures = [pool.submit(serve, cpu) for cpu in cpus]
    try:
        for future in futures:
            future.result()
    except BaseException:
        interrupt()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


class Scheduler:
    """Runs a Schedule's seeds over its workers; ``run`` returns every seed's result."""

    def __init__(self, plan: Schedule) -> None:
        self.plan = plan
        n_workers = min(plan.workers, len(plan.seeds))
        share = -(-len(plan.seeds) // max(1, n_workers))  # no worker takes more than its share of the seeds
        self.n_workers = n_workers
        self.width = max(1, min(plan.width, share, MAX_SLOTS))
        self.pending = list(reversed(plan.seeds))
        self.lock = threading.Lock()
        self.live: set[WorkerProcess] = set()
        self.stop = threading.Event()
        self.alone = self.width == 1  # once a group fails, every episode runs alone
        self.wasted: dict[int, int] = {}  # env steps a lost group took, by seed

    def run(self) -> dict[int, EpisodeResult]:
        on_threads(self._serve, pair_cpus(self.n_workers), self._interrupt)
        return self.plan.results

    # ------------------------------------------------------------------ one worker's thread

    def _serve(self, cpu: int) -> None:
        worker: WorkerProcess | None = None
        flights: dict[int, Flight] = {}  # by seed
        again: list[int] = []  # this thread's seeds to run again, alone
        try:
            while not self.stop.is_set():
                width = 1 if self.alone else self.width
                while len(flights) < width and (seed := again.pop() if again else self._next_seed()) is not None:
                    if time.perf_counter() >= self.plan.deadline:
                        self._finish({}, EpisodeResult(seed=seed, status="not_run", error=self._eval_limit()))
                        continue
                    fresh = worker is None
                    if fresh:
                        worker = self.plan.start_worker(cpu)
                        with self.lock:
                            self.live.add(worker)
                    slot = min(set(range(MAX_SLOTS)) - {f.slot for f in flights.values()})
                    flights[seed] = Flight(seed, slot, time.perf_counter(), width)
                    job = self.plan.job(seed, slot)
                    if not fresh:
                        # The env process keeps the task and the source from a worker's first job; later jobs are
                        # a few hundred bytes, so a full group of them never fills the job pipe and blocks here.
                        job = {k: v for k, v in job.items() if k not in ("task", "policy_source")}
                    worker.clear_steps(slot)  # the last episode in this slot is over: its count is not this one's
                    try:
                        worker.send(job)
                    except WorkerDied:
                        break  # the reply wait below reports the death
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
        alone = len(flights) == 1 and next(iter(flights.values())).width == 1
        progress, progress_at = self._steps(worker, flights), time.perf_counter()
        while True:
            now = time.perf_counter()
            if alone:
                flight = next(iter(flights.values()))
                limit = flight.sent_at + min(self.plan.episode_timeout_s, self.plan.deadline - flight.sent_at) + 10.0
                wait = limit - now
            else:
                # No grace here: a group that runs past these is not blamed, only run again one episode at a time.
                oldest = min(f.sent_at + self.plan.episode_timeout_s * f.width for f in flights.values())
                limit = min(oldest, progress_at + self.plan.episode_timeout_s, self.plan.deadline + 10.0)
                wait = min(POLL_S, limit - now)
            try:
                reply = worker.receive(max(0.0, wait)) if wait > 0 else None
            except WorkerDied as died:
                return self._lost(worker, flights, again, died)
            if reply is not None:
                self._arrived(worker, flights, reply)
                return False
            if self.stop.is_set():
                return True
            if not alone:
                steps = self._steps(worker, flights)
                if steps != progress:
                    progress, progress_at = steps, time.perf_counter()
                    continue
            if time.perf_counter() >= limit:
                worker.kill()
                if alone:
                    allowed = limit - next(iter(flights.values())).sent_at
                    return self._lost(worker, flights, again, WorkerDied(
                        f"wall-clock limit of {allowed:g} s exceeded; the worker's process groups were killed",
                        timed_out=True))
                if time.perf_counter() >= self.plan.deadline:  # the evaluation's own limit: nothing runs again
                    for flight in list(flights.values()):
                        self._finish(flights, EpisodeResult(seed=flight.seed, status="timeout",
                                                            error=self._eval_limit(),
                                                            env_steps=worker.steps_taken(flight.slot)))
                    return True
                return self._lost(worker, flights, again, WorkerDied("a group ran past its limits", timed_out=True))

    def _lost(self, worker: WorkerProcess, flights: dict[int, Flight], again: list[int], died: WorkerDied) -> bool:
        """The worker died or was killed: one episode alone takes the blame; a group runs again, alone."""
        if len(flights) == 1 and next(iter(flights.values())).width == 1:
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
                                                    error=f"worker error: {reply.get('error')}",
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
            return self.pending.pop() if self.pending and not self.stop.is_set() else None

    @staticmethod
    def _steps(worker: WorkerProcess, flights: dict[int, Flight]) -> int:
        return sum(worker.steps_taken(f.slot) for f in flights.values())

    def _eval_limit(self) -> str:
        return f"evaluation wall-clock limit of {self.plan.eval_timeout_s:g} s reached"

    def _retire(self, worker: WorkerProcess) -> None:
        with self.lock:
            self.live.discard(worker)
        worker.close()

    def _interrupt(self) -> None:
        # Ctrl-C or a bug: stop handing out seeds and kill every worker now, rather than
        # waiting for the episodes in flight to finish.
        self.stop.set()
        with self.lock:
            doomed = list(self.live)
        for worker in doomed:
            worker.kill()
