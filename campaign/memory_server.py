"""The campaign's own memory: a Chroma server the driver starts, so every run learns from every other.

Runs on several machines cannot share a local store (a directory of SQLite and index files that
one machine locks), so unless the user points the runs at a server (``--memory-url``) or sets
``[run.memory]`` themselves, the campaign serves its memory: ``chroma run --path
CAMPAIGN_DIR/memory`` (Chroma's own server, the one ``chromadb`` installs), for as long as a driver
drives the campaign. Its address is chosen once, when the campaign starts, and written into every
run's config (run.json pins it, so a run resumed by hand finds the same memory): 127.0.0.1 on one
machine, else the address by which this machine reaches the cluster's head, with a port free then.

The folder is also a heurist memory store (it carries the marker), so once no driver serves it,
``heurist memory search --memory CAMPAIGN_DIR/memory`` reads it like any local store.

Chroma's server has no authentication: anyone who reaches its port can read and write the memory.
On a cluster it listens on the driver's address, not on every interface; on a network you do not
trust, run a server behind your own proxy and give ``--memory-url`` (docs/campaigns.md). Sandboxed
code never reaches it: a policy or test runs without a network.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from campaign.plan import CampaignError
from memory.chroma import prepare_directory

READY_S = 120.0  # how long a starting server has to answer its heartbeat (a loaded machine, a large store)
STOP_S = 10.0  # how long a stopped server has to flush and exit before it is killed
# What the server's process inherits: nothing secret; where it finds its libraries and writes its temp files.
ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "TMPDIR")


def choose_url(address: str | None) -> str:
    """Where the campaign's memory will be served: this machine's address towards the cluster's head (127.0.0.1
    for Ray on this machine alone), and a port nothing listens on now."""
    host = "127.0.0.1"
    if address and address != "auto" and "://" not in address and ":" in address:
        head, _, port = address.rpartition(":")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.connect((head, int(port)))  # no packet is sent: this asks the kernel which interface routes there
                host = probe.getsockname()[0]
            except (OSError, ValueError):
                pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as free:
        free.bind((host, 0))
        port = free.getsockname()[1]
    return f"http://{host}:{port}"


def _die_with_parent() -> None:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG: the driver's end is its end


class MemoryServer:
    """``chroma run`` on the campaign's memory folder, from ``start`` until ``stop`` (or the driver's death)."""

    def __init__(self, path: Path, url: str, log: Path) -> None:
        self.path, self.url, self.log = path, url, log
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        parsed = urlparse(self.url)
        chroma = Path(sys.executable).with_name("chroma")
        if not chroma.exists():
            raise CampaignError(f"cannot serve the campaign's memory: {chroma} is missing (it comes with chromadb); "
                                f"reinstall heurist, or give --memory-url")
        prepare_directory(self.path)
        # Another server on this port (another campaign's, say) would answer the heartbeat for this one.
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            # As a server binds: connections the last server closed, still in TIME_WAIT, do not hold the port.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((parsed.hostname, parsed.port))
            except OSError as exc:
                raise CampaignError(f"the campaign's memory is served at {self.url}, and {parsed.hostname}:"
                                    f"{parsed.port} cannot be taken here ({exc.strerror}); stop what holds that "
                                    f"port, or resume the campaign on the machine it started on") from None
        env = {k: os.environ[k] for k in ENV_ALLOW if k in os.environ} | {"HOME": str(self.path),
                                                                        "ANONYMIZED_TELEMETRY": "False"}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(chroma), "run", "--path", str(self.path), "--host", parsed.hostname, "--port", str(parsed.port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, env=env, cwd=self.path, start_new_session=True,
                preexec_fn=_die_with_parent)
        deadline = time.monotonic() + READY_S
        while not (self._answers() and self.proc.poll() is None):
            if self.proc.poll() is not None:
                raise CampaignError(f"the campaign's memory server could not start on {parsed.hostname}:"
                                    f"{parsed.port} ({self._log_tail()}); free that port, or resume the campaign "
                                    f"on the machine it started on (its memory is served there)")
            if time.monotonic() > deadline:
                self.stop()
                raise CampaignError(f"the campaign's memory server did not answer on {self.url} in {READY_S:g} s; "
                                    f"see {self.log}")
            time.sleep(0.2)

    def _answers(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/api/v2/heartbeat", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def _log_tail(self) -> str:
        try:
            lines = [line for line in self.log.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "no log"
        lines = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines]  # the server colours its log
        errors = [line for line in lines if "rror" in line or "in use" in line]
        return " ".join((errors or lines or ["no output"])[-1].split())[:200]

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=STOP_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


__all__ = ["MemoryServer", "choose_url"]
