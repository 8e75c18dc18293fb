"""The memory store: failures, fixes and lessons in ChromaDB (a collection per record type), with their links.

Local stores are a ``chromadb.PersistentClient`` directory; a URL gives a ``chromadb.HttpClient``
so that several machines share one memory (``memory/chroma.py`` opens both). Chroma's embedded
mode is not safe for two processes writing one directory at once (two runs here raced to "table
collections already exists" and "database is locked"), so every operation on a local store holds
an exclusive ``flock`` on a lock file inside it, plus a thread lock for the graph's parallel nodes.

heurist computes the vectors itself (``memory/embedders.py``) and passes them to Chroma, so
the same code serves an embedded store and a server, and the collection records which
embedder made its vectors: opening it with another is refused. How a query meets a filter
quickly is ``memory/search.py``'s.
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
import threading
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.errors import MemoryStoreError
from common.paths import heurist_home
from common.safe_text import redact_deep
from common.settings import Settings
from memory.chroma import (
    RECORD_TYPES,
    check_configuration,
    check_embedder,
    collection_name,
    create_collection,
    find_collections,
    http_client,
    persistent_client,
    prepare_directory,
)
from memory.embedders import (
    EMBEDDER_ADAPTER,
    ChromaDefaultConfig,
    Embedder,
    EmbedderConfig,
    MiniLMOnnxConfig,
    build_embedder,
)
from memory.records import (
    RECENT,
    RECORD_ADAPTER,
    FailureHit,
    FailureRecord,
    FixHit,
    FixRecord,
    LessonHit,
    LessonRecord,
    Recall,
    Record,
    as_imported,
    unmarked,
    RecordType,
    ScenarioRecord,
    fix_rank_key,
    lesson_rank_key,
    merge_lessons,
)
from memory.search import all_of, nearest

LOCK_FILE = ".heurist-memory.lock"
PAGE = 1000
# A recall's scenarios are each a file in the run, a line in the test writer's prompt and maybe a test: a failure
# linked to hundreds (a stranger's import) must not bring them all.
MOST_SCENARIOS = 20


def default_memory_path() -> Path:
    return heurist_home() / "memory"


class MemoryConfig(Settings):  # typed by hand: common.settings refuses its slips
    path: Path | None = Field(None, description="Local store directory (default: $HEURIST_HOME/memory).")
    url: str | None = Field(None, description="A Chroma server, e.g. http://host:8000; overrides path.")
    collection: str = Field("heurist-memory", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")
    embedder: EmbedderConfig | None = Field(
        None, description="Embedder; default: the offline one the store was made with (one that reaches a server or "
                          "reads a file only when named here), else the offline MiniLM.")


class MemoryStats(BaseModel):
    model_config = ConfigDict(extra="forbid")

    location: str
    embedder: str
    records: int
    by_type: dict[str, int]
    by_task: dict[str, int]
    fixes_by_outcome: dict[str, int]
    runs: int
    disk_bytes: int | None
    unreadable: list[str] = Field(default_factory=list, description="Ids of records this heurist cannot read (a "
                                                                   "newer heurist's), left out of every answer.")


def _open_lock(path: Path, store: Path):
    """The store's lock file, opened to append (never through a link, never a FIFO: a store may come from elsewhere).

    A store on a read-only disk cannot be locked, so cannot be read either (Chroma writes even to read): said so."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise MemoryStoreError(f"cannot open the lock of memory store {store} ({exc.strerror}); heurist and Chroma "
                               f"write to a store even to read it: copy it somewhere writable (cp -r) and give that "
                               f"with --memory") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise MemoryStoreError(f"{path} is not a regular file; a store's lock is one heurist makes. Move it aside")
    return os.fdopen(fd, "a")


