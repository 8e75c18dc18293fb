"""Run directories: create one, read what it records, lock it, and tell its status.

A run directory holds everything about one run:

- ``run.json``: what was asked (the config, the task, offline or not), written once (and once more to give a run
  made before screen keys its own);
- ``starting_policy.py``: a copy of the starting policy (the original is never touched);
- ``workspace/``: a git repository of the policy and its regression tests, one commit per accepted edit;
- ``checkpoints.sqlite``: LangGraph's SQLite checkpoints, thread id = run id, written synchronously;
- ``ledger.jsonl``: append-only: every evaluation, test run and iteration;
- ``transcripts/<iteration>/<role>.jsonl``: every model call and offline decision;
- ``clips/``, ``evals/``, ``candidates/``: failure clips, cached evaluations, scored candidates;
- ``summary.json``, ``summary.md``, ``best_policy.py``, ``holdout.json``: written when the run finishes.

Nothing here runs the graph (``runner.lifecycle`` does), so the report and ``heurist runs`` read a
run without loading LangGraph or the roles.
"""

from __future__ import annotations

import errno
import os
import secrets
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from common.errors import HeuristError
from common.events import IterationDone, read_events
from common.files import atomic_write, open_regular, sweep_torn_writes
from common.ledger import Ledger
from common.locks import exclusive, held
from common.paths import heurist_home
from envs.contract import check_policy_file, policy_sha256
from envs.tasks import TaskSpec, get_task
from memory.store import MemoryConfig
from policies import starter_policy
from store.config import RunConfig

WORKSPACE_FORMAT = 2

class RunError(HeuristError):
    """A run directory that cannot be started, resumed or replayed."""


# What a full or read-only disk looks like from inside: an OSError, or the words SQLite, git and
# Chroma put into their own exceptions.
_STORAGE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)
# The words of what reports a failed write as text: SQLite's, and git's (the workspace's git writes its index through
# a hash file that reports a full disk as "write error. Out of diskspace", with no errno text).
_STORAGE_WORDS = (*(os.strerror(e) for e in _STORAGE_ERRNOS), "database or disk is full",
                  "attempt to write a readonly database", "disk I/O error", "Out of diskspace")


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
    """``run.json``: written once when the run is created (``keyed`` adds a screen key to an older one)."""

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
    # The secret that draws the seeds of gates no model is shown (``SeedSplits.unseen``): kept here, out of every
    # sandbox's and every brief's sight. None in runs made before it, which get one when they next run (``keyed``).
    screen_key: str | None = None
    replay_of: str | None = None
    heurist_version: str
    # 2: regression tests run one file at a time on throwaway copies and reach the policy only through the kit.
    # Runs made before (1) kept a kit in the workspace and ran the policy inside the tests; their accepted
    # tests may use what the kit no longer offers, so they are not resumed.
    workspace_format: int = 1


def keyed(run_dir: Path, record: RunRecord) -> RunRecord:
    """The record with its secret for unseen seeds: a run made before there was one gets one now, written to its
    run.json (the caller holds the run's lock). Not its run id, which its policy can read in its own path."""
    if record.screen_key is not None:
        return record
    record = record.model_copy(update={"screen_key": secrets.token_hex(16)})
    atomic_write(Path(run_dir) / "run.json", record.model_dump_json(indent=2))
    return record


def recorded_model(config: dict[str, Any]) -> str:
    """The run's model as run.json records it; "?" where a damaged record holds none."""
    llm = config.get("llm")
    return str(llm.get("model", "?")) if isinstance(llm, dict) else "?"


def names_code(record: RunRecord) -> bool:
    """Whether the run's task is a task of one's own named as ``module:attr``: looking it up imports that module and
    may call what it names. A reader of a run directory from elsewhere (``heurist report``) does not."""
    return any(isinstance(name, str) and ":" in name and "/" not in name
               for name in (record.config.get("task"), record.task))


def plug_in_modules(record: RunRecord) -> list[str]:
    """What of the run's config names code to import: a ``module:attr`` task and ``module:Class`` roles in its
    stages. A replay of a run directory from elsewhere would import them as it builds the run."""
    named = [str(record.config.get("task"))] if names_code(record) else []
    stages = record.config.get("stages")
    for value in stages.values() if isinstance(stages, dict) else []:
        named += [str(v) for v in (value if isinstance(value, list) else [value]) if isinstance(v, str) and ":" in v]
    return named


def run_task(record: RunRecord) -> TaskSpec:
    """The task a run is on, looked up as the run was told it. ``record.task`` is the task's id, which names a task
    of one's own (``module:attr``) only in a process that has loaded it: a resume or a report in a new process
    asks for it by the name it was started with."""
    named = record.config.get("task")
    spec = get_task(named if isinstance(named, str) and named else record.task)
    if spec.id != record.task:
        raise RunError(f"{named} now gives the task {spec.id}, but the run is on {record.task}; restore the module "
                       f"the run was started with, or start a new run")
    return spec


def run_config(record: RunRecord, run_dir: Path, doing: str = "continue") -> RunConfig:
    """The run's recorded config, or one line saying why this heurist cannot read it (a run made by a newer
    heurist, with a key this one does not know, or an edited run.json)."""
    try:
        return RunConfig.model_validate(record.config)
    except ValueError as exc:
        raise RunError(f"{Path(run_dir) / 'run.json'} holds a config this heurist cannot read "
                       f"({' '.join(str(exc).split())[:300]}); {doing} it with the heurist that made it") from None


def memory_config(record: RunRecord, run_dir: Path) -> MemoryConfig:
    """Where a run's memory lives: the store its config names, except for a replay, which keeps its memory
    to itself (``RUN_DIR/memory``), so re-running a run never adds its records to the shared store twice."""
    if record.replay_of:
        return MemoryConfig(path=Path(run_dir) / "memory")
    return run_config(record, run_dir).memory


