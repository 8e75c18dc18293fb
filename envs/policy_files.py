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
code), and so is a file with other hard links (for the same reason) and anything that is not a plain
file (looked at before it is opened: opening a device can do something). The folder is read by
descriptors, so one that changes while it is read cannot lead outside it (see ``_FolderReader``).
Names starting with a dot (``.git``, ``.env``, ``.venv``) and ``__pycache__`` are left out. At most
``MAX_FILES`` files, ``MAX_BYTES`` bytes (a file's size is looked at before it is read) and paths of
``MAX_PATH_BYTES`` inside the folder: the bytes are held in memory and copied into every evaluation's
scratch folder.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from common.errors import PolicyError
from envs.contract import MAX_SOURCE_BYTES, too_large
from envs.isolation import sandbox_user

ENTRY = "policy.py"  # the readable policy of a folder
MAX_FILES = 1000
MAX_BYTES = 256 * 2**20
MAX_DEPTH = 32  # folders inside folders: os.walk recurses, and a deep tree is no policy's data
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


def read_policy(path: Path | str, leave_out: Iterable[Path] = ()) -> PolicyBundle:
    """The policy at ``path`` (a ``.py`` file or a folder with ``policy.py``), read once; PolicyError in one line.

    ``leave_out``: what heurist itself writes that may lie inside a policy folder (the ledger, the clips, its
    home); never handed to the policy, never part of its identity, so two evaluations of one folder are one
    policy even when the first wrote its ledger there."""
    path = Path(path)
    if path.is_dir():
        return _read_folder(path, leave_out)
    if not path.is_file():
        raise PolicyError(f"policy {path} does not exist; give a .py file with a class Policy, or a folder holding "
                          f"{ENTRY} and the files it reads")
    if path.suffix != ".py":
        raise PolicyError(f"{path} is not a .py file; a policy is one Python file with a class Policy, or a folder "
                          f"holding {ENTRY} and the files it reads")
    if path.stat().st_size > MAX_SOURCE_BYTES:  # before reading it: it may be any size
        raise PolicyError(too_large(str(path)))
    data = path.read_bytes()
    _utf8(data, path)
    return PolicyBundle(path=path, data=data)


def _utf8(data: bytes, path: Path) -> None:
    try:
        data.decode()
    except UnicodeDecodeError:
        raise PolicyError(f"{path} is not UTF-8 text; a policy is Python source") from None


# Every folder below the one the user named is opened relative to its parent's descriptor, never through a link, and
# every file is looked at (``lstat``) before it is opened, so nothing outside the folder is reached even if the
# folder changes while it is read (a subfolder swapped for a link between its listing and its reading: a red-team
# review, 2026-12-05, got a 0600 file of the user's into the sandbox that way through ``os.walk``). os.fwalk walks by
# descriptors too, but opens each subfolder without O_NOFOLLOW or O_NONBLOCK (a folder swapped for a link to a FIFO
# blocks it) and skips a swapped one silently; a folder that changes while it is read is refused here instead.
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
MAX_PATH_BYTES = 1024  # a data file's path inside the folder: it is staged under a temp folder, within PATH_MAX


class _FolderReader:
    """One reading of a policy folder: its files by relative path, within the limits."""

    def __init__(self, folder: Path, leave_out: Iterable[Path]) -> None:
        self.folder = folder
        self.files: dict[str, bytes] = {}
        self.total = 0
        # heurist's own files are known by what they are (device and inode), not by their path: a path can name
        # them through a link, and their identity cannot be forged.
        self.heurists: set[tuple[int, int]] = set()
        for own in leave_out:
            try:
                found = os.stat(own)
            except OSError:  # not written yet: nothing of it to leave out
                continue
            self.heurists.add((found.st_dev, found.st_ino))

    def read(self) -> dict[str, bytes]:
        try:
            top = os.open(self.folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # as the user named it
        except OSError as exc:
            raise self._unlistable(self.folder, exc) from None
        try:
            self._read_tree(top, self.folder, ())
        finally:
            os.close(top)
        return self.files

    def _unlistable(self, where: Path, exc: OSError) -> PolicyError:
        return PolicyError(f"cannot list {where} in policy folder {self.folder}: {exc.strerror}; make it readable "
                           f"or move it out of the folder")

    def _too_much(self) -> PolicyError:
        return PolicyError(f"policy folder {self.folder} holds more than {MAX_FILES} files or "
                           f"{MAX_BYTES // 2**20} MiB; keep only what the policy reads")

    def _changed(self, where: Path) -> PolicyError:
        return PolicyError(f"{where} changed while heurist read policy folder {self.folder}; evaluate it once "
                           f"nothing is writing to it")

    def _read_tree(self, dir_fd: int, here: Path, parts: tuple[str, ...]) -> None:
        if len(parts) >= MAX_DEPTH:
            raise PolicyError(f"policy folder {self.folder} nests folders more than {MAX_DEPTH} deep; keep only "
                              f"what the policy reads")
        try:
            names = sorted(os.listdir(dir_fd))
        except OSError as exc:
            raise self._unlistable(here, exc) from None
        for name in names:
            if _left_out(name):
                continue
            full = here / name
            try:
                seen = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:  # removed since the listing: it is not part of the policy
                continue
            except OSError as exc:
                raise PolicyError(f"cannot read {full} in policy folder {self.folder}: {exc.strerror}; make it "
                                  f"readable or move it out of the folder") from None
            if (seen.st_dev, seen.st_ino) in self.heurists:
                continue
            relative = "/".join((*parts, name))
            try:
                length = len(relative.encode())
            except UnicodeEncodeError:
                raise PolicyError(f"{full!r} has a name that is not UTF-8; rename it (policy files are named in "
                                  f"the ledger)") from None
            if stat.S_ISLNK(seen.st_mode):
                raise PolicyError(f"{full} is a symbolic link; a policy folder holds its own files (copy the data in "
                                  f"rather than linking to it)")
            if stat.S_ISDIR(seen.st_mode):
                self._read_subfolder(dir_fd, name, full, (*parts, name), seen)
                continue
            if not stat.S_ISREG(seen.st_mode):  # a FIFO, a socket, a device: refused before it is opened
                raise PolicyError(f"{full} is not a regular file; a policy folder holds only files and folders")
            if length > MAX_PATH_BYTES:
                raise PolicyError(f"{full!r} is named by a path over {MAX_PATH_BYTES} bytes inside policy folder "
                                  f"{self.folder}; shorten its folders' and its names")
            if len(self.files) >= MAX_FILES or self.total + seen.st_size > MAX_BYTES:  # before reading any of it
                raise self._too_much()
            data = self._read_file(dir_fd, name, full, seen)
            self.total += len(data)
            if self.total > MAX_BYTES:  # it grew since it was looked at
                raise self._too_much()
            self.files[relative] = data

    def _read_subfolder(self, dir_fd: int, name: str, full: Path, parts: tuple[str, ...], seen: os.stat_result) -> None:
        try:
            sub = os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.ENOENT):  # swapped since it was looked at
                raise self._changed(full) from None
            raise self._unlistable(full, exc) from None
        try:
            opened = os.fstat(sub)
            if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino):
                raise self._changed(full)
            self._read_tree(sub, full, parts)
        finally:
            os.close(sub)

    def _read_file(self, dir_fd: int, name: str, full: Path, seen: os.stat_result) -> bytes:
        """A regular file's bytes, never through a link; refused if it has other names (hard links)."""
        try:
            fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOENT):
                raise self._changed(full) from None
            raise PolicyError(f"cannot read {full} in policy folder {self.folder}: {exc.strerror}; make it readable "
                              f"or move it out of the folder") from None
        try:
            opened = os.fstat(fd)
            if (opened.st_dev, opened.st_ino) != (seen.st_dev, seen.st_ino) or not stat.S_ISREG(opened.st_mode):
                raise self._changed(full)
            if opened.st_nlink > 1:
                # Another name of the same file may lie anywhere on the file system (a key, heurist's own ledger):
                # the reason a link is refused holds for a hard link too.
                raise PolicyError(f"{full} has {opened.st_nlink - 1} other hard link(s) and could be a file from "
                                  f"outside the folder; a policy folder holds its own files (copy it in: cp, not ln)")
            with os.fdopen(os.dup(fd), "rb") as handle:
                return handle.read(MAX_BYTES - self.total + 1)
        finally:
            os.close(fd)


