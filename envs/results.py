"""What an evaluation reports: per-episode results with their traces, clips, score statistics, the whole result.

``EvalResult`` is what ``envs.evaluator`` returns and what the report, the ledger and the
roles read; ``score_stats`` computes its statistics over completed episodes.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from envs.failures import FailureEvent
from envs.tasks import Split, TaskSpec

EpisodeStatus = Literal["ok", "policy_error", "invalid_action", "env_error", "timeout", "crash", "not_run"]


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TraceWindow(_Record):
    label: str
    step: int
    steps: list[dict[str, Any]]


class EpisodeTrace(_Record):
    actions: list[Any]
    rewards: list[float]
    mode_counts: dict[str, int]
    windows: list[TraceWindow]


class EpisodeResult(_Record):
    seed: int
    status: EpisodeStatus
    error: str | None = None
    return_: float | None = Field(default=None, alias="return")
    length: int = 0
    env_steps: int = 0
    wall_s: float = 0.0
    cpu_s: float = 0.0
    termination: str | None = None
    events: list[FailureEvent] = Field(default_factory=list)
    trace: EpisodeTrace | None = None
    setup_s: float | None = None  # CPU seconds of the policy's setup(), where this episode's start ran it

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Clip(_Record):
    seed: int
    step: int
    label: str
    mp4: str
    png: str
    frames: int
    replay_diverged_at: int | None = None


class ScoreStats(_Record):
    """Over completed episodes. ``std`` is the population standard deviation (ddof=0); ``ci95`` is a
    t-interval for the mean (None with fewer than two episodes or no spread)."""

    mean: float
    std: float
    median: float
    min: float
    max: float
    ci95: tuple[float, float] | None
    hns_mean: float | None = None


class EvalResult(_Record):
    eval_id: str
    task: str
    protocol: str
    obs_mode: str
    split: Split
    seeds: list[int]
    policy_path: str
    policy_sha256: str
    status: Literal["complete", "partial", "broken"]
    stats: ScoreStats | None
    target: float | None
    episodes: list[EpisodeResult]
    failures: dict[str, int]
    env_steps: int
    wall_s: float
    clips: list[Clip]
    containment: dict[str, str]
    protected_uses_before: int = 0
    clip_env_steps: int = 0  # the re-simulations that rendered the clips; included in env_steps
    clip_errors: list[str] = []  # clips that were not made, and why (a render that failed, a full disk, no time left)
    backend: Literal["local", "ray"] = "local"  # where the episodes ran (``envs.ray_backend``)
    protocol_settings: dict[str, Any] = {}  # every setting of the protocol the episodes ran under
    max_steps: int | None = None  # episodes cut after this many steps (a quick look, not the protocol's score)
    nodes: dict[str, int] = {}  # the ray backend: episodes each node (host:node id) ran
    policy_files: dict[str, str] = {}  # a policy folder's data files (sha256 by relative path), all in its identity
    limits: dict[str, float] = {}  # each episode's time limits and the evaluation's, as sized from the task
    setup_runs: int = 0  # times the policy's setup() completed: once per worker pair (and per pair started again)

    def summary(self) -> dict[str, Any]:
        """The compact form for ``--json`` and the ledger: no traces."""
        s = self.stats
        return {
            "eval_id": self.eval_id, "task": self.task, "protocol": self.protocol, "split": self.split,
            "seeds": self.seeds, "policy": self.policy_path, "policy_sha256": self.policy_sha256,
            "status": self.status, "episodes": len(self.episodes),
            "episodes_failed": sum(e.status != "ok" for e in self.episodes),
            "mean": s.mean if s else None, "std": s.std if s else None, "median": s.median if s else None,
            "min": s.min if s else None, "max": s.max if s else None, "ci95": s.ci95 if s else None,
            "hns_mean": s.hns_mean if s else None, "target": self.target,
            "env_steps": self.env_steps, "clip_env_steps": self.clip_env_steps, "max_steps": self.max_steps,
            "setup_runs": self.setup_runs,
            "wall_s": round(self.wall_s, 3),
            "failures": self.failures, "clips": [c.mp4 for c in self.clips], "clip_errors": self.clip_errors,
        }


CONTROL_ALPHA = 0.01  # a holdout that differs from its control at this two-sided level is reported as differing


def differs_p(first: EvalResult, second: EvalResult) -> float | None:
    """How likely two evaluations of one policy on different seeds are to differ as much as they do by chance, in
    their returns or in how many episodes failed. Seeds of one task are draws of the same initial states, so only a
    policy that tells the two sets apart makes this small. Two tests, each two-sided, Bonferroni-combined (twice the
    smaller p): Mann-Whitney U on the completed episodes' returns, and Fisher's exact test on failed against
    completed episodes, so a policy that fails exactly the episodes that would have scored badly (which the mean of
    completed episodes leaves out) is seen too. None where either has no episode that ran."""
    from scipy.stats import fisher_exact, mannwhitneyu  # here, not at the top: the env process imports this module

    # An episode never run (the evaluation's limit, a lost node) says nothing of the policy; a return that is no
    # finite number counts as a failure.
    ran = [[e for e in r.episodes if e.status != "not_run"] for r in (first, second)]
    if not all(ran):
        return None
    completed = [[e.return_ for e in episodes if e.status == "ok" and e.return_ is not None
                  and np.isfinite(e.return_)] for episodes in ran]
    failed = [len(episodes) - len(done) for episodes, done in zip(ran, completed)]
    p_returns = float(mannwhitneyu(*completed, alternative="two-sided").pvalue) if all(completed) else 1.0
    p_failures = float(fisher_exact([[failed[0], len(completed[0])], [failed[1], len(completed[1])]])[1])
    return min(1.0, 2 * min(p_returns, p_failures))


def score_stats(returns: list[float], spec: TaskSpec) -> ScoreStats | None:
    if not returns:
        return None
    arr = np.asarray(returns, dtype=float)
    mean = float(arr.mean())
    ci = None
    if len(arr) > 1 and arr.std() > 0:
        # Student's t interval, as scipy.stats.t.interval(0.95, n - 1, loc=mean, scale=scipy.stats.sem(arr)) computes
        # it, bit for bit (tests/test_evaluator.py; sem divides by n ** 0.5 as scipy 1.17's does, where np.sqrt(n)
        # differs in the last bit at some sizes), from scipy.special alone: importing scipy.stats takes 0.9 s more,
        # on every `heurist eval` and every process that scores without a gate. Imported here, not at import: the
        # report reads EvalResults and needs no statistics.
        from scipy.special import stdtrit

        df, sem = len(arr) - 1, np.std(arr, ddof=1) / arr.shape[0] ** 0.5
        ci = (float(stdtrit(df, (1 - 0.95) / 2) * sem + mean), float(stdtrit(df, (1 + 0.95) / 2) * sem + mean))
    return ScoreStats(mean=mean, std=float(arr.std()), median=float(np.median(arr)), min=float(arr.min()),
                      max=float(arr.max()), ci95=ci, hns_mean=spec.normalise(mean))
