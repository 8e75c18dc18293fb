"""What a campaign's report shows: each run's curve, each task's scores, and the aggregates RL papers publish.

Scores are human-normalised (HNS = (score - random) / (human - random), ``envs/atari_scores.py``)
wherever a task has published random and human scores; tasks without them are shown with their
raw scores and left out of every aggregate, which says so. Aggregates follow rliable (Agarwal et
al. 2021, the library the field uses): median, interquartile mean, mean and optimality gap over a
runs × tasks matrix, with stratified bootstrap confidence intervals, and performance profiles.
A run's score is its best dev mean so far (the incumbent's mean on the dev seeds); a curve takes
that score at each iteration's end against what the run had spent by then.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from campaign.record import CampaignDir
from campaign.status import campaign_status
from common.events import IterationDone, RunFinished, RunStarted, read_events, steps_in
from common.formatting import finite_number
from common.ledger import Ledger
from common.errors import TaskError
from envs.tasks import TaskSpec, get_task

BOOTSTRAP_REPS = 2000  # rliable's examples use 50,000; 2,000 keeps a 57-game page to seconds
METRICS = ("median", "IQM", "mean", "optimality gap")

# Published aggregate numbers a reader compares against, each with the protocol it was measured under.
REFERENCES: list[dict[str, Any]] = [
    {"who": "Learning Beyond Gradients (the original), pixels", "metric": "median HNS", "value": 0.32,
     "env_steps": "~1M", "protocol": "EnvPool: frame skip 1, no sticky actions, full game, FIRE on reset, 108,000 steps"},
    {"who": "Learning Beyond Gradients, pixels", "metric": "median HNS", "value": 0.81, "env_steps": "~9.7M",
     "protocol": "as above"},
    {"who": "Learning Beyond Gradients, RAM", "metric": "median HNS", "value": 0.26, "env_steps": "~1M",
     "protocol": "as above"},
    {"who": "Learning Beyond Gradients, RAM", "metric": "median HNS", "value": 0.59, "env_steps": "~9.7M",
     "protocol": "as above"},
    {"who": "Learning Beyond Gradients, best mode per game", "metric": "median HNS", "value": 0.83,
     "env_steps": "~9.7M", "protocol": "as above"},
    {"who": "PPO2 (OpenAI baselines), as the original cites it", "metric": "median HNS", "value": 0.80,
     "env_steps": "10M", "protocol": "baselines' Atari wrappers (frame skip 4, episodic life, clipped rewards)"},
    {"who": "CleanRL EnvPool PPO, as the original cites it", "metric": "median HNS", "value": 0.98,
     "env_steps": "10M", "protocol": "EnvPool's Atari defaults (frame skip 4, episodic life, clipped rewards)"},
]


@dataclass
class RunCurve:
    """One run: its kept policy's dev mean at each iteration's end against what it had spent by then."""

    key: str
    task: str
    obs_mode: str
    repeat: int
    status: str
    env_steps: list[int] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)
    usd: list[float] = field(default_factory=list)
    best: list[float] = field(default_factory=list)
    holdout: float | None = None  # the final policy's mean on the holdout seeds, once, at the run's end
    holdout_differs: bool = False  # from its control, on seeds no model saw: the policy tells the holdout's apart
    holdout_failed: int = 0  # holdout episodes that failed: its mean is over the others
    recorded: tuple[str, str, tuple[int, ...]] | None = None  # the task, protocol and dev seeds its ledger says it ran
    # Every env step its ledger counts, the holdout and control evaluations at its end included, as `heurist campaign
    # status` and the run's summary count them (the curve's last point is its last iteration's).
    total_steps: int = 0

    def add(self, env_steps: int, tokens: int, usd: float, best: float) -> None:
        self.env_steps.append(env_steps)
        self.tokens.append(tokens)
        self.usd.append(usd)
        self.best.append(best)

    @property
    def final(self) -> float | None:
        return self.best[-1] if self.best else None


def known_task(task: str) -> TaskSpec | None:
    """The task a campaign names, as the report reads it: a built-in or installed one; None for a task of one's own
    named ``module:attr``, which the report does not import (a campaign directory may come from elsewhere and name
    any module). Such a task is shown without its target and left out of the HNS aggregates, with the reason."""
    if ":" in task and "/" not in task:
        return None
    try:
        return get_task(task)
    except TaskError:  # a plug-in installed only where the campaign ran: its runs are shown, not aggregated
        return None


def _spent(spent: dict, name: str, default: float) -> float:
    """One of an iteration's spent values; ``default`` where it is no finite number (a ledger edited by hand)."""
    found = finite_number(spent.get(name))
    return default if found is None else found


