"""Start, resume and replay runs: the run directory, its services, and the checkpointed graph.

A run directory holds everything about one run:

- ``run.json``: what was asked (the config, the task, offline or not), written once;
- ``starting_policy.py``: a copy of the starting policy (the original is never touched);
- ``workspace/``: a git repository of the policy and its regression tests, one commit per accepted edit;
- ``checkpoints.sqlite``: LangGraph's SQLite checkpoints, thread id = run id, written synchronously;
- ``ledger.jsonl``: append-only: every evaluation, test run and iteration;
- ``transcripts/<iteration>/<role>.jsonl``: every model call and offline decision;
- ``clips/``, ``evals/``, ``candidates/``: failure clips, cached evaluations, scored candidates;
- ``summary.json``, ``summary.md``, ``best_policy.py``, ``holdout.json``: written when the run finishes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict

from envs.errors import HeuristError
from envs.ledger import Ledger
from envs.paths import heurist_home
from envs.safe_text import also_secret
from envs.sandbox import filesystem_confined
from envs.tasks import get_task
from graph.config import RunConfig
from graph.transcripts import TranscriptRecorder, call_costs
from graph.workspace import Workspace, atomic_write
from policies import starter_policy
from policies.contract import check_policy_file, policy_sha256

if TYPE_CHECKING:  # the graph's machinery (LangGraph, the roles) loads only where a run executes:
    from graph.llm import Usage  # `heurist report`, `runs` and the report's child process start faster
    from graph.nodes import Nodes
    from graph.services import Services
    from roles.base import Role

EventFn = Callable[[str, dict[str, Any]], None]
WORKSPACE_FORMAT = 2
REPORT_TIMEOUT_S = 600.0


class RunError(HeuristError):
    """A run directory that cannot be started, resumed or replayed."""


# What a full or read-only disk looks like from inside: an OSError, or the words SQLite, git and
# Chroma put into their own exceptions.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
_STORAGE_WORDS = (*(os.strerror(e) for e in _STORAGE_ERRNOS), "database or disk is full",
                  "attempt to write a readonly database", "disk I/O error")


def storage_failure(exc: BaseException, run_dir: Path) -> str | None:
    """Why the run could not write, if ``exc`` (or an exception behind it) is a full disk, a read-only
    file system, or a permission refused inside the run directory; None for anything else."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError):
            if exc.errno in _STORAGE_ERRNOS:
                return os.strerror(exc.errno)
            if exc.errno in (errno.EACCES, errno.EPERM) and exc.filename and \
                    Path(exc.filename).resolve().is_relative_to(run_dir):
                return f"{exc.strerror}: {exc.filename}"
        text = str(exc)
        for words in _STORAGE_WORDS:
            if words.lower() in text.lower():
                return words
        exc = exc.__cause__ or exc.__context__
    return None


