"""What memory stores: failures, fixes (with their outcome) and lessons, as typed records.

A record's id is a hash of what identifies it, so writing the same record twice (a graph
node run again after a resume) updates one entry instead of adding a second.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from typing import Annotated, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

from common.safe_text import printable
from envs.scenarios import Scenario

RECENT = 50  # showings a lesson remembers by name (so a node run twice counts once); its counts go on past them
Family = Literal["classic_control", "box2d", "atari", "mujoco", "custom"]
Outcome = Literal["accepted", "rejected"]


def _content_id(prefix: str, *parts: object) -> str:
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()
    return f"{prefix}-{digest[:20]}"


MAX_TEXT = 20_000  # characters of one free-text field: more than any heurist writes, far less than a file can hold
MAX_COUNT = 10**9  # a lesson shown this often would be a very long life; a count past it is no count


def _bounded(value: str) -> str:
    """A free-text field as kept: at most ``MAX_TEXT`` characters (a record may come from a stranger's file)."""
    return value if len(value) <= MAX_TEXT else value[: MAX_TEXT - 3] + "..."


def _line(value: str, most: int) -> str:
    """One printable line of at most ``most`` characters: text read into other runs' prompts as a line of its own."""
    line = printable(" ".join(value.split()))
    return line if len(line) <= most else line[: most - 3] + "..."


class _Record(BaseModel):
    # NaN and infinities are written as such and read back (JSON's null would not read back as a float).
    model_config = ConfigDict(extra="forbid", frozen=True, ser_json_inf_nan="constants")

    id: str = ""
    created_at: float = Field(default_factory=time.time)
    run_id: str = Field(..., min_length=1, description="The run that wrote this record (forget --run removes them).")

    # Each record type defines ``text`` (what is embedded and searched) and ``default_id()``.

    @field_validator("description", "rationale", "reason", "diff_summary", check_fields=False)
    @classmethod
    def _bounded_text(cls, value: str) -> str:
        return _bounded(value)

    def with_id(self):
        return self if self.id else self.model_copy(update={"id": self.default_id()})  # type: ignore[attr-defined]


class FailureRecord(_Record):
    """One observed failure: what the video analyst and the log parser said about it."""

    type: Literal["failure"] = "failure"
    description: str = Field(..., min_length=1)
    task: str
    family: Family
    protocol: str
    iteration: int = Field(..., ge=0)
    seed: int
    step: int = Field(..., ge=0)
    kind: str = Field(..., min_length=1, description="Failure kind from the task's rules, e.g. life_lost, fall.")
    policy_sha256: str
    # When it was seen, as "run_id:iteration": the same failure of the same policy, seen again (a rejected
    # edit leaves the incumbent failing as before), is one record whose sightings grow, not a new record.
    seen_in: tuple[str, ...] = ()
    scenarios: tuple[str, ...] = Field((), description="Ids of the ScenarioRecords that replay it (its moment saved "
                                                       "from the simulator's state), which a later run can test.")

    @property
    def text(self) -> str:
        return self.description

    @property
    def sightings(self) -> int:
        return max(len(self.seen_in), 1)

    def default_id(self) -> str:
        # Not the iteration: a run sees what failed, where, in which policy version, once (forget --run removes
        # a run's records, so two runs keep a record each).
        return _content_id("failure", self.run_id, self.task, self.protocol, self.seed, self.step, self.kind,
                           self.policy_sha256, self.description)

    @property
    def sighting(self) -> str:
        return f"{self.run_id}:{self.iteration}"


class FixRecord(_Record):
    """One proposed edit, the failures it targeted, and what became of it."""

    type: Literal["fix"] = "fix"
    rationale: str = Field(..., min_length=1)
    diff_summary: str
    task: str
    family: Family
    iteration: int = Field(..., ge=0)
    failure_ids: tuple[str, ...] = ()
    outcome: Outcome
    reason: str = Field(..., description="Why it was accepted or rejected (the reviewer's verdict).")
    score_before: float | None = None
    score_after: float | None = None
    policy_sha256_before: str = ""
    policy_sha256_after: str = ""

    @property
    def score_delta(self) -> float | None:
        if self.score_before is None or self.score_after is None:
            return None
        return self.score_after - self.score_before

    @property
    def text(self) -> str:
        return f"{self.rationale}\n{self.diff_summary}".strip()

    def default_id(self) -> str:
        return _content_id("fix", self.run_id, self.iteration, self.task, self.policy_sha256_before,
                           self.policy_sha256_after, self.rationale, self.diff_summary)


class LessonRecord(_Record):
    """A short, general statement distilled from an accepted (or a clearly rejected) edit, shared across runs.

    The same statement learned again, in any run of the family, is one lesson whose sources and evidence grow
    (``memory.store`` merges them). Each time it is shown to a coder, the iteration is added to ``recalled_in``,
    and to ``helped_in`` when the edit that followed was accepted: lessons are ranked by how often they helped
    when recalled."""

    type: Literal["lesson"] = "lesson"
    statement: str = Field(..., min_length=1)
    family: Family
    task: str = Field(..., description="The task it was first learned on.")
    outcome: Literal["helped", "did_not_help"] = Field(
        "helped", description="Whether the edit it was distilled from was accepted, or clearly worse.")
    failure_kind: str | None = Field(None, description="The failure kind the edit targeted, if any.")
    source_fix_ids: tuple[str, ...] = ()
    evidence: tuple[str, ...] = Field((), description="Per source: task, run and iteration, the dev means.")
    settings: dict[str, float] = Field(
        default_factory=dict, description="The tunable values of the policy an accepted edit produced (of the "
                                          "source whose dev mean was highest), which a later search on a task of "
                                          "the family may start from.")
    settings_mean: float | None = Field(None, allow_inf_nan=False,
                                       description="The dev mean those settings reached where learned.")
    recalled: int = Field(0, ge=0, le=MAX_COUNT, description="Times it was shown to a coder.")
    helped: int = Field(0, ge=0, le=MAX_COUNT, description="Of those, times the edit that followed was accepted.")
    recalled_in: tuple[str, ...] = Field((), description=f"The last {RECENT} showings, as run_id:iteration.")
    helped_in: tuple[str, ...] = Field((), description=f"The last {RECENT} showings that helped.")

    @field_validator("statement")
    @classmethod
    def _one_line(cls, value: str) -> str:
        # Read into other runs' prompts: one printable line, bounded, whatever the edit it came from held.
        return _line(value, 300)

    @field_validator("evidence")
    @classmethod
    def _evidence_lines(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        # Each is a line of the coder's brief: a newline in one would read as a lesson or a failure of heurist's.
        return tuple(_line(v, 300) for v in value)

    @field_validator("failure_kind")
    @classmethod
    def _kind_line(cls, value: str | None) -> str | None:
        return None if value is None else _line(value, 60)

    @field_validator("settings")
    @classmethod
    def _finite_settings(cls, value: dict[str, float]) -> dict[str, float]:
        # A search starts from these: a NaN is inside no tunable's bounds (clipping leaves it NaN), and one imported
        # lesson holding it stopped every offline run that recalled it, on every resume.
        for name, number in value.items():
            if not math.isfinite(number):
                raise ValueError(f"setting {name[:60]!r} is {number}, not a finite number")
        return value

    @model_validator(mode="after")
    def _counts_agree(self) -> "LessonRecord":
        if self.helped > self.recalled:
            raise ValueError(f"helped {self.helped} times of {self.recalled} recalled: a lesson helps only when "
                             "recalled")
        return self

    @property
    def text(self) -> str:
        return self.statement

    @property
    def times_recalled(self) -> int:
        return self.recalled

    @property
    def times_helped(self) -> int:
        return self.helped

    def default_id(self) -> str:
        # The same statement learned twice in one family is one lesson with more sources; learned from an edit that
        # helped and from one that did not, it is two: merged, a clearly worse edit worded as a lesson that helped
        # joined its evidence to it and stayed "helped" (a red-team review, 2026-12-05). A lesson that helped keeps
        # the id it always had.
        if self.outcome == "helped":
            return _content_id("lesson", self.family, self.statement.lower())
        return _content_id("lesson", self.family, self.statement.lower(), self.outcome)


class ScenarioRecord(_Record):
    """A failure's moment saved from the simulator's state (``envs.scenarios.Scenario``), kept beside the failure
    so a later run on the same task and protocol can replay it: a fix tested against an old failure, not only the
    failures of its own run. Never searched by similarity (``MemoryStore.recall`` reaches it through its failure);
    its text is the failure's description all the same, so it sits in a collection like every record."""

    type: Literal["scenario"] = "scenario"
    task: str
    family: Family
    protocol: str
    name: str = Field(..., description="Its file name in a run's scenarios folder (envs.scenario_files.file_name).")
    description: str = Field(..., min_length=1)
    scenario: Scenario

    @property
    def text(self) -> str:
        return self.description

    def default_id(self) -> str:
        # The name holds the seed, the failure's kind and step and the recorded window's hash: with the task and
        # protocol it says which moment this is, whichever run saved it.
        return _content_id("scenario", self.task, self.protocol, self.name, self.scenario.trajectory_sha256)


def merge_lessons(old: LessonRecord, new: LessonRecord) -> LessonRecord:
    """The stored lesson learned again, or counted again: its first date and run kept, sources and evidence
    joined, counts never lower (a count is only ever raised from the stored one), the best settings kept."""
    joined = {f: tuple(dict.fromkeys(getattr(old, f) + getattr(new, f))) for f in ("source_fix_ids", "evidence")}
    recent = {f: tuple(dict.fromkeys(getattr(old, f) + getattr(new, f)))[-RECENT:]
              for f in ("recalled_in", "helped_in")}
    better = new.settings and (old.settings_mean is None or (new.settings_mean is not None
                                                             and new.settings_mean > old.settings_mean))
    return old.model_copy(update={
        **joined, **recent, "recalled": max(old.recalled, new.recalled), "helped": max(old.helped, new.helped),
        "settings": new.settings if better or not old.settings else old.settings,
        "settings_mean": new.settings_mean if better or not old.settings else old.settings_mean})


def lesson_rank_key(lesson: LessonRecord, similarity: float) -> tuple:
    """Lessons that helped when recalled come first (a Laplace-smoothed rate, so a new lesson sits between one
    that always helped and one that never did), then lessons from accepted edits, then the closer match."""
    rate = (lesson.times_helped + 1) / (lesson.times_recalled + 2)
    return (-rate, 0 if lesson.outcome == "helped" else 1, -similarity)


Record = Annotated[Union[FailureRecord, FixRecord, LessonRecord, ScenarioRecord], Field(discriminator="type")]
RECORD_ADAPTER: TypeAdapter[Record] = TypeAdapter(Record)
RecordType = Literal["failure", "fix", "lesson", "scenario"]


class FixHit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    fix: FixRecord
    similarity: float | None = Field(None, description="Cosine similarity to the query; None when reached by a link.")
    failures: list[FailureRecord] = Field(default_factory=list, description="The failures it targeted that still exist.")


class FailureHit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    failure: FailureRecord
    similarity: float
    fixes: list[FixHit] = Field(default_factory=list, description="Fixes that targeted it, the ones that worked first.")


class LessonHit(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lesson: LessonRecord
    similarity: float
    same_family: bool = Field(True, description="Learned on a task of the recalling run's family.")


class Recall(BaseModel):
    """The answer to one search: similar failures with their fixes, similar fixes, and lessons."""

    model_config = ConfigDict(extra="forbid")

    query: str
    failures: list[FailureHit] = Field(default_factory=list)
    fixes: list[FixHit] = Field(default_factory=list)
    lessons: list[LessonHit] = Field(default_factory=list)


def fix_rank_key(fix: FixRecord, similarity: float | None = None) -> tuple:
    """Fixes that worked come first, then the larger score gain, then the closer match."""
    delta = fix.score_delta
    return (0 if fix.outcome == "accepted" else 1,
            -(delta if delta is not None else float("-inf")),
            -(similarity if similarity is not None else 0.0))


IMPORTED = "imported:"  # how a run of another store is named here: no run of this store's begins so


def imported_name(run_or_sighting: str) -> str:
    """A run id, or a ``run_id:iteration`` sighting, of the store a record was exported from, as this store keeps
    it: marked, so that it never reads as one of this store's runs (its report's "Added by this run", ``forget
    --run``, a lesson's showings). Marked once: a record exported again after its import keeps its one mark."""
    return run_or_sighting if run_or_sighting.startswith(IMPORTED) else IMPORTED + run_or_sighting


def _original_name(run_or_sighting: str) -> str:
    return run_or_sighting[len(IMPORTED):] if run_or_sighting.startswith(IMPORTED) else run_or_sighting


def _runs_renamed(record, rename: Callable[[str], str]):
    """``record`` with its run and every sighting or showing it names passed through ``rename``, checked again, and
    its id made from the renamed fields."""
    update: dict = {"run_id": rename(record.run_id)}
    if isinstance(record, FailureRecord):
        update["seen_in"] = tuple(rename(s) for s in record.seen_in)
    if isinstance(record, LessonRecord):
        update["recalled_in"] = tuple(rename(s) for s in record.recalled_in)
        update["helped_in"] = tuple(rename(s) for s in record.helped_in)
    copy = type(record).model_validate({**record.model_dump(), **update, "id": ""})
    return copy.model_copy(update={"id": copy.default_id()})


def unmarked(record):
    """``record`` as the store it was exported from held it, before an import marked its runs (``as_imported``):
    what a store's own records look like after a trip through another store and back."""
    return _runs_renamed(record, _original_name) if record.run_id.startswith(IMPORTED) else record


def as_imported(records: list, held_as: dict[str, str] | None = None) -> list:
    """``records`` of another store as this store adds them: every run and sighting they name marked as imported
    (``imported_name``), each id made again from the marked fields, and the links between them (a fix's failures,
    a lesson's fixes) following the new ids. ``held_as``: records of the file this store holds already under
    another id (its own, back from another store: ``unmarked``), which links to them follow. A link to a record
    outside both is kept as it is."""
    renamed: dict[str, str] = dict(held_as or {})
    marked = []
    for record in records:
        copy = _runs_renamed(record, imported_name)
        renamed[record.id] = copy.id
        marked.append(copy)
    linked = []
    for record in marked:
        if isinstance(record, FixRecord):
            record = record.model_copy(update={"failure_ids": tuple(renamed.get(i, i) for i in record.failure_ids)})
        elif isinstance(record, LessonRecord):
            record = record.model_copy(
                update={"source_fix_ids": tuple(renamed.get(i, i) for i in record.source_fix_ids)})
        linked.append(record)
    return linked
