"""The run's report rebuilt in a child process, as ``runner/lifecycle.py`` does after every iteration.

A child, because reading the whole run each iteration made heurist's own memory grow by 17-24 MB per 100
iterations (5 without the report; ``benchmarks/soak.py``), and a child's memory goes back to the system each
time. Forked from a warm fork server of its own (``envs/forkserver.py``), because a fresh Python spent 1.5 s of
each report's 2.6 s importing Chroma, matplotlib and Jinja2; the run starts that server when it starts
(``warm_up``), so its imports are done by the first report.

Neither the fork server nor a request to fork holds a secret (the server's memory is every later child's): the
child is forked with heurist's environment less its secret-looking variables, and they come to it over a pipe of
its own (the page redacts their values; a Chroma server's credentials may be among them).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
from pathlib import Path

from common.safe_text import environ_without_secrets, secrets_to_hand_on
from envs.forkserver import ForkServer, Warm, kill_group, start_process

# What the report's fork server imports before its first fork (the page, its plots, the memory store's client),
# seeing heurist's environment (the user's matplotlib settings and fonts, PYTHONPATH) less its secrets.
REPORT_PROCESSES = Warm("report", ("report.render", "memory.chroma", "chromadb"), environment="heurist")
REPORT_TIMEOUT_S = 600.0


class ReportFailed(Exception):
    """The child did not write the report: why, in one line."""


def warm_up() -> None:
    """Start the report's fork server now: it imports in the background while the run evaluates."""
    ForkServer.shared(REPORT_PROCESSES)


def rebuild(run_dir: Path, timeout: float = REPORT_TIMEOUT_S) -> Path:
    """Rewrite RUN_DIR/report/index.html in a child process and return its path; ``ReportFailed`` says why not,
    in one line (the child's last line of output, the time limit, or what could not be started)."""
    run_dir = Path(run_dir).resolve()
    index = run_dir / "report" / "index.html"
    try:
        with tempfile.TemporaryFile(prefix="heurist-report-") as log:
            child = _start(run_dir, log)
            try:
                code = child.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                kill_group(child, signal.SIGKILL)
                child.wait()
                raise ReportFailed(f"it took longer than {timeout:g} s") from None
            except BaseException:  # a Ctrl-C: the child is in its own process group, so it is ended here
                kill_group(child, signal.SIGKILL)
                raise
            log.seek(0)
            lines = log.read()[-4000:].decode(errors="replace").strip().splitlines()
    except OSError as exc:  # no descriptor, no temporary file, no process: the report is a view, the run goes on
        raise ReportFailed(f"its process could not run: {exc}") from None
    # An exit code lost with its fork server: the child's last line says whether it wrote the page.
    if code == 0 or (getattr(child, "status_lost", False) and lines and lines[-1] == str(index)):
        return index
    raise ReportFailed(lines[-1] if lines else f"exit code {code}")


def _start(run_dir: Path, log):
    """The child, started in heurist's working folder (a relative memory path means what it meant to the run),
    then sent heurist's secrets: after it started, so no pipe buffer bounds them and they never pass through the
    fork server. A child that reads no secrets writes no page (``report/__main__.py``)."""
    secrets_r, secrets_w = os.pipe()
    try:
        child = start_process("report.__main__", [str(run_dir), "--secrets-fd", str(secrets_r)],
                              environ_without_secrets(), Path.cwd(), log.fileno(), (secrets_r,), warm=REPORT_PROCESSES)
    except BaseException:
        os.close(secrets_w)
        raise
    finally:
        os.close(secrets_r)
    try:
        with os.fdopen(secrets_w, "wb") as pipe:
            pipe.write(json.dumps(secrets_to_hand_on()).encode())
    except BrokenPipeError:
        pass  # it ended before reading them, and says why in its log
    except BaseException:
        kill_group(child, signal.SIGKILL)
        raise
    return child