def run_curve(run_dir: Path | None, key: str, task: str, repeat: int, status: str) -> RunCurve:
    """The kept policy's dev mean after each iteration (as the run report's best line), starting from the starting
    policy's score (``run_started``); and the holdout mean, measured once at the run's end."""
    spec = known_task(task)
    curve = RunCurve(key=key, task=task, obs_mode=(spec.obs_mode if spec else None) or "state", repeat=repeat,
                     status=status)
    if run_dir is None or not (run_dir / "ledger.jsonl").is_file():  # None: not the campaign's own to read
        return curve
    steps, started = 0, False
    for event in read_events(Ledger(run_dir / "ledger.jsonl"))[0]:
        steps += steps_in(event)
        if isinstance(event, RunStarted) and not started:
            started = True
            curve.recorded = (event.task, event.protocol, tuple(event.dev_seeds))
            mean = finite_number(event.start.get("mean")) if isinstance(event.start, dict) else None
            if mean is not None:
                curve.add(steps, 0, 0.0, float(mean))
        elif isinstance(event, IterationDone) and finite_number(event.mean_after) is not None:
            spent = event.spent if isinstance(event.spent, dict) else {}
            curve.add(int(_spent(spent, "env_steps", steps)), int(_spent(spent, "tokens", 0)),
                      float(_spent(spent, "usd", 0.0)), float(event.mean_after))
        elif isinstance(event, RunFinished) and isinstance(event.holdout, dict):
            holdout = finite_number(event.holdout.get("mean"))
            curve.holdout = float(holdout) if holdout is not None else None
            control = event.holdout.get("control")
            curve.holdout_differs = isinstance(control, dict) and control.get("differs") is True
            failed = event.holdout.get("episodes_failed")
            curve.holdout_failed = failed if isinstance(failed, int) and not isinstance(failed, bool) and failed > 0 else 0
    curve.total_steps = steps
    return curve


def at(curve: RunCurve, axis: str, x: float) -> float | None:
    """The run's best score once it had spent ``x`` of ``axis``: a step function, None before its first point."""
    xs = getattr(curve, axis)
    value = None
    for xi, yi in zip(xs, curve.best):
        if xi > x:
            break
        value = yi
    return value


@dataclass
class CampaignResults:
    name: str
    protocol: str  # the campaign's protocol, or "each task's default"
    runs: list[RunCurve]
    rows: list[dict[str, Any]]  # the per-task table
    modes: list[str]  # observation modes with at least one task in the aggregates
    excluded: dict[str, str]  # task -> why it is left out of the aggregates

    @property
    def unfinished(self) -> int:
        return sum(1 for r in self.runs if r.status != "finished")


def gather_campaign(directory: Path) -> CampaignResults:
    campaign = CampaignDir(directory)
    record = campaign.record()
    status_rows, _ = campaign_status(directory)
    status = {r["key"]: r["status"] for r in status_rows}
    # A run folder linked out of the campaign is not read (``CampaignDir.run_inside``): its curve stays empty.
    runs = [run_curve(campaign.run_dir(r.key) if campaign.run_inside(r.key) else None, r.key, r.task, r.repeat,
                      status[r.key]) for r in record.runs]
    rows, excluded = [], {}
    for task in dict.fromkeys(r.task for r in runs):
        spec = known_task(task)
        mine = [r for r in runs if r.task == task]
        finals = [r.final for r in mine]
        scored = [f for f in finals if f is not None]
        published = spec is not None and spec.human_score is not None and spec.random_score is not None
        hns = [spec.normalise(f) for f in scored] if spec is not None and published else []
        rows.append({"task": task, "obs_mode": mine[0].obs_mode, "repeats": len(mine), "scores": finals,
                     "mean": float(np.mean(scored)) if scored else None, "random": spec.random_score if spec else None,
                     "human": spec.human_score if spec else None, "hns": float(np.mean(hns)) if hns else None,
                     "holdout": [r.holdout for r in mine],
                     "steps": max((r.env_steps[-1] for r in mine if r.env_steps), default=0)})
        measured = {r.recorded[1:] for r in mine if r.recorded is not None}  # protocol and dev seeds, per repeat
        other = [r for r in mine if r.recorded is not None and spec is not None and r.recorded[0] != spec.id]
        protocol = record.spec.protocol or (spec.protocol(None).name if spec is not None else None)
        if spec is None:
            excluded[task] = ("a task of one's own (module:attr), which the report does not import" if ":" in task
                              else "a task not registered here (a plug-in of the machine the campaign ran on?)")
        elif other:
            excluded[task] = f"run {other[0].key} recorded the task {other[0].recorded[0]}, not {task}"
        elif len(measured) > 1 or any(p != protocol for p, _ in measured):
            excluded[task] = (f"its runs were not measured alike: protocols and dev seeds "
                              f"{sorted((p, f'{d[0]}..{d[-1]} ({len(d)})' if d else 'none') for p, d in measured)}"
                              f" where the campaign plans protocol {protocol}")
        elif not published:
            excluded[task] = "no published human and random scores"
        elif len(scored) < len(mine):
            excluded[task] = f"{len(mine) - len(scored)} of {len(mine)} runs have no score (not started, or failed " \
                             f"before their first evaluation)"
    modes = sorted({r.obs_mode for r in runs if r.task not in excluded})
    return CampaignResults(record.name, record.spec.protocol or "each task's default", runs, rows, modes, excluded)


