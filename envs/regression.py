"""Regression tests, run so that their verdicts cannot be forged: one file, one sandbox, one throwaway copy.

A model-written test is untrusted code. Each test file runs alone in a sandboxed pytest
process (``envs.sandbox.run_sandboxed``: no privileges, no network, no secrets) over a
throwaway, read-only copy holding that file and heurist's test kit, nothing else: no
``.git``, no policy file, no other test. So:

- a test cannot change the workspace, its history, the run directory or another test;
- a test cannot end another file's run early (``os._exit(0)`` at import ends its own);
- the policy under test never runs in the test's process: ``run_episode`` asks heurist,
  which answers from its sandboxed evaluator (the env steps are counted by heurist's code,
  not reported by the test), and ``load_policy`` gives a proxy whose ``reset`` and ``act``
  run the policy in a sandboxed worker pair;
- a file passes only when heurist's pytest plugin (``testkit/heurist_report.py``) reported
  at least one test, every one of them passed, and pytest's session ended with status 0;
  an exit code alone is never taken as a verdict.

Everything a test sends over its channel (``_Broker``) is read as untrusted data: bounded
lines, JSON objects of a fixed shape, dev seeds only.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal, Union

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from common.safe_text import redact
from envs.containment import require_usable
from envs.isolation import Confinement
from envs.limits import Limits
from envs.policy_files import PolicyBundle, StagedPolicy
from envs.sandbox import import_path, run_sandboxed
from envs.scenario_files import ScenarioError, load_scenario
from envs.tasks import TaskSpec
from envs.worker_pair import WorkerDied, WorkerProcess

KIT_DIR = Path(__file__).parent / "testkit"
KIT_FILES = ("heurist_testkit.py", "heurist_report.py")
MAX_REQUEST_BYTES = 1 << 20  # one request: an observation of a few hundred kilobytes at most
MAX_REPORTS = 1000  # test reports kept per file (each at most about 2.3 KB); more is a file generating tests without end
MESSAGE_CHARS = 2000


class KitRefused(Exception):
    """A request the policy under test will not answer; the message goes back to the test."""


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EpisodeOp(_Op):
    op: Literal["episode"]
    seed: int


class ResetOp(_Op):
    op: Literal["reset"]
    seed: int


class ActOp(_Op):
    op: Literal["act"]
    obs: Any
    dtype: str | None = None
    info: dict[str, Any] = Field(default_factory=dict)


class ScenarioOp(_Op):
    op: Literal["scenario"]
    name: str = Field(..., max_length=200)


class ReportOp(_Op):
    op: Literal["report"]
    kind: Literal["collect", "test", "finish"]
    nodeid: str = Field("", max_length=1000)
    when: Literal["setup", "call", "teardown", ""] = ""
    outcome: Literal["passed", "failed", "skipped", ""] = ""
    message: str = Field("", max_length=10_000)
    exitstatus: int | None = None


_REQUEST = TypeAdapter(Union[EpisodeOp, ResetOp, ActOp, ScenarioOp, ReportOp])


class TestOutcome(BaseModel):
    __test__ = False  # a record, not a pytest test class
    model_config = ConfigDict(extra="forbid")

    nodeid: str
    outcome: Literal["passed", "failed", "error", "skipped"]
    message: str = ""


class TestFileResult(BaseModel):
    """One test file's verdict against one policy, from the reports heurist received."""

    __test__ = False  # a record, not a pytest test class
    model_config = ConfigDict(extra="forbid")

    name: str
    passed: bool
    reason: str
    tests: list[TestOutcome] = Field(default_factory=list)
    output: str = ""
    wall_s: float = 0.0


class PolicyUnderTest:
    """What a test file's kit calls reach: one policy's episodes and a sandboxed instance of it.

    ``episode(seed)`` comes from the caller (heurist's cached, ledger-recorded evaluations);
    ``reset``/``act`` run the policy's source in a worker pair started on first use, one per
    test file run (``session``).
    """

    def __init__(self, episode: Callable[[int], dict], task_json: str, protocol: str, policy_path: str,
                 source: str, limits: Limits, hidden: list[Path] | None = None,
                 scenarios: Path | None = None) -> None:
        self.episode = episode
        self.task_json, self.protocol, self.policy_path, self.source = task_json, protocol, policy_path, source
        self.limits = limits
        self.hidden = hidden or []  # the run directory: out of sight even where it lies under a bound folder
        self.scenarios = scenarios  # the run's saved failure scenarios (envs.scenario_files), read by name
        self._steps_lock = threading.Lock()
        self.scenario_steps = 0  # env steps of scenario runs (an episode's are its evaluation's), for the ledger

    def count(self, steps: int) -> None:
        with self._steps_lock:
            self.scenario_steps += steps

    def session(self, scratch: Path) -> "PolicySession":
        return PolicySession(self, scratch)


