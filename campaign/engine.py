"""Driving a campaign on Ray: each run is a Ray task that runs `heurist resume RUN_DIR` on some node.

With no address, ``ray.init()`` starts Ray on this machine (nothing to set up); with an address
(``--address`` or ``RAY_ADDRESS``), runs go to that cluster's nodes, each holding the CPUs the
campaign file gives a run. Ray is the engine because it already schedules tasks by declared
resources over nodes and reports a lost node as an error on the task's result; heurist adds only
what a campaign needs on top: shares of the budget, a ledger of every start and end, and starting a
lost run again from its checkpoint.

A run is an ordinary run directory under ``CAMPAIGN_DIR/runs``; the task runs the installed
``heurist`` next to the node's Python, as a child that dies with the Ray worker (``PR_SET_PDEATHSIG``),
so a lost node leaves no run half-alive holding its lock. Run directories must be on a path every
node reaches (a shared file system); the memory store is a Chroma server every run reaches: the
one the campaign serves while it is driven (``campaign.memory_server``), or the user's.
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, Callable

from campaign.budget import KINDS, run_spent, share, with_share
from campaign.memory_server import MemoryServer
from campaign.plan import CampaignError, CampaignSpec
from campaign.record import (
    CampaignDir,
    CampaignEnded,
    CampaignRecord,
    CampaignStarted,
    RunEnded,
    RunLaunched,
    stop_marked,
)
from common import interrupts
from common.errors import HeuristError
from common.events import RunFinished, RunPaused
from common.formatting import at_word
from common.safe_text import redact
from envs.ray_backend import init_ray, unreachable
from store.config import WandbConfig, build_config
from store.rundir import create_run, run_lock_free, run_status
from store.scalars import Row, flatten, write_scalars
from store.wandb_log import by_index, log_scalars

POLL_S = 1.0  # how often the driver looks for a stop request while runs are in flight
STOP_GRACE_S = 60.0  # how long a stopped run has to record its interruption before it is killed
AGAIN = ("lost", "stopped")  # ends after which a run starts again (a lost node; a stopped campaign resumed)
LOCK_WAIT_S = 120.0  # how long a run started again waits for its last process to let go of its lock


def _first_sentence(text: str, most: int) -> str:
    """Ray's words for a lost task, to its first sentence and at most ``most`` characters, ended at a word: they go on
    about how to debug Ray, and were cut mid-word ("use `ray; it starts again ...")."""
    end = text.find(". ")
    text = text[:end + 1] if 0 < end < most else text
    return text if len(text) <= most else at_word(text, most) + " ..."


def _prepare_child() -> None:
    """In the child, before exec: SIGKILL when the Ray worker that started it dies (a lost node, a kill); no
    signal blocked; and Ctrl-C's default action. A stop reaches a run only as a Ctrl-C, and a child inherits
    through exec both its parent's mask and a signal its parent ignores: a Ray worker blocks SIGINT, and one
    seen here ignored SIGINT and SIGQUIT, as does every process of a campaign started in the background by a
    script (a shell without job control starts background commands so). A run started ignoring Ctrl-C keeps
    ignoring it (``common.interrupts.remembering``): each stop would then wait out its grace and kill the run
    without its interruption recorded."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG = 1
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # exec makes the run's Python install its own handler


def execute_run(run_dir: str, home: str | None, campaign_root: str, driver: str) -> dict[str, Any]:
    """The body of the Ray task: ``supervise_run`` on this process's node, stopped by ``driver``'s marker."""
    import ray

    context = ray.get_runtime_context()
    return supervise_run(run_dir, home, lambda: stop_marked(Path(campaign_root), driver), context.get_node_id(),
                         context.gcs_address)