def recorded_embedder(recorded: Any, location: str) -> EmbedderConfig:
    """The embedder a store says it was made with, as far as a store may choose it: its kind, never where it reaches.

    A store may be anyone's (a colleague's folder, a shared server anyone on the network can write), and its
    collections' metadata is its own to write. Taken whole, it chose the server an OpenAI-compatible embedder sends
    the query to and the environment variable whose value goes along as the key, a model file to read, and how many
    threads to start (a red-team review, 2026-12-05: a key sent to a server of the store's choosing; 100,000 threads
    and 16 GB). So the offline model is taken with this heurist's own settings, Chroma's default as it is (it fetches
    its fixed model), and anything naming a server, a key or a file only where the user names it."""
    try:
        config = EMBEDDER_ADAPTER.validate_json(recorded if isinstance(recorded, (str, bytes)) else "")
    except ValidationError:
        raise MemoryStoreError(f"memory at {location} records an embedder this heurist cannot read; name the one to "
                               f"use (--embedder, or memory.embedder in the run's config)") from None
    if isinstance(config, MiniLMOnnxConfig) and config.model_path is None:
        return MiniLMOnnxConfig()
    if isinstance(config, ChromaDefaultConfig):
        return config
    raise MemoryStoreError(f"memory at {location} was made with the embedder {config.model_dump_json()}, which reads "
                           f"a file or sends your text and a key to a server; heurist uses such an embedder only "
                           f"where you name it: --embedder '<that JSON>' (or memory.embedder in the run's config), "
                           f"once you trust it")


def _metadata(record: Record) -> dict:
    meta: dict = {"type": record.type, "run_id": record.run_id, "task": record.task, "family": record.family,
                  "created_at": record.created_at, "record": record.model_dump_json()}
    if isinstance(record, FailureRecord):
        meta.update(kind=record.kind, iteration=record.iteration, seed=record.seed, step=record.step,
                    protocol=record.protocol, sightings=record.sightings)
    elif isinstance(record, FixRecord):
        meta.update(outcome=record.outcome, iteration=record.iteration)
        if record.failure_ids:  # Chroma refuses empty lists
            meta["failure_ids"] = list(record.failure_ids)
    elif isinstance(record, ScenarioRecord):
        meta.update(protocol=record.protocol, name=record.name)
    return meta


def _record(metadata: dict) -> Record:
    return RECORD_ADAPTER.validate_json(metadata["record"])


def _raw_id(metadata: Any) -> str:
    """The id a stored record says it has, read without validating it (it could not be validated)."""
    try:
        return str(json.loads(metadata["record"]).get("id"))[:200]
    except Exception:  # not even JSON with an id: the record is named by what is left
        return "a record without a readable id"


MAX_IMPORT_LINE = 8 << 20  # bytes: a scenario record is kept in memory up to 4 MiB of JSON; nothing else comes close


# What reading one stored record can raise: a record of a newer heurist (a field this one does not know), one written
# by hand or by a broken writer to a shared server. One such record costs itself, never the records beside it.
UNREADABLE = (ValidationError, KeyError, TypeError, ValueError, OverflowError)