class PolicySession:
    def __init__(self, policy: PolicyUnderTest, scratch: Path) -> None:
        self.policy, self.scratch = policy, scratch
        self.worker: WorkerProcess | None = None
        self.staged: StagedPolicy | None = None
        self.reset_done = False

    def _run(self, kind: str, **fields: Any) -> dict:
        p = self.policy
        if self.worker is None:
            # The task's simulator model, as an evaluation gives it (a planner builds its model in __init__): a
            # read-only copy of the one file.
            model = TaskSpec.model_validate_json(p.task_json).simulator_model(p.protocol)
            self.staged = StagedPolicy(PolicyBundle(path=Path(p.policy_path), data=p.source.encode()), model)
            self.worker = WorkerProcess(p.limits, self.scratch,
                                        Confinement(readable=self.staged.readable(), hidden=p.hidden))
        job = {"kind": kind, "task": p.task_json, "protocol": p.protocol, "policy_path": p.policy_path,
               "policy_source": p.source, "cpu_s": p.limits.episode_cpu_s,
               "simulator_model": self.staged.simulator_model if self.staged is not None else None, **fields}
        try:
            reply = self.worker.run(job, timeout=p.limits.episode_timeout_s + 10.0)
        except WorkerDied as died:
            if kind == "scenario_run":  # what it stepped before it died is spent all the same
                p.count(self.worker.steps_taken())
            self.close()
            raise KitRefused(f"the policy process died: {died.reason}") from None
        if kind == "scenario_run":
            p.count(self.worker.steps_taken())
        if reply.get("status") != "ok":
            raise KitRefused(f"{reply.get('status')}: {reply.get('error')}")
        return reply

    def _refuse_protected(self, seed: int, what: str) -> None:
        # A test drives the policy on seeds of its own choosing, but never on the task's protected ones: their
        # returns would reach the model through the test's failure message, and holdout seeds are used once, on
        # purpose, by heurist alone. (A test can still build the environment itself: see DEVELOPERS.md.)
        seeds = TaskSpec.model_validate_json(self.policy.task_json).seeds
        for split in ("holdout", "audit"):
            if seed in getattr(seeds, split):
                raise KitRefused(f"{what} seed {seed}, one of the task's {split} seeds, which tests may not use; "
                                 f"use a dev seed ({seeds.dev[0]}..{seeds.dev[-1]}) or any other")

    def reset(self, seed: int) -> None:
        self._refuse_protected(seed, "a reset on")
        self._run("policy_reset", seed=seed)
        self.reset_done = True

    def act(self, request: ActOp) -> dict:
        if not self.reset_done:
            raise KitRefused("call reset(seed) before act()")
        if request.dtype is not None:
            try:  # untrusted text: numpy raises TypeError, ValueError, even SyntaxError on odd dtype strings
                dtype = np.dtype(request.dtype)
            except Exception:
                raise KitRefused(f"an observation dtype numpy does not know: {request.dtype[:40]!r}") from None
            if dtype.kind not in "biuf" or dtype.shape:
                raise KitRefused(f"an observation of dtype {dtype}; observations are arrays of numbers")
            try:
                np.asarray(request.obs, dtype=dtype)
            except Exception as exc:
                raise KitRefused(f"an observation that is not an array of {dtype}: {str(exc)[:200]}") from None
        reply = self._run("policy_act", obs=request.obs, dtype=request.dtype, info=request.info)
        return {"action": reply["action"], "diagnostics": reply["diagnostics"]}

    def scenario(self, name: str, record: bool = False, film_dir: Path | None = None) -> dict:
        """A saved failure scenario run with the policy under test (``envs.scenarios.run_scenario``); ``record``
        keeps each step, and ``film_dir`` gets a clip of the steps around the failure (both for the coder's
        scenario tool; a test's kit asks for neither)."""
        p = self.policy
        scenario = load_scenario(p.scenarios, name)
        if scenario.task != TaskSpec.model_validate_json(p.task_json).id or scenario.protocol != p.protocol:
            raise KitRefused(f"scenario {name} is of {scenario.task} ({scenario.protocol}), not of the task under test")
        self._refuse_protected(scenario.seed, f"scenario {name} is of")  # heurist saves none: one from elsewhere
        reply = self._run("scenario_run", scenario=scenario.model_dump(mode="json"), record=record,
                          film_dir=str(film_dir) if film_dir is not None else None)
        self.reset_done = False  # slot 0 held the scenario's policy: a load_policy() test resets again
        return reply["result"]

    def close(self) -> None:
        if self.worker is not None:
            self.worker.close()
            self.worker = None
        if self.staged is not None:
            self.staged.close()
            self.staged = None
        self.reset_done = False