def supervise_run(run_dir: str, home: str | None, stopping: Callable[[], bool], node: str | None,
                  ray_address: str | None) -> dict[str, Any]:
    """Run (or continue) one run to its end. It ends early, its run given the Ctrl-C, on a KeyboardInterrupt
    (Ray's cancel) or once ``stopping()`` says the driver is stopping."""
    heurist = Path(sys.executable).with_name("heurist")
    stopped = {"returncode": None, "node": node, "lock_held": False, "stopped": True}
    # A start again after a lost driver may find the run's last process not yet reaped by the kernel.
    deadline = time.monotonic() + LOCK_WAIT_S
    while True:
        if stopping():
            return stopped
        if run_lock_free(Path(run_dir)):
            break
        if time.monotonic() > deadline:
            return {"returncode": None, "node": node, "lock_held": True}
        time.sleep(0.2)
    env = dict(os.environ)
    if home:
        env["HEURIST_HOME"] = home
    if ray_address:  # a run with eval.backend = "ray" spreads its episodes over this campaign's own cluster
        env.setdefault("RAY_ADDRESS", ray_address)
    proc = None
    sent: list[float] = []  # when the grace of the run's Ctrl-C ends, once sent: a second would cut it short
    with open(Path(run_dir) / "campaign-task.log", "ab") as log:
        try:
            proc = subprocess.Popen([str(heurist), "resume", run_dir, "--no-progress"], stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=log, env=env, start_new_session=True,
                                    preexec_fn=_prepare_child)
            code = _wait_interruptibly(proc, stopping)
            if code is None:  # the driver is stopping
                _interrupt(proc, sent)
                return {**stopped, "returncode": proc.returncode}
        except BaseException:  # ray.cancel: Ctrl-C to the run, which records its interruption; a kill after that
            if proc is not None:
                _interrupt(proc, sent)
            raise
        finally:  # whatever ended this task (a second Ctrl-C included), the run does not outlive it
            if proc is not None and proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    return {"returncode": code, "node": node, "lock_held": False}


def _wait_interruptibly(proc: subprocess.Popen, stopping: Callable[[], bool]) -> int | None:
    """The child's exit code, or None once ``stopping()`` says so. Ray cancels a task with a simulated Ctrl-C
    (``_thread.interrupt_main``), which no blocking system call notices: a plain ``proc.wait()`` would hold the
    cancel until the run ended by itself. Short waits let the KeyboardInterrupt through within half a second."""
    while True:
        try:
            return proc.wait(timeout=0.5)
        except subprocess.TimeoutExpired:
            if stopping():
                return None


def _interrupt(proc: subprocess.Popen, sent: list[float]) -> None:
    """Ctrl-C to the run's process group (unless ``sent`` holds the end of its grace: it was), then up to
    STOP_GRACE_S from that Ctrl-C for the run to record its interruption and exit. The driver stops both ways at
    once (its marker and Ray's cancel), so a KeyboardInterrupt from the second may arrive during the grace: it
    changes nothing, and the run keeps the rest of its grace."""
    if not sent:
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            return
        sent.append(time.monotonic() + STOP_GRACE_S)
    deadline = sent[0]
    while True:
        try:
            proc.wait(timeout=min(interrupts.POLL_S, max(0.0, deadline - time.monotonic())))
            return
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            pass
        if time.monotonic() >= deadline:
            return
        try:
            # The other stop's KeyboardInterrupt (a simulated Ctrl-C), acted on and ignored here, during the wait
            # it belongs to, rather than raised later in whatever this Ray worker runs next.
            interrupts.check()
        except KeyboardInterrupt:
            pass


@dataclass
class Flight:
    key: str
    attempt: int
    allotment: dict[str, Any]


