"""Weights & Biases, when the user asks for it (``[wandb] enabled = true``, ``heurist run --wandb``) and
``wandb`` is installed: the same scalars as TensorBoard (``store.scalars``), under the same names.

One W&B run per heurist run, its id the run's id, so a resumed run goes on with the same W&B run
(``resume="allow"``). Each point is logged at the iteration as W&B's step, with ``global_step`` (env
steps) beside it as the x-axis of every chart, as CleanRL logs it; iterations always advance, env
steps may not (an iteration served from the evaluation cache spends none).

Nothing is logged twice: ``RUN_DIR/wandb/heurist-logged.json`` (written atomically) holds the last
iteration sent, and only later ones go. A process killed between sending and writing it sends that
iteration again on resume, which W&B drops (a step not above its last).

What W&B is given is chosen here: the task, protocol and run id as its config, and scalars; not the
code, not git (``disable_git``: the workspace's repository is model-written), not the console, not
system metrics. ``WANDB_API_KEY`` is read by wandb from heurist's environment; like every key it is
redacted from heurist's records and never reaches a sandbox.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
from pathlib import Path
from typing import Any

from common.files import atomic_write
from store.config import ConfigError, WandbConfig
from store.scalars import Row

STATE = Path("wandb") / "heurist-logged.json"
INIT_TIMEOUT_S = 30.0  # an unreachable W&B costs a run this much per iteration, not wandb's default 90 s


def check_wandb(config: WandbConfig) -> None:
    """Asked for and not installed: refused before the run starts, not at its first iteration."""
    if config.enabled and importlib.util.find_spec("wandb") is None:
        raise ConfigError("wandb.enabled is set but wandb is not installed here; `pip install wandb` (or "
                          "heurist[wandb]), or drop --wandb / set wandb.enabled = false")


def wandb_id(name: str) -> str:
    """A W&B run id from a heurist name: W&B allows letters, digits, - and _, at most 64; a long name keeps its
    start and a hash of the whole, so two names never share a W&B run."""
    clean = re.sub(r"[^A-Za-z0-9_-]", "-", name)
    if clean == name and len(name) <= 64:
        return name
    return f"{clean[:51]}-{hashlib.sha256(name.encode()).hexdigest()[:12]}"


def by_index(rows: list[Row], index: str) -> dict[int, dict[str, float]]:
    """Rows keyed by their ``index`` point (a run's iteration; a campaign's runs ended), each with
    ``global_step`` (the env steps spent by then) beside its points."""
    return {int(points[index]): {**points, "global_step": step} for step, points in rows if index in points}


def log_scalars(folder: Path, run_name: str, config: WandbConfig, rows: dict[int, dict[str, float]],
                about: dict[str, Any]) -> int:
    """Send the rows after the last one sent from ``folder`` to the W&B run ``run_name``; how many went."""
    state = folder / STATE
    try:
        last = int(json.loads(state.read_text())["last"])
    except (OSError, ValueError, KeyError, TypeError):
        last = 0
    new = {step: row for step, row in rows.items() if step > last}
    if not new:
        return 0
    import wandb

    run = wandb.init(
        project=config.project, entity=config.entity, group=config.group, id=wandb_id(run_name), name=run_name,
        resume="allow", dir=str(folder), mode=config.mode, config=about, reinit="create_new",
        settings=wandb.Settings(silent=True, console="off", disable_git=True, disable_code=True, save_code=False,
                                disable_job_creation=True, x_disable_stats=True, x_disable_meta=True,
                                x_disable_machine_info=True, x_save_requirements=False,
                                init_timeout=INIT_TIMEOUT_S))
    try:
        run.define_metric("global_step")
        for pattern in ("charts/*", "heurist/*", "campaign/*"):
            run.define_metric(pattern, step_metric="global_step")
        for step, row in new.items():
            run.log(row, step=step)
    finally:
        run.finish()
    state.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(state, json.dumps({"last": max(new), "wandb_run": wandb_id(run_name)}) + "\n")
    return len(new)


__all__ = ["by_index", "check_wandb", "log_scalars", "wandb_id"]
