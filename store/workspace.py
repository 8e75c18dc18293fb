"""The run workspace: a git repository holding the policy file and its regression tests.

Each accepted edit is one commit whose message says what changed and why; a rejected
edit is rolled back (reset to the last commit) and leaves a record in the ledger, not a
commit. Every operation here is safe to repeat: a graph node that runs again after a
crash finds the work already done and does not do it twice.

No sandboxed process ever sees this repository: regression tests run on throwaway copies
of their own files (``envs.regression``) and policies get their source over a pipe. git
still runs only through ``envs.gitsafe`` (a fixed configuration, no secrets in its
environment), and the repository is checked before every command that touches the work
tree: a config key, hook or attributes file heurist did not write stops the run with the
reason, instead of being obeyed.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

from common.errors import HeuristError
from common.files import atomic_write
from common.safe_text import cut, redact
from envs.gitsafe import check_repository, run_git

POLICY_FILE = "policy.py"
TESTS_DIR = "tests"
TRAILER = "Heurist-Iteration"
MAX_MESSAGE_CHARS = 50_000  # the model's text in a commit message, as the ledger keeps an edit's diff
SIMPLIFY_TRAILER = "Heurist-Simplify"  # a simplification kept after the iteration it names
TEST_NAME = re.compile(r"tests/test_[A-Za-z0-9_]+\.py")


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
_TRAILER_LIKE = re.compile(r"^(\s*)(Heurist-[\w-]*\s*:)", re.IGNORECASE | re.MULTILINE)


def commit_text(text: str) -> str:
    """Text for a commit message that quotes the model: control characters written out (a NUL cannot be in git's
    arguments, and stopped every resume of the run), and a line that reads as one of heurist's trailers quoted,
    so that no one reading the history (``git log --grep``, a person) takes the model's words for heurist's."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)
    return _TRAILER_LIKE.sub(r"\1(quoted) \2", text)


class WorkspaceError(HeuristError):
    """The workspace's git repository cannot be used."""


# What heurist records of a commit: its full id (``rev-parse HEAD``), or HEAD. A commit read from a ledger or a
# checkpoint that is anything else was not written by heurist: "--output=FILE" given to `git show` writes a file, and
# with it git prints a diff, which a textconv driver in the repository turns into a program run.
_OBJECT_NAME = re.compile(r"[0-9a-f]{7,64}|HEAD")


def object_name(commit: str) -> str:
    """``commit`` if it is a commit id or HEAD; otherwise WorkspaceError, naming the damage."""
    if not isinstance(commit, str) or not _OBJECT_NAME.fullmatch(commit):
        raise WorkspaceError(f"{str(commit)[:80]!r} is not a commit id, so heurist did not record it: the run's "
                             f"records were changed by something else; restore them from a copy")
    return commit