def score_matrix(results: CampaignResults, mode: str, axis: str | None = None, x: float | None = None,
                 holdout: bool = False) -> np.ndarray:
    """HNS as rliable wants it: repeats × tasks, for the tasks of ``mode`` in the aggregates: each run's final dev
    score, its holdout score (``holdout``: empty unless every run has one), or its score once it had spent ``x``
    of ``axis`` (a run not there yet counts the score it started from)."""
    tasks = [row["task"] for row in results.rows if row["obs_mode"] == mode and row["task"] not in results.excluded]
    repeats = max((r.repeat for r in results.runs), default=-1) + 1
    matrix = np.full((repeats, len(tasks)), np.nan)
    for j, task in enumerate(tasks):
        spec = known_task(task)
        if spec is None:  # never among the aggregates' tasks (``gather_campaign`` leaves it out); kept safe here
            continue
        for run in (r for r in results.runs if r.task == task):
            if holdout:
                score = run.holdout
            else:
                score = run.final if axis is None else at(run, axis, x)
                if score is None and run.best:
                    score = run.best[0]
            if score is not None:
                matrix[run.repeat, j] = spec.normalise(score)
    if holdout and np.isnan(matrix).any():
        return np.empty((0, 0))
    return matrix


@contextmanager
def _quiet_arch():
    """rliable hands arch a RandomState, which arch 7 warns it will stop taking; the seeding is still honoured."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        yield


def aggregates(matrix: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Median, IQM, mean and optimality gap of a runs × tasks HNS matrix with 95% stratified bootstrap intervals
    (rliable's ``get_interval_estimates``): metric -> (point, low, high)."""
    from rliable import library, metrics

    def all_four(scores: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_median(scores), metrics.aggregate_iqm(scores),
                         metrics.aggregate_mean(scores), metrics.aggregate_optimality_gap(scores)])

    np.random.seed(seed)  # and numpy's global generator, which arch's bootstrap also draws from
    with _quiet_arch():
        points, intervals = library.get_interval_estimates({"heurist": matrix}, all_four, reps=reps,
                                                           random_state=np.random.RandomState(seed))  # same page twice
    return {name: (float(points["heurist"][i]), float(intervals["heurist"][0][i]), float(intervals["heurist"][1][i]))
            for i, name in enumerate(METRICS)}


def curves(scores: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = 0) -> dict[str, np.ndarray]:
    """Median and IQM at each checkpoint of a runs × tasks × checkpoints HNS array, with 95% intervals, from one
    stratified bootstrap over runs (rliable's own recipe for sample-efficiency curves): metric -> 3 × checkpoints
    (point, low, high)."""
    from rliable import library

    n = scores.shape[-1]
    cut = int(0.25 * scores.shape[0] * scores.shape[1])  # scipy's trim_mean, as rliable's aggregate_iqm calls it

    def both(s: np.ndarray) -> np.ndarray:
        # rliable's aggregate_median and aggregate_iqm at every checkpoint at once: the same definitions (tested
        # against rliable's own), vectorised, because one scipy trim_mean per checkpoint and bootstrap sample
        # made a 57-game page take minutes.
        median = np.median(np.mean(s, axis=0), axis=0)
        flat = np.sort(s.reshape(-1, n), axis=0)
        iqm = np.mean(flat[cut:flat.shape[0] - cut], axis=0)
        return np.concatenate([median, iqm])

    np.random.seed(seed)
    with _quiet_arch():
        points, intervals = library.get_interval_estimates({"heurist": scores}, both, reps=reps,
                                                           random_state=np.random.RandomState(seed))
    point, (low, high) = points["heurist"], intervals["heurist"]
    return {"median": np.array([point[:n], low[:n], high[:n]]), "IQM": np.array([point[n:], low[n:], high[n:]])}


def performance_profile(matrix: np.ndarray, taus: np.ndarray, reps: int = BOOTSTRAP_REPS, seed: int = 0):
    """The fraction of runs whose HNS is above each tau, with a 95% bootstrap band: rliable's
    ``create_performance_profile`` (score distributions), called through ``get_interval_estimates`` as it does
    itself, so that the bootstrap can be seeded."""
    from rliable import library

    np.random.seed(seed)
    with _quiet_arch():
        profile, bands = library.get_interval_estimates(
            {"heurist": matrix}, lambda scores: library.score_distributions(scores, taus), reps=reps,
            random_state=np.random.RandomState(seed))
    return profile["heurist"], bands["heurist"]