class MemoryStore:
    """Add, search, export, import and forget memory records. Safe to share between processes."""

    def __init__(self, config: MemoryConfig | None = None, embedder: Embedder | None = None):
        self.config = config or MemoryConfig()
        self.unreadable: set[str] = set()  # ids of stored records this heurist could not read (left out of answers)
        self._thread_lock = threading.RLock()
        self._lock_depth = 0
        self._lock_file = None
        if self.config.url:
            self.location = self.config.url
            self._client = http_client(self.config.url)
        else:
            self.path = (self.config.path or default_memory_path()).expanduser().resolve()
            self.location = str(self.path)
            prepare_directory(self.path)
            self._lock_file = _open_lock(self.path / LOCK_FILE, self.path)
            with self._locked():
                self._client = persistent_client(self.path)
        with self._locked():
            existing = find_collections(self._client, self.config.collection, self.location)
        if embedder is None:
            # No embedder named: the one the store was made with, so `heurist memory search`
            # works on any store; a new store gets the offline default.
            recorded = next(((c.metadata or {}).get("heurist:embedder_config") for c in existing.values()), None)
            embedder_config = self.config.embedder or (recorded_embedder(recorded, self.location) if recorded
                                                       else MiniLMOnnxConfig())
            embedder = build_embedder(embedder_config)
            self._embedder_config = embedder_config
        else:
            self._embedder_config = self.config.embedder
        self.embedder = embedder
        with self._locked():
            # Another process may have made some since we looked: look again under the lock.
            existing = find_collections(self._client, self.config.collection, self.location)
            self._collections = {t: existing.get(t) or self._create_collection(t) for t in RECORD_TYPES}
        for collection in self._collections.values():
            check_embedder(collection, self.embedder.identity, self.location)
            check_configuration(collection, self.location)

    # -- opening -----------------------------------------------------------------------------

    def _create_collection(self, record_type: RecordType):
        return create_collection(self._client, collection_name(self.config.collection, record_type), self.embedder,
                                 self._embedder_config, self.location)

    @contextmanager
    def _chroma_errors(self) -> Iterator[None]:
        """Chroma's own errors and its HTTP client's, said in one line that names the store: a damaged store, a
        collection whose vectors changed size, a full disk, a server that stopped answering (each was an internal
        error with a traceback before: a red-team review, 2026-12-05)."""
        import httpx
        from chromadb.errors import ChromaError

        try:
            yield
        except (ChromaError, httpx.HTTPError) as exc:
            where = "the server" if self.config.url else "the store"
            raise MemoryStoreError(f"memory at {self.location} failed: {type(exc).__name__}: {str(exc)[:300]}; check "
                                   f"{where} (a server must be up; a damaged local store can be exported and "
                                   f"imported into a new one, and a full disk needs space)") from None

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._lock_file is None:
                with self._chroma_errors():
                    yield
                return
            # Held across nested calls (a write reads what it merges with): only the outermost takes and lets go of
            # the file lock, or the inner one would let another process in between the read and the write.
            self._lock_depth += 1
            if self._lock_depth == 1:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            try:
                with self._chroma_errors():
                    yield
            finally:
                self._lock_depth -= 1
                if self._lock_depth == 0:
                    fcntl.flock(self._lock_file, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> "MemoryStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing -----------------------------------------------------------------------------

    def add(self, records: Iterable[Record]) -> list[str]:
        """Write records (upsert by id: adding one twice keeps one). Returns their ids.

        Their text is redacted first (``common.safe_text``): memory is shared between runs and read
        into prompts, so a secret that slipped into a failure's description must not be kept."""
        records = [type(r).model_validate(redact_deep(r.model_dump())).with_id() for r in records]
        if not records:
            return []
        return self.write_vectors(records, self.embedder.embed([r.text for r in records]))

    def write_vectors(self, records: list[Record], vectors) -> list[str]:
        """Write records with vectors already made by this store's embedder (``add`` embeds for you)."""
        records = [r.with_id() for r in records]
        with self._locked():
            records = self._merge_repeats(records)
            for record_type, collection in self._collections.items():
                rows = [i for i, r in enumerate(records) if r.type == record_type]
                for start in range(0, len(rows), PAGE):
                    batch = rows[start:start + PAGE]
                    collection.upsert(ids=[records[i].id for i in batch], documents=[records[i].text for i in batch],
                                      embeddings=[vectors[i] for i in batch],
                                      metadatas=[_metadata(records[i]) for i in batch])
        return [r.id for r in records]

    def _merge_repeats(self, records: list[Record]) -> list[Record]:
        """A lesson learned again keeps its first date and gains the new sources; a failure seen again keeps
        its first record and gains the sighting (once per run and iteration, so a node run twice adds none)."""
        ids = [r.id for r in records if isinstance(r, (LessonRecord, FailureRecord))]
        stored = {r.id: r for r in self.get(ids)} if ids else {}
        merged = []
        for record in records:
            old = stored.get(record.id)
            if isinstance(record, LessonRecord) and isinstance(old, LessonRecord):
                record = merge_lessons(old, record)
            elif isinstance(record, FailureRecord):
                base = old if isinstance(old, FailureRecord) else record
                seen = tuple(dict.fromkeys((*base.seen_in, *record.seen_in, record.sighting)))
                # A moment saved later (a scenario is saved only when an edit fixes the failure) joins the record.
                scenarios = tuple(dict.fromkeys((*base.scenarios, *record.scenarios)))
                record = base.model_copy(update={"seen_in": seen, "scenarios": scenarios})
            merged.append(record)
        return merged

    def add_failure(self, record: FailureRecord) -> str:
        return self.add([record])[0]

    def add_fix(self, record: FixRecord) -> str:
        return self.add([record])[0]

    def add_lesson(self, record: LessonRecord) -> str:
        return self.add([record])[0]

    def add_scenario(self, record: ScenarioRecord) -> str:
        return self.add([record])[0]

    def scenarios_of(self, failures: Iterable[FailureRecord], task: str, protocol: str,
                     most: int = MOST_SCENARIOS) -> tuple[list[ScenarioRecord], dict[str, str]]:
        """The saved moments of these failures that a run of ``task`` under ``protocol`` can replay (a scenario
        restores one task's simulator under one protocol's rules), each once and at most ``most``, the first
        failures' first; and those that cannot be read (a record of a newer heurist, a damaged one), by id with the
        reason. Each is read on its own: one that cannot be read costs that scenario, not the others."""
        # Looked up a few times over: ids no longer in the store, or of records that cannot be read, do not crowd
        # the readable ones out; the lookup stays bounded whatever a failure links to.
        wanted = list(dict.fromkeys(i for f in failures if f.task == task and f.protocol == protocol
                                    for i in f.scenarios))[:4 * most]
        stored = self._metadatas(wanted)
        read = {r.id: r for r in self._readable(m for _, m in stored)}
        found = [r for i, _ in stored if isinstance(r := read.get(i), ScenarioRecord)
                 and r.task == task and r.protocol == protocol][:most]
        return found, {i: "a record this heurist cannot read (a newer heurist's?)" for i, _ in stored if i not in read}

    def forget(self, run_id: str) -> int:
        """Delete every record a run wrote. Returns how many."""
        forgotten = 0
        with self._locked():
            for collection in self._collections.values():
                ids = collection.get(where={"run_id": run_id}, include=[])["ids"]
                if ids:
                    collection.delete(ids=ids)
                forgotten += len(ids)
        return forgotten

    # -- reading -----------------------------------------------------------------------------

    def get(self, ids: Iterable[str]) -> list[Record]:
        return self._readable(m for _, m in self._metadatas(ids))

    def _readable(self, metadatas: Iterable[dict], kind: RecordType | None = None) -> list[Record]:
        """The records these stored metadata hold, each read on its own; the ids of those that cannot be read are
        kept in ``unreadable`` (``heurist memory stats`` names them), and the rest are read all the same. With
        ``kind``, a record of another type (a lesson written into the failures' collection, on a shared server) is
        one that cannot be read: it stopped every recall before."""
        records = []
        for metadata in metadatas:
            try:
                record = _record(metadata)
            except UNREADABLE:
                self.unreadable.add(_raw_id(metadata))
                continue
            if kind is not None and record.type != kind:
                self.unreadable.add(_raw_id(metadata))
                continue
            records.append(record)
        return records

    def _metadatas(self, ids: Iterable[str]) -> list[tuple[str, dict]]:
        """The stored metadata of each of ``ids`` that is in the store, in the order asked, each once."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return []
        by_id = {}
        with self._locked():
            for collection in self._collections.values():
                # In pages: SQLite takes at most 32,766 variables a statement, and an import of a store's own export
                # of 40,000 records looked them all up at once ("too many SQL variables").
                for start in range(0, len(ids), PAGE):
                    found = collection.get(ids=ids[start:start + PAGE], include=["metadatas"])
                    by_id.update(zip(found["ids"], found["metadatas"]))
        return [(i, by_id[i]) for i in ids if i in by_id]

    def count(self) -> int:
        with self._locked():
            return sum(c.count() for c in self._collections.values())

    def records(self) -> Iterator[Record]:
        """Every record, oldest first."""
        metas: list[dict] = []
        with self._locked():
            for collection in self._collections.values():
                for offset in range(0, collection.count(), PAGE):
                    metas += collection.get(include=["metadatas"], limit=PAGE, offset=offset)["metadatas"]
        yield from sorted(self._readable(metas), key=lambda r: (r.created_at, r.id))

    def records_of_run(self, run_id: str) -> list[Record]:
        """Every record one run wrote, oldest first (a lesson merged from several runs belongs to its first)."""
        metas: list[dict] = []
        with self._locked():
            for collection in self._collections.values():
                metas += collection.get(where={"run_id": run_id}, include=["metadatas"])["metadatas"]
        return sorted(self._readable(metas), key=lambda r: (r.created_at, r.id))

    def fixes_for(self, failure_ids: Iterable[str], outcome: str | None = None) -> dict[str, list[FixRecord]]:
        """The fixes that targeted each failure, the ones that worked first."""
        failure_ids = list(dict.fromkeys(failure_ids))
        result: dict[str, list[FixRecord]] = {f: [] for f in failure_ids}
        if not failure_ids:
            return result
        linked = [{"failure_ids": {"$contains": f}} for f in failure_ids]
        conditions = [linked[0] if len(linked) == 1 else {"$or": linked}]
        if outcome:
            conditions.append({"outcome": outcome})
        with self._locked():
            found = self._collections["fix"].get(where=all_of(conditions), include=["metadatas"])
        for fix in self._readable(found["metadatas"], "fix"):
            for failure_id in fix.failure_ids:
                if failure_id in result:
                    result[failure_id].append(fix)
        for fixes in result.values():
            fixes.sort(key=fix_rank_key)
        return result

    def _query(self, vector, record_type: RecordType, conditions: list[dict], k: int) -> list[tuple[Record, float]]:
        """The k nearest records of one type that meet the conditions (``memory.search.nearest``)."""
        collection = self._collections[record_type]
        with self._locked():
            rows = nearest(collection, vector, conditions, k)
        # Cosine distance in [0, 2]; similarity = 1 - distance.
        return [(record, 1.0 - distance) for metadata, distance in rows
                for record in self._readable([metadata], record_type)]

    def recall(self, text: str, *, k: int = 5, task: str | None = None, family: str | None = None,
               kind: str | None = None, outcome: str | None = None, run_id: str | None = None,
               types: Iterable[RecordType] = ("failure", "fix", "lesson")) -> Recall:
        """Similar failures (each with its fixes), similar fixes and lessons, best first.

        ``task`` narrows failures and fixes to that task; lessons are shared by ``family``
        (so a Pong run sees what a Breakout run learned). ``kind`` narrows failures,
        ``outcome`` fixes.
        """
        if not text.strip():
            raise MemoryStoreError("the search text is empty; describe the failure to look for")
        types = set(types)
        vector = self.embedder.embed([text])[0]
        result = Recall(query=text)
        scope = [c for c in ({"task": task} if task else None, {"run_id": run_id} if run_id else None,
                             {"family": family} if family else None) if c]
        if "failure" in types:
            failures = self._query(vector, "failure", scope + ([{"kind": kind}] if kind else []), k)
            fixes = self.fixes_for([f.id for f, _ in failures], outcome)
            known = {f.id: f for f, _ in failures}
            missing = {i for group in fixes.values() for x in group for i in x.failure_ids} - known.keys()
            known.update((r.id, r) for r in self.get(missing))
            result.failures = [
                FailureHit(failure=f, similarity=s,
                           fixes=[FixHit(fix=x, failures=self._targets(x, known)) for x in fixes[f.id]])
                for f, s in failures]
        if "fix" in types:
            hits = self._query(vector, "fix", scope + ([{"outcome": outcome}] if outcome else []), k)
            targets = {r.id: r for r in self.get(i for fix, _ in hits for i in fix.failure_ids)}
            result.fixes = sorted((FixHit(fix=fix, similarity=s, failures=self._targets(fix, targets))
                                   for fix, s in hits), key=lambda h: fix_rank_key(h.fix, h.similarity))
        if "lesson" in types:
            result.lessons = self._lessons(vector, family, k)
        return result

    def _lessons(self, vector, family: str | None, k: int) -> list[LessonHit]:
        """Up to ``k`` lessons: the family's first, then other families' to fill (lessons travel between tasks of
        a family first, and across families when there is room), each group by how often they helped."""
        if family is None:
            found = [LessonHit(lesson=r, similarity=s) for r, s in self._query(vector, "lesson", [], k)]
            return sorted(found, key=lambda h: lesson_rank_key(h.lesson, h.similarity))
        own = [LessonHit(lesson=r, similarity=s) for r, s in self._query(vector, "lesson", [{"family": family}], k)]
        own.sort(key=lambda h: lesson_rank_key(h.lesson, h.similarity))
        if len(own) >= k:
            return own
        others = [LessonHit(lesson=r, similarity=s, same_family=False)
                  for r, s in self._query(vector, "lesson", [{"family": {"$ne": family}}], k - len(own))]
        return own + sorted(others, key=lambda h: lesson_rank_key(h.lesson, h.similarity))

    def note_lessons_used(self, ids: Iterable[str], sighting: str, helped: bool) -> None:
        """Count lessons shown to a coder at ``sighting`` (run_id:iteration), and whether the edit that followed
        was accepted. Idempotent: a sighting is counted once however often this runs. Their text is unchanged,
        so their stored vectors are written back as they are (no embedder call, which may cost money)."""
        ids = list(dict.fromkeys(ids))
        if not ids:
            return
        with self._locked():
            found = self._collections["lesson"].get(ids=ids, include=["metadatas", "embeddings"])
            counted, vectors = [], []
            for meta, vector in zip(found["metadatas"], found["embeddings"]):
                lesson = next(iter(self._readable([meta])), None)
                if not isinstance(lesson, LessonRecord) or sighting in lesson.recalled_in:
                    continue
                counted.append(lesson.model_copy(update={
                    "recalled": lesson.recalled + 1, "recalled_in": (*lesson.recalled_in, sighting)[-RECENT:],
                    "helped": lesson.helped + helped,
                    "helped_in": (*lesson.helped_in, sighting)[-RECENT:] if helped else lesson.helped_in}))
                vectors.append(vector)
            if counted:
                self.write_vectors(counted, vectors)

    @staticmethod
    def _targets(fix: FixRecord, known: dict[str, Record]) -> list[FailureRecord]:
        return [known[i] for i in fix.failure_ids if isinstance(known.get(i), FailureRecord)]

    def stats(self) -> MemoryStats:
        records = list(self.records())
        disk = None
        if self._lock_file is not None:
            disk = sum(p.stat().st_size for p in self.path.rglob("*") if p.is_file())
        return MemoryStats(
            location=self.location, embedder=self.embedder.identity, records=len(records),
            by_type=dict(Counter(r.type for r in records)), by_task=dict(Counter(r.task for r in records).most_common()),
            fixes_by_outcome=dict(Counter(r.outcome for r in records if isinstance(r, FixRecord))),
            runs=len({r.run_id for r in records}), disk_bytes=disk, unreadable=sorted(self.unreadable))

    # -- moving records between stores -----------------------------------------------------------

    def export(self, path: Path) -> int:
        """Write every record as one JSON line, oldest first; the file appears whole or not at all."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        count = 0
        try:
            with open(tmp, "w") as handle:
                for record in self.records():
                    handle.write(record.model_dump_json() + "\n")
                    count += 1
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise MemoryStoreError(f"cannot write {path}: {exc.strerror}; choose a writable path") from None
        return count

    def import_file(self, path: Path) -> tuple[int, int]:
        """Add the records of an export file (re-embedded by this store's embedder) that this store does not hold
        yet. Returns how many were added, and how many it held already (left as they were).

        The file may be a stranger's, so each record is data and nothing more: its id is made again from its own
        fields (an id written in the file could name, and overwrite, another run's record, or one of another type);
        a record this store already holds is left as it is (an import adds no sighting, source or count to it);
        every run the others name is marked ``imported:`` (``memory.records.as_imported``);
        a line longer than any record heurist writes is refused; and the whole file is read and checked before
        anything is written."""
        path = Path(path)
        records: dict[str, Record] = {}
        try:
            with path.open("rb") as lines:
                for number, raw in enumerate(iter(lambda: lines.readline(MAX_IMPORT_LINE + 1), b""), start=1):
                    if len(raw) > MAX_IMPORT_LINE:
                        raise MemoryStoreError(f"{path}:{number} is longer than {MAX_IMPORT_LINE >> 20} MiB, more "
                                               "than any record heurist writes; remove that line")
                    try:
                        line = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        raise MemoryStoreError(f"{path}:{number} is not text; give the file `heurist memory "
                                               "export` wrote, uncompressed") from None
                    if not line.strip():
                        continue
                    record = self._imported(path, number, line)
                    records.setdefault(record.id, record)  # a file holding a record twice adds it once
        except OSError as exc:
            raise MemoryStoreError(f"cannot read {path}: {exc.strerror}") from None
        # A record this store holds already (the store's own export read back) is held as it is; every other one
        # is added as another store's, its runs marked (``as_imported``): a stranger's record cannot claim a run of
        # this store, its report's "Added by this run" or what ``forget --run`` of that run removes.
        # A record held already, as it is, or as it was before another store's import marked it (this store's own
        # records back from a trip through another store: their content is this store's, so nothing is forged).
        origin = {i: unmarked(r).id for i, r in records.items()}
        found = {r.id for r in self.get(set(records) | set(origin.values()))}
        held = {i for i in records if i in found or origin[i] in found}
        held_as = {i: origin[i] for i in held if i not in found}  # links to them follow (a fix of another store's)
        marked = as_imported([r for i, r in records.items() if i not in held], held_as)
        held_marked = {r.id for r in self.get([r.id for r in marked])}  # the same file imported before
        new = list({r.id: r for r in marked if r.id not in held_marked}.values())  # runs "x", "imported:x": one
        written: list[str] = []
        try:
            for start in range(0, len(new), PAGE):
                page = new[start:start + PAGE]
                written += [r.id for r in page]  # before: a page writes one collection after another
                self.add(page)
        except BaseException:
            # All or nothing: the pages written so far are taken out again (they are new ids, none held before), so
            # a failure part-way (a full disk, Ctrl-C) leaves the store as it was and the import can simply be run
            # again. Before, 1,000 of 1,501 records stayed (a red-team review, 2026-12-05).
            self._remove(written)
            raise
        return len(new), len(records) - len(new)

    def _remove(self, ids: list[str]) -> None:
        """Take out records just written; best effort, since it runs when writing has already failed."""
        try:
            with self._locked():
                for collection in self._collections.values():
                    for start in range(0, len(ids), PAGE):
                        collection.delete(ids=ids[start:start + PAGE])
        except Exception:  # the store refuses writes now (a full disk): the import's own error says what happened
            pass

    @staticmethod
    def _imported(path: Path, number: int, line: str) -> Record:
        try:
            record = RECORD_ADAPTER.validate_json(line)
            # As ``add`` keeps it (redacted), with the id its own fields give it.
            record = type(record).model_validate({**redact_deep(record.model_dump()), "id": ""})
            record = record.model_copy(update={"id": record.default_id()})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise MemoryStoreError(f"{path}:{number} is not a memory record ({where}: {first['msg']}); "
                                   "fix or remove that line") from None
        except (ValueError, RecursionError, OverflowError) as exc:
            raise MemoryStoreError(f"{path}:{number} is not a memory record ({type(exc).__name__}); "
                                   "fix or remove that line") from None
        # What Chroma stores as a number must fit its 64 bits: a 400-digit seed passed the record's own checks and
        # failed only when written, after a page of other records (checked here, with every line, before writing).
        for key, value in _metadata(record).items():
            if isinstance(value, int) and not -2**63 <= value < 2**63:
                raise MemoryStoreError(f"{path}:{number} has a {key} of {value.bit_length()} bits, past what the "
                                       f"store keeps (64-bit integers); fix or remove that line")
        return record
