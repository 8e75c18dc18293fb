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
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from common.errors import MemoryStoreError
from common.files import irregular_entries, open_regular
from memory.embedders import Embedder, EmbedderConfig
from memory.records import RecordType

FORMAT_VERSION = 1
MARKER = "heurist-memory.json"
RECORD_TYPES: tuple[RecordType, ...] = ("failure", "fix", "lesson", "scenario")


MAX_MARKER_BYTES = 4096  # the marker is one short JSON line


def prepare_directory(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise MemoryStoreError(f"memory path {path} is a file, not a directory; choose another with --memory")
    if path.is_dir():
        check_plain(path)
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
        with open_regular(marker) as handle:
            version = json.loads(handle.read(MAX_MARKER_BYTES + 1)).get("format")
    except (OSError, ValueError, AttributeError):
        raise MemoryStoreError(f"{marker} is unreadable; restore it or start a new store with --memory") from None
    if version != FORMAT_VERSION:
        raise MemoryStoreError(f"{path} holds memory format {version}; this heurist reads format "
                               f"{FORMAT_VERSION}: export it with the heurist that wrote it, then import")


def check_plain(path: Path) -> None:
    """Refuse a store holding anything but plain files and folders: Chroma writes its index files and its database in
    place, following links, so a store from elsewhere whose index files were links made even ``memory stats``
    overwrite the files they named (a red-team review, 2026-12-05), and a FIFO or a device in a file's place hangs or
    fills memory. heurist and Chroma write none of those."""
    try:
        odd = irregular_entries(path)
    except OSError as exc:
        raise MemoryStoreError(f"cannot list {exc.filename} in memory store {path} ({exc.strerror}); a store's folders "
                               f"are all readable: fix its permissions, or import its export into a new store") from None
    if odd:
        what = "a symbolic link" if odd[0].is_symlink() else "not a regular file"
        raise MemoryStoreError(f"{odd[0]} in memory store {path} is {what}; a store holds only the files heurist and "
                               f"Chroma write. Move it aside, or import the store's export into a new one")


def _settings(**pinned):
    import chromadb

    # Telemetry would try the network on every call; heurist runs offline. No `.env` file is read: Chroma's settings
    # read one from the current folder by default, so a folder holding one (a colleague's unpacked project) sent a
    # "local" store's every call to a server it named (a red-team review, 2026-12-05). What kind of client it is is
    # pinned too, whatever the environment says.
    return chromadb.Settings(_env_file=None, anonymized_telemetry=False, allow_reset=False, **pinned)


def persistent_client(path: Path):
    import chromadb

    try:
        return chromadb.PersistentClient(path=str(path), settings=_settings(
            chroma_api_impl="chromadb.api.rust.RustBindingsAPI"))
    except Exception as exc:  # chromadb raises its own untyped errors for a damaged sqlite file
        raise MemoryStoreError(f"memory store at {path} is unreadable ({type(exc).__name__}: {exc}); move it "
                               "aside and start a new one, or import a `heurist memory export` file") from None


def http_client(url: str):
    import chromadb

    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise MemoryStoreError(f"memory URL {url!r} is not http(s)://host[:port]; e.g. http://127.0.0.1:8000")
    try:
        port = parsed.port or (443 if parsed.scheme == "https" else 8000)
    except ValueError:  # a port that is no number, or past 65535
        raise MemoryStoreError(f"memory URL {url!r} has no valid port; e.g. http://127.0.0.1:8000") from None
    # Chroma makes its HTTP session with no timeout and has no setting for one, so a server that accepted a
    # connection and never answered kept `heurist memory stats`, and every run sharing that server, waiting for ever
    # (a red-team review, 2026-12-05). The client makes its first requests (identity, tenant) while it is created,
    # before its session can be bounded, so it is created in a thread that is waited on for a bounded time (one that
    # never returns is left waiting, as a daemon, and this process goes on without it); then the session is bounded.
    made: dict = {}

    def make() -> None:
        try:
            made["client"] = chromadb.HttpClient(host=parsed.hostname, port=port, ssl=parsed.scheme == "https",
                                                 settings=_settings())
        except BaseException as exc:  # handed to the waiting thread, which says it
            made["error"] = exc

    maker = threading.Thread(target=make, name="heurist-chroma-connect", daemon=True)
    maker.start()
    maker.join(SERVER_TIMEOUT_S)
    if "client" not in made:
        exc = made.get("error")
        why = f"{type(exc).__name__}: {exc}" if exc is not None else f"no answer in {SERVER_TIMEOUT_S:g} s"
        # The URL may be the user's (--memory-url, memory.url) or a run's own record (a campaign's run, served by its
        # campaign, resumed by hand): both ways out are said.
        raise MemoryStoreError(f"cannot reach the Chroma server at {url} ({why}); start it there (`chroma run --path "
                               f"DIR --host {parsed.hostname} --port {port}`, for a campaign's run DIR is the "
                               f"campaign's memory folder), or give the run another memory (--memory-url, memory.url)")
    client = made["client"]
    bound_session(client, url)
    return client


SERVER_TIMEOUT_S = 60.0  # connecting to a memory server, and each wait for more of its reply
MAX_REPLY_BYTES = 256 << 20  # one reply a memory server announces: far past a page of 1,000 records and vectors


def bound_session(client, url: str) -> None:
    """A timeout, and a cap on a reply's announced size, on the HTTP session inside Chroma's client. The session is
    Chroma's own attribute (``_server._session`` in chromadb 1.x): if a later Chroma moves it, this refuses to go on
    unbounded rather than silently (tests/test_memory.py holds it to that). A reply streamed without a length is
    bounded by the timeout between its pieces, not by its size."""
    import httpx

    session = getattr(getattr(client, "_server", None), "_session", None)
    if not isinstance(session, httpx.Client):
        raise MemoryStoreError(f"this chromadb keeps its HTTP session where heurist cannot bound its waits; install "
                               f"the chromadb version heurist pins, or use a local store instead of {url}")
    session.timeout = httpx.Timeout(SERVER_TIMEOUT_S)

    def announced_size(response) -> None:
        size = response.headers.get("content-length", "")
        if size.isdigit() and int(size) > MAX_REPLY_BYTES:
            response.close()
            raise MemoryStoreError(f"the memory server at {url} announced a reply of {int(size):,} bytes, past "
                                   f"{MAX_REPLY_BYTES >> 20} MiB; it is not a Chroma server heurist can use")

    session.event_hooks["response"] = [*session.event_hooks.get("response", []), announced_size]


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


NO_FUNCTION = {"type": "unknown"}  # how Chroma records "none named" (heurist's collections name none)


def _run_by_chroma(value) -> list:
    """What a collection's stored configuration or schema asks Chroma to run: each embedding function it names,
    and each sparse index it enables (which runs one on every upsert). Walked without recursion: the structure is
    the store's."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            for key, inner in item.items():
                if key == "embedding_function" and inner is not None and inner != NO_FUNCTION:
                    found.append(inner)
                elif key == "sparse_vector_index" and isinstance(inner, dict) and inner.get("enabled"):
                    found.append(inner)
                else:
                    stack.append(inner)
    return found


def check_configuration(collection, location: str) -> None:
    """Refuse a collection whose stored configuration asks Chroma to embed anything.

    heurist computes every vector itself and makes its collections with no embedding function; Chroma runs one a
    collection's schema names on every upsert, built from the store's own record of it, key variable and server
    included (a sparse embedder posted a record's text with the user's key to a server of the store's choosing: a
    review, 2026-12-05)."""
    model = collection.get_model()
    asked = _run_by_chroma([model.configuration_json, model.serialized_schema])
    if asked:
        raise MemoryStoreError(f"collection {collection.name!r} at {location} asks Chroma to run an embedding "
                               f"function ({str(asked[0])[:200]}); heurist makes its collections with none. Use "
                               f"another --memory location, or import this store's export into a new one")


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
