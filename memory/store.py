"""The memory store: failures, fixes and lessons in one ChromaDB collection, with their links.

Local stores are a ``chromadb.PersistentClient`` directory; a URL gives a ``chromadb.HttpClient``
so that several machines share one memory. Chroma's embedded mode is not safe for two
processes writing one directory at once (two runs here raced to "table collections already
exists" and "database is locked"), so every operation on a local store holds an exclusive
``flock`` on a lock file inside it, plus a thread lock for the graph's parallel nodes.

heurist computes the vectors itself (``memory/embedders.py``) and passes them to Chroma, so
the same code serves an embedded store and a server, and the collection records which
embedder made its vectors: opening it with another is refused.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator
from urllib.parse import urlparse

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from envs.errors import MemoryStoreError
from envs.paths import heurist_home
from envs.safe_text import redact_deep
from memory.embedders import EMBEDDER_ADAPTER, Embedder, EmbedderConfig, MiniLMOnnxConfig, build_embedder
from memory.records import (RECORD_ADAPTER, FailureHit, FailureRecord, FixHit, FixRecord, LessonHit, LessonRecord,
                            Recall, Record, RecordType, fix_rank_key)

FORMAT_VERSION = 1
MARKER = "heurist-memory.json"
LOCK_FILE = ".heurist-memory.lock"
PAGE = 1000
RECORD_TYPES: tuple[RecordType, ...] = ("failure", "fix", "lesson")
# Unfiltered neighbours fetched per wanted result before a filter is applied, and the most
# fetched before Chroma's own (costlier for broad filters) filtering is used instead.
OVERFETCH = 10
MAX_OVERFETCH = 400


def default_memory_path() -> Path:
    return heurist_home() / "memory"


class MemoryConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Path | None = Field(None, description="Local store directory (default: $HEURIST_HOME/memory).")
    url: str | None = Field(None, description="A Chroma server, e.g. http://host:8000; overrides path.")
    collection: str = Field("heurist-memory", pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{1,510}[A-Za-z0-9]$")
    embedder: EmbedderConfig | None = Field(
        None, description="Embedder; default: the one the store was made with, else the offline MiniLM.")


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


def _and(conditions: list[dict]) -> dict | None:
    """Chroma wants a bare condition for one, ``$and`` for two or more, and nothing for none."""
    if not conditions:
        return None
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}


def _metadata(record: Record) -> dict:
    meta: dict = {"type": record.type, "run_id": record.run_id, "task": record.task, "family": record.family,
                  "created_at": record.created_at, "record": record.model_dump_json()}
    if isinstance(record, FailureRecord):
        meta.update(kind=record.kind, iteration=record.iteration, seed=record.seed, step=record.step,
                    protocol=record.protocol)
    elif isinstance(record, FixRecord):
        meta.update(outcome=record.outcome, iteration=record.iteration)
        if record.failure_ids:  # Chroma refuses empty lists
            meta["failure_ids"] = list(record.failure_ids)
    return meta


def _meets(metadata: dict, condition: dict) -> bool:
    """Whether metadata meets one equality condition of the kind ``recall`` builds ({key: value})."""
    [(key, value)] = condition.items()
    return metadata.get(key) == value


def _record(metadata: dict) -> Record:
    return RECORD_ADAPTER.validate_json(metadata["record"])


class MemoryStore:
    """Add, search, export, import and forget memory records. Safe to share between processes."""

    def __init__(self, config: MemoryConfig | None = None, embedder: Embedder | None = None):
        self.config = config or MemoryConfig()
        self._thread_lock = threading.RLock()
        self._lock_file = None
        if self.config.url:
            self.location = self.config.url
            self._client = self._http_client(self.config.url)
        else:
            self.path = (self.config.path or default_memory_path()).expanduser().resolve()
            self.location = str(self.path)
            self._prepare_directory()
            self._lock_file = open(self.path / LOCK_FILE, "a")
            with self._locked():
                self._client = self._persistent_client()
        with self._locked():
            existing = self._find_collections()
        if embedder is None:
            # No embedder named: the one the store was made with, so `heurist memory search`
            # works on any store; a new store gets the offline default.
            recorded = next(((c.metadata or {}).get("heurist:embedder_config") for c in existing.values()), None)
            embedder_config = self.config.embedder or (EMBEDDER_ADAPTER.validate_json(recorded) if recorded
                                                       else MiniLMOnnxConfig())
            embedder = build_embedder(embedder_config)
            self._embedder_config = embedder_config
        else:
            self._embedder_config = self.config.embedder
        self.embedder = embedder
        with self._locked():
            # Another process may have made some since we looked: look again under the lock.
            existing = self._find_collections()
            self._collections = {t: existing.get(t) or self._create_collection(t) for t in RECORD_TYPES}
        for collection in self._collections.values():
            self._check_embedder(collection)

    # -- opening -----------------------------------------------------------------------------

    def _prepare_directory(self) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise MemoryStoreError(f"memory path {path} is a file, not a directory; choose another with --memory")
        marker = path / MARKER
        if path.is_dir() and any(path.iterdir()) and not marker.exists():
            raise MemoryStoreError(f"{path} is not a heurist memory store (no {MARKER}); choose an empty or new "
                                   "directory with --memory")
        try:
            path.mkdir(parents=True, exist_ok=True)
            if not marker.exists():
                tmp = path / f".{MARKER}.{os.getpid()}.tmp"
                tmp.write_text(json.dumps({"format": FORMAT_VERSION, "created_at": time.time()}) + "\n")
                os.replace(tmp, marker)
        except OSError as exc:
            raise MemoryStoreError(f"cannot create memory store at {path}: {exc.strerror}; choose a writable "
                                   "directory with --memory") from None
        try:
            version = json.loads(marker.read_text()).get("format")
        except (OSError, ValueError, AttributeError):
            raise MemoryStoreError(f"{marker} is unreadable; restore it or start a new store with --memory") from None
        if version != FORMAT_VERSION:
            raise MemoryStoreError(f"{path} holds memory format {version}; this heurist reads format "
                                   f"{FORMAT_VERSION}: export it with the heurist that wrote it, then import")

    def _settings(self):
        import chromadb

        # Telemetry would try the network on every call; heurist runs offline.
        return chromadb.Settings(anonymized_telemetry=False, allow_reset=False)

    def _persistent_client(self):
        import chromadb

        try:
            return chromadb.PersistentClient(path=str(self.path), settings=self._settings())
        except Exception as exc:  # chromadb raises its own untyped errors for a damaged sqlite file
            raise MemoryStoreError(f"memory store at {self.path} is unreadable ({type(exc).__name__}: {exc}); move it "
                                   "aside and start a new one, or import a `heurist memory export` file") from None

    def _http_client(self, url: str):
        import chromadb

        parsed = urlparse(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise MemoryStoreError(f"memory URL {url!r} is not http(s)://host[:port]; e.g. http://127.0.0.1:8000")
        try:
            return chromadb.HttpClient(host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                                       ssl=parsed.scheme == "https", settings=self._settings())
        except Exception as exc:  # connection errors come from httpx inside chromadb
            raise MemoryStoreError(f"cannot reach the Chroma server at {url} ({type(exc).__name__}: {exc}); start "
                                   "it (`chroma run --path DIR`) or drop --memory-url") from None

    def _collection_name(self, record_type: str) -> str:
        return f"{self.config.collection}.{record_type}s"

    def _find_collections(self) -> dict:
        try:
            names = {c.name for c in self._client.list_collections()}
            return {t: self._client.get_collection(self._collection_name(t), embedding_function=None)
                    for t in RECORD_TYPES if self._collection_name(t) in names}
        except Exception as exc:  # chromadb's own errors for a damaged store or a failing server
            raise MemoryStoreError(f"cannot open memory collections {self.config.collection!r}.* at {self.location} "
                                   f"({type(exc).__name__}: {exc})") from None

    def _create_collection(self, record_type: str):
        metadata = {"hnsw:space": "cosine", "heurist:embedder": self.embedder.identity,
                    "heurist:format": FORMAT_VERSION, "heurist:created_at": time.time()}
        if self._embedder_config is not None:
            metadata["heurist:embedder_config"] = self._embedder_config.model_dump_json()
        name = self._collection_name(record_type)
        try:
            return self._client.create_collection(name, embedding_function=None, metadata=metadata)
        except Exception as exc:
            raise MemoryStoreError(f"cannot create memory collection {name!r} at {self.location} "
                                   f"({type(exc).__name__}: {exc})") from None

    def _check_embedder(self, collection) -> None:
        name, identity = collection.name, self.embedder.identity
        stored = (collection.metadata or {}).get("heurist:embedder")
        if stored is None:
            raise MemoryStoreError(f"collection {name!r} at {self.location} was not made by heurist; use another "
                                   "--memory location or collection name")
        if stored != identity:
            raise MemoryStoreError(f"memory at {self.location} was embedded with {stored!r}, not {identity!r}; vectors "
                                   "of two embedders cannot be mixed: use the same embedder, a new --memory location, "
                                   "or `heurist memory export` and import into a store made with the new embedder")

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with self._thread_lock:
            if self._lock_file is None:
                yield
                return
            fcntl.flock(self._lock_file, fcntl.LOCK_EX)
            try:
                yield
            finally:
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

        Their text is redacted first (``envs.safe_text``): memory is shared between runs and read
        into prompts, so a secret that slipped into a failure's description must not be kept."""
        records = [type(r).model_validate(redact_deep(r.model_dump())).with_id() for r in records]
        if not records:
            return []
        return self.write_vectors(records, self.embedder.embed([r.text for r in records]))

    def write_vectors(self, records: list[Record], vectors) -> list[str]:
        """Write records with vectors already made by this store's embedder (``add`` embeds for you)."""
        records = [r.with_id() for r in records]
        with self._locked():
            records = self._merge_lessons(records)
            for record_type, collection in self._collections.items():
                rows = [i for i, r in enumerate(records) if r.type == record_type]
                for start in range(0, len(rows), PAGE):
                    batch = rows[start:start + PAGE]
                    collection.upsert(ids=[records[i].id for i in batch], documents=[records[i].text for i in batch],
                                      embeddings=[vectors[i] for i in batch],
                                      metadatas=[_metadata(records[i]) for i in batch])
        return [r.id for r in records]

    def _merge_lessons(self, records: list[Record]) -> list[Record]:
        """A lesson learned again keeps its first date and gains the new sources."""
        lesson_ids = [r.id for r in records if isinstance(r, LessonRecord)]
        if not lesson_ids:
            return records
        stored = {r.id: r for r in self.get(lesson_ids)}
        merged = []
        for record in records:
            old = stored.get(record.id)
            if isinstance(record, LessonRecord) and isinstance(old, LessonRecord):
                sources = tuple(dict.fromkeys(old.source_fix_ids + record.source_fix_ids))
                record = old.model_copy(update={"source_fix_ids": sources})
            merged.append(record)
        return merged

    def add_failure(self, record: FailureRecord) -> str:
        return self.add([record])[0]

    def add_fix(self, record: FixRecord) -> str:
        return self.add([record])[0]

    def add_lesson(self, record: LessonRecord) -> str:
        return self.add([record])[0]

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
        ids = list(dict.fromkeys(ids))
        if not ids:
            return []
        by_id = {}
        with self._locked():
            for collection in self._collections.values():
                found = collection.get(ids=ids, include=["metadatas"])
                by_id.update((i, _record(m)) for i, m in zip(found["ids"], found["metadatas"]))
        return [by_id[i] for i in ids if i in by_id]

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
        yield from sorted((_record(m) for m in metas), key=lambda r: (r.created_at, r.id))

    def records_of_run(self, run_id: str) -> list[Record]:
        """Every record one run wrote, oldest first (a lesson merged from several runs belongs to its first)."""
        metas: list[dict] = []
        with self._locked():
            for collection in self._collections.values():
                metas += collection.get(where={"run_id": run_id}, include=["metadatas"])["metadatas"]
        return sorted((_record(m) for m in metas), key=lambda r: (r.created_at, r.id))

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
            found = self._collections["fix"].get(where=_and(conditions), include=["metadatas"])
        for meta in found["metadatas"]:
            fix = _record(meta)
            for failure_id in fix.failure_ids:
                if failure_id in result:
                    result[failure_id].append(fix)
        for fixes in result.values():
            fixes.sort(key=fix_rank_key)
        return result

    def _query(self, vector, record_type: RecordType, conditions: list[dict], k: int) -> list[tuple[Record, float]]:
        """The k nearest records of one type that meet the conditions.

        Measured here (benchmarks/memory_speed.py): Chroma filters a query by first
        collecting every record that meets the filter, about 10 ms plus 25 µs per such
        record (330 ms when all of 100,000 meet it), while an unfiltered query costs about
        40 µs per neighbour returned. So the filter is first tried on the 50 nearest; from
        how many of those meet it, the share of the store that does is estimated, and the
        cheaper of a larger unfiltered fetch and Chroma's own filtering is used.
        """
        collection = self._collections[record_type]
        include = ["metadatas", "distances"]

        def nearest(n: int, where: dict | None = None) -> tuple[list[tuple[dict, float]], bool]:
            found = collection.query(query_embeddings=[vector], n_results=n, where=where, include=include)
            rows = list(zip(found["metadatas"][0], found["distances"][0]))
            return rows, len(rows) < n  # (rows, whether the collection ran out)

        with self._locked():
            if not conditions:
                rows, _ = nearest(k)
            else:
                first = max(OVERFETCH * k, 50)
                rows, exhausted = nearest(first)
                rows = [r for r in rows if all(_meets(r[0], c) for c in conditions)]
                if len(rows) < k and not exhausted:
                    share = max(len(rows), 0.5) / first
                    wider = math.ceil(2 * k / share)
                    if wider <= MAX_OVERFETCH:
                        rows, exhausted = nearest(wider)
                        rows = [r for r in rows if all(_meets(r[0], c) for c in conditions)]
                    if len(rows) < k and not exhausted:
                        rows, _ = nearest(k, _and(conditions))
        # Cosine distance in [0, 2]; similarity = 1 - distance.
        return [(_record(m), 1.0 - d) for m, d in rows[:k]]

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
            lesson_scope = [{"family": family}] if family else []
            result.lessons = [LessonHit(lesson=r, similarity=s) for r, s in self._query(vector, "lesson", lesson_scope, k)]
        return result

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
            runs=len({r.run_id for r in records}), disk_bytes=disk)

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

    def import_file(self, path: Path) -> int:
        """Add every record of an export file (re-embedded by this store's embedder). Returns how many."""
        path = Path(path)
        try:
            lines = path.read_text().splitlines()
        except OSError as exc:
            raise MemoryStoreError(f"cannot read {path}: {exc.strerror}") from None
        records = []
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                records.append(RECORD_ADAPTER.validate_json(line))
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise MemoryStoreError(f"{path}:{number} is not a memory record ({where}: {first['msg']}); "
                                       "fix or remove that line") from None
        for start in range(0, len(records), PAGE):
            self.add(records[start:start + PAGE])
        return len(records)
