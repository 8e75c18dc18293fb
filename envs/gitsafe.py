"""git as heurist runs it: a fixed configuration, a scrubbed environment, nothing a repository can make it run.

git executes programs named in configuration and attributes: ``core.fsmonitor`` on any
command that refreshes the index (``status``, ``diff``, ``add``, ``commit``, ``reset``),
``diff.external`` and textconv drivers, clean and smudge ``filter``s, hooks, a pager, an
editor, credential helpers. Anything that can write a repository's ``.git/config``,
``.git/info/attributes`` or a ``.gitattributes`` could make heurist's own later git commands
run its code with heurist's environment. So every git command heurist runs:

- gets an environment built from nothing: a fixed ``PATH``, no ``HOME``, no system or global
  config (``GIT_CONFIG_NOSYSTEM``, ``GIT_CONFIG_GLOBAL=/dev/null``), no system attributes, no
  replace objects, no terminal prompt, ``cat`` as pager and ``true`` as editor, and none of
  the user's variables (API keys, ``GIT_DIR``, ``GIT_SSH_COMMAND``...);
- overrides on the command line what a repository's config could set: no hooks, no
  fsmonitor, no external diff, no attributes file, no signing, no protocols;
- and, for heurist's own workspaces, ``check_repository`` refuses a repository whose config
  holds any key heurist does not write, whose ``info/attributes`` or any ``.gitattributes``
  exists, that has a hook, or whose ``.git`` is not a plain folder: the reason names what was
  found, because something other than heurist changed it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from common.errors import HeuristError
from common.files import irregular_entries

IDENTITY = {"GIT_AUTHOR_NAME": "heurist", "GIT_AUTHOR_EMAIL": "heurist@localhost",
            "GIT_COMMITTER_NAME": "heurist", "GIT_COMMITTER_EMAIL": "heurist@localhost"}
# Overrides of everything a repository's own config could set to run a program or reach out.
OVERRIDES = ("core.hooksPath=/dev/null", "core.fsmonitor=false", "core.untrackedCache=false",
             "core.attributesFile=/dev/null", "core.pager=cat", "core.editor=true", "core.sshCommand=false",
             "diff.noprefix=false", "commit.gpgSign=false", "tag.gpgSign=false",
             "gpg.program=false", "credential.helper=", "protocol.allow=never", "submodule.recurse=false",
             "safe.bareRepository=explicit",
             # No housekeeping started behind heurist's back: a commit would otherwise spawn `git maintenance run
             # --auto`, and a gc prunes unreachable objects (a rolled-back edit) that a reader may still want.
             "maintenance.auto=false", "gc.auto=0")
# The keys `git init` writes and heurist reads; a workspace's config holds these and nothing else.
ALLOWED_CONFIG = frozenset({"core.repositoryformatversion", "core.filemode", "core.bare", "core.logallrefupdates"})


class GitRefused(HeuristError):
    """A repository heurist will not run git in, because it asks git to run something."""


def git_binary() -> str:
    found = shutil.which("git")
    if found is None:
        raise HeuristError("git is not installed; heurist keeps each run's policy history in git "
                           "(apt-get install git, or run scripts/bootstrap)")
    return found


def git_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The whole environment of a git command heurist runs: built from nothing, never inherited."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent", "XDG_CONFIG_HOME": "/nonexistent",
            "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "GIT_ATTR_NOSYSTEM": "1",
            "GIT_NO_REPLACE_OBJECTS": "1", "GIT_TERMINAL_PROMPT": "0", "GIT_PAGER": "cat", "PAGER": "cat",
            "GIT_EDITOR": "true", "GIT_OPTIONAL_LOCKS": "0", "LC_ALL": "C", **IDENTITY, **(extra or {})}


# How long one git command heurist runs may take. heurist's own repositories answer in milliseconds; a repository
# from elsewhere can make git wait for ever (a FIFO named by its config's include.path, or as a ref): a command
# past this is answered as a failed one, so an overnight run or an evaluation stops waiting and says so.
GIT_TIMEOUT_S = 300.0


def run_git(args: list[str], cwd: Path, *, binary: bool = False, timeout_s: float = GIT_TIMEOUT_S,
            stdin_text: str | None = None) -> subprocess.CompletedProcess:
    """``git ARGS`` in ``cwd`` with the fixed configuration; never raises for a non-zero exit, and a command that
    outlasts ``timeout_s`` comes back as one that failed (exit 124, the reason in its stderr).

    git runs in a session of its own: with no controlling terminal, a repository that names ``/dev/tty`` (as an
    include, say) gets an error, not the user's keyboard. ``stdin_text`` is its standard input (else none): how a
    long text reaches it (``commit -F -``), since one argument is at most 128 KiB on Linux."""
    overrides = [arg for pair in OVERRIDES for arg in ("-c", pair)]
    command = [git_binary(), *overrides, *args]
    given = {"stdin": subprocess.DEVNULL} if stdin_text is None else \
        {"input": stdin_text if not binary else stdin_text.encode()}
    try:
        return subprocess.run(command, cwd=cwd, env=git_env(), capture_output=True, text=not binary,
                              start_new_session=True, timeout=timeout_s, **given)
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        reason = f"git {args[0] if args else ''} did not finish in {timeout_s:g} s"
        return subprocess.CompletedProcess(command, 124, b"" if binary else "",
                                           reason.encode() if binary else reason)


def check_repository(root: Path) -> None:
    """Refuse a workspace repository that asks git to run anything: heurist never writes such a thing."""
    root = Path(root)
    dot_git = root / ".git"
    if dot_git.is_symlink() or not dot_git.is_dir():
        raise GitRefused(f"{dot_git} is not a plain folder (a link or a gitdir file points elsewhere); heurist "
                         f"made it as one, so something else changed it: the run cannot trust its history")
    # git writes plain files and folders only; a link, a FIFO or a device in .git (a ref, the config) could make git
    # read outside the repository or wait for ever.
    try:
        odd = [str(entry.relative_to(root)) for entry in irregular_entries(dot_git)]
    except OSError as exc:
        raise _unreadable(exc) from None
    if odd:
        raise GitRefused(f"the workspace {root} holds {', '.join(sorted(odd))[:300]}, which is not a plain file or "
                         f"folder as git writes; something other than heurist put it there, and the run cannot trust "
                         f"its history")
    try:
        listed = subprocess.run([git_binary(), "config", "--file", str(dot_git / "config"), "--no-includes",
                                 "--null", "--list"], cwd="/", env=git_env(), capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, start_new_session=True, timeout=GIT_TIMEOUT_S)
    except subprocess.TimeoutExpired:  # a FIFO where the config should be
        raise GitRefused(f"{dot_git / 'config'} could not be read in {GIT_TIMEOUT_S:g} s (is it a regular file?); "
                         f"the run cannot trust its history") from None
    if listed.returncode != 0:
        raise GitRefused(f"{dot_git / 'config'} cannot be read as git config ({listed.stderr.strip()[:200]}); "
                         f"the run cannot trust its history")
    keys = sorted({entry.split("\n", 1)[0].lower() for entry in listed.stdout.split("\0") if entry})
    foreign = [key for key in keys if key not in ALLOWED_CONFIG]
    if foreign:
        raise GitRefused(f"{dot_git / 'config'} sets {', '.join(foreign)[:300]}, which heurist never writes; "
                         f"something other than heurist changed it, and git could run a program it names. "
                         f"Inspect the repository; the run will not use it as it is")
    problems = [str(p.relative_to(root)) for p in (dot_git / "info" / "attributes", dot_git / "config.worktree",
                                                  dot_git / "commondir", dot_git / "objects" / "info" / "alternates",
                                                  dot_git / "objects" / "info" / "http-alternates")
                if p.exists() or p.is_symlink()]
    hooks = dot_git / "hooks"
    if hooks.is_dir():
        problems += [str(p.relative_to(root)) for p in hooks.iterdir() if not p.name.endswith(".sample")]
    for folder, dirs, files in os.walk(root, onerror=_unlistable):
        dirs[:] = [d for d in dirs if not (Path(folder) == root and d == ".git")]
        problems += [str((Path(folder) / f).relative_to(root)) for f in files if f == ".gitattributes"]
    if problems:
        raise GitRefused(f"the workspace {root} holds {', '.join(sorted(problems))[:300]}, which heurist never "
                         f"writes and through which git could run a program; the run will not use it as it is")


def _unlistable(exc: OSError) -> None:
    """A folder of the workspace that cannot be listed (os.walk would skip it silently) hides what it holds; one
    removed since it was listed (git's own temporary folders) holds nothing."""
    if isinstance(exc, FileNotFoundError):
        return
    raise _unreadable(exc)


def _unreadable(exc: OSError) -> GitRefused:
    return GitRefused(f"{exc.filename} cannot be read ({exc.strerror}); heurist made every folder of its workspace "
                      f"readable, so something else changed it: the run cannot trust its history")