class RunIndexEntry(BaseModel):
    """A line of ``$HEURIST_HOME/runs.jsonl``: a run started on this machine, wherever its directory is."""

    model_config = ConfigDict(extra="forbid")

    run_id: str
    run_dir: str
    task: str
    created: str
    replay_of: str | None = None


def runs_index() -> Ledger:
    """Every run started on this machine (``heurist runs`` reads it, ``indexed_runs`` types it)."""
    return Ledger(heurist_home() / "runs.jsonl")


def indexed_runs() -> tuple[list[RunIndexEntry], int]:
    """The runs index's entries, and how many of its lines are damaged."""
    entries, bad = [], 0
    for record in (raw := runs_index().read())[0]:
        try:
            entries.append(RunIndexEntry.model_validate(record))
        except ValueError:
            bad += 1
    return entries, raw[1] + bad


def find_run(given: Path) -> Path:
    """The run directory a command was given: the path as it is, or, where no such path exists and it is a bare name,
    the directory of the run with that id in this machine's runs index (the first column of ``heurist runs``, which
    a new user gave ``show`` and was refused)."""
    if os.path.lexists(given) or len(given.parts) != 1:
        return given
    found = [Path(entry.run_dir) for entry in indexed_runs()[0] if entry.run_id == given.name]
    return found[-1] if found else given


def started_here(record: RunRecord, run_dir: Path) -> bool:
    """Whether this machine's runs index lists this run, in this directory: a run started here, not one brought in."""
    here = Path(run_dir).resolve()
    return any(entry.run_id == record.run_id and Path(entry.run_dir).resolve() == here
               for entry in indexed_runs()[0])


def is_offline(config: RunConfig) -> bool:
    """Whether no role has a model to call: no key, no server, and no role with a server of its own."""
    if config.offline is not None:
        return config.offline
    return (not os.environ.get(config.llm.api_key_env) and config.llm.base_url is None
            and not any(role.base_url for role in config.llm.roles.values()))


MAX_RECORD_BYTES = 16 << 20  # run.json holds a config: kilobytes


def read_record(run_dir: Path) -> RunRecord:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise RunError(f"{run_dir} is not a heurist run directory (no run.json); give a directory made by "
                       f"`heurist run`, or a run id (see `heurist runs`)")
    try:
        with open_regular(path) as file:  # not a FIFO or a device in a run directory from elsewhere
            text = file.read(MAX_RECORD_BYTES + 1)
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror}; give a directory made by `heurist run`") from None
    try:
        if len(text) > MAX_RECORD_BYTES:
            raise ValueError(f"longer than {MAX_RECORD_BYTES} bytes")
        return RunRecord.model_validate_json(text)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "the record"
        raise RunError(f"{path} is damaged ({exc.error_count()} problem(s); {where}: {first['msg']}); restore it "
                       f"from a copy of the run") from None
    except ValueError as exc:
        raise RunError(f"{path} is damaged ({str(exc).splitlines()[0]}); restore it from a copy of the run") from None


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
                       # A replay draws the recorded run's seeds, to reach its decisions.
                       screen_key=(recorded.screen_key if recorded else None) or secrets.token_hex(16),
                       replay_of=str(Path(replay_of).resolve()) if replay_of else None, heurist_version=version("heurist"),
                       workspace_format=WORKSPACE_FORMAT)
    existed = run_dir.exists()
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        # Its exact bytes (a CRLF file's too), so that the copy hashes as run.json's starting_sha256 says; the run
        # reads it as text, its line ends made \n, as before.
        atomic_write(run_dir / "starting_policy.py", policy.read_bytes().decode("utf-8"))
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
    runs_index().append(RunIndexEntry(run_id=run_id, run_dir=str(run_dir), task=spec.id, created=record.created,
                                      replay_of=record.replay_of))
    return run_dir


@contextmanager
def locked(run_dir: Path) -> Iterator[None]:
    """One process at a time per run directory: a second `heurist resume` must not race the first."""
    busy = lambda: RunError(f"{run_dir} is being run by another heurist process; wait for it or stop it")  # noqa: E731
    with exclusive(run_dir / ".lock", busy):
        sweep_torn_writes(run_dir)  # a run killed mid-write left them; nothing else writes here now
        yield


def run_lock_free(run_dir: Path) -> bool:
    """Whether no process holds the run's lock (a run that never started has none)."""
    return not held(run_dir / ".lock")


def run_status(run_dir: Path) -> str:
    """finished or paused (the ledger says so, and no resume came after), running (a process holds its lock),
    stopped (killed or interrupted: resume it) or created.

    The ledger is read first: a run writes its last report after its end is recorded, while it still holds
    its lock, and that report must say finished, not running."""
    events = [r.event for r in read_events(Ledger(run_dir / "ledger.jsonl"))[0]]
    for event, status in (("run_finished", "finished"), ("run_paused", "paused")):
        if event in events:
            last = len(events) - 1 - events[::-1].index(event)
            if "run_resumed" not in events[last:]:
                return status
    if not run_lock_free(run_dir):
        return "running"
    return "stopped (resume it)" if events else "created"


def decisions(run_dir: Path) -> list[dict[str, Any]]:
    """What a run decided, iteration by iteration: the part a replay must reproduce."""
    records, _ = read_events(Ledger(Path(run_dir) / "ledger.jsonl"))
    return [{"iteration": r.iteration, "accepted": r.accepted, "policy_sha256": r.policy_sha256}
            for r in records if isinstance(r, IterationDone)]


