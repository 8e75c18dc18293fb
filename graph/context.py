"""What nodes use but the state does not hold: the run's config, task, workspace, ledger, memory, model and roles.

Rebuilt from the run directory on every start or resume, so nothing here has to survive
a crash. Evaluations go through ``evaluate_cached``: a policy version's results on a set
of seeds are stored under ``RUN_DIR/evals`` by policy hash, so a node that runs again
after a resume reads them instead of spending the env steps twice.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from common.errors import HeuristError
from common.events import ScenariosSaved, ScenarioSteps, read_events
from common.files import atomic_write
from common.ledger import Ledger
from envs.evaluator import EvalRequest, evaluate
from envs.limits import Limits
from envs.regression import KitRefused, PolicyUnderTest
from envs.results import EvalResult
from envs.scenario_files import (
    ScenarioError,
    file_name,
    keep_scenario,
    load_scenario,
    save_scenarios,
    scenario_names,
)
from envs.scenarios import Scenario
from envs.tasks import PROTECTED_SPLITS, Split, TaskSpec
from graph.state import Scored
from memory.store import MemoryStore
from roles.base import Role, RoleContext
from roles.coder_tools import ToolFailed
from roles.llm import LLMClient
from roles.llm_replay import ReplayClient
from roles.llm_usage import Usage
from roles.stages import ScenarioReplay, Stage
from store.config import RunConfig
from store.transcripts import TranscriptRecorder
from store.workspace import Workspace

# A saved moment larger than this stays in its run's folder only: memory is read whole by every recall that reaches
# it, and a shared Chroma server takes it in one request. (Breakout's, with 8 warm-up frames, is tens of KiB.)
MEMORY_SCENARIO_BYTES = 4 << 20
MAX_ANALYSED_SCENARIOS = 3  # old failures' moments replayed for the analysts each iteration (hundreds of steps each)


@dataclass
class Services:
    run_dir: Path
    run_id: str
    search_key: str  # seeds the offline search; a replay uses the recorded run's, to reach its decisions
    screen_key: str  # draws the seeds no model is shown (``SeedSplits.unseen``): never in a brief or a sandbox
    config: RunConfig
    spec: TaskSpec
    protocol: str
    workspace: Workspace
    ledger: Ledger
    memory: MemoryStore | None  # None only where nothing runs (the topology snapshot)
    llm: LLMClient | ReplayClient | None  # None offline
    usage: Usage
    recorder: TranscriptRecorder
    roles: dict[Stage, list[Role]]  # stage -> roles, in the order the config names them
    session_started: float = field(default_factory=time.monotonic)
    elapsed_before: float = 0.0  # active seconds of earlier sessions of this run
    on_event: Callable[[str, dict[str, Any]], None] | None = None
    # A replay's recorded run: its recall node gives what the recorded run recalled, since the replay's own memory
    # (RUN_DIR/memory) lacks what earlier runs had left, and the coder's decisions depend on it.
    replay_of: Path | None = None
    # Test files run in parallel and may ask for the same uncached seed: one lock per (policy, seed), so a
    # seed is evaluated once while different seeds are evaluated side by side.
    _episode_locks: dict[tuple[str, int], threading.Lock] = field(default_factory=dict)
    _locks_lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------------ roles

    def context(self, iteration: int, role: Role) -> RoleContext:
        settings = self.config.llm.roles.get(role.name)
        llm = None if settings is not None and settings.offline else self.llm  # a role may stay offline
        return RoleContext(task=self.spec, iteration=iteration, config=self.config,
                           transcript=self.recorder.for_role(iteration, role.name), llm=llm, memory=self.memory,
                           score=self.score_policies, search_key=self.search_key)

    def role(self, stage: Stage) -> Role:
        """The one role of a single-role stage (code, test)."""
        return self.roles[stage][0]

    def event(self, kind: str, **fields: Any) -> None:
        """Tell the live view what happens; every event carries the model budget spent so far."""
        if self.on_event is not None:
            self.on_event(kind, {**fields, "tokens": self.usage.tokens, "usd": self.usage.usd,
                                 "unpriced_tokens": self.usage.unpriced_tokens,
                                 "estimated_tokens": self.usage.estimated_tokens})

    # ------------------------------------------------------------------ evaluation

    def limits(self) -> Limits:
        e = self.config.eval
        return Limits(episode_timeout_s=e.episode_timeout_s, episode_cpu_s=e.episode_timeout_s, memory_mb=e.memory_mb)

    def dev_seeds(self) -> list[int]:
        seeds = list(self.spec.seeds.seeds("dev"))
        return seeds[: self.config.eval.episodes] if self.config.eval.episodes else seeds

    def evaluate_cached(self, policy: Path, split: Split = "dev", seeds: list[int] | None = None,
                        video: bool = False) -> EvalResult:
        """The policy's results on these seeds, from the cache when this version was evaluated before."""
        seeds = list(seeds if seeds is not None else self.dev_seeds())
        sha = hashlib.sha256(policy.read_bytes()).hexdigest()
        cached = self.cache_file(sha, split, seeds, video)
        if cached.is_file():
            return EvalResult.model_validate_json(cached.read_text())
        self.event("evaluating", split=split, seeds=len(seeds), policy=sha[:12])
        result = evaluate(self.spec, EvalRequest(
            policy_path=policy, task_id=self.spec.id, protocol=self.protocol, split=split, seeds=seeds,
            workers=self.config.eval.workers, lockstep=self.config.eval.lockstep, limits=self.limits(),
            step_s=self.config.eval.step_s, video=video and self.config.eval.video,
            backend=self.config.eval.backend, ray_address=self.config.eval.ray_address,
            out_dir=self.run_dir / "clips", confirm_protected=split in PROTECTED_SPLITS), self.ledger)
        if result.policy_sha256 != sha:  # the evaluator hashes what it ran: it must be what was asked for
            raise HeuristError(f"{policy} changed while it was being evaluated (sha256 {sha[:12]} asked, "
                               f"{result.policy_sha256[:12]} scored); the result is not stored")
        atomic_write(cached, result.model_dump_json(by_alias=True))
        self.event("evaluated", split=split, seeds=len(seeds), env_steps=result.env_steps,
                   mean=result.stats.mean if result.stats else None)
        return result

    def cache_file(self, policy_sha: str, split: Split, seeds: list[int], video: bool) -> Path:
        """Where this evaluation is kept once made (``evaluate_cached`` reads it instead of evaluating again)."""
        # The protocol's settings, not only its name: a protocol that changes (deterministic gained EnvPool's
        # reset) must not serve results of the old one to a resumed run.
        settings = self.spec.protocol(self.protocol).settings()
        key = hashlib.sha256(json.dumps([policy_sha, split, seeds, video, self.protocol, settings],
                                        sort_keys=True, default=str).encode()).hexdigest()[:16]
        return self.run_dir / "evals" / f"{policy_sha[:12]}-{split}-{key}.json"

    def score_policies(self, sources: list[str], seeds: list[int]) -> list[dict[int, float | None]]:
        """Each source's return per seed (None: the episode failed), for the offline search and test writer."""
        return [per_seed(self.evaluate_cached(self.candidate_file(source), "dev", seeds)) for source in sources]

    def candidate_file(self, source: str) -> Path:
        """A policy version as a file of its own, named by its hash, for the evaluator to run.

        ``RUN_DIR/candidates`` is out of every sandbox's sight; a file there whose bytes are not its
        name's (written by anything else) is rewritten, so what is scored is ``source`` exactly."""
        sha = hashlib.sha256(source.encode()).hexdigest()
        path = self.run_dir / "candidates" / f"{sha[:16]}.py"
        if path.is_symlink() or not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != sha:
            path.unlink(missing_ok=True)
            atomic_write(path, source)
        return path

    def policy_under_test(self, source: str, full: EvalResult) -> PolicyUnderTest:
        """What a regression test's kit reaches: this policy's dev episodes (from ``full``, its evaluation on
        the dev seeds, else evaluated and recorded now) and sandboxed calls on the policy itself."""
        policy = self.candidate_file(source)
        dev = list(self.spec.seeds.seeds("dev"))
        known = {e.seed: e for e in full.episodes}

        def episode(seed: int) -> dict:
            if seed not in dev:
                raise KitRefused(f"seed {seed} is not a dev seed of {self.spec.id}; regression tests use the dev "
                                 f"seeds {dev[0]}..{dev[-1]} (holdout and audit seeds are never used by tests)")
            found = known.get(seed)
            if found is None:
                with self._locks_lock:
                    lock = self._episode_locks.setdefault((full.policy_sha256, seed), threading.Lock())
                with lock:
                    found = self.evaluate_cached(policy, "dev", [seed]).episodes[0]
            return found.model_dump(mode="json", by_alias=True)

        return PolicyUnderTest(episode, self.spec.model_dump_json(), self.protocol, str(policy), source, self.limits(),
                               hidden=[self.run_dir], scenarios=self.scenario_folder)

    @property
    def scenario_folder(self) -> Path:
        """Where the run's failure scenarios are kept: out of every sandbox's sight, read by name."""
        return self.run_dir / "scenarios"

    def save_scenarios(self, source: str, result: EvalResult, iteration: int,
                       seeds: list[int]) -> dict[int, list[str]]:
        """The scenarios of this policy's failures on ``seeds`` (seed -> names), saved once per policy and seed (a
        node run twice, or a later iteration with the same incumbent, finds them in the ledger), the env steps
        they took recorded there."""
        config = self.config.scenarios
        before = config.steps_before(self.spec.family)
        if before == 0 or not seeds:
            return {}
        known: dict[int, list[str]] = {}
        tried: set[int] = set()
        for record in self._saves_of(result.policy_sha256):
            tried.update(record.seeds)
            known.update({int(seed): names for seed, names in record.scenarios.items()})
        missing = [seed for seed in seeds if seed not in tried]
        if missing:
            chosen = result.model_copy(update={"episodes": [e for e in result.episodes if e.seed in missing]})
            saved = save_scenarios(chosen, self.spec.model_dump_json(), source, str(self.candidate_file(source)),
                                   self.limits(), self.scenario_folder, [self.run_dir], before, config.warmup,
                                   len(missing))
            self.ledger.append(ScenariosSaved(
                run_id=self.run_id, iteration=iteration, policy_sha256=result.policy_sha256, seeds=missing,
                scenarios={str(seed): names for seed, names in saved.by_seed.items()}, discarded=saved.discarded,
                env_steps=saved.env_steps))
            known.update(saved.by_seed)
        return {seed: known[seed] for seed in seeds if seed in known}

    def check_commit(self, base: str, commit: str, sha256: str, allowed: set[str], what: str) -> None:
        """The branch never keeps a commit that does not hold exactly the scored bytes (and, beside the policy, only
        the ``allowed`` files): it is undone and the run stops."""
        committed = self.workspace.file_sha256(commit)
        changed = set(self.workspace.changed_between(base, commit))
        if committed != sha256 or not changed <= allowed:
            self.workspace.reset_to(base)
            raise HeuristError(f"{what} {commit[:12]} did not hold what was scored (policy sha256 {committed[:12]}, "
                               f"scored {sha256[:12]}; files changed: {', '.join(sorted(changed)) or 'none'}), so it "
                               f"was undone and the run stops; inspect {self.run_dir / 'candidates'} and the "
                               f"workspace, which is at the last accepted commit")

    def _saves_of(self, policy_sha256: str) -> list[ScenariosSaved]:
        """This run's ledger lines of the scenarios saved of one policy's failures."""
        return [r for r in read_events(self.ledger)[0] if isinstance(r, ScenariosSaved) and r.run_id == self.run_id
                and r.policy_sha256 == policy_sha256]

    def saved_scenarios(self, policy_sha256: str, iteration: int) -> list[Scenario]:
        """The scenarios this run saved of one policy's failures at one iteration, read back from the run's folder
        (an earlier iteration's were remembered at that iteration)."""
        names = dict.fromkeys(n for record in self._saves_of(policy_sha256) if record.iteration == iteration
                              for group in record.scenarios.values() for n in group)
        found = []
        for name in names:
            try:
                found.append(load_scenario(self.scenario_folder, name))
            except ScenarioError:  # a file gone from RUN_DIR: nothing to remember of it
                continue
        return found

    def scenario_menu(self, first: set[str] | None = None) -> list[str]:
        """The run's saved scenarios by name: ``first`` (those recalled this iteration) ahead, then the newest."""
        folder, first = self.scenario_folder, first or set()
        return sorted(scenario_names(folder), key=lambda n: (n not in first, -(folder / f"{n}.json").stat().st_mtime,
                                                             n))

    def scenario_clips(self, source: str) -> Path:
        """Where a policy's filmed scenario replays go: in the run, out of every sandbox's sight."""
        return (self.run_dir / "clips" / "scenarios" / hashlib.sha256(source.encode()).hexdigest()[:12]).resolve()

    def scenario_replays(self, source: str, iteration: int, pinned: set[str]) -> list[ScenarioReplay]:
        """The saved scenarios no accepted test replays (``pinned``: the names the accepted tests replay), at most
        ``MAX_ANALYSED_SCENARIOS``, newest first, replayed with this policy and filmed where the run records clips,
        for the analysts: an earlier policy's failure this one may have again, an earlier run's recalled one.
        Once per policy and scenario, whatever happened (a file beside the clips says what), the env steps in the
        ledger; one that cannot be replayed is left out and gives its place to the next."""
        replays = []
        for name in [n for n in self.scenario_menu() if n not in pinned]:
            if len(replays) >= MAX_ANALYSED_SCENARIOS:
                break
            seen = self.scenario_clips(source) / f"{name}.replay.json"
            try:
                replay = ScenarioReplay.model_validate_json(seen.read_text())
            except (OSError, ValueError):  # not replayed yet with this policy (or by a heurist that recorded less)
                try:
                    moment = load_scenario(self.scenario_folder, name)
                except ScenarioError:  # an unreadable file: nothing replayed, nothing spent
                    continue
                replay = self._replay_for_analysts(source, moment, iteration)
                seen.parent.mkdir(parents=True, exist_ok=True)
                atomic_write(seen, replay.model_dump_json())
            if replay.error is None:
                replays.append(replay)
        return replays

    def _replay_for_analysts(self, source: str, moment: Scenario, iteration: int) -> ScenarioReplay:
        name = file_name(moment)
        replay = ScenarioReplay(name=name, seed=moment.seed, step=moment.event_step, kind=moment.event_kind,
                                description=moment.event_description, failed_again=False)
        try:
            result, _ = self.replay_scenario(source, name, iteration, "the analyse stage",
                                             film=self.config.eval.video, record=False)
        except ToolFailed as exc:
            return replay.model_copy(update={"error": str(exc)[:300]})
        clip = result.get("clip") or {}
        return replay.model_copy(update={"failed_again": bool(result["failed_again"]), "mp4": clip.get("mp4"),
                                         "png": clip.get("png"), "frames": int(clip.get("frames") or 0)})

    def replay_scenario(self, source: str, name: str, iteration: int, where: str,
                        film: bool = False, record: bool = True) -> tuple[dict[str, Any], int]:
        """One saved scenario replayed with ``source`` in the sandbox, each step recorded (``envs.scenarios``): what
        happened, and the env steps it took (in the ledger, so the run's budget counts them); with ``film``, a clip
        of the steps around the failure under ``RUN_DIR/clips/scenarios`` (``result["clip"]``). ToolFailed says
        why it could not run, with the env steps it took before it failed."""

        def no_episodes(seed: int) -> dict:
            raise KitRefused("a scenario replay runs no episodes")

        policy = PolicyUnderTest(no_episodes, self.spec.model_dump_json(), self.protocol,
                                 str(self.candidate_file(source)), source, self.limits(), hidden=[self.run_dir],
                                 scenarios=self.scenario_folder)
        with tempfile.TemporaryDirectory(prefix="heurist-scenario-") as scratch:
            session = policy.session(Path(scratch))
            try:
                film_dir = self.scenario_clips(source) if film else None
                if film_dir is not None:
                    film_dir.mkdir(parents=True, exist_ok=True)
                result = session.scenario(name, record=record, film_dir=film_dir)
            except (ScenarioError, KitRefused, OSError) as exc:
                raise ToolFailed(str(exc), policy.scenario_steps) from None
            finally:
                session.close()
                if policy.scenario_steps:
                    self.ledger.append(ScenarioSteps(run_id=self.run_id, iteration=iteration, where=where,
                                                     env_steps=policy.scenario_steps))
        return result, policy.scenario_steps

    def import_scenarios(self, scenarios: list[tuple[Scenario, str]]) -> tuple[dict[str, str], dict[str, str]]:
        """Earlier runs' scenarios (each with what failed there), recalled from memory with their failures, put in
        this run's folder so tests and the coder's tools can replay them by name. What was brought in (name ->
        what failed there), and what was left out and why: a scenario of another task or protocol, one larger
        than memory keeps, one not named as heurist names it, or a folder that cannot be written."""
        imported, left_out = {}, {}
        for scenario, description in scenarios:
            if scenario.task != self.spec.id or scenario.protocol != self.protocol:
                left_out[scenario.name] = f"of {scenario.task} ({scenario.protocol})"
            elif len(scenario.model_dump_json()) > MEMORY_SCENARIO_BYTES:
                left_out[scenario.name] = f"larger than the {MEMORY_SCENARIO_BYTES >> 20} MiB memory keeps"
            else:
                try:
                    imported[keep_scenario(self.scenario_folder, scenario)] = description
                except (ScenarioError, OSError) as exc:
                    left_out[scenario.name] = str(exc)[:300]
        return imported, left_out


def per_seed(result: EvalResult) -> dict[int, float | None]:
    return {e.seed: (e.return_ if e.status == "ok" else None) for e in result.episodes}


def scored(commit: str, result: EvalResult) -> Scored:
    """The state's record of a policy version (JSON: seeds as strings)."""
    return {"commit": commit, "sha256": result.policy_sha256, "mean": result.stats.mean if result.stats else None,
            "per_seed": {str(k): v for k, v in per_seed(result).items()}, "status": result.status}


def seeds_of(record: dict[str, Any]) -> dict[int, float | None]:
    return {int(k): v for k, v in record["per_seed"].items()}