def _read_folder(folder: Path, leave_out: Iterable[Path]) -> PolicyBundle:
    entry = folder / ENTRY
    if entry.is_symlink():
        raise PolicyError(f"{entry} is a symbolic link; a policy folder holds its own {ENTRY} (copy it in)")
    if not entry.is_file():
        raise PolicyError(f"policy folder {folder} has no {ENTRY}; a policy folder holds {ENTRY} (with its class "
                          f"Policy) and the data files it reads")
    files = _FolderReader(folder, leave_out).read()
    data = files.pop(ENTRY, None)
    if data is None:  # gone since it was looked at, or one of heurist's own files (a ledger named policy.py)
        raise PolicyError(f"policy folder {folder} has no {ENTRY} of its own to read; a policy folder holds {ENTRY} "
                          f"(with its class Policy) and the data files it reads")
    if len(data) > MAX_SOURCE_BYTES:
        raise PolicyError(too_large(str(entry)))
    _utf8(data, entry)
    return PolicyBundle(path=folder, data=data, files=files, folder=True)


def _left_out(name: str) -> bool:
    return name.startswith(".") or name == "__pycache__"


def materialise(bundle: PolicyBundle) -> Path:
    """The bundle's files (``policy.py`` included) written into a fresh read-only folder; the folder.

    The policy process still receives its source over the pipe; ``policy.py`` is written too, so that the
    module's ``__file__`` names a real file and ``Path(__file__).parent / "table.json"`` finds the data."""
    return _stage({**bundle.files, ENTRY: bundle.data}, "heurist-policy-")