class _Broker(threading.Thread):
    """Answers one sandboxed test process's requests, one JSON line each, and keeps its reports.

    It reads and writes the channel's descriptors itself, a short wait at a time, and looks between waits for
    ``abandon``: a process the sandbox did not end (a daemon, where there is no PID namespace or cgroup) can hold
    the channel open and silent, and a thread blocked in a buffered stream's ``readline`` could be stopped by no
    one (closing the stream from another thread waits for that very read to end)."""

    POLL_MS = 200  # how long one wait on the channel lasts before looking for ``abandon``

    def __init__(self, requests_fd: int, replies_fd: int, policy: PolicyUnderTest, scratch: Path) -> None:
        super().__init__(daemon=True)
        self.requests_fd, self.replies_fd = requests_fd, replies_fd
        os.set_blocking(replies_fd, False)  # a reply the test never reads must not block the thread past abandon
        self._pending = bytearray()  # read, not yet taken as a line
        self._ended = False  # the test's side closed the channel
        self._abandoned = threading.Event()
        self.policy = policy
        self.session = policy.session(scratch)
        self.reports: list[ReportOp] = []
        self.failure: BaseException | None = None  # heurist's own failure while answering: the caller raises it

    def run(self) -> None:
        try:
            while (line := self._read()) is not None:
                if len(line) > MAX_REQUEST_BYTES:
                    while line and not line.endswith(b"\n"):  # the rest of that line is read and dropped
                        line = self._read(MAX_REQUEST_BYTES) or b""
                    answer = {"ok": False, "error": f"a request longer than {MAX_REQUEST_BYTES} bytes"}
                else:
                    answer = self._answer(line)  # heurist's own failures (a full disk) propagate from here
                if not self._reply(answer):
                    return
        except BaseException as exc:  # ours, not the test's: the caller raises it
            self.failure = exc
        finally:
            self.session.close()
            for fd in (self.requests_fd, self.replies_fd):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _wait(self, fd: int, event: int) -> bool:
        """Wait until ``fd`` is ready for ``event`` (or hung up); False once the channel is abandoned."""
        poller = select.poll()
        poller.register(fd, event)
        while not self._abandoned.is_set():
            if poller.poll(self.POLL_MS):
                return True
        return False

    def _read(self, limit: int = MAX_REQUEST_BYTES + 1) -> bytes | None:
        """The next request line (at most ``limit`` bytes of it); None once the test process is gone or the
        channel was abandoned."""
        while True:
            end = self._pending.find(b"\n", 0, limit)
            if end >= 0 or len(self._pending) >= limit or (self._ended and self._pending):
                size = end + 1 if end >= 0 else min(limit, len(self._pending))
                line = bytes(self._pending[:size])
                del self._pending[:size]
                return line
            if self._ended or not self._wait(self.requests_fd, select.POLLIN):
                return None
            try:
                chunk = os.read(self.requests_fd, 1 << 16)
            except OSError:
                return None
            if chunk:
                self._pending += chunk
            else:
                self._ended = True

    def abandon(self) -> None:
        """Stop answering: the thread ends within ``POLL_MS`` of its next wait on the channel, and closes it."""
        self._abandoned.set()

    def _reply(self, reply: dict) -> bool:
        """Send one reply; False when the test process is gone or the channel was abandoned."""
        data = memoryview(json.dumps(reply).encode() + b"\n")
        while data:
            if not self._wait(self.replies_fd, select.POLLOUT):
                return False
            try:
                data = data[os.write(self.replies_fd, data):]
            except BlockingIOError:
                continue
            except OSError:
                return False
        return True

    def _answer(self, line: bytes) -> dict:
        try:
            request = _REQUEST.validate_json(line)
        except (ValidationError, ValueError) as exc:
            return {"ok": False, "error": f"not a request heurist understands: {str(exc).splitlines()[0][:200]}"}
        try:
            if isinstance(request, EpisodeOp):
                return {"ok": True, "result": self.policy.episode(request.seed)}
            if isinstance(request, ResetOp):
                self.session.reset(request.seed)
                return {"ok": True}
            if isinstance(request, ActOp):
                return {"ok": True, "result": self.session.act(request)}
            if isinstance(request, ScenarioOp):
                return {"ok": True, "result": self.session.scenario(request.name)}
        except (KitRefused, ScenarioError) as exc:
            return {"ok": False, "error": redact(str(exc))[:MESSAGE_CHARS]}
        if len(self.reports) < MAX_REPORTS:
            self.reports.append(request.model_copy(update={"message": redact(request.message)[:MESSAGE_CHARS],
                                                           "nodeid": request.nodeid[:300]}))
        return {"ok": True}


