"""A policy as heurist reads it: one ``.py`` file, or a folder holding ``policy.py`` and the data files it reads.

Real policies carry data: a decision tree as JSON, a table, a model file. A policy folder is read
once, whole, by ``read_policy``: its bytes are hashed and those bytes, never the folder itself, are
what the policy process sees (``materialise`` writes them into a fresh read-only folder that is bound
read-only into the sandbox), so a folder that changes during an evaluation changes nothing scored,
and the policy's identity covers every byte it may read.

Identity. A single file's ``sha256`` is the hash of its bytes, as it always was. A folder's is the
hash of a manifest naming each file (``policy.py`` included) by its relative path and its own
sha256, so adding, renaming or changing any data file makes another policy.

What a folder may hold. Regular files only: a symbolic link is refused, not followed (it could name
a file of the user's outside the folder, which heurist, reading as the user, would hand to untrusted
code), and so is anything that is not a plain file. Names starting with a dot (``.git``, ``.env``,
``.venv``) and ``__pycache__`` are left out. At most ``MAX_FILES`` files and ``MAX_BYTES`` bytes: the
bytes are held in memory and copied into every evaluation's scratch folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import PolicyError

ENTRY = "policy.py"  # the readable policy of a folder
MAX_FILES = 1000
MAX_BYTES = 256 * 2**20
MANIFEST_TAG = b"heurist-policy-folder-v1\n"


@dataclass(frozen=True)
class PolicyBundle:
    """What one evaluation scores: the policy's source, its data files by relative path, and their identity."""

    path: Path  # what the user named: the file, or the folder
    data: bytes  # the policy source's bytes
    files: dict[str, bytes] = field(default_factory=dict)  # data files by relative POSIX path (a folder's)
    folder: bool = False

    @property
    def source(self) -> str:
        return self.data.decode()

    @property
    def sha256(self) -> str:
        if not self.folder:
            return hashlib.sha256(self.data).hexdigest()
        return folder_sha256(self.data, self.files)

    @property
    def entry(self) -> Path:
        """The file whose source is the policy: the file itself, or the folder's ``policy.py``."""
        return self.path / ENTRY if self.folder else self.path

    def file_hashes(self) -> dict[str, str]:
        """Each data file's sha256 by relative path (recorded with the evaluation)."""
        return {name: hashlib.sha256(data).hexdigest() for name, data in sorted(self.files.items())}


def folder_sha256(source: bytes, files: dict[str, bytes]) -> str:
    """A policy folder's identity: the manifest of every file's path and sha256, ``policy.py`` included."""
    lines = [f"{name}\0{hashlib.sha256(data).hexdigest()}\n".encode()
             for name, data in sorted({**files, ENTRY: source}.items())]
    return hashlib.sha256(MANIFEST_TAG + b"".join(lines)).hexdigest()


