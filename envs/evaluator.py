"""Evaluate a policy file on a task's fixed seeds, in sandboxed workers, with numbers you can trust.

Every score names its task, protocol, split, seeds and episodes; env steps and wall
time are always counted; every evaluation leaves an ``eval_started`` and an
``eval_finished`` (or ``eval_interrupted``) line in the append-only ledger. A policy
that raises, hangs, crashes, exhausts memory or returns a bad action fails that
episode, with the reason recorded; it never stops or hangs the evaluation.

The policy file is read once: its bytes are hashed and those same bytes are what every
worker runs (the source travels in each job; no sandboxed process reads the file), so the
``policy_sha256`` of a result is the hash of what was scored. Clips are written by the
trusted env process into a fresh folder no sandboxed process can see. Text that comes from
the policy (its errors, its last output) is redacted of secrets before it is recorded.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, ConfigDict, Field

from common.errors import OutputError, PolicyError, SplitGuardError
from common.events import EpisodeLine, EvalFinished, EvalInterrupted, EvalStarted, LedgerEvent, read_events
from common.ledger import Ledger
from common.paths import heurist_home
from common.scratch import ScratchDir
from envs.containment import containment, require_usable
from envs.contract import check_policy_source
from envs.failures import FailureEvent
from envs.gitsafe import run_git
from envs.isolation import Confinement
from envs.limits import MAX_SECONDS, Limits
from envs.lockstep import TRACE_WINDOW
from envs.policy_files import PolicyBundle, StagedPolicy, read_policy
from envs.ray_backend import package_versions
from envs.results import Clip, EpisodeResult, EvalResult, score_stats
from envs.scheduling import Schedule, Scheduler
from envs.tasks import PROTECTED_SPLITS, Split, TaskSpec
from envs.worker_pair import MAX_SLOTS, WorkerDied, WorkerProcess


class EvalRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy_path: Path = Field(description="A policy .py file, or a folder holding policy.py and the data files it "
                                          "reads (``envs.policy_files``).")
    task_id: str
    protocol: str | None = None
    split: Split = "dev"
    episodes: int | None = Field(default=None, ge=1)
    seeds: list[int] | None = Field(default=None, description="Run these seeds of the split (default: its first `episodes`).")
    workers: int | None = Field(default=None, ge=1, description=(
        "Worker pairs at most (default: all cores). Pairs after the first start once episodes have stepped for "
        "``stagger_s`` with seeds still waiting (``envs.scheduling``)."))
    stagger_s: float | None = Field(default=None, ge=0, description=(
        "How long episodes step before a second pair starts, if seeds still wait; 0: every pair at once. An "
        "evaluation one pair finishes sooner does not pay the others' start-up. Default: 0.5 s, or 0 for an "
        "evaluation long enough that every pair would run two full lockstep groups (``envs.scheduling``)."))
    confirm_protected: bool = False
    limits: Limits = Field(default_factory=Limits)
    step_s: float = Field(default=0.0, ge=0, le=MAX_SECONDS, allow_inf_nan=False, description=(
        "Seconds, wall-clock and CPU, a policy may spend per env step: each episode's limits become the larger of "
        "``limits``' and this times the most steps an episode can take (the protocol's cap, or ``max_steps``), "
        "so a planner spending a second a step gets the time its task needs. 0: ``limits`` as given."))
    eval_timeout_s: float | None = Field(default=None, gt=0, le=MAX_SECONDS, allow_inf_nan=False, description=(
        "The whole evaluation's wall-clock limit (default: an hour, or longer where the episodes' limits need it: "
        "each worker's share of the seeds at its episode limit)."))
    trace_window: int = Field(default=TRACE_WINDOW, ge=1)
    max_windows: int = Field(default=5, ge=0)
    video: bool = False
    clip_episodes: int = Field(default=2, ge=0)
    clip_events: int = Field(default=3, ge=1)
    clip_steps: int = Field(default=60, ge=2)
    out_dir: Path | None = None
    max_steps: int | None = Field(default=None, ge=1, description=(
        "Cut every episode after this many steps, for a quick look: not the protocol's score, and recorded so."))
    lockstep: int | None = Field(default=None, ge=1, le=MAX_SLOTS,
                                 description="Episodes each worker runs at once, stepped together (1: one at a "
                                             "time); by default the task family's (``lockstep_width``).")
    backend: Literal["local", "ray"] = Field(default="local", description=(
        "Where the worker pairs run: this machine, or Ray tasks on a cluster's nodes (``envs.ray_backend``), "
        "where ``workers`` is the pairs at once (default: the cluster's CPUs)."))
    ray_address: str | None = Field(default=None, description="The cluster for the ray backend (default: "
                                                              "RAY_ADDRESS, else Ray started on this machine).")


ProgressFn = Callable[[EpisodeResult], None]

# Episodes a worker runs at once unless asked. Wide groups pay the round trip to the policy process once for
# many steps, which matters where a step takes microseconds. An Atari step takes hundreds, and each episode in
# flight needs its own emulator (about 0.1 s to load a ROM), so a few at once buy almost all there is to buy
# (benchmarks/eval_throughput.py; docs/benchmarks.md).
LOCKSTEP_WIDTH = {"atari": 4}
DEFAULT_LOCKSTEP_WIDTH = 32


def lockstep_width(spec: TaskSpec, asked: int | None) -> int:
    return asked if asked is not None else LOCKSTEP_WIDTH.get(spec.family, DEFAULT_LOCKSTEP_WIDTH)


PROVENANCE_GIT_S = 30.0  # each git command reading where the policy was committed (a repository from anywhere)


def _git_provenance(bundle: PolicyBundle) -> dict[str, str | bool | None]:
    """The commit of the git repository holding the policy, if any, and whether the scored bytes are that
    commit's (every file of a policy folder, its data files included). Only object lookups (``rev-parse``,
    ``ls-tree``): nothing that refreshes an index or runs a filter, through ``envs.gitsafe``'s fixed configuration."""
    none = {"commit": None, "committed_file": None, "uncommitted_changes": None}
    entry = bundle.entry.resolve()
    cwd = entry.parent
    if shutil.which("git") is None:
        return none
    # Read as bytes and named as the file system names them (``os.fsdecode``): git prints paths as they are, and
    # a repository's path or a file beside the policy need not be UTF-8 (a strict decoding stopped the evaluation).
    # The repository is the user's (or anyone's): it may make git wait (a FIFO in its config or refs) or name a
    # work tree elsewhere. Provenance is a note beside the score, so any of that gives none rather than no score.
    top = run_git(["rev-parse", "--show-toplevel", "HEAD"], cwd, binary=True, timeout_s=PROVENANCE_GIT_S)
    lines = top.stdout.splitlines()
    if top.returncode != 0 or len(lines) < 2:
        return none
    root, head = (os.fsdecode(line) for line in lines[:2])  # a path may hold spaces
    try:
        relative = entry.relative_to(Path(root).resolve()).as_posix()
    except ValueError:  # the repository's core.worktree names a folder the policy is not in
        return none
    found = run_git(["rev-parse", "--verify", "--quiet", f"HEAD:{relative}"], cwd, binary=True,
                    timeout_s=PROVENANCE_GIT_S)
    if found.returncode not in (0, 1):  # 1: not committed; anything else (a timeout): unknown
        return none
    committed = os.fsdecode(found.stdout).strip() or None
    changed = committed != _blob_id(bundle.data)
    if bundle.folder and not changed:
        # One listing of the folder at HEAD: every data file must be there with these bytes, and nothing more.
        folder = relative.rsplit("/", 1)[0] if "/" in relative else ""
        listed = run_git(["ls-tree", "-r", "-z", "--full-tree", "HEAD", "--", folder or "."], Path(root),
                         binary=True, timeout_s=PROVENANCE_GIT_S)
        if listed.returncode != 0:
            return none
        listing = os.fsdecode(listed.stdout)
        at_head = {}
        for line in filter(None, listing.split("\0")):
            meta, _, name = line.partition("\t")
            name = name[len(folder) + 1:] if folder else name
            if not any(part.startswith(".") or part == "__pycache__" for part in name.split("/")):
                at_head[name] = meta.split()[2]
        at_head.pop("policy.py", None)
        changed = at_head != {name: _blob_id(data) for name, data in bundle.files.items()}
    return {"commit": head, "committed_file": committed, "uncommitted_changes": changed}


