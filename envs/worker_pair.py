"""The worker of an evaluation: a trusted env process and the sandboxed policy process it talks to.

``WorkerProcess`` starts the pair with the containment of ``envs/sandbox.py``, sends it jobs and
reads its replies, and stops it: a wall-clock limit kills both process groups, and ``WorkerDied``
says in words why a pair ended. ``pair_cpus`` gives each pair its core.
"""

from __future__ import annotations

import json
import os
import queue
import random
import subprocess
import sys
import threading
from pathlib import Path
from typing import Iterable

from common.safe_text import redact
from envs.cgroups import SandboxCgroups
from envs.forkserver import kill_group, preload_task, start_process
from envs.isolation import Confinement, isolation_prefix
from envs.limits import Limits
from envs.sandbox import (SandboxDirs, end_tree, limit_args, needs_reaper, sandbox_env, signal_reason,
                          unwrapped_returncode)
from envs.wire import MAX_SLOTS, SETUP_RUNS, observation_pipe, shared_memory_pair

NOT_STARTED = -1  # a slot's count between heurist sending its episode and the env process taking it


class WorkerDied(Exception):
    """The worker process ended or was killed; ``reason`` says why in words."""

    def __init__(self, reason: str, timed_out: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out


def pair_cpus(n: int) -> list[int]:
    """A core for each of ``n`` workers, to pin its env process and policy process together.

    The two take turns and never run at once, and waking a process on the same core costs a
    quarter of waking it on another (20 against 80 microseconds per round trip on the 2-core
    machines measured), which is most of the price of keeping
    the policy apart. The first core is drawn at random, so two runs on one machine do not
    both start at core 0.
    """
    cpus = sorted(os.sched_getaffinity(0))
    start = random.randrange(len(cpus))
    return [cpus[(start + i) % len(cpus)] for i in range(n)]


class WorkerProcess:
    """One evaluation worker: a trusted env process and the sandboxed policy process it talks to.

    The env process (``envs.worker``) runs heurist's and the environment's code with a scrubbed
    environment and its own limits; the policy process (``envs.policy_host``) runs the untrusted
    source it is sent under the full containment (namespaces, confinement, cgroups, limits,
    no privileges). It is bound no file at all: the policy's source comes over the pipe. They
    share two pipes and nothing else; this process talks only to the env process, and ``run``
    sends a job and waits for its reply, at most ``timeout`` seconds.
    """

    def __init__(self, limits: Limits, scratch: Path, confinement: Confinement | None = None,
                 cpu: int | None = None) -> None:
        self.limits = limits
        self.dirs = SandboxDirs(limits, parent=scratch)
        self.log = self.env_log = self.step_file = None
        self.policy_proc = self.env_proc = None
        self.cgroups = SandboxCgroups({})
        self.reaped = False
        self._job_w = self._res_r = -1
        self._preloaded = False
        try:
            self._start(confinement, cpu)
        except BaseException:  # nothing half-started is left behind: processes, descriptors, folders, cgroups
            if self._res_r >= 0:
                os.close(self._res_r)
            self.close()
            raise
        self._replies: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read_replies, daemon=True)
        self._reader.start()

    def _start(self, confinement: Confinement | None, cpu: int | None) -> None:
        limits = self.limits
        self.log = self.dirs.log("policy.log")  # what the policy printed, for the reasons of its death
        self.env_log = self.dirs.log("env.log")
        self.step_file = self.dirs.log("steps")  # the env process's step count of each slot's episode
        os.ftruncate(self.step_file.fd, 8 * (MAX_SLOTS + 1))
        self.cgroups = SandboxCgroups.create(limits)
        self.prefix = [*self.cgroups.prefix(), *isolation_prefix(limits, confinement or Confinement(), self.dirs.home)]
        pinned = ["--cpu", str(cpu)] if cpu is not None else []
        self.reaped = needs_reaper(self.dirs, self.cgroups)
        job_r, self._job_w = os.pipe()
        self._res_r, res_w = os.pipe()
        request_r, request_w = observation_pipe()
        reply_r, reply_w = os.pipe()
        frames_w, frames_r = shared_memory_pair()  # observations: written by the env process, read by the policy's
        try:
            self.policy_proc = subprocess.Popen(
                [*self.prefix, sys.executable, "-m", "envs.policy_host", "--request-fd", str(request_r),
                 "--reply-fd", str(reply_w), "--observations-fd", str(frames_r),
                 "--limits", limit_args(limits, self.cgroups), *pinned, *(["--reap"] if self.reaped else [])],
                env=sandbox_env(self.dirs.home), cwd=self.dirs.private if self.dirs.confined else self.dirs.home,
                stdin=subprocess.DEVNULL, stdout=self.log.fd, stderr=self.log.fd,
                pass_fds=(request_r, reply_w, frames_r), start_new_session=True, close_fds=True)
            self.env_proc = start_process(
                "envs.worker",
                ["--job-fd", str(job_r), "--result-fd", str(res_w), "--request-fd", str(request_w),
                 "--reply-fd", str(reply_r), "--steps-fd", str(self.step_file.fd), "--observations-fd",
                 str(frames_w), "--limits", limit_args(limits), *pinned],
                env=sandbox_env(self.dirs.private), cwd=self.dirs.private, log_fd=self.env_log.fd,
                pass_fds=(job_r, res_w, request_w, reply_r, self.step_file.fd, frames_w))
        finally:
            for fd in (job_r, res_w, request_r, request_w, reply_r, reply_w, frames_w, frames_r):
                os.close(fd)  # each end now lives only in the process that uses it

    def _read_replies(self) -> None:
        with os.fdopen(self._res_r, "r") as replies:
            for line in replies:
                self._replies.put(line)
        self._replies.put(None)  # end of file: the env process is gone

    def run(self, job: dict, timeout: float) -> dict:
        """Send one job and wait for its reply, at most ``timeout`` seconds (then both processes are killed)."""
        self.send(job)
        reply = self.receive(timeout)
        if reply is None:
            self.kill()
            raise WorkerDied(f"wall-clock limit of {timeout:g} s exceeded; the worker's process groups were killed",
                             timed_out=True)
        return reply

    def clear_steps(self, slot: int) -> None:
        """Mark a free slot "sent, not started" before its next episode is sent: the env process sets the
        count to 0 when it takes the job, so the episode's clock starts then, not while the pair starts up."""
        if self.step_file is not None:
            os.pwrite(self.step_file.fd, NOT_STARTED.to_bytes(8, sys.byteorder, signed=True), 8 * slot)

    def started(self, slot: int) -> bool:
        """Whether the env process has taken the episode sent to ``slot`` (see ``clear_steps``)."""
        return self._count(slot) != NOT_STARTED

    def send(self, job: dict) -> None:
        self.send_group([job])

    def send_group(self, jobs: list[dict]) -> None:
        """Jobs the env process takes together: all but the last say ``more``, so it starts no round until the
        last has arrived, and episodes sent together start together (each one's first step sees the same
        neighbours whatever the machine's load)."""
        for job in jobs:
            if not self._preloaded and isinstance(job.get("task"), str):
                preload_task(job["task"])  # this task's simulator, imported once for the env processes after this one
                self._preloaded = True
        lines = [json.dumps({**job, "more": True} if i < len(jobs) - 1 else job) + "\n" for i, job in enumerate(jobs)]
        data = memoryview("".join(lines).encode())
        try:
            while data:  # a write that a signal cut short returns the bytes it wrote: the rest follows
                data = data[os.write(self._job_w, data):]
        except (BrokenPipeError, OSError):
            raise WorkerDied(self._env_death_reason()) from None

    def receive(self, timeout: float) -> dict | None:
        """The next reply, or None when ``timeout`` seconds pass without one (the processes live on);
        raises WorkerDied when the pair has ended."""
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            return None
        if line is None:
            raise WorkerDied(self._env_death_reason())
        reply = json.loads(line)
        if reply.get("status") == "policy_gone":
            if not reply["hung_up"]:  # it broke the protocol: what it sent is the reason, and it ends now
                self.kill()
                raise WorkerDied(reply["error"])
            raise WorkerDied(self._policy_death_reason())
        return reply

    def _policy_death_reason(self) -> str:
        """Why the policy process ended, from its exit status and its last output."""
        try:
            code = self.policy_proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # it closed its end of the pipe but lives on: end it
            self.kill()
            return "the policy process closed its pipe to the env process"
        tail = self.log_tail()
        return signal_reason(unwrapped_returncode(code, self.prefix)) + (f"; last output: {tail}" if tail else "")

    def _env_death_reason(self) -> str:
        try:
            code = self.env_proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.kill()
            code = self.env_proc.wait()
        if getattr(self.env_proc, "status_lost", False):
            return ("the env process ended; how is not known: heurist's fork server of env processes did not say (it "
                    "had ended, or was busy importing a simulator)")
        return "the env process " + signal_reason(code, who="").lstrip()

    def steps_taken(self, slot: int = 0) -> int:
        """Env steps of the episode in ``slot`` (in progress, or the last one there), as the env process
        counted them; readable after a kill."""
        return max(0, self._count(slot))

    def steps_in(self, slots: Iterable[int]) -> int:
        """Env steps of the episodes in ``slots`` together (as ``steps_taken`` counts each), from one read of the
        step file: a group's progress is looked at after every result, and a read per slot was the scheduler's
        largest cost after decoding the results."""
        if self.step_file is None:
            return 0
        try:
            data = os.pread(self.step_file.fd, 8 * MAX_SLOTS, 0)
        except OSError:
            return 0
        counts = memoryview(data.ljust(8 * MAX_SLOTS, b"\0")).cast("q")  # native order, as _count reads them
        return sum(max(0, counts[slot]) for slot in slots)

    def setup_runs(self) -> int:
        """How many times the policy's ``setup()`` completed in this pair, as the env process counted; readable
        after a kill."""
        return max(0, self._count(SETUP_RUNS))

    def _count(self, slot: int) -> int:
        if self.step_file is None:
            return 0
        try:
            return int.from_bytes(os.pread(self.step_file.fd, 8, 8 * slot), sys.byteorder, signed=True)
        except OSError:
            return 0

    def log_tail(self, chars: int = 300) -> str:
        """The policy's last lines of output (untrusted text: redacted here, escaped where it is shown)."""
        return redact(" | ".join(self.log.tail(chars).strip().splitlines()[-3:]))

    def kill(self) -> None:
        if self.policy_proc is not None:
            end_tree(self.policy_proc, self.reaped)
        if self.env_proc is not None:
            kill_group(self.env_proc)
            self.env_proc.wait()
        self.cgroups.remove()

    def close(self) -> None:
        if self._job_w >= 0:
            try:
                os.close(self._job_w)  # end of input: a healthy env process exits, and the policy process after it
            except OSError:
                pass
            self._job_w = -1
        # The env process finishes what it writes (a result, a clip); the policy process, which has nothing left
        # to give, is not waited for: its own exit (an interpreter's shutdown, its sandbox's) took half the
        # 40 ms a pair spent closing, and the kill below ends it as surely.
        if self.env_proc is not None:
            try:
                self.env_proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        self.kill()
        for log in (self.log, self.env_log, self.step_file):
            if log is not None:
                log.close()
        self.dirs.remove()