class Workspace:
    def __init__(self, root: Path):
        self.root = Path(root)

    @property
    def policy(self) -> Path:
        return self.root / POLICY_FILE

    @property
    def tests(self) -> Path:
        return self.root / TESTS_DIR

    def git(self, *args: str, check: bool = True, strip: bool = True, stdin_text: str | None = None) -> str:
        # A fixed identity and configuration, no user config and no secrets (envs.gitsafe): commits
        # are the same on every machine, and nothing in a repository can make git run a program.
        done = run_git(list(args), self.root, stdin_text=stdin_text)
        if check and done.returncode != 0:
            raise WorkspaceError(f"git {' '.join(args)} failed in {self.root}: {done.stderr.strip()[:300]}")
        return done.stdout.strip() if strip else done.stdout

    def create(self, policy_source: str, files: dict[str, str]) -> str:
        """A new repository with the starting policy and heurist's test files; returns the first commit."""
        if (self.root / ".git").exists():
            return self.head()
        self.root.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main", "--template=")  # no sample hooks, no template files
        atomic_write(self.policy, policy_source)
        for name, text in files.items():
            atomic_write(self.root / name, text)
        self.git("add", "-A")
        self.git("commit", "-q", "-m", "Starting policy\n\nThe policy heurist was given, copied unchanged.")
        return self.head()

    def head(self) -> str:
        return self.git("rev-parse", "HEAD")

    def source_at(self, commit: str) -> str:
        """The policy file as committed at ``commit``, whatever the working tree holds now."""
        return self.git("show", f"{object_name(commit)}:{POLICY_FILE}", strip=False)

    def file_sha256(self, commit: str, path: str = POLICY_FILE) -> str:
        """The sha256 of a file's exact bytes as committed (no text decoding, no newline translation)."""
        done = run_git(["show", f"{object_name(commit)}:{path}"], self.root, binary=True)
        if done.returncode != 0:
            raise WorkspaceError(f"git show {commit}:{path} failed in {self.root}: "
                                 f"{done.stderr.decode(errors='replace').strip()[:300]}")
        return hashlib.sha256(done.stdout).hexdigest()

    def tests_at(self, commit: str) -> dict[str, str]:
        """The accepted regression test files at ``commit`` (``tests/test_*.py``), by name, as committed."""
        names = self.git("ls-tree", "--name-only", object_name(commit), "--", f"{TESTS_DIR}/").splitlines()
        return {name: self.git("show", f"{commit}:{name}", strip=False)
                for name in sorted(names) if TEST_NAME.fullmatch(name)}

    def changed_between(self, before: str, after: str) -> list[str]:
        """The files one commit changed against another (trees only: no work tree, no filters run)."""
        return self.git("diff", "--name-only", "--no-ext-diff", "--no-textconv", object_name(before), object_name(after),
                        "--").splitlines()

    def check(self) -> None:
        """Refuse the repository if it holds anything heurist never writes (``envs.gitsafe.check_repository``)."""
        check_repository(self.root)

    def clear_crash_locks(self) -> list[str]:
        """Remove the lock files a git killed mid-write leaves (``index.lock``, ``HEAD.lock``, a ref's): git
        refuses to write while one exists, and a run killed in a commit or a reset could then never resume. Only
        for a caller that holds the run's lock, so that no git of heurist's is at work here. No ref may end in
        ``.lock``, so nothing else is taken. Returns what was removed, relative to ``.git``."""
        git_dir = self.root / ".git"
        removed = []
        for folder, _, files in os.walk(git_dir):  # links are not followed
            for name in files:
                if name.endswith(".lock"):
                    path = Path(folder) / name
                    path.unlink(missing_ok=True)
                    removed.append(str(path.relative_to(git_dir)))
        return sorted(removed)

    def reset_to(self, commit: str) -> None:
        """The workspace exactly at ``commit``: nothing staged, nothing untracked."""
        self.check()
        self.git("reset", "-q", "--hard", object_name(commit))
        self.git("clean", "-q", "-fdx")

    def commit_for_iteration(self, iteration: int, trailer: str = TRAILER) -> str | None:
        """The commit already made for this iteration (or, with ``SIMPLIFY_TRAILER``, for the simplification that
        followed it), if a previous attempt got that far. Read from each message's trailer block alone (its last
        paragraph, which heurist writes), never from the text above it: that quotes the model (its rationale, the
        reviewer's reasons), which could name any iteration."""
        log = self.git("log", f"--format=%H%x1f%(trailers:key={trailer},valueonly,separator=%x1f)%x1e")
        for entry in filter(None, (e.strip() for e in log.split("\x1e"))):
            sha, *values = entry.split("\x1f")
            if str(iteration) in (v.strip() for v in values):
                return sha
        return None

    def commit(self, iteration: int, subject: str, body: str, trailer: str = TRAILER) -> str:
        """Commit everything in the working tree as this iteration's accepted edit, or the simplification after it
        (once each: the trailer names it)."""
        existing = self.commit_for_iteration(iteration, trailer)
        if existing:
            return existing
        self.check()
        self.git("add", "-A")
        # The message quotes review reasons, which may quote test output: no secret goes into history. It quotes the
        # model too, at most MAX_MESSAGE_CHARS of it, and reaches git on its standard input: as one argument, a
        # 140,000-character rationale made git fail to start ("Argument list too long"), and every resume of the run
        # failed the same way at the same commit (a red-team review, 2026-12-05).
        body = body.strip()
        if len(body) > MAX_MESSAGE_CHARS:
            body = f"{cut(body, MAX_MESSAGE_CHARS)}\n[... {len(body) - MAX_MESSAGE_CHARS:,} more characters cut]"
        message = commit_text(redact(f"{subject}\n\n{body}"))
        self.git("commit", "-q", "--allow-empty", "-F", "-",
                 stdin_text=f"{message}\n\n{trailer}: {iteration}\n")
        return self.head()

    def history(self) -> list[dict[str, str]]:
        out = self.git("log", "--format=%H%x1f%s%x1f%b%x1e")
        rows = []
        for entry in filter(None, (e.strip() for e in out.split("\x1e"))):
            sha, subject, body = (entry.split("\x1f") + ["", ""])[:3]
            rows.append({"commit": sha, "subject": subject, "body": body.strip()})
        return rows