@dataclass
class Driver:
    """One process driving a campaign until every run has ended, the budget is spent, or a stop is asked."""

    campaign: CampaignDir
    address: str | None
    max_concurrent: int | None
    home: str | None
    on_line: Callable[[str], None] = print
    in_flight: dict[Any, Flight] = field(default_factory=dict)  # Ray object ref -> its run
    stop_reason: str = "stopped"  # why runs cancelled now are stopped
    stop_status: str = "stopped"  # what they are recorded as: "stopped" starts again on resume; "out_of_time" does not
    name: str = field(default_factory=lambda: uuid.uuid4().hex)  # this driver, as its tasks' stop marker names it

    @cached_property
    def record(self) -> CampaignRecord:
        """The campaign's plan: written once at its start, so read once here."""
        return self.campaign.record()

    def run(self) -> str:
        spec = self.record.spec
        memory = None
        if self.record.memory_server:
            memory = MemoryServer(self.campaign.root / "memory", self.record.memory_server,
                                  self.campaign.root / "memory-server.log")
            memory.start()
            self.on_line(f"memory: served at {self.record.memory_server} from {self.campaign.root / 'memory'}")
        try:
            return self._run_on_ray(spec)
        finally:
            if memory is not None:
                memory.stop()

    def _run_on_ray(self, spec: CampaignSpec) -> str:
        import ray

        if not ray.is_initialized():
            check_address(self.address)
            try:
                init_ray(self.address)  # as an evaluation joins Ray (envs.ray_backend.init_ray)
            except (ConnectionError, RuntimeError, ValueError) as exc:
                raise CampaignError(f"cannot reach Ray at {self.address or 'this machine'} "
                                    f"({' '.join(str(exc).split())[:200]}); check --address or RAY_ADDRESS, and "
                                    f"RAY_AUTH_TOKEN where the cluster uses token authentication") from None
        try:
            self._check_memory_reachable()
            cpus = float(ray.cluster_resources().get("CPU", 0.0))
            largest = max((float(n["Resources"].get("CPU", 0.0)) for n in ray.nodes() if n.get("Alive")), default=0.0)
            if largest < spec.resources.cpus_per_run:
                raise CampaignError(f"no node of the Ray cluster has {spec.resources.cpus_per_run:g} CPUs for a run "
                                    f"(the largest has {largest:g}); lower resources.cpus_per_run in the campaign file")
            limit = self.max_concurrent or max(1, int(cpus // spec.resources.cpus_per_run))
            self.campaign.ledger.append(CampaignStarted(address=self.address or "local", cpus=cpus,
                                                        max_concurrent=limit))
            task = ray.remote(execute_run)
            try:
                status, reason = self._drive(task, limit, self._first_start())
            except KeyboardInterrupt:  # as a stop: each run records its interruption, and no start is used up
                status, reason = "stopped", f"interrupted ({interrupts.what_stopped()})"
                self._stop_all(reason)
            self.campaign.ledger.append(CampaignEnded(status=status, reason=reason))
            return status
        finally:
            ray.shutdown()

    def _check_memory_reachable(self) -> None:
        """A memory served on this machine's loopback is out of every other node's reach (a campaign started
        without an address that Ray joined to a cluster of several nodes, or resumed on one)."""
        from urllib.parse import urlparse

        import ray

        served = self.record.memory_server
        machines = {n.get("NodeManagerAddress") for n in ray.nodes() if n.get("Alive")}
        if served and urlparse(served).hostname in ("127.0.0.1", "localhost") and len(machines) > 1:
            raise CampaignError(f"the campaign's memory is served at {served}, which the cluster's other machines "
                                f"({len(machines) - 1}) cannot reach; start the campaign again with --address (its "
                                f"memory is then served where the cluster reaches it) or with --memory-url")

    def _drive(self, task, limit: int, started: float) -> tuple[str, str]:
        """Start runs as room and budget allow until none is left; the campaign's end and why."""
        import ray

        hours = self.record.spec.budget.hours
        while True:
            if self.campaign.stop_requested():
                self._stop_all("stopped by `heurist campaign stop`")
                return "stopped", "stopped by `heurist campaign stop`"
            hours_left = self._hours_left(hours, started)
            if hours_left is not None and hours_left <= 0:
                # The campaign's wall-clock budget: runs in flight stop (each records its interruption) and none
                # starts again; `heurist resume RUN_DIR` can go on with one outside the campaign's budget.
                why = f"the campaign's {hours:g} h are spent"
                self._stop_all(why, status="out_of_time")
                self._skip_rest(why)
                return "finished", why
            waiting = self._waiting()
            launched_before = set(self._state()[0])
            no_share = False
            while waiting and len(self.in_flight) < limit:
                # Once a new run finds no share, the others this pass would not either (a share is the same for
                # every run not started): they wait, until an end recorded meanwhile frees some budget. A run started
                # before (lost, stopped, or made by a driver killed before it recorded the start) goes on with its own.
                key = waiting.pop(0)
                if no_share and not self._started_before(key, launched_before):
                    continue
                flying = len(self.in_flight)
                if not self._launch(task, key, hours_left):
                    no_share = True
                elif len(self.in_flight) == flying:  # it ended instead of starting (recorded): budget may be back
                    no_share = False
            if not self.in_flight:
                if not self._waiting():
                    return "finished", "every run has ended"
                why = "the campaign budget is spent; the runs not started were skipped"
                self._skip_rest(why)
                return "finished", why
            ready, _ = ray.wait(list(self.in_flight), num_returns=1, timeout=POLL_S)
            for ref in ready:
                self._ended(ref)

    # ------------------------------------------------------------------ what the ledger says

    def _first_start(self) -> float:
        """The wall-clock time of the campaign's first start (its hours count from there)."""
        for event in self.campaign.events():
            if isinstance(event, CampaignStarted):
                return _epoch(event.time)
        return time.time()

    def _state(self) -> tuple[dict[str, RunLaunched], dict[str, RunEnded]]:
        launched: dict[str, RunLaunched] = {}
        ended: dict[str, RunEnded] = {}
        for event in self.campaign.events():
            if isinstance(event, RunLaunched):
                launched[event.key] = event
            elif isinstance(event, RunEnded) and event.status not in AGAIN:
                ended[event.key] = event
        return launched, ended

    def _waiting(self) -> list[str]:
        """Runs to start, in the plan's order: not ended, not in flight (those a killed driver left count)."""
        _, ended = self._state()
        flying = {f.key for f in self.in_flight.values()}
        return [r.key for r in self.record.runs if r.key not in ended and r.key not in flying]

    # ------------------------------------------------------------------ starting and ending runs

    def _launch(self, task, key: str, hours_left: float | None) -> bool:
        """Start (or start again) one run; False when the campaign's budget has nothing left for it."""
        record = self.record
        planned = next(r for r in record.runs if r.key == key)
        launched, ended = self._state()
        run_dir = self.campaign.run_dir(key)
        if self._started_before(key, launched):
            # Started before (a lost node, a stop, a killed driver): the same share, from its checkpoint. A run
            # whose own ledger says it ended (it finished as its driver was killed) is recorded, not started.
            allotment = launched[key].allotment if key in launched else self._recovered_share(run_dir)
            status = run_status(run_dir)
            if status in ("finished", "paused"):
                self._record_end(Flight(key, self._attempts(key), allotment), status)
                return True
        else:
            # Every run started and not ended holds its whole share, in flight or waiting to start again.
            others = [e.allotment for k, e in launched.items() if k not in ended]
            spent = [e.spent for e in ended.values()]
            not_started = sum(1 for r in record.runs if r.key not in launched)
            part = share(record.spec.budget, spent, others, not_started)
            if part is None:
                return False
            allotment = dict(part)
            try:
                config = build_config(with_share(planned.config, part, hours_left), f"campaign run {key}")
                # Made in part by a driver killed in create_run: without run.json no run ever started there.
                if run_dir.is_symlink() or run_dir.is_file():
                    run_dir.unlink()
                elif run_dir.exists():
                    shutil.rmtree(run_dir)
                create_run(config, run_dir)
            except HeuristError as exc:  # its policy file went away since the campaign started, say
                self._record_end(Flight(key, 0, allotment), "failed", str(exc))
                return True
            except OSError as exc:
                self._record_end(Flight(key, 0, allotment), "failed", f"cannot make {run_dir}: {exc.strerror}")
                return True
        attempts = self._attempts(key)
        if attempts >= record.spec.max_attempts:
            self._record_end(Flight(key, attempts, allotment), "failed",
                             f"lost {attempts} time{'s' if attempts != 1 else ''} (max_attempts); `heurist resume "
                             f"{run_dir}` continues it by hand, "
                             f"outside the campaign's budget")
            return True
        attempt = launched[key].attempt + 1 if key in launched else 1
        self.campaign.ledger.append(RunLaunched(key=key, attempt=attempt, run_dir=str(run_dir), allotment=allotment))
        # A run whose episodes run on Ray holds no CPU itself: they hold one per worker pair, as Ray tasks of their
        # own, and runs holding every CPU would wait forever for them.
        on_ray = (planned.config.get("eval") or {}).get("backend") == "ray"
        try:
            ref = task.options(num_cpus=0 if on_ray else record.spec.resources.cpus_per_run,
                               max_retries=0).remote(str(run_dir), self.home, str(self.campaign.root), self.name)
        except (ValueError, TypeError) as exc:  # Ray refused the task: recorded as this start's end, not the driver's
            self._record_end(Flight(key, attempt, allotment), "failed",
                             f"Ray refused to start it: {' '.join(str(exc).split())[:300]}")
            return True
        self.in_flight[ref] = Flight(key, attempt, allotment)
        self.on_line(f"started {key} (attempt {attempt})")
        return True

    def _started_before(self, key: str, launched) -> bool:
        """Whether a run was started before (its start recorded, or its run.json made by a driver killed before it
        recorded the start): it goes on with the share it was given, and needs none now."""
        return key in launched or (self.campaign.run_dir(key) / "run.json").exists()

    def _attempts(self, key: str) -> int:
        """Starts of a run that count against max_attempts: those that were lost or never ended (a driver killed
        with it in flight); a start that a stop ended does not count."""
        events = self.campaign.events()
        starts = sum(1 for e in events if isinstance(e, RunLaunched) and e.key == key)
        stops = sum(1 for e in events if isinstance(e, RunEnded) and e.key == key and e.status == "stopped")
        return starts - stops

    def _recovered_share(self, run_dir: Path) -> dict[str, Any]:
        """The share of a run made just before its driver was killed (its run.json, no ledger line): the budget
        caps it was given, which are no larger than its share."""
        from store.rundir import read_record

        budget = read_record(run_dir).config.get("budget") or {}
        limits = self.record.spec.budget
        return {kind: (budget.get(kind) if getattr(limits, kind) is not None else None) for kind in KINDS}

    def _ended(self, ref) -> None:
        import ray

        flight = self.in_flight.pop(ref)
        outcome: dict[str, Any] = {}
        lost: str | None = None
        try:
            outcome = ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            lost = "stopped"
        except ray.exceptions.RayError as exc:  # the node, the worker or the task itself was lost
            lost = f"{type(exc).__name__}: {_first_sentence(redact(' '.join(str(exc).split())), 300)}"
        run_dir = self.campaign.run_dir(flight.key)
        status = run_status(run_dir)
        if status in ("finished", "paused"):  # its own ledger says it ended, whatever happened to the task after
            self._record_end(flight, status, node=outcome.get("node"))
        elif lost == "stopped" or outcome.get("stopped"):
            self._record_end(flight, self.stop_status, self.stop_reason)
        elif lost is not None:
            self._record_end(flight, "lost", f"{lost}; it starts again from its checkpoint")
        elif outcome.get("lock_held"):
            self._record_end(flight, "lost", f"its last process still held the run's lock after {LOCK_WAIT_S:g} s; it "
                                             f"starts again later", node=outcome.get("node"))
        else:
            tail = _log_tail(run_dir / "campaign-task.log")
            self._record_end(flight, "failed", f"heurist exited with {outcome['returncode']}: {tail}",
                             node=outcome["node"])

    def _record_end(self, flight: Flight, status: str, reason: str | None = None, node: str | None = None) -> None:
        """Record a run's end; without a ``reason``, the one its own ledger gives (it finished or paused)."""
        run_dir = self.campaign.run_dir(flight.key)
        spent = run_spent(run_dir) if run_dir.exists() else {}
        if reason is None:
            end = _last(run_dir, RunFinished, RunPaused)
            reason = end.reason if end is not None else status
        finished = _last(run_dir, RunFinished)
        best = finished.best_mean if finished is not None else None
        self.campaign.ledger.append(RunEnded(key=flight.key, attempt=flight.attempt, status=status, reason=reason,
                                             node=node, spent=spent, best_mean=best))
        self.on_line(f"{flight.key}: {status} ({reason})")
        rows = campaign_rows(self.campaign)
        try:
            write_scalars(self.campaign.root / "tensorboard", flatten(rows))
        except Exception as exc:  # a view of the ledger: the campaign goes on without it
            self.on_line(f"warning: the campaign's TensorBoard scalars were not updated: {type(exc).__name__}: {exc}")
        wandb = self._wandb()
        if wandb is not None:
            try:
                log_scalars(self.campaign.root, f"campaign-{self.record.name}-{self.record.created}", wandb,
                            by_index(rows, "campaign/runs_ended"), {"campaign": self.record.name})
            except Exception as exc:  # as for TensorBoard; the next run's end sends what is missing
                self.on_line(redact(f"warning: W&B was not updated: {type(exc).__name__}: {exc}"[:300]))

    def _wandb(self) -> WandbConfig | None:
        """The campaign logs to W&B where its runs do, in their project and group."""
        config = next((r.config.get("wandb") for r in self.record.runs if (r.config.get("wandb") or {}).get("enabled")),
                      None)
        return WandbConfig.model_validate(config) if config else None

    def _skip_rest(self, reason: str) -> None:
        """The runs left are not started: those never started are skipped; one started before (stopped, or lost)
        ends as it stands, with what it spent (``heurist resume RUN_DIR`` can go on with it by hand)."""
        launched, _ = self._state()
        for key in self._waiting():
            if key in launched:
                flight = Flight(key, launched[key].attempt, launched[key].allotment)
                status = run_status(self.campaign.run_dir(key))
                if status in ("finished", "paused"):  # it ended by itself as its driver was killed: as it says
                    self._record_end(flight, status)
                else:
                    self._record_end(flight, "out_of_time", reason)
            else:
                self.campaign.ledger.append(RunEnded(key=key, attempt=0, status="skipped", reason=reason))

    def _stop_all(self, why: str, status: str = "stopped") -> None:
        import ray

        self.stop_reason, self.stop_status = why, status
        # Two ways to each task, since Ray's cancel is best effort: the marker every task polls, then the cancel
        # (a KeyboardInterrupt in the task), which also takes back a task Ray has not started yet.
        if self.in_flight:
            try:
                self.campaign.mark_stopping(self.name)
            except OSError as exc:  # a full disk, say: the cancel alone must do
                self.on_line(f"warning: could not mark the campaign as stopping ({exc.strerror or exc}); Ray's "
                             f"cancel alone stops its runs")
        for ref in list(self.in_flight):
            ray.cancel(ref)
        while self.in_flight:
            ready, _ = ray.wait(list(self.in_flight), num_returns=len(self.in_flight), timeout=STOP_GRACE_S + 30)
            for ref in ready:
                self._ended(ref)
            if not ready:
                for ref in list(self.in_flight):
                    ray.cancel(ref, force=True)

    @staticmethod
    def _hours_left(hours: float | None, started: float) -> float | None:
        return None if hours is None else hours - (time.time() - started) / 3600


def check_address(address: str | None) -> None:
    """A cluster address of the host:port form that nothing answers on is refused at once: Ray itself retries
    for minutes before it gives up."""
    why = unreachable(address)
    if why is not None:
        raise CampaignError(f"cannot reach a Ray cluster at {address} ({why}); check --address or RAY_ADDRESS "
                            f"(the head's host:port, as `ray start --head` printed it)")


def campaign_rows(campaign: CampaignDir) -> list[Row]:
    """The campaign's points, one row per ended run, at the env steps its ended runs spent by then."""
    rows: list[Row] = []
    totals = {"env_steps": 0.0, "tokens": 0.0, "usd": 0.0}
    ended = 0
    for event in campaign.events():
        if not isinstance(event, RunEnded) or event.status in AGAIN:
            continue
        ended += 1
        for kind in totals:
            totals[kind] += float(event.spent.get(kind, 0) or 0)
        points = {"campaign/runs_ended": float(ended), "campaign/tokens": totals["tokens"],
                  "campaign/usd": totals["usd"]}
        if event.best_mean is not None:
            points[f"campaign/best_return/{event.key}"] = float(event.best_mean)
        rows.append((int(totals["env_steps"]), points))
    return rows


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


def _last(run_dir: Path, *kinds: type):
    """The last record of one of ``kinds`` in the run's own ledger; None if it has none."""
    from common.events import read_events
    from common.ledger import Ledger

    if not (run_dir / "ledger.jsonl").exists():
        return None
    return next((e for e in reversed(read_events(Ledger(run_dir / "ledger.jsonl"))[0]) if isinstance(e, kinds)), None)


def _log_tail(path: Path, chars: int = 300) -> str:
    try:
        text = path.read_bytes()[-chars:].decode(errors="replace")
    except OSError:
        return "(no output)"
    return redact(" | ".join(text.strip().splitlines()[-3:])) or "(no output)"


__all__ = ["Driver", "check_address", "execute_run"]
