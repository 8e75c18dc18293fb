"""Chroma's side of the memory store: the local directory and its marker, the client, and the collections.

A local store is a ``chromadb.PersistentClient`` directory marked as heurist's (``MARKER``, with
the format it holds); a URL gives a ``chromadb.HttpClient``, so that several machines share one
memory. Each record type has its own collection (``<name>.failures``, ``.fixes``, ``.lessons``),
which records the embedder that made its vectors: opening it with another is refused. Callers
hold the store's lock around these calls (``memory.store.MemoryStore``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from urllib.parse import urlparse

from common.errors import MemoryStoreError
from memory.embedders import Embedder, EmbedderConfig
from memory.records import RecordType

FORMAT_VERSION = 1
MARKER = "heurist-memory.json"
RECORD_TYPES: tuple[RecordType, ...] = ("failure", "fix", "lesson", "scenario")


def prepare_directory(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise MemoryStoreError(f"memory path {path} is a file, not a directory; choose another with --memory")
    marker = path / MARKER
    # Another heurist process creating the same new store is mid-way when only its marker's temp file is there:
    # that is no foreign content (two runs started at once on a fresh memory must both open it).
    foreign = [p for p in path.iterdir() if not p.name.startswith(f".{MARKER}.")] if path.is_dir() else []
    if foreign and not marker.exists():
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


def _settings():
    import chromadb

    # Telemetry would try the network on every call; heurist runs offline.
    return chromadb.Settings(anonymized_telemetry=False, allow_reset=False)


def persistent_client(path: Path):
    import chromadb

    try:
        return chromadb.PersistentClient(path=str(path), settings=_settings())
    except Exception as exc:  # chromadb raises its own untyped errors for a damaged sqlite file
        raise MemoryStoreError(f"memory store at {path} is unreadable ({type(exc).__name__}: {exc}); move it "
                               "aside and start a new one, or import a `heurist memory export` file") from None


def http_client(url: str):
    import chromadb

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise MemoryStoreError(f"memory URL {url!r} is not http(s)://host[:port]; e.g. http://127.0.0.1:8000")
    try:
        return chromadb.HttpClient(host=parsed.hostname, port=parsed.port or (443 if parsed.scheme == "https" else 8000),
                                   ssl=parsed.scheme == "https", settings=_settings())
    except Exception as exc:  # connection errors come from httpx inside chromadb
        raise MemoryStoreError(f"cannot reach the Chroma server at {url} ({type(exc).__name__}: {exc}); start "
                               "it (`chroma run --path DIR`) or drop --memory-url") from None


def collection_name(collection: str, record_type: str) -> str:
    return f"{collection}.{record_type}s"


def find_collections(client, collection: str, location: str) -> dict:
    """The collections of ``collection`` that exist, by record type."""
    try:
        names = {c.name for c in client.list_collections()}
        return {t: client.get_collection(collection_name(collection, t), embedding_function=None)
                for t in RECORD_TYPES if collection_name(collection, t) in names}
    except Exception as exc:  # chromadb's own errors for a damaged store or a failing server
        raise MemoryStoreError(f"cannot open memory collections {collection!r}.* at {location} "
                               f"({type(exc).__name__}: {exc})") from None


def create_collection(client, name: str, embedder: Embedder, embedder_config: EmbedderConfig | None, location: str):
    metadata = {"hnsw:space": "cosine", "heurist:embedder": embedder.identity,
                "heurist:format": FORMAT_VERSION, "heurist:created_at": time.time()}
    if embedder_config is not None:
        metadata["heurist:embedder_config"] = embedder_config.model_dump_json()
    try:
        return client.create_collection(name, embedding_function=None, metadata=metadata)
    except Exception as exc:
        # On a shared server, two runs starting at once both find no collection and both create it: the one that
        # lost the race takes the winner's (its embedder is checked like any existing collection's).
        try:
            return client.get_collection(name, embedding_function=None)
        except Exception:
            pass
        raise MemoryStoreError(f"cannot create memory collection {name!r} at {location} "
                               f"({type(exc).__name__}: {exc})") from None


def check_embedder(collection, identity: str, location: str) -> None:
    name = collection.name
    stored = (collection.metadata or {}).get("heurist:embedder")
    if stored is None:
        raise MemoryStoreError(f"collection {name!r} at {location} was not made by heurist; use another "
                               "--memory location or collection name")
    if stored != identity:
        raise MemoryStoreError(f"memory at {location} was embedded with {stored!r}, not {identity!r}; vectors "
                               "of two embedders cannot be mixed: use the same embedder, a new --memory location, "
                               "or `heurist memory export` and import into a store made with the new embedder")
