"""What a campaign keeps on disk: its directory, its record, and its append-only ledger of runs.

::

    CAMPAIGN_DIR/
      campaign.toml      the file it was started from, as it was
      campaign.json      the record: name, the planned runs with their configs, when it started
      ledger.jsonl       append-only: each start of a run (with its share of the budget), each end and why
      runs/KEY/          ordinary run directories (`heurist resume`, `heurist report` work on each)
      memory/            the runs' memory, which the driver serves (``campaign.memory_server``) unless told otherwise
      .lock              held by the process driving the campaign
      stop               written by `heurist campaign stop`; the driver stops the runs and itself
      stopping           written by the driver as it stops its runs (for any reason): each run's task sees it

The ledger is the truth about runs: a run is done when a ``campaign_run_ended`` line says so, and
one started but never ended (the driver was killed) is started again on resume, from its checkpoint.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Literal, Union
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator, model_validator

from campaign.plan import CampaignError, CampaignSpec, PlannedRun, run_key
from common.files import atomic_write, open_regular
from common.ledger import Ledger, LedgerTail
from common.locks import exclusive, held


MAX_RECORD_BYTES = 16 << 20  # campaign.json: its runs' configs, kilobytes each


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class CampaignRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # as CampaignSpec.name: a folder may be a stranger's
    created: str
    spec: CampaignSpec
    runs: list[PlannedRun]
    # Where the campaign serves its runs' memory (``campaign.memory_server``), chosen at its start; None when
    # the runs use a store of their own (``--memory-url``, or ``[run.memory]``).
    memory_server: str | None = None

    @field_validator("memory_server")
    @classmethod
    def _one_address_with_a_port(cls, url: str | None) -> str | None:
        """As ``campaign.memory_server.choose_url`` makes it: http:// one IP address of a machine, and a port. A
        folder may be a stranger's: "0.0.0.0" served the campaign's memory, which has no authentication, on every
        interface, and a URL without a port stopped the driver with an internal error (a red-team review,
        2026-12-05)."""
        if url is None:
            return None
        parsed = urlparse(url)
        try:
            address = ipaddress.ip_address(parsed.hostname or "")
            port = parsed.port
        except ValueError:
            raise ValueError(f"memory_server {url!r} is not http://ADDRESS:PORT") from None
        if parsed.scheme != "http" or port is None or not 0 < port < 65536 or address.is_unspecified \
                or address.is_multicast or parsed.path not in ("", "/"):
            raise ValueError(f"memory_server {url!r} is not http:// one address of this machine and a port")
        return url

    @model_validator(mode="after")
    def _runs_as_planned(self) -> CampaignRecord:
        """The runs as ``plan_runs`` makes them: each key its task's and repeat's, none twice, repeats within the
        spec's. A folder may be a stranger's: a run counted twice, or a repeat of -1 or 10**12, made the report's
        aggregates count runs that are not there (or ask numpy for terabytes)."""
        seen_keys, seen_pairs = set(), set()
        for run in self.runs:
            if not 0 <= run.repeat < self.spec.repeats:
                raise ValueError(f"run {run.key} has repeat {run.repeat}, outside 0..{self.spec.repeats - 1}")
            if run.key != run_key(run.task, run.repeat):
                raise ValueError(f"run {run.key} is not the key of task {run.task[:80]!r}, repeat {run.repeat}")
            if run.key in seen_keys or (run.task, run.repeat) in seen_pairs:
                raise ValueError(f"run {run.key} is planned twice")
            seen_keys.add(run.key)
            seen_pairs.add((run.task, run.repeat))
        return self


class _Event(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)  # read once, then shared by every later read (LedgerTail)

    time: str = Field(default_factory=now_iso)


class CampaignStarted(_Event):
    event: Literal["campaign_started"] = "campaign_started"
    address: str  # "local" for the embedded Ray, else the cluster's address
    cpus: float  # the CPUs Ray reported for the cluster at this start
    max_concurrent: int


class RunLaunched(_Event):
    """One start of one run (a first start, or a start again after its node or the driver was lost)."""

    event: Literal["campaign_run_started"] = "campaign_run_started"
    key: str
    attempt: int
    run_dir: str
    allotment: dict[str, float | int | None]  # its share of the campaign budget, as given to the run's own budget


class RunEnded(_Event):
    event: Literal["campaign_run_ended"] = "campaign_run_ended"
    key: str
    attempt: int
    # out_of_time: started, then cut off by the campaign's hours (or left stopped when they ran out): final.
    status: Literal["finished", "paused", "failed", "lost", "stopped", "skipped", "out_of_time"]
    reason: str
    node: str | None = None
    spent: dict[str, float | int] = Field(default_factory=dict)
    best_mean: float | None = None


class CampaignEnded(_Event):
    event: Literal["campaign_ended"] = "campaign_ended"
    status: Literal["finished", "stopped"]
    reason: str


CampaignEvent = Annotated[Union[CampaignStarted, RunLaunched, RunEnded, CampaignEnded], Field(discriminator="event")]
_EVENT = TypeAdapter(CampaignEvent)


def _event(raw: dict) -> CampaignEvent | None:
    """A ledger line as a typed event; None for a line of another version's (the ledger counts what is torn)."""
    try:
        return _EVENT.validate_python(raw)
    except ValidationError:
        return None


