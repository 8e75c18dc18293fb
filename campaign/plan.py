"""A campaign file, read strictly, and the runs it plans: every task and observation mode, times its repeats.

A campaign file is TOML, strict as a run config: an unknown key or a task heurist does not know is
one line naming it and the fix. Its ``[run]`` table is a run config without ``task``, ``policy``
and ``protocol`` (those are the campaign's), checked for every planned run before anything starts.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, model_validator

from common.errors import HeuristError
from common.settings import Settings
from envs.atari_scores import ATARI57_SCORES
from envs.contract import check_policy_file
from envs.tasks import get_task, registry
from policies import starter_policy
from store.config import build_config, check_priced, merge, read_settings_file
from store.rundir import is_offline
from store.wandb_log import check_wandb


class CampaignError(HeuristError):
    """A campaign file or directory that cannot be used as it is."""


class CampaignBudget(Settings):
    """What all the campaign's runs may spend together; None means no limit of that kind. Each run is given a
    share when it starts (``campaign.budget``), so no set of runs can exceed these."""

    env_steps: int | None = Field(None, ge=1)
    tokens: int | None = Field(None, ge=1)
    usd: float | None = Field(None, gt=0)
    hours: float | None = Field(None, gt=0, description="Wall-clock hours from the campaign's first start.")


class Resources(Settings):
    # Ray takes a fraction of a CPU down to 0.0001 (a finer one failed each start of the run, after it was recorded).
    cpus_per_run: float = Field(1.0, ge=0.0001, le=100_000, allow_inf_nan=False,
                                description="Ray CPUs each run holds; its evaluator gets that many workers.")


class CampaignSpec(Settings):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
    tasks: list[str] = Field(default_factory=list)
    suite: Literal["atari57", "classic", "mujoco"] | None = None
    modes: list[Literal["pixels", "ram"]] = Field(default_factory=lambda: ["pixels"],
                                                  description="Atari observation modes; other families have one.")
    protocol: str | None = None
    repeats: int = Field(1, ge=1, le=100)
    policies: dict[str, Path] = Field(default_factory=dict, description="Starting policy by task id; else the starter.")
    run: dict[str, Any] = Field(default_factory=dict, description="The config of every run (docs/config.md).")
    budget: CampaignBudget = Field(default_factory=CampaignBudget)
    resources: Resources = Field(default_factory=Resources)
    max_attempts: int = Field(3, ge=1, le=20, description="Starts of one run, counting those after a node was lost.")

    @model_validator(mode="after")
    def _one_source_of_tasks(self) -> CampaignSpec:
        if bool(self.tasks) == (self.suite is not None):
            raise ValueError("give either tasks (a list of task ids) or suite (atari57, classic or mujoco)")
        if not self.modes:
            raise ValueError("modes must name at least one of pixels, ram")
        for key in ("task", "policy", "protocol"):
            if key in self.run:
                raise ValueError(f"[run] may not set {key}: it is the campaign's (tasks, policies, protocol)")
        return self


class PlannedRun(Settings):
    """One run of the campaign: its key (its folder under runs/), task, repeat and full run config."""

    key: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,199}$")  # a folder name under runs/ (``run_key``), never a path
    task: str
    repeat: int
    config: dict[str, Any]


def suite_tasks(suite: str) -> list[str]:
    """The task ids of a named suite, before observation modes."""
    if suite == "atari57":
        by_snake = {_snake(s.gym_id[len("ALE/"):-len("-v5")]): s.gym_id for s in registry().all()
                    if s.family == "atari" and s.obs_mode == "pixels"}
        missing = sorted(set(ATARI57_SCORES) - set(by_snake))
        if missing:
            raise CampaignError(f"suite atari57 needs ROMs that ale-py does not have here: {', '.join(missing[:5])}; "
                                "list the games you have under tasks instead")
        return sorted(by_snake[name] for name in ATARI57_SCORES)
    family = {"classic": ("classic_control", "box2d"), "mujoco": ("mujoco",)}[suite]
    return sorted(s.id for s in registry().all() if s.family in family and s.variant_of is None)


def _snake(name: str) -> str:
    return "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")


def _with_mode(task_id: str, mode: str, modes: list[str]) -> str | None:
    """The task id of ``task_id`` in observation ``mode``; None where the family has no such mode. An Atari id
    that names its mode (``ALE/Breakout-ram-v5``) is kept as it is, whatever ``modes`` say."""
    spec = get_task(task_id)
    if spec.family != "atari":
        return task_id if mode == modes[0] else None  # one mode only: planned once
    if spec.obs_mode == "ram":
        return task_id if mode == modes[0] else None
    game = spec.gym_id[len("ALE/"):-len("-v5")]
    return f"ALE/{game}{'-ram' if mode == 'ram' else ''}-v5"


def run_key(task_id: str, repeat: int) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in task_id.removeprefix("ALE/")).strip("-").lower()
    return f"{slug}-r{repeat}"


def plan_runs(spec: CampaignSpec, source: str) -> list[PlannedRun]:
    """Every run of the campaign, in the order they start, each config checked as `heurist run` would."""
    tasks = spec.tasks or suite_tasks(spec.suite or "")
    for task_id in tasks:
        get_task(task_id)  # an unknown id is one line that lists where to look
    ids = []
    for task_id in tasks:
        for mode in spec.modes:
            moded = _with_mode(task_id, mode, spec.modes)
            if moded is not None and moded not in ids:
                ids.append(moded)
    if not ids:
        raise CampaignError(f"{source}: the campaign plans no runs; give tasks or a suite")
    unknown = sorted(set(spec.policies) - set(ids))
    if unknown:
        raise CampaignError(f"{source}: policies names {unknown[0]}, which is not among the campaign's runs "
                            f"({', '.join(ids[:4])}{', ...' if len(ids) > 4 else ''}); fix the task id")
    if spec.protocol:
        for task_id in ids:
            get_task(task_id).protocol(spec.protocol)  # an unknown protocol is refused here, not mid-campaign
    runs = []
    for repeat in range(spec.repeats):
        for task_id in ids:
            data = merge(spec.run, {"task": task_id})
            if spec.protocol:
                data["protocol"] = spec.protocol
            if task_id in spec.policies:
                data["policy"] = str(spec.policies[task_id])
            # Its types first: the defaults below read its tables ("[run] eval = 5" was an internal error).
            build_config(data, f"{source} [run] for {task_id}")
            if (data.get("wandb") or {}).get("enabled"):  # a campaign's runs are one W&B group, named after it
                data["wandb"] = {"group": spec.name, **data["wandb"]}
            evaluation = data.setdefault("eval", {})
            if evaluation.get("backend", "local") == "local":  # the ray backend's pairs take CPUs of their own
                evaluation.setdefault("workers", max(1, int(spec.resources.cpus_per_run)))
            config = build_config(data, f"{source} [run] for {task_id}")
            # What `heurist run` refuses before a run directory exists is refused here, before anything starts.
            check_policy_file(config.policy or starter_policy(get_task(task_id)))
            if not is_offline(config):
                check_priced(config)
            check_wandb(config.wandb)
            runs.append(PlannedRun(key=run_key(task_id, repeat), task=task_id, repeat=repeat, config=data))
    return runs


def load_campaign(path: Path) -> tuple[CampaignSpec, list[PlannedRun]]:
    """Read and check a campaign file; its runs, planned."""
    try:
        data = tomllib.loads(read_settings_file(path))
    except FileNotFoundError:
        raise CampaignError(f"campaign file {path} does not exist; give a .toml file (see docs/campaigns.md)") from None
    except OSError as exc:  # a folder or a FIFO in its place, no permission
        raise CampaignError(f"cannot read the campaign file {path}: {exc.strerror}; give a .toml file (see "
                            f"docs/campaigns.md)") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise CampaignError(f"{path} does not parse: {exc}") from None
    except RecursionError:
        raise CampaignError(f"{path} does not parse: it is nested too deeply") from None
    try:
        spec = CampaignSpec.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        message = "unknown key" if first["type"] == "extra_forbidden" else first["msg"].removeprefix("Value error, ")
        raise CampaignError(f"{path}: {where}: {message}; fix it (see docs/campaigns.md)") from None
    # Relative policy paths are the campaign file's, wherever heurist is started from.
    spec = spec.model_copy(update={"policies": {k: (path.parent / p).resolve() for k, p in spec.policies.items()}})
    return spec, plan_runs(spec, str(path))


__all__ = ["CampaignBudget", "CampaignError", "CampaignSpec", "PlannedRun", "load_campaign", "plan_runs", "run_key",
           "suite_tasks"]
