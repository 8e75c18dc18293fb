"""Failure scenarios on disk: saved from an evaluation's failure events, and read back by name (``envs.scenarios``).

``save_scenarios`` hands a worker pair's trusted env process one ``scenario_save`` job per failed episode (its
seed, its recorded actions, its failure events); what comes back verified is written to a folder heurist owns
and no sandbox sees (a run's ``RUN_DIR/scenarios``), one JSON file per scenario, named by the seed, the failure's
kind and step and the recorded window's hash: a name always means the same scenario, so a regression test that
names one finds exactly it in every later iteration. ``load_scenario`` reads one back by name for a test's
``run_scenario``; names are checked, never paths.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from common.files import atomic_write
from envs.isolation import Confinement
from envs.limits import Limits
from envs.policy_files import PolicyBundle, StagedPolicy
from envs.results import EvalResult
from envs.scenarios import Scenario, scenario_name
from envs.tasks import TaskSpec
from envs.worker_pair import WorkerDied, WorkerProcess

NAME = re.compile(r"^[A-Za-z0-9_-]{1,160}$")


class ScenarioError(Exception):
    """A scenario a test asked for that does not exist or cannot be read; the message goes back to the test."""


class SavedScenarios(BaseModel):
    """What one ``save_scenarios`` did: the scenarios by seed, what was discarded and why, the env steps taken."""

    model_config = ConfigDict(extra="forbid")

    by_seed: dict[int, list[str]] = Field(default_factory=dict)
    discarded: dict[str, str] = Field(default_factory=dict)
    env_steps: int = 0


def file_name(scenario: Scenario) -> str:
    return f"{scenario.name}-{scenario.trajectory_sha256[:8]}"


def save_scenarios(result: EvalResult, task_json: str, source: str, policy_path: str, limits: Limits,
                   folder: Path, hidden: list[Path], before: int, warmup: int, most: int,
                   events_per_episode: int = 1) -> SavedScenarios:
    """The scenarios of the first failure events of each failed episode (at most ``most`` episodes, worst first,
    and ``events_per_episode`` events of each)."""
    saved = SavedScenarios()
    failed = [e for e in result.episodes if e.events and e.trace is not None and e.trace.actions]
    # A failure within the first ``before`` steps would be saved at the episode's start: that scenario is the whole
    # episode, which a test of the episode pins as well, so it is not made (nor a worker pair started for it).
    early = [e for e in failed if e.events[0].step <= before]
    for episode in early:
        saved.discarded[f"seed {episode.seed}"] = (f"its failure at step {episode.events[0].step} is within the first "
                                                   f"{before} steps: the whole episode is the test")
    failed = [e for e in failed if e not in early]
    failed.sort(key=lambda e: (e.return_ is None, -(e.return_ or 0.0)), reverse=True)
    if not failed or most <= 0:
        return saved
    folder.mkdir(parents=True, exist_ok=True)
    # The policy re-run as in its evaluation: its read-only copy, and the task's simulator model for a planner.
    staged = StagedPolicy(PolicyBundle(path=Path(policy_path), data=source.encode()),
                          TaskSpec.model_validate_json(task_json).simulator_model(result.protocol))
    confinement = Confinement(readable=staged.readable(), hidden=hidden)
    with tempfile.TemporaryDirectory(prefix="heurist-scenarios-") as scratch:
        worker = WorkerProcess(limits, Path(scratch), confinement)
        try:
            for episode in failed[:most]:
                events = episode.events[:events_per_episode]
                job = {"kind": "scenario_save", "task": task_json, "protocol": result.protocol,
                       "policy_path": policy_path, "policy_source": source, "seed": episode.seed,
                       "actions": episode.trace.actions[: max(e.step for e in events) + 1],
                       "events": [e.model_dump() for e in events],
                       "before": before, "warmup": warmup, "cpu_s": limits.episode_cpu_s,
                       "simulator_model": staged.simulator_model}
                try:
                    reply = worker.run(job, timeout=limits.episode_timeout_s * 2 + 30)
                except WorkerDied as died:
                    saved.env_steps += worker.steps_taken()
                    saved.discarded[f"seed {episode.seed}"] = f"the env process died: {died.reason}"[:300]
                    worker.close()
                    worker = WorkerProcess(limits, Path(scratch), confinement)
                    continue
                saved.env_steps += worker.steps_taken()
                if reply.get("status") != "ok":
                    saved.discarded[f"seed {episode.seed}"] = str(reply.get("error"))[:300]
                    continue
                for key, why in dict(reply.get("discarded") or {}).items():
                    saved.discarded[f"seed {episode.seed}: {str(key)[:100]}"] = str(why)[:300]
                for data in reply.get("scenarios") or []:
                    try:  # from the trusted env process; checked all the same, and a bad one is no scenario
                        scenario = Scenario.model_validate(data)
                    except ValidationError as exc:
                        saved.discarded[f"seed {episode.seed}"] = f"an unreadable scenario: {str(exc)[:200]}"
                        continue
                    try:
                        name = keep_scenario(folder, scenario, verified=True)
                    except ScenarioError as exc:
                        saved.discarded[f"seed {episode.seed}"] = str(exc)
                        continue
                    saved.by_seed.setdefault(episode.seed, []).append(name)
        finally:
            worker.close()
            staged.close()
    return saved


def keep_scenario(folder: Path, scenario: Scenario, verified: bool = False) -> str:
    """Write a scenario into a scenarios folder under the name its own fields give it (seed, failure kind and step,
    the recorded window's hash); its name. ``verified``: saved and verified just now by this run's env process,
    so it replaces a file of that name (one brought in from memory, say); otherwise a file already there is kept.
    A scenario read from elsewhere (memory) must be named as heurist would name it; its window's hash is a field
    of it, taken as written (a scenario from memory is as trusted as the store it came from)."""
    if scenario.name != scenario_name(scenario.seed, scenario.event_kind, scenario.event_step):
        raise ScenarioError(f"a scenario named {scenario.name[:80]!r} for seed {scenario.seed}'s "
                            f"{scenario.event_kind[:40]} at step {scenario.event_step}")
    name = file_name(scenario)
    if not NAME.fullmatch(name):
        raise ScenarioError(f"a scenario named {name[:80]!r}")
    target = folder / f"{name}.json"
    if verified or not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write(target, scenario.model_dump_json())
    return name


def scenario_names(folder: Path) -> list[str]:
    """The scenarios a folder holds, by name."""
    return sorted(p.stem for p in folder.glob("*.json") if NAME.fullmatch(p.stem)) if folder.is_dir() else []


def load_scenario(folder: Path | None, name: str) -> Scenario:
    """The scenario of that name, or ScenarioError saying why not (in words a test's author can act on)."""
    if folder is None:
        raise ScenarioError("no scenarios are kept for this policy under test")
    if not isinstance(name, str) or not NAME.fullmatch(name):
        raise ScenarioError(f"{str(name)[:80]!r} is not a scenario name (letters, digits, '-' and '_')")
    path = folder / f"{name}.json"
    if not path.is_file():
        known = scenario_names(folder)[:10]
        raise ScenarioError(f"no scenario {name}; this run has: {', '.join(known) or 'none'}")
    try:
        scenario = Scenario.model_validate(json.loads(path.read_text()))
    except (ValidationError, ValueError) as exc:
        raise ScenarioError(f"scenario {name} cannot be read: {str(exc).splitlines()[0][:200]}") from None
    if file_name(scenario) != name:  # a name always means the same scenario, and its fields name its clips
        raise ScenarioError(f"scenario file {name} holds another scenario ({file_name(scenario)[:80]})")
    return scenario


__all__ = ["SavedScenarios", "ScenarioError", "file_name", "keep_scenario", "load_scenario", "save_scenarios",
           "scenario_names"]