def read_policy(path: Path | str) -> PolicyBundle:
    """The policy at ``path`` (a ``.py`` file or a folder with ``policy.py``), read once; PolicyError in one line."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path)
    if not path.is_file():
        raise PolicyError(f"policy {path} does not exist; give a .py file with a class Policy, or a folder holding "
                          f"{ENTRY} and the files it reads")
    if path.suffix != ".py":
        raise PolicyError(f"{path} is not a .py file; a policy is one Python file with a class Policy, or a folder "
                          f"holding {ENTRY} and the files it reads")
    data = path.read_bytes()
    _utf8(data, path)
    return PolicyBundle(path=path, data=data)


def _utf8(data: bytes, path: Path) -> None:
    try:
        data.decode()
    except UnicodeDecodeError:
        raise PolicyError(f"{path} is not UTF-8 text; a policy is Python source") from None


def _read_folder(folder: Path) -> PolicyBundle:
    entry = folder / ENTRY
    if entry.is_symlink() or not entry.is_file():
        raise PolicyError(f"policy folder {folder} has no {ENTRY}; a policy folder holds {ENTRY} (with its class "
                          f"Policy) and the data files it reads")
    files: dict[str, bytes] = {}
    total = 0
    for root, dirs, names in os.walk(folder, followlinks=False):
        dirs[:] = sorted(d for d in dirs if not _left_out(d))
        for name in sorted(names):
            if _left_out(name):
                continue
            full = Path(root) / name
            relative = full.relative_to(folder).as_posix()
            data = _read_regular(full, folder)
            total += len(data)
            if len(files) >= MAX_FILES or total > MAX_BYTES:
                raise PolicyError(f"policy folder {folder} holds more than {MAX_FILES} files or "
                                  f"{MAX_BYTES // 2**20} MiB; keep only what the policy reads")
            files[relative] = data
        for name in dirs:  # a link to a folder is listed among the folders, and os.walk does not enter it
            if (Path(root) / name).is_symlink():
                raise PolicyError(f"{Path(root) / name} is a symbolic link; a policy folder holds its own files "
                                  f"(copy the data in rather than linking to it)")
    data = files.pop(ENTRY)
    _utf8(data, entry)
    return PolicyBundle(path=folder, data=data, files=files, folder=True)


def _left_out(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__"


def _read_regular(path: Path, folder: Path) -> bytes:
    """A regular file's bytes, never through a link (checked on the descriptor that is read)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        if path.is_symlink():
            raise PolicyError(f"{path} is a symbolic link; a policy folder holds its own files (copy the data in "
                              f"rather than linking to it)") from None
        raise PolicyError(f"cannot read {path} in policy folder {folder}: {exc.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PolicyError(f"{path} is not a regular file; a policy folder holds only files and folders")
        with os.fdopen(os.dup(fd), "rb") as handle:
            return handle.read(MAX_BYTES + 1)
    finally:
        os.close(fd)


def materialise(bundle: PolicyBundle) -> Path:
    """The bundle's files written into a fresh folder that everyone may read and nobody may write (the sandbox's
    unprivileged user reads it, bound read-only where bubblewrap confines it); the folder. ``remove`` ends it.

    The policy process still receives its source over the pipe; ``policy.py`` is written too, so that the
    module's ``__file__`` names a real file and ``Path(__file__).parent / "table.json"`` finds the data."""
    top = Path(tempfile.mkdtemp(prefix="heurist-policy-"))
    try:
        for name, data in [*bundle.files.items(), (ENTRY, bundle.data)]:
            target = top / name
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o444)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        for root, dirs, _ in os.walk(top, topdown=False):
            for name in dirs:
                os.chmod(Path(root) / name, 0o555)
        os.chmod(top, 0o555)
    except BaseException:
        remove(top)
        raise
    return top


def remove(top: Path) -> None:
    """Remove a materialised folder (its folders are read-only, so they are made writable first)."""
    for root, dirs, _ in os.walk(top):
        for name in [".", *dirs]:
            try:
                os.chmod(Path(root) / name, 0o755)
            except OSError:
                pass
    shutil.rmtree(top, ignore_errors=True)


class StagedPolicy:
    """What one evaluation's policy processes are shown: the policy folder's copy (read-only) and the folder of the
    task's simulator model, if it has one; used as a context manager, the copy is removed at the end.

    The simulator model (a MuJoCo task's XML) is resolved by whoever runs the workers, on their machine (a Ray node's
    site packages may lie elsewhere), and its whole folder is readable, since a model may include files beside it."""

    def __init__(self, bundle: PolicyBundle, simulator_model: Path | None) -> None:
        self.bundle = bundle
        self.model = simulator_model
        self.copy: Path | None = materialise(bundle) if bundle.folder else None

    def policy_path(self) -> str:
        """The path the policy's module is given as ``__file__`` (and tracebacks name)."""
        return str(self.copy / ENTRY) if self.copy is not None else str(self.bundle.path.resolve())

    @property
    def simulator_model(self) -> str | None:
        return str(self.model) if self.model is not None else None

    def readable(self) -> list[Path]:
        return [p for p in (self.copy, self.model.parent if self.model is not None else None) if p is not None]

    def close(self) -> None:
        if self.copy is not None:
            remove(self.copy)
            self.copy = None

    def __enter__(self) -> StagedPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ENTRY", "PolicyBundle", "StagedPolicy", "folder_sha256", "materialise", "read_policy", "remove"]
