"""Worker subprocesses that run untrusted policy code, and the means to stop them.

Containment, in order of strength:
- its own process: a policy never runs in heurist's process, so an exception, a hang,
  ``os._exit`` or a segfault ends a worker, not heurist;
- its own process group (``start_new_session``): a timeout kills the whole group,
  children included, with SIGKILL, which nothing can catch;
- resource limits the worker puts on itself before reading policy code: address space,
  CPU seconds per episode, file size (so output is bounded), open files, no core dumps;
- a scrubbed environment built from an allow-list, so API keys and tokens are not
  inherited; HOME and the working directory are a private temp directory;
- no network, through a new network namespace (``unshare -n``) where this machine
  allows it; ``containment()`` reports whether it does.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, ConfigDict

HEURIST_ROOT = Path(__file__).resolve().parent.parent

# Variables a worker may inherit; everything else (OPENAI_API_KEY, AWS_*, tokens...) is dropped.
ENV_ALLOW = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "MUJOCO_GL", "PYOPENGL_PLATFORM", "EGL_PLATFORM",
             "SDL_VIDEODRIVER", "SDL_AUDIODRIVER", "LD_LIBRARY_PATH", "VIRTUAL_ENV")


class Limits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    episode_timeout_s: float = 300.0
    episode_cpu_s: float = 300.0
    memory_mb: int = 4096
    fsize_mb: int = 64
    nofile: int = 256
    network_isolation: bool = True


class WorkerDied(Exception):
    """The worker process ended or was killed; ``reason`` says why in words."""

    def __init__(self, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


@lru_cache(maxsize=1)
def _netns_prefix() -> tuple[str, ...]:
    """``unshare -n`` if this machine lets us create a network namespace (root, or user namespaces)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for prefix in ((unshare, "-n"), (unshare, "-r", "-n")):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


def containment(limits: Limits | None = None) -> dict[str, str]:
    """What this machine actually gives a worker, in words, for results and `heurist doctor`."""
    limits = limits or Limits()
    net = "network namespace (unshare -n)" if limits.network_isolation and _netns_prefix() else "none: workers can reach the network"
    return {
        "process": "separate process group, SIGKILL on timeout",
        "environment": "allow-list (no API keys inherited)",
        "network": net,
        "limits": f"address space {limits.memory_mb} MiB, CPU {limits.episode_cpu_s:g} s/episode, "
                  f"files {limits.fsize_mb} MiB, {limits.nofile} open files",
    }


def _signal_reason(returncode: int) -> str:
    if returncode >= 0:
        return f"worker exited with code {returncode} (the policy called exit or os._exit?)"
    sig = -returncode
    known = {signal.SIGKILL: "killed (SIGKILL): out of memory or killed from outside",
             signal.SIGSEGV: "crashed with a segmentation fault (SIGSEGV)",
             signal.SIGXCPU: "CPU time limit exceeded (SIGXCPU)",
             signal.SIGXFSZ: "output size limit exceeded (SIGXFSZ): the policy wrote too much",
             signal.SIGABRT: "aborted (SIGABRT)", signal.SIGBUS: "bus error (SIGBUS)",
             signal.SIGFPE: "floating-point exception (SIGFPE)"}
    if sig in known:
        return known[sig]
    try:
        return f"killed by signal {signal.Signals(sig).name}"
    except ValueError:
        return f"killed by signal {sig}"


def sandbox_env(home: Path) -> dict[str, str]:
    """The whole environment of a sandboxed process: the allow-list, a private HOME and TMPDIR, heurist importable."""
    env = {k: os.environ[k] for k in ENV_ALLOW if k in os.environ}
    env.update(HOME=str(home), TMPDIR=str(home), PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1",
               OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(HEURIST_ROOT))
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("SDL_VIDEODRIVER", "dummy")
    return env


class SandboxedRun(BaseModel):
    model_config = ConfigDict(extra="forbid")

    returncode: int
    timed_out: bool
    output: str
    reason: str
    wall_s: float


