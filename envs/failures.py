"""Failure events from an episode as it runs.

One detector serves every task; what counts as a failure comes from the task's
``FailureRules`` (data), not from a branch per family. The worker calls ``step`` once
per env step, so it stays cheap: a few comparisons and no allocation unless an event
fires.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict

from envs.tasks import FailureRules


class FailureEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    step: int
    kind: str
    description: str


def describe_obs(obs: Any) -> str:
    """A short rendering of small vector observations for event descriptions; '' for images and RAM."""
    arr = np.asarray(obs)
    if arr.ndim == 1 and arr.size <= 12 and arr.dtype.kind == "f":
        return " obs=[" + ", ".join(f"{v:.3g}" for v in arr) + "]"
    return ""


class FailureDetector:
    def __init__(self, rules: FailureRules, target: float | None) -> None:
        self.rules = rules
        self.target = target
        self.events: list[FailureEvent] = []
        self._lives: int | None = None
        self._stall_run = 0
        # Without lives or stall rules only the final step can fail, so the worker may skip the rest.
        self.needs_every_step = rules.lives or rules.stall is not None

    def step(self, t: int, obs: Any, reward: float, episode_return: float, terminated: bool, truncated: bool,
             info: dict) -> int:
        """Record events for step ``t`` (0-based): its reward, and the return so far including it.

        Returns how many events fired, so the caller can snapshot the trace around them.
        """
        before = len(self.events)
        self._return = episode_return
        rules = self.rules
        if rules.lives:
            lives = info.get("lives")
            if lives is not None:
                if self._lives is not None and lives < self._lives:
                    self._add(t, "life_lost", f"life lost at step {t} ({lives} left, return so far {self._return:g})")
                self._lives = lives
        if rules.stall is not None:
            value = info.get(rules.stall.info_key)
            if value is not None and value < rules.stall.below:
                self._stall_run += 1
                if self._stall_run == rules.stall.steps:
                    start = t - rules.stall.steps + 1
                    self._add(t, "stall", f"stalled from step {start}: {rules.stall.info_key} below "
                                          f"{rules.stall.below:g} for {rules.stall.steps} steps")
            else:
                self._stall_run = 0
        if terminated:
            failed = rules.termination == "failure" or (
                rules.termination == "by_reward" and rules.crash_reward is not None and reward <= rules.crash_reward)
            if failed:
                self._add(t, rules.termination_kind, f"{rules.termination_text} at step {t}{describe_obs(obs)}")
        elif truncated and self.target is not None and self._return < self.target:
            self._add(t, "short_of_target", f"truncated at step {t} with return {self._return:g} "
                                            f"short of target {self.target:g}{describe_obs(obs)}")
        return len(self.events) - before

    def state(self) -> dict[str, Any]:
        """What the detector carries from one step to the next (lives seen, a stall's run): a scenario saves it."""
        return {"lives": self._lives, "stall_run": self._stall_run}

    def resume(self, state: dict[str, Any]) -> None:
        """Go on from a saved ``state`` (a scenario's window starts mid-episode)."""
        lives, run = state.get("lives"), state.get("stall_run", 0)
        self._lives = int(lives) if isinstance(lives, int) else None
        self._stall_run = int(run) if isinstance(run, int) and run >= 0 else 0

    def _add(self, step: int, kind: str, description: str) -> None:
        self.events.append(FailureEvent(step=step, kind=kind, description=description))