class RunRecord(BaseModel):
    """``run.json``: written once when the run is created."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    created: str
    task: str
    protocol: str
    offline: bool
    config: dict[str, Any]
    starting_policy: str  # where it came from; the run uses its copy, starting_policy.py
    starting_sha256: str
    search_key: str
    replay_of: str | None = None
    heurist_version: str
    # 2: regression tests run one file at a time on throwaway copies and reach the policy only through the kit.
    # Runs made before (1) kept a kit in the workspace and ran the policy inside the tests; their accepted
    # tests may use what the kit no longer offers, so they are not resumed.
    workspace_format: int = 1


def runs_index() -> Ledger:
    """Every run started on this machine (``heurist runs`` reads it), wherever its directory is."""
    return Ledger(heurist_home() / "runs.jsonl")


def is_offline(config: RunConfig) -> bool:
    if config.offline is not None:
        return config.offline
    return not os.environ.get(config.llm.api_key_env) and config.llm.base_url is None


def read_record(run_dir: Path) -> RunRecord:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a heurist run directory (no run.json); give a directory made by "
                       f"`heurist run` (see `heurist runs`)")
    try:
        return RunRecord.model_validate_json(path.read_text())
    except ValueError as exc:
        raise RunError(f"{path} is damaged ({str(exc).splitlines()[0]}); the run cannot be resumed") from None


def create_run(config: RunConfig, run_dir: Path | None = None, replay_of: Path | None = None) -> Path:
    """A new run directory with run.json and a copy of the starting policy; nothing runs yet."""
    spec = get_task(config.task)
    protocol = spec.protocol(config.protocol).name
    policy = Path(config.policy) if config.policy else starter_policy(spec)
    check_policy_file(policy)
    created = datetime.now(timezone.utc)
    slug = "".join(c if c.isalnum() else "-" for c in spec.id.split("/")[-1]).strip("-").lower()
    run_id = f"{created:%Y%m%d-%H%M%S}-{slug}-{uuid.uuid4().hex[:6]}"
    run_dir = Path(run_dir or heurist_home() / "runs" / run_id).resolve()
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"{run_dir} is a file; give --run-dir a new or empty directory")
    if run_dir.exists() and any(run_dir.iterdir()):
        raise RunError(f"{run_dir} already exists and is not empty; choose another --run-dir, "
                       f"or `heurist resume {run_dir}` if it is a run")
    recorded = read_record(replay_of) if replay_of else None
    offline = recorded.offline if recorded else is_offline(config)
    if config.memory.url is None and config.memory.path is None:
        # Pinned now: a resume or `heurist report` under another $HEURIST_HOME must find the same store.
        from memory.store import default_memory_path

        config = config.model_copy(update={"memory": config.memory.model_copy(update={"path": default_memory_path()})})
    record = RunRecord(run_id=run_id, created=created.isoformat(timespec="seconds"), task=spec.id, protocol=protocol,
                       offline=offline, config=config.model_dump(mode="json"), starting_policy=str(policy.resolve()),
                       starting_sha256=policy_sha256(policy),
                       search_key=recorded.search_key if recorded else run_id,
                       replay_of=str(Path(replay_of).resolve()) if replay_of else None, heurist_version=version("heurist"),
                       workspace_format=WORKSPACE_FORMAT)
    existed = run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(run_dir / "starting_policy.py", policy.read_text())
        atomic_write(run_dir / "run.json", record.model_dump_json(indent=2))
    except OSError as exc:
        # Half a run directory would block the next try ("not empty"): take back what was written.
        for name in ("run.json", "starting_policy.py"):
            try:
                (run_dir / name).unlink(missing_ok=True)
            except OSError:
                pass
        if not existed:
            try:
                run_dir.rmdir()
            except OSError:
                pass
        raise RunError(f"cannot create the run directory {run_dir}: {exc.strerror}; choose a writable --run-dir") from None
    runs_index().append({"run_id": run_id, "run_dir": str(run_dir), "task": spec.id, "created": record.created,
                         "replay_of": record.replay_of})
    return run_dir


@contextmanager
def _locked(run_dir: Path) -> Iterator[None]:
    """One process at a time per run directory: a second `heurist resume` must not race the first."""
    fd = os.open(run_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunError(f"{run_dir} is being run by another heurist process; wait for it or stop it") from None
        yield
    finally:
        os.close(fd)


def usage_from_transcripts(recorder: TranscriptRecorder) -> Usage:
    from graph.llm import Usage

    """Tokens and dollars already spent, counted from the transcripts, which survive any crash."""
    costs = list(call_costs(recorder.read()))
    return Usage(sum(c[1] for c in costs), sum(c[2] for c in costs), len(costs))


def stage_roles(config: RunConfig) -> dict[str, list[Role]]:
    from roles.coder import Coder
    from roles.registry import resolve
    from roles.test_writer import TestWriter

    """The role instances of each stage, as the config places them."""
    roles = {"analyse": [resolve(name, "analyse") for name in config.stages.analyse],
             "code": [Coder()], "test": [TestWriter()],
             "review": [resolve(name, "review") for name in config.stages.review]}
    if not roles["review"]:
        raise RunError("stages.review is empty; keep at least the reviewer, whose gate decides every commit")
    return roles


def open_services(run_dir: Path, on_event: EventFn | None = None) -> tuple[Services, Nodes, RunRecord]:
    from graph.llm import LLMClient, ReplayClient
    from graph.nodes import Nodes
    from graph.services import Services
    from memory.store import MemoryConfig, MemoryStore

    record = read_record(run_dir)
    if record.workspace_format < WORKSPACE_FORMAT:
        raise RunError(f"{run_dir} was made by heurist {record.heurist_version}, whose regression tests ran the policy "
                       f"inside the test; they cannot be trusted to run as this version runs tests. Start a new run "
                       f"from its best policy: heurist run --env {record.task} --policy "
                       f"{Path(run_dir) / 'workspace' / 'policy.py'}")
    config = RunConfig.model_validate(record.config)
    also_secret(config.llm.api_key_env)  # whatever its name, the key is never recorded
    spec = get_task(record.task)
    if not record.offline and not config.eval.allow_unconfined and not filesystem_confined():
        raise RunError("model-written code would run without a confined file system here (bubblewrap is missing "
                       "or cannot make namespaces; `heurist doctor` says which): install bubblewrap, or set "
                       "eval.allow_unconfined = true in the run config to accept that")
    recorder = TranscriptRecorder(run_dir)
    usage = usage_from_transcripts(recorder)
    usage.max_tokens, usage.max_usd = config.budget.tokens, config.budget.usd
    llm: Any = None
    if record.replay_of:
        llm = None if record.offline else ReplayClient(Path(record.replay_of), usage)
    elif not record.offline:
        llm = LLMClient(config.llm, usage)
    # A replay keeps its memory to itself, so re-running a run never adds its records to the shared store twice.
    memory_config = MemoryConfig(path=run_dir / "memory") if record.replay_of else config.memory
    memory = MemoryStore(memory_config)
    roles = stage_roles(config)
    # This process holds the run's lock, so a git index lock left here is a crash's leftover, not a live git.
    (run_dir / "workspace" / ".git" / "index.lock").unlink(missing_ok=True)
    services = Services(run_dir=run_dir, run_id=record.run_id, search_key=record.search_key, config=config, spec=spec,
                        protocol=record.protocol, workspace=Workspace(run_dir / "workspace"),
                        ledger=Ledger(run_dir / "ledger.jsonl"), memory=memory, llm=llm, usage=usage,
                        recorder=recorder, roles=roles, on_event=on_event)
    return services, Nodes(services, (run_dir / "starting_policy.py").read_text()), record


def execute(run_dir: Path, on_event: EventFn | None = None) -> dict[str, Any]:
    """Run (or continue) the graph to its end, a pause, or an interruption; returns the final state."""
    run_dir = Path(run_dir).resolve()
    read_record(run_dir)
    try:
        return _execute(run_dir, on_event)
    except Exception as exc:
        reason = storage_failure(exc, run_dir)
        if reason is None:
            raise
        # Every write is atomic or an append that takes itself back, and the checkpoint is SQLite's:
        # the run stopped at its last checkpoint and continues from there.
        raise RunError(f"the run cannot go on: it could not write ({reason}); free some space or make {run_dir} "
                       f"and $HEURIST_HOME writable, then `heurist resume {run_dir}` continues from its last "
                       f"checkpoint") from exc


def _execute(run_dir: Path, on_event: EventFn | None) -> dict[str, Any]:
    from langgraph.checkpoint.sqlite import SqliteSaver

    from graph.topology import build

    with _locked(run_dir):
        services, nodes, record = open_services(run_dir, on_event)
        connection = sqlite3.connect(run_dir / "checkpoints.sqlite", check_same_thread=False)
        try:
            app = build(nodes, services.config, services.spec, SqliteSaver(connection))
            cfg = {"configurable": {"thread_id": record.run_id}, "recursion_limit": 1_000_000}
            try:
                snapshot = app.get_state(cfg)
            except sqlite3.DatabaseError as exc:
                raise RunError(f"{run_dir / 'checkpoints.sqlite'} is damaged ({exc}), so the run cannot continue "
                               f"from it; its ledger, transcripts and workspace are intact: `heurist report "
                               f"{run_dir}` shows it, `heurist replay {run_dir}` re-runs it from its transcripts") from None
            values = snapshot.values or {}
            services.elapsed_before = float((values.get("spent") or {}).get("elapsed_s", 0.0))
            services.session_started = time.monotonic()
            # The graph ended only where its state says so. An empty `next` alone is not an end: a kill between
            # a node's saved writes and the step's checkpoint leaves a checkpoint whose only task is done, whose
            # `next` is empty; continuing from it applies those writes and goes on.
            ended = not snapshot.next and values.get("status") in ("finished", "paused")
            if not values:
                start: dict[str, Any] | None = {"run_id": record.run_id}
            elif not ended:
                start = None  # continue at the node that did not finish
                services.ledger.append({"event": "run_resumed", "time": _now(), "run_id": record.run_id,
                                        "at": list(snapshot.next) or [task.name for task in snapshot.tasks],
                                        "iteration": values.get("iteration")})
            elif values.get("status") == "paused":
                app.update_state(cfg, {"status": "running", "stop_reason": None, "llm_failures": 0}, as_node="remember")
                services.ledger.append({"event": "run_resumed", "time": _now(), "run_id": record.run_id,
                                        "at": ["evaluate"], "iteration": values.get("iteration"), "after": "pause"})
                start = None
            else:
                return values  # finished: nothing to do
            services.event("started", run_id=record.run_id, task=record.task, offline=record.offline,
                           model=services.config.llm.model, budget=services.config.budget.model_dump(),
                           iteration=values.get("iteration", 0), spent=values.get("spent") or {},
                           best=(values.get("incumbent") or {}).get("mean"), history=values.get("history") or [])
            for update in app.stream(start, cfg, stream_mode="updates", durability="sync"):
                for node in update:
                    services.event("node", node=node)
                    if node in ("remember", "finish", "pause") and services.config.report:
                        _publish_report(services)
            return app.get_state(cfg).values
        finally:
            connection.close()
            if services.memory is not None:
                services.memory.close()


def run_status(run_dir: Path) -> str:
    """running (a process holds its lock), finished, paused, stopped (killed or interrupted: resume it) or created."""
    lock = run_dir / ".lock"
    if lock.exists():
        fd = os.open(lock, os.O_RDONLY)  # flock needs no write access: status works on a read-only disk
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "running"
        finally:
            os.close(fd)
    events = [r.get("event") for r in Ledger(run_dir / "ledger.jsonl").read()[0]]
    for event, status in (("run_finished", "finished"), ("run_paused", "paused")):
        if event in events:
            last = len(events) - 1 - events[::-1].index(event)
            if "run_resumed" not in events[last:]:
                return status
    return "stopped (resume it)" if events else "created"


def _publish_report(services: Services) -> None:
    """Rewrite the run's report so it is always current. It is a view of records kept elsewhere,
    so a report that cannot be written is told to the user and the run goes on.

    A child process builds it: reading the whole run each iteration made heurist's own memory
    grow by 17-24 MB per 100 iterations (5 without the report; benchmarks/soak.py), and in a
    child that memory goes back to the system each time. It costs about a second of imports."""
    try:
        done = subprocess.run([sys.executable, "-m", "graph.report", str(services.run_dir)], capture_output=True,
                              text=True, timeout=REPORT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        problem = f"it took longer than {REPORT_TIMEOUT_S:g} s"
    else:
        if done.returncode == 0:
            services.event("report", path=done.stdout.strip())
            return
        problem = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
    services.event("warning", message=f"the report was not updated: {problem}"[:300]
                   + f"; the run goes on (`heurist report {services.run_dir}` rewrites it)")


def mermaid(config: RunConfig) -> str:
    """The graph's topology for this config, as a Mermaid diagram (no run needed)."""
    from graph.llm import Usage
    from graph.nodes import Nodes
    from graph.services import Services
    from graph.topology import build

    # Nothing runs: the services only shape the graph (which analyse nodes exist), so they point nowhere.
    spec = get_task(config.task)
    services = Services(run_dir=Path("."), run_id="", search_key="", config=config, spec=spec, protocol="",
                        workspace=Workspace(Path(".")), ledger=Ledger(Path("/dev/null")), memory=None, llm=None,
                        usage=Usage(), recorder=TranscriptRecorder(Path(".")), roles=stage_roles(config))
    return build(Nodes(services, ""), config, spec).get_graph().draw_mermaid()


def decisions(run_dir: Path) -> list[dict[str, Any]]:
    """What a run decided, iteration by iteration: the part a replay must reproduce."""
    records, _ = Ledger(Path(run_dir) / "ledger.jsonl").read()
    return [{"iteration": r["iteration"], "accepted": r["accepted"], "policy_sha256": r["policy_sha256"]}
            for r in records if r.get("event") == "iteration"]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
