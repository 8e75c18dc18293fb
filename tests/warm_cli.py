"""The tests' ``heurist`` command, forked from a warm Python instead of started cold.

A ``heurist`` process spent 2 to 4 s of CPU importing its libraries before it did anything (LangGraph with
LangSmith, Chroma, SciPy through cma, Gymnasium: ``python -X importtime``), and the suite starts about 150 of
them: a third of its CPU, on a machine whose two cores the suite keeps busy from start to end. So each pytest
worker keeps one of heurist's own fork servers (``envs/forkserver.py``) that has imported those libraries, and
the command-line tests run ``heurist`` as a fork of it: a process of its own (own pid, process group,
environment, working folder, stdin/stdout/stderr, exit code, ``atexit`` at its end), running ``cli.main.main``
as the installed command does. heurist's own modules are imported in each child, not in the fork server, so
whatever they read from the environment when imported comes from the test's environment, as it would.

What a fork cannot be is a fresh interpreter, so some commands start fresh, as before:
- a command whose environment holds a secret (an API key): its ``/proc/self/environ`` would be the fork
  server's, and the tests that give heurist a key look for it everywhere heurist could leak it from;
- the tests that start ``heurist`` with ``subprocess.Popen`` (faults, interrupts, campaigns, doctor, replays,
  the terminal runs), and ``make run``: the installed command's own start (its script, a cold import) stays
  tested.
Forked commands share the fork server's hash seed (string hashing, so the order of a set of strings): a test
that compares two commands to show a result does not depend on the process must start them fresh. numpy's
global generator is seeded anew in each (``envs.forkserver._fresh_random_state``). ``HEURIST_FORK_SERVER=0`` in
the tests' environment turns the warm start off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from common.safe_text import is_secret_name
from envs.forkserver import ForkServer, ForkServerFailed, Stdio, Warm, kill_group

HEURIST = shutil.which("heurist", path=str(Path(sys.executable).parent)) or "heurist"  # the installed command

# Only libraries, and only those whose import starts no thread (the fork server refuses to fork with two) and
# reads nothing from the environment that a test changes: not onnxruntime (a thread at import), not
# matplotlib (its config folder comes from $HOME at import), not cma (it imports matplotlib, which heurist
# keeps it from doing: roles.coder.import_cma), not Ray.
HEURIST_CLI = Warm("heurist-cli", environment="heurist", imports=(
    "numpy", "pydantic", "typer", "rich.progress", "rich.table", "openai", "langgraph.types", "langgraph.graph",
    "langgraph.checkpoint.sqlite", "langchain_core.messages", "chromadb", "tokenizers", "scipy.stats", "jinja2",
    "gymnasium", "ale_py", "pandas", "tensorboardX", "imageio", "cv2"))


def run_heurist(args: list[str], env: dict[str, str] | None = None, cwd: Path | str | None = None,
                timeout: float = 300) -> subprocess.CompletedProcess:
    """``subprocess.run([heurist, *args], capture_output=True, text=True, ...)``, from the warm fork server."""
    args = [str(a) for a in args]
    env = dict(os.environ if env is None else env)
    # A command holding a secret starts fresh: a fork's /proc/self/environ is the fork server's, which has none,
    # and the tests that give heurist a key are there to find it wherever heurist could leak it from.
    server = None if any(is_secret_name(name) for name in env) else ForkServer.shared(HEURIST_CLI)

    def fresh() -> subprocess.CompletedProcess:
        return subprocess.run([HEURIST, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)

    if server is None:
        return fresh()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, open(os.devnull, "rb") as null:
        try:
            proc = server.spawn("cli.main", args, env, Path(cwd or os.getcwd()).resolve(), out.fileno(), (),
                                Stdio(null.fileno(), out.fileno(), err.fileno(), HEURIST))
        except ForkServerFailed:
            ForkServer.give_up(server)
            return fresh()
        try:
            code = proc.wait(timeout)
        except BaseException as exc:  # its timeout, pytest-timeout's alarm, a Ctrl-C: as subprocess.run, the
            kill_group(proc)  # command does not outlive it
            proc.wait()
            if isinstance(exc, subprocess.TimeoutExpired):
                raise subprocess.TimeoutExpired([HEURIST, *args], timeout, _read(out), _read(err)) from None
            raise
        return subprocess.CompletedProcess([HEURIST, *args], code, _read(out), _read(err))


def _read(file) -> str:
    """A captured stream as ``text=True`` gives it: decoded, universal newlines."""
    file.seek(0)
    return file.read().decode().replace("\r\n", "\n").replace("\r", "\n")