def _stage(files: dict[str, bytes], prefix: str) -> Path:
    """``files`` written into a fresh temp folder that the sandbox's user may read and nobody may write; the folder.

    As root, the sandbox runs as ``nobody``: the copy stays root's, readable by nobody's group alone (0440/0550), so
    the sandbox can neither change its modes nor write it. Otherwise the sandbox runs as heurist's own user: the
    copy is that user's alone (0400/0500). Either way no other user of the machine reads it."""
    try:
        top = Path(tempfile.mkdtemp(prefix=prefix))
    except OSError as exc:
        raise PolicyError(f"cannot make a folder in {tempfile.gettempdir()} for the policy's files: {exc.strerror}; "
                          f"free space there (or point TMPDIR elsewhere)") from None
    as_root = os.geteuid() == 0
    file_mode, dir_mode = (0o440, 0o550) if as_root else (0o400, 0o500)
    try:
        for name, data in files.items():
            target = top / name
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
        for root, dirs, names in os.walk(top, topdown=False):
            for name in names:
                _freeze(Path(root) / name, file_mode, as_root)
            for name in dirs:
                _freeze(Path(root) / name, dir_mode, as_root)
        _freeze(top, dir_mode, as_root)
    except OSError as exc:  # a full or read-only temp folder: said in one line, the copy removed
        remove(top)
        raise PolicyError(f"cannot copy the policy's files for the sandbox into {top}: {exc.strerror}; free space "
                          f"in {tempfile.gettempdir()} (or point TMPDIR elsewhere)") from None
    except BaseException:
        remove(top)
        raise
    return top


def _freeze(path: Path, mode: int, as_root: bool) -> None:
    if as_root:  # the sandbox's group (nobody's) may read; the owner stays root
        os.chown(path, 0, sandbox_user()[1], follow_symlinks=False)
    os.chmod(path, mode)


def remove(top: Path) -> None:
    """Remove a staged folder (its folders are read-only, so they are made writable first)."""
    for root, dirs, _ in os.walk(top):
        for name in [".", *dirs]:
            try:
                os.chmod(Path(root) / name, 0o700)
            except OSError:
                pass
    shutil.rmtree(top, ignore_errors=True)


class StagedPolicy:
    """What one evaluation's policy processes are shown: the policy folder's copy and a copy of the task's simulator
    model, if it has one (``simulator_model``: that copy's path), both read-only; as a context manager, the copies
    are removed at the end.

    The model file alone is copied, never the folder it lies in (a custom task's XML may sit in a project or home
    folder beside anything); a model that includes other files (meshes, ``<include>``) finds them missing. Whoever
    runs the workers resolves the model on their machine (a Ray node's site packages may lie elsewhere)."""

    def __init__(self, bundle: PolicyBundle, simulator_model: Path | None) -> None:
        self.bundle = bundle
        self.copy: Path | None = None
        self.model_copy: Path | None = None
        self.model_name = simulator_model.name if simulator_model is not None else None
        try:
            self.copy = materialise(bundle) if bundle.folder else None
            if simulator_model is not None:
                data = simulator_model.read_bytes()[: MAX_BYTES + 1]
                if len(data) > MAX_BYTES:
                    raise PolicyError(f"the task's simulator model {simulator_model} is over "
                                      f"{MAX_BYTES // 2**20} MiB")
                self.model_copy = _stage({simulator_model.name: data}, "heurist-model-")
        except BaseException:
            self.close()
            raise

    def policy_path(self) -> str:
        """The path the policy's module is given as ``__file__`` (and tracebacks name)."""
        return str(self.copy / ENTRY) if self.copy is not None else str(self.bundle.path.resolve())

    @property
    def simulator_model(self) -> str | None:
        return str(self.model_copy / self.model_name) if self.model_copy is not None else None

    def readable(self) -> list[Path]:
        return [p for p in (self.copy, self.model_copy) if p is not None]

    def close(self) -> None:
        for folder in (self.copy, self.model_copy):
            if folder is not None:
                remove(folder)
        self.copy = self.model_copy = None

    def __enter__(self) -> StagedPolicy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = ["ENTRY", "PolicyBundle", "StagedPolicy", "folder_sha256", "materialise", "read_policy", "remove"]