def _blob_id(data: bytes) -> str:
    """git's id of these exact bytes."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _protected_uses(ledger: Ledger | None, spec: TaskSpec, split: str, seeds: list[int]) -> int:
    """Earlier evaluations of this task that used the protected split(s) these seeds are in: those of the split,
    and those of custom seeds that overlapped it."""
    touched = [s for s in PROTECTED_SPLITS
               if s == split or (split == "custom" and set(seeds) & set(spec.seeds.seeds(s)))]
    if ledger is None or not touched:
        return 0
    records, _ = read_events(ledger)
    return sum(1 for r in records if isinstance(r, EvalStarted) and r.task == spec.id and any(
        r.split == s or (r.split == "custom" and set(r.seeds) & set(spec.seeds.seeds(s))) for s in touched))


class Evaluator:
    """Runs EvalRequests. One evaluation at a time per instance; workers live for one evaluation."""

    def __init__(self, spec: TaskSpec, request: EvalRequest, ledger: Ledger | None = None,
                 progress: ProgressFn | None = None) -> None:
        self.spec = spec
        self.req = request
        self.ledger = ledger
        self.progress = progress
        self.protocol = spec.protocol(request.protocol).name
        self._task_json = spec.model_dump_json()  # sent with every job; serialise once
        self.nodes: dict[str, int] = {}  # episodes each Ray node ran (the ray backend)
        self.setup_runs = 0  # the policy's set-ups the workers completed

    # ------------------------------------------------------------------ public

    def run(self) -> EvalResult:
        req, spec = self.req, self.spec
        if req.split in PROTECTED_SPLITS and not req.confirm_protected:
            raise SplitGuardError(f"the {req.split} split is reserved for a deliberate, recorded evaluation; "
                                  f"add --confirm-protected to use it (the ledger records each use)")
        # Read once: these bytes are hashed and these bytes are what every worker runs and reads.
        bundle = read_policy(req.policy_path, self._heurists_files())
        require_usable(req.limits)
        if req.backend == "ray":  # an unreachable cluster is said before anything is recorded
            from envs.ray_backend import connect

            connect(req.ray_address)
        seeds = self._seeds()
        if req.video:
            self._make_clips_root()
        eval_id = uuid.uuid4().hex[:12]
        policy_path = Path(req.policy_path).resolve()
        self.source = bundle.source
        self.policy_files = bundle.file_hashes()
        check_policy_source(self.source, str(bundle.entry))
        sha = bundle.sha256
        self.limits, self.eval_timeout_s = self._sized_limits(seeds)
        uses_before = _protected_uses(self.ledger, spec, req.split, seeds)
        protected = req.split in PROTECTED_SPLITS or bool(self._protected_overlap(seeds))
        base = {"eval_id": eval_id, "task": spec.id, "protocol": self.protocol,
                "protocol_settings": spec.protocol(self.protocol).settings(), "obs_mode": spec.obs_mode,
                "split": req.split, "seeds": seeds, "policy_path": str(policy_path), "policy_sha256": sha}
        self._append(EvalStarted(**base, protected_split=protected, max_steps=req.max_steps,
                                 protected_uses_before=uses_before, versions=package_versions(),
                                 git=_git_provenance(bundle), policy_files=self.policy_files,
                                 limits=self._limits_record()))
        started = time.perf_counter()
        held: ScratchDir | None = None
        staged: StagedPolicy | None = None
        try:  # at once: a Ctrl-C while the scratch folder is made (a sweep of the temp folder) is an interruption too
            held = ScratchDir("eval")  # removed below; one a kill -9 left is removed by a later evaluation
            scratch = held.path
            staged = self._staged(bundle)
            episodes = self._run_episodes(seeds, bundle, staged, scratch, started)
            result = self._assemble(base, episodes, uses_before, started)
            if req.video:
                if req.backend == "ray":  # clips are re-simulated here: the folder and the model staged here too
                    staged.close()
                    staged = StagedPolicy(bundle, self.spec.simulator_model(self.protocol))
                result.clips, result.clip_env_steps, result.clip_errors = self._clips(
                    result, staged, scratch, started + self.eval_timeout_s)
                result.env_steps += result.clip_env_steps
                result.wall_s = time.perf_counter() - started
        except BaseException as exc:
            self._append(EvalInterrupted(eval_id=eval_id, reason=f"{type(exc).__name__}: {exc}"[:500],
                                         wall_s=time.perf_counter() - started))
            raise
        finally:
            if staged is not None:
                staged.close()
            if held is not None:
                held.remove()
        self._append(EvalFinished(**result.summary(), per_episode=[
            EpisodeLine(seed=e.seed, status=e.status, return_=e.return_, length=e.length, error=e.error)
            for e in result.episodes]))
        return result

    def _heurists_files(self) -> list[Path]:
        return heurists_files(self.req, self.ledger.path if self.ledger is not None else None)

    def _staged(self, bundle: PolicyBundle) -> StagedPolicy:
        """The policy folder's read-only copy and the task's simulator model, for the local workers. A Ray node
        stages its own (``envs.ray_backend.run_shard``); here only the source's name is needed for its jobs."""
        if self.req.backend == "ray":
            return StagedPolicy(PolicyBundle(path=bundle.entry, data=bundle.data), None)
        return StagedPolicy(bundle, self.spec.simulator_model(self.protocol))

    def _sized_limits(self, seeds: list[int]) -> tuple[Limits, float]:
        """Each episode's limits, sized from the task where ``step_s`` asks (``EvalRequest.step_s``), and the
        evaluation's wall-clock limit."""
        req = self.req
        limits = req.limits
        cap = self.spec.episode_step_cap(self.protocol)
        steps = min(c for c in (cap, req.max_steps) if c is not None) if (cap or req.max_steps) else None
        if req.step_s > 0 and steps is not None:
            needed = min(req.step_s * steps, MAX_SECONDS)
            limits = limits.model_copy(update={"episode_timeout_s": max(limits.episode_timeout_s, needed),
                                               "episode_cpu_s": max(limits.episode_cpu_s, needed)})
        if req.eval_timeout_s is not None:
            return limits, req.eval_timeout_s
        workers = max(1, req.workers or os.cpu_count() or 1)
        rounds = -(-len(seeds) // workers)
        return limits, max(3600.0, rounds * limits.episode_timeout_s + 60.0)

    def _limits_record(self) -> dict[str, float]:
        return {"episode_timeout_s": self.limits.episode_timeout_s, "episode_cpu_s": self.limits.episode_cpu_s,
                "eval_timeout_s": self.eval_timeout_s, "step_s": self.req.step_s}

    def _protected_overlap(self, seeds: list[int]) -> dict[str, list[int]]:
        """Custom seeds that lie in a protected split, by split."""
        if self.req.split != "custom":
            return {}
        found = {s: sorted(set(seeds) & set(self.spec.seeds.seeds(s))) for s in sorted(PROTECTED_SPLITS)}
        return {s: overlap for s, overlap in found.items() if overlap}

    def _seeds(self) -> list[int]:
        """The seeds to run: the request's own (all in the split), else the split's first ``episodes``, else all."""
        req, spec = self.req, self.spec
        if req.split == "custom":
            if not req.seeds:
                raise SplitGuardError("a custom split runs the seeds you give; give them (--seeds 100-104)")
            seeds = list(dict.fromkeys(req.seeds))
            overlap = self._protected_overlap(seeds)
            if overlap and not req.confirm_protected:
                split, some = next(iter(overlap.items()))
                raise SplitGuardError(f"seeds {some[:5]} are in the {split} split of {spec.id}, which is reserved "
                                      f"for a deliberate, recorded evaluation; add --confirm-protected to use them "
                                      f"(the ledger counts it as a use of that split), or choose other seeds")
            return seeds
        seeds = list(spec.seeds.seeds(req.split))
        if req.seeds is not None:
            outside = sorted(set(req.seeds) - set(seeds))
            if outside or not req.seeds:
                raise SplitGuardError(f"seeds {outside or '[]'} are not in the {req.split} split of {spec.id}; "
                                      f"choose seeds from that split")
            seeds = list(dict.fromkeys(req.seeds))  # a seed's result is its own: asked twice, it runs once
        elif req.episodes is not None:
            if req.episodes > len(seeds):
                raise SplitGuardError(f"the {req.split} split of {spec.id} has {len(seeds)} seeds; "
                                      f"ask for at most {len(seeds)} episodes")
            seeds = seeds[: req.episodes]
        return seeds

    def _make_clips_root(self) -> None:
        clips_root = self._clips_root()
        try:
            clips_root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # before anything runs or is recorded
            why = "it is a file" if clips_root.is_file() else exc.strerror
            raise OutputError(f"cannot write clips to {clips_root}: {why}; choose a writable folder "
                              f"with --out") from None

    # ------------------------------------------------------------------ episodes

    def _job(self, kind: str, staged: StagedPolicy, **extra: Any) -> dict[str, Any]:
        return {"kind": kind, "task": self._task_json, "protocol": self.protocol,
                "policy_path": staged.policy_path(), "policy_source": self.source,
                "simulator_model": staged.simulator_model, "cpu_s": self.limits.episode_cpu_s,
                "max_steps": self.req.max_steps, **extra}

    def _run_episodes(self, seeds: list[int], bundle: PolicyBundle, staged: StagedPolicy, scratch: Path,
                      started: float) -> list[EpisodeResult]:
        req, limits = self.req, self.limits
        confinement = self._confinement(staged)
        if req.backend == "ray":
            from envs.ray_backend import run_on_ray

            job = self._job("episode", staged, trace_window=req.trace_window, max_windows=req.max_windows)
            results, self.nodes, self.setup_runs = run_on_ray(
                seeds, job, limits, lockstep_width(self.spec, req.lockstep), req.workers,
                started + self.eval_timeout_s, [str(p) for p in confinement.hidden], req.ray_address, self.progress,
                bundle=bundle, eval_timeout_s=self.eval_timeout_s)
            return [results[s] for s in seeds]
        # The same for every seed but the seed and the slot: built once (resolving the policy's path per episode
        # was a tenth of the scheduler's CPU on a 600-episode CartPole evaluation).
        episode = self._job("episode", staged, trace_window=req.trace_window, max_windows=req.max_windows)
        plan = Schedule(
            seeds=seeds, workers=req.workers or os.cpu_count() or 1, width=lockstep_width(self.spec, req.lockstep),
            episode_timeout_s=limits.episode_timeout_s, episode_cpu_s=limits.episode_cpu_s,
            deadline=started + self.eval_timeout_s, eval_timeout_s=self.eval_timeout_s, progress=self.progress,
            stagger_s=req.stagger_s,
            job=lambda seed, slot: {**episode, "seed": seed, "slot": slot},
            start_worker=lambda cpu: WorkerProcess(limits, scratch, confinement, cpu))
        results = Scheduler(plan).run()
        self.setup_runs = plan.setup_runs
        return [results[s] for s in seeds]

    def _assemble(self, base: dict, episodes: list[EpisodeResult], uses_before: int, started: float) -> EvalResult:
        ran = [e for e in episodes if e.status != "not_run"]
        # Statistics cover completed episodes only. A failed episode's partial return is no score: on
        # MountainCar a policy that crashes at step 50 would otherwise beat one that finishes at 110.
        # Failed episodes are counted in `failures` and make the status "partial" or "broken".
        returns = [e.return_ for e in ran if e.status == "ok" and e.return_ is not None]
        failures: dict[str, int] = {}
        for e in episodes:
            for ev in e.events:
                failures[ev.kind] = failures.get(ev.kind, 0) + 1
            if e.status != "ok":
                failures[e.status] = failures.get(e.status, 0) + 1
        if not ran or all(e.status != "ok" for e in ran):
            status = "broken"
        elif len(ran) < len(episodes) or any(e.status != "ok" for e in ran):
            status = "partial"
        else:
            status = "complete"
        stats = score_stats(returns, self.spec)
        if self.req.max_steps is not None and stats is not None:  # cut episodes: no target met, no normalised score
            stats = stats.model_copy(update={"hns_mean": None})
        return EvalResult(**base, status=status, stats=stats,
                          target=None if self.req.max_steps is not None else self.spec.target, episodes=episodes, failures=failures,
                          env_steps=sum(e.env_steps for e in episodes), wall_s=time.perf_counter() - started,
                          clips=[], containment=containment(self.req.limits), protected_uses_before=uses_before,
                          backend=self.req.backend, nodes=dict(self.nodes), max_steps=self.req.max_steps,
                          policy_files=self.policy_files, limits=self._limits_record(), setup_runs=self.setup_runs)

    # ------------------------------------------------------------------ clips

    def _confinement(self, staged: StagedPolicy) -> Confinement:
        """A policy process is bound only its folder's read-only copy and the task's simulator model, if any (its
        source comes over the pipe); the ledger's folder and this process's ``$HEURIST_HOME`` are hidden. The latter
        is named here, not only where the sandbox is made: a Ray node's worker may have another ``$HEURIST_HOME``
        of its own, and this one (its runs, its memory) lie under a folder the sandbox reads there."""
        hidden = [heurist_home(), *([self.ledger.path.parent] if self.ledger is not None else [])]
        return Confinement(readable=staged.readable(), hidden=hidden)

    def _clips_root(self) -> Path:
        return clips_root(self.req)

    def _clips(self, result: EvalResult, staged: StagedPolicy, scratch: Path,
               deadline: float) -> tuple[list[Clip], int, list[str]]:
        """Re-simulate the worst episodes and render only the steps before their failure events: the clips, the
        env steps they took, and the clips not made with why.

        The trusted env process writes the clips; the policy process is never bound the clips folder.
        Each evaluation's folder is new (made here, exclusively), so nothing can wait in it. They are made within
        the evaluation's wall-clock limit (``deadline``, on ``time.perf_counter``), which bounds the whole
        evaluation: a clip is cut at it, and none starts after it."""
        req = self.req
        # Absolute: the worker runs in its own private directory, where a relative path would vanish with it.
        out_dir = (self._clips_root() / result.eval_id).resolve()
        candidates = [e for e in result.episodes if e.status == "ok" and e.trace is not None]
        candidates.sort(key=lambda e: (not e.events, e.return_))
        clips: list[Clip] = []
        errors: list[str] = []
        steps = 0
        out_dir.mkdir()
        confinement = self._confinement(staged)
        worker = WorkerProcess(self.limits, scratch, confinement)
        try:
            for episode in candidates[: req.clip_episodes]:
                left = deadline - time.perf_counter()
                if left <= 0:
                    errors.append(f"seed {episode.seed}: not filmed: the evaluation's wall-clock limit of "
                                  f"{self.eval_timeout_s:g} s was reached")
                    continue
                events = episode.events[: req.clip_events] or [
                    FailureEvent(step=episode.length - 1, kind="end", description="last steps of the episode")]
                windows = [(max(0, ev.step - req.clip_steps + 1), ev.step) for ev in events]
                job = self._job("clip", staged, seed=episode.seed, windows=windows,
                                labels=[f"{self.spec.id} seed {episode.seed}: {ev.description}" for ev in events],
                                expected_actions=episode.trace.actions[: max(b for _, b in windows) + 1],
                                out_dir=str(out_dir), stem=f"seed{episode.seed}", trace_window=req.trace_window)
                try:
                    reply = worker.run(job, timeout=min(self.limits.episode_timeout_s * 2 + 30, left))
                except WorkerDied as exc:
                    steps += worker.steps_taken()
                    errors.append(f"seed {episode.seed}: not filmed: {exc.reason}"[:500])
                    worker.close()
                    worker = WorkerProcess(self.limits, scratch, confinement)
                    continue
                if reply.get("status") == "worker_error":
                    steps += worker.steps_taken()
                    errors.append(f"seed {episode.seed}: not filmed: {reply.get('error')}"[:500])
                    continue
                steps += int(reply["env_steps"])
                for clip in reply["clips"]:
                    clips.append(Clip(**clip, replay_diverged_at=reply["replay_diverged_at"]))
        finally:
            worker.close()
        return clips, steps, errors

    def _append(self, record: LedgerEvent) -> None:
        if self.ledger is not None:
            self.ledger.append(record)


def clips_root(req: EvalRequest) -> Path:
    return Path(req.out_dir or "heurist-clips")


def heurists_files(req: EvalRequest, ledger: Path | None) -> list[Path]:
    """What heurist writes that may lie inside a policy folder (its home, the clips, the ledger): never the
    policy's (``read_policy``), for the evaluator as for the command line's first read."""
    from common.paths import heurist_home

    return [heurist_home(), clips_root(req), *([ledger] if ledger is not None else [])]


def evaluate(spec: TaskSpec, request: EvalRequest, ledger: Ledger | None = None,
             progress: ProgressFn | None = None) -> EvalResult:
    return Evaluator(spec, request, ledger, progress).run()


__all__ = ["EvalRequest", "Evaluator", "clips_root", "evaluate", "heurists_files", "PolicyError"]