class CampaignDir:
    """A campaign's directory: its record, ledger, runs, lock and stop request."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.ledger = Ledger(self.root / "ledger.jsonl")
        # The driver reads the ledger several times per run it starts or ends: each read parses the new lines only.
        self._events = LedgerTail(self.ledger, _event)

    @classmethod
    def create(cls, root: Path, source: Path, spec: CampaignSpec, runs: list[PlannedRun],
               memory_server: str | None = None) -> CampaignDir:
        root = Path(root).resolve()
        if root.exists() and (not root.is_dir() or any(root.iterdir())) and not cls._never_started(root):
            raise CampaignError(f"{root} already exists and is not an empty folder; choose another --dir, or "
                                f"`heurist campaign resume {root}` if it is a campaign")
        try:
            (root / "runs").mkdir(parents=True, exist_ok=True)
            atomic_write(root / "campaign.toml", source.read_text())
            record = CampaignRecord(name=spec.name, created=now_iso(), spec=spec, runs=runs, memory_server=memory_server)
            atomic_write(root / "campaign.json", record.model_dump_json(indent=2))
        except OSError as exc:
            raise CampaignError(f"cannot create the campaign directory {root}: {exc.strerror}; choose a writable "
                                f"--dir") from None
        return cls(root)

    @staticmethod
    def _never_started(root: Path) -> bool:
        """Whether ``root`` holds a campaign whose start was refused before anything ran (no node with the CPUs a
        run asks, say): a record, an empty ledger, no run, no driver. A start with the file corrected replaces it;
        before, the folder blocked it ("already exists") and a resume replayed the refused file. The folder is
        kept, not removed at the refusal, so the log its error names can still be read."""
        if root.is_symlink() or not (root / "campaign.json").is_file() or held(root / ".lock"):
            return False
        ledger = root / "ledger.jsonl"
        if ledger.exists() and (not ledger.is_file() or ledger.stat().st_size > 0):
            return False
        runs = root / "runs"
        return not runs.exists() or (runs.is_dir() and not runs.is_symlink() and not any(runs.iterdir()))

    def record(self) -> CampaignRecord:
        path = self.root / "campaign.json"
        if not path.is_file():
            raise CampaignError(f"{self.root} is not a campaign directory (no campaign.json); give the folder "
                                f"`heurist campaign start` made")
        try:
            with open_regular(path) as file:  # not a FIFO or a device in a folder from elsewhere
                data = file.read(MAX_RECORD_BYTES + 1)
            if len(data) > MAX_RECORD_BYTES:
                raise OSError(0, f"longer than {MAX_RECORD_BYTES} bytes")
            return CampaignRecord.model_validate_json(data)
        except (ValidationError, OSError) as exc:
            why = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else exc.strerror
            raise CampaignError(f"{path} is damaged ({why}); the runs under {self.root / 'runs'} "
                                f"are intact and each resumes with `heurist resume`") from None

    def events(self) -> list[CampaignEvent]:
        """The ledger's events; a torn or foreign line is skipped (the ledger counts it)."""
        return self.events_read()[0]

    def events_read(self) -> tuple[list[CampaignEvent], int]:
        """The ledger's events, and how many of its lines could not be read (for a reader that says so)."""
        return self._events.read()

    def run_dir(self, key: str) -> Path:
        return self.root / "runs" / key

    def run_inside(self, key: str) -> bool:
        """Whether the run's folder is this campaign's own: not a link out of it (its ``runs`` folder or the run's),
        so that a report or a status shows nothing from elsewhere on the reader's machine as this campaign's."""
        runs = self.root / "runs"
        if runs.is_symlink():
            return False
        try:
            return self.run_dir(key).resolve().is_relative_to(runs.resolve())
        except (OSError, RuntimeError):
            return False

    # ------------------------------------------------------------------ the driver's lock and the stop request

    @contextmanager
    def driving(self) -> Iterator[None]:
        """One driver at a time: a second `campaign start`/`resume` on the same folder is refused."""
        busy = lambda: CampaignError(  # noqa: E731
            f"{self.root} is being driven by another heurist process; `heurist campaign status {self.root}` shows "
            f"it, `heurist campaign stop {self.root}` stops it")
        with exclusive(self.root / ".lock", busy):
            yield

    def driven(self) -> bool:
        """Whether a process is driving the campaign now."""
        return held(self.root / ".lock")

    def request_stop(self) -> None:
        atomic_write(self.root / "stop", now_iso() + "\n")

    def stop_requested(self) -> bool:
        return (self.root / "stop").exists()

    def clear_stop(self) -> None:
        (self.root / "stop").unlink(missing_ok=True)

    def mark_stopping(self, driver: str) -> None:
        """Tell the tasks of the driver named ``driver`` to give their runs the Ctrl-C now (``stop_marked``).
        Ray's own cancel, a KeyboardInterrupt raised in the task, is best effort: under load one was seen never
        to arrive, and its run was killed when the stop's grace ran out, without recording its interruption. A
        file in the campaign directory, which every task already reaches for its run, does not depend on it."""
        atomic_write(self.root / "stopping", driver + "\n")


def stop_marked(root: Path, driver: str) -> bool:
    """Whether the driver named ``driver`` is stopping its runs. A marker an earlier driver left names that
    driver, so a campaign resumed after a stop does not stop again."""
    try:
        return (Path(root) / "stopping").read_text().strip() == driver
    except OSError:
        return False