def _headline(message: str) -> str:
    """The line of a pytest failure that says what went wrong: its first ``E`` line, else its last line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    errors = [line[1:].strip() for line in lines if line.startswith("E ")]
    return errors[0] if errors else (lines[-1] if lines else "")


def _verdict(name: str, reports: list[ReportOp], returncode: int, reason: str,
             timed_out: bool) -> tuple[bool, str, list[TestOutcome]]:
    """Passed only on reports: at least one test, every test passed in every phase, the session ended with 0."""
    outcomes: dict[str, TestOutcome] = {}
    collect_errors = [r for r in reports if r.kind == "collect"]
    for r in reports:
        if r.kind != "test" or not r.nodeid:
            continue
        current = outcomes.get(r.nodeid)
        if r.outcome == "failed":
            outcome = "failed" if r.when == "call" else "error"
        elif r.outcome == "skipped":
            outcome = "skipped"
        elif r.outcome == "passed":
            outcome = "passed"
        else:
            outcome = "error"
        if current is None or current.outcome == "passed":
            outcomes[r.nodeid] = TestOutcome(nodeid=r.nodeid, outcome=outcome, message=r.message)
    tests = list(outcomes.values())
    finish = next((r for r in reports if r.kind == "finish"), None)
    bad = [t for t in tests if t.outcome != "passed"]
    if timed_out:
        return False, reason, tests
    if collect_errors:
        return False, f"{name} could not be collected: {collect_errors[0].message.strip()[-300:]}", tests
    if bad:
        first = bad[0]
        detail = _headline(first.message)
        return False, f"{first.nodeid} {first.outcome}" + (f": {detail[:300]}" if detail else ""), tests
    if finish is None:
        return False, f"the test process ended before pytest reported the end of its session ({reason})", tests
    if not tests:
        return False, "no test ran", tests
    if finish.exitstatus != 0 or returncode != 0:
        return False, f"pytest ended with status {finish.exitstatus} ({reason}) although every test reported " \
                      f"passed", tests
    return True, f"{len(tests)} passed", tests


def run_test_file(name: str, source: str, policy: PolicyUnderTest, limits: Limits, timeout_s: float) -> TestFileResult:
    """Run one test file, alone, on a throwaway copy, against ``policy``; the verdict comes from its reports."""
    require_usable(limits)
    started = time.perf_counter()
    copy = Path(tempfile.mkdtemp(prefix="heurist-test-"))
    scratch = Path(tempfile.mkdtemp(prefix="heurist-test-workers-"))
    request_r = request_w = reply_r = reply_w = -1
    try:
        os.chmod(copy, 0o755)  # read by the sandbox's unprivileged user; written by no one but heurist
        (copy / "tests").mkdir(mode=0o755)
        basename = Path(name).name
        (copy / "tests" / basename).write_text(source)
        for kit in KIT_FILES:
            shutil.copyfile(KIT_DIR / kit, copy / kit)
        (copy / "pytest.ini").write_text("[pytest]\n")  # this file's folder is the root; no other config applies
        for path in copy.rglob("*"):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        broker = _Broker(request_r, reply_w, policy, scratch)
        request_r = reply_w = -1  # the broker owns them now
        broker.start()
        run = run_sandboxed(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "heurist_report", "-c",
             str(copy / "pytest.ini"), "--rootdir", str(copy), f"tests/{basename}"],
            copy, limits, timeout_s, confinement=Confinement(readable=[copy], hidden=policy.hidden),
            pass_fds=(request_w, reply_r),
            env={"HEURIST_KIT_FDS": f"{request_w},{reply_r}", "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1",
                 "PYTHONPATH": os.pathsep.join([str(copy), *import_path()])})
        for fd in (request_w, reply_r):
            os.close(fd)  # the broker now sees the end of the channel once every process of the test is gone
        request_w = reply_r = -1
        # The sandbox's PID namespace (or cgroup) ends every process of the test with it, closing the channel;
        # without either, a daemonised child could hold it open, so the wait is bounded.
        broker.join(timeout=limits.episode_timeout_s + 30)
        if broker.is_alive():  # a daemonised child holds the channel: close it; the verdict is from what came
            broker.abandon()
            broker.join(timeout=limits.episode_timeout_s + 30)
        if broker.failure is not None:
            raise broker.failure
        passed, reason, tests = _verdict(name, list(broker.reports), run.returncode, run.reason, run.timed_out)
        return TestFileResult(name=name, passed=passed, reason=redact(reason), tests=tests, output=run.output,
                              wall_s=time.perf_counter() - started)
    finally:
        for fd in (request_r, request_w, reply_r, reply_w):
            if fd >= 0:
                os.close(fd)
        shutil.rmtree(copy, ignore_errors=True)
        shutil.rmtree(scratch, ignore_errors=True)