def run_sandboxed(cmd: list[str], cwd: Path, limits: Limits, timeout_s: float,
                  env: dict[str, str] | None = None, output_chars: int = 8000) -> SandboxedRun:
    """Run a command over model-written files (the workspace's pytest) with the workers' containment.

    The same allow-listed environment, network namespace and resource limits as a worker
    (applied by ``envs.limited`` before it execs the command), its own process group killed
    with SIGKILL at the wall-clock limit, and its output captured to a size-limited file.
    """
    home = Path(tempfile.mkdtemp(prefix="heurist-sandbox-"))
    log = home / "output.log"
    full_env = sandbox_env(home) | (env or {})
    limit_args = json.dumps({"memory_mb": limits.memory_mb, "fsize_mb": limits.fsize_mb, "nofile": limits.nofile,
                             "cpu_s": int(timeout_s) + 1})
    prefix = _netns_prefix() if limits.network_isolation else ()
    started = time.perf_counter()
    try:
        with open(log, "wb") as out:
            proc = subprocess.Popen([*prefix, sys.executable, "-m", "envs.limited", limit_args, "--", *cmd],
                                    cwd=cwd, env=full_env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
            timed_out = False
            try:
                code = proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                timed_out = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
                code = proc.wait()
        with open(log, "rb") as fh:
            fh.seek(max(0, log.stat().st_size - output_chars))
            output = fh.read().decode(errors="replace")
    finally:
        shutil.rmtree(home, ignore_errors=True)
    if timed_out:
        reason = f"wall-clock limit of {timeout_s:g} s exceeded; the process group was killed"
    elif code == 0:
        reason = "exited with code 0"
    else:
        reason = _signal_reason(code) if code < 0 else f"exited with code {code}"
    return SandboxedRun(returncode=code, timed_out=timed_out, output=output, reason=reason,
                        wall_s=time.perf_counter() - started)


class WorkerProcess:
    """One sandboxed worker. ``run`` sends a job and waits for its reply, at most ``timeout`` seconds."""

    def __init__(self, limits: Limits, scratch: Path) -> None:
        self.limits = limits
        self.home = Path(tempfile.mkdtemp(prefix="worker-", dir=scratch))
        self.log = self.home / "worker.log"
        job_r, self._job_w = os.pipe()
        self._res_r, res_w = os.pipe()
        env = sandbox_env(self.home)
        limit_args = json.dumps({"memory_mb": limits.memory_mb, "fsize_mb": limits.fsize_mb, "nofile": limits.nofile})
        prefix = _netns_prefix() if limits.network_isolation else ()
        cmd = [*prefix, sys.executable, "-m", "envs.worker", "--job-fd", str(job_r), "--result-fd", str(res_w),
               "--limits", limit_args, "--log", str(self.log)]
        self.proc = subprocess.Popen(cmd, env=env, cwd=self.home, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     pass_fds=(job_r, res_w), start_new_session=True, close_fds=True)
        os.close(job_r)
        os.close(res_w)
        self._replies: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read_replies, daemon=True)
        self._reader.start()

    def _read_replies(self) -> None:
        with os.fdopen(self._res_r, "r") as replies:
            for line in replies:
                self._replies.put(line)
        self._replies.put(None)  # end of file: the worker is gone

    def run(self, job: dict, timeout: float) -> dict:
        try:
            os.write(self._job_w, (json.dumps(job) + "\n").encode())
        except (BrokenPipeError, OSError):
            raise WorkerDied(self._death_reason()) from None
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            self.kill()
            raise WorkerDied(f"wall-clock limit of {timeout:g} s exceeded; the worker's process group was killed",
                             timed_out=True) from None
        if line is None:
            raise WorkerDied(self._death_reason())
        return json.loads(line)

    def _death_reason(self) -> str:
        try:
            code = self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.proc.wait()
        tail = self.log_tail()
        return _signal_reason(code) + (f"; last output: {tail}" if tail else "")

    def log_tail(self, chars: int = 300) -> str:
        try:
            with open(self.log, "rb") as fh:
                fh.seek(max(0, self.log.stat().st_size - chars))
                return " | ".join(fh.read().decode(errors="replace").strip().splitlines()[-3:])
        except OSError:
            return ""

    def kill(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.proc.wait()

    def close(self) -> None:
        try:
            os.close(self._job_w)  # end of input: a healthy worker exits by itself
        except OSError:
            pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.kill()
        shutil.rmtree(self.home, ignore_errors=True)
