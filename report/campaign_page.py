"""``heurist campaign report``: one self-contained HTML page for a campaign (plots inline, no media).

What it shows is gathered by ``report.campaign_data``; this module draws the plots (matplotlib,
inline SVG, as the run report) and writes ``CAMPAIGN_DIR/report/index.html``.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
from markupsafe import Markup
from matplotlib.figure import Figure

from common.files import atomic_write
from common.safe_text import printable
from report.campaign_data import (
    METRICS,
    REFERENCES,
    CampaignResults,
    aggregates,
    curves,
    gather_campaign,
    known_task,
    performance_profile,
    score_matrix,
)
from report.plots import AXIS_LABEL, COLOURS, _svg
from report.render import ReportError, _environment, page_text, plain_folder

CURVE_POINTS = 24  # checkpoints of a sample-efficiency curve
CURVE_REPS = 1000  # bootstrap replications of a curve (one bootstrap for all its checkpoints)
MAX_TASK_PANELS = 12  # per-task curves are drawn up to this many tasks; beyond it the aggregates speak


def efficiency_plot(results: CampaignResults, axis: str) -> str:
    """Median and IQM HNS against what the runs had spent, one pair of lines per observation mode, with 95%
    bootstrap bands."""
    top = max((getattr(r, axis)[-1] for r in results.runs if getattr(r, axis)), default=0)
    xs = np.linspace(0, top, CURVE_POINTS)
    figure = Figure(figsize=(9, 4.2))
    ax = figure.add_subplot()
    for i, mode in enumerate(results.modes):
        scores = np.stack([score_matrix(results, mode, axis, float(x)) for x in xs], axis=-1)
        if scores.size == 0:
            continue
        found = curves(scores, reps=CURVE_REPS)
        for j, metric in enumerate(("median", "IQM")):
            colour = COLOURS[(2 * i + j) % len(COLOURS)]
            point, low, high = found[metric]
            ax.plot(xs, point, color=colour, label=f"{metric} HNS, {mode}", drawstyle="steps-post")
            ax.fill_between(xs, low, high, color=colour, alpha=0.15, step="post")
    ax.set_xlabel(AXIS_LABEL[axis])
    ax.set_ylabel("human-normalised score (kept policy's dev mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _svg(figure, f"campaign-efficiency-{axis}")


def profile_plot(results: CampaignResults) -> str:
    """Performance profiles: the fraction of runs above each HNS threshold, per observation mode."""
    figure = Figure(figsize=(9, 3.8))
    ax = figure.add_subplot()
    for i, mode in enumerate(results.modes):
        matrix = score_matrix(results, mode)
        taus = np.linspace(0.0, max(2.0, float(np.nanmax(matrix)) if matrix.size else 2.0), 81)
        profile, band = performance_profile(matrix, taus)
        colour = COLOURS[i % len(COLOURS)]
        ax.plot(taus, profile, color=colour, label=f"heurist, {mode}")
        ax.fill_between(taus, band[0], band[1], color=colour, alpha=0.15)
    ax.set_xlabel("human-normalised score τ")
    ax.set_ylabel("fraction of runs with HNS > τ")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(figure, "campaign-profile")


def task_curves_plot(results: CampaignResults) -> str | None:
    """Each task's runs, best dev mean so far against env steps, one panel per task (a few tasks only)."""
    tasks = [row["task"] for row in results.rows]
    if not tasks or len(tasks) > MAX_TASK_PANELS:
        return None
    cols = min(3, len(tasks))
    rows = -(-len(tasks) // cols)
    figure = Figure(figsize=(3.2 * cols, 2.6 * rows))
    for k, task in enumerate(tasks):
        ax = figure.add_subplot(rows, cols, k + 1)
        for run in (r for r in results.runs if r.task == task and r.env_steps):
            ax.plot(run.env_steps, run.best, drawstyle="steps-post", color=COLOURS[run.repeat % len(COLOURS)],
                    label=f"repeat {run.repeat}")
        spec = known_task(task)
        target = spec.target if spec else None
        if target is not None:
            ax.axhline(target, color="#555", linestyle="--", linewidth=1)
        ax.set_title(printable(task), fontsize=9)  # a task name's control characters, written out
        ax.tick_params(labelsize=7)
        ax.grid(alpha=0.3)
    figure.supxlabel("env steps", fontsize=8)
    figure.supylabel("best dev mean so far (-- target)", fontsize=8)
    figure.tight_layout()
    return _svg(figure, "campaign-tasks")


def _milestones(results: CampaignResults) -> dict[str, dict[str, float]]:
    """This campaign's median HNS at the env steps the published numbers are given at, where every run of the
    mode got that far (a run stopped earlier would count its last score as its score there)."""
    out: dict[str, dict[str, float]] = {}
    for mode in results.modes:
        runs = [r for r in results.runs if r.obs_mode == mode and r.task not in results.excluded]
        reached = min((r.env_steps[-1] if r.env_steps else 0) for r in runs) if runs else 0
        found = {}
        for label, steps in (("~1M", 1e6), ("~9.7M", 9.7e6)):
            matrix = score_matrix(results, mode, "env_steps", steps)
            if reached >= steps and matrix.size:
                found[label] = aggregates(matrix, reps=CURVE_REPS)["median"][0]
        out[mode] = found
    return out


def _context(results: CampaignResults, directory: Path) -> dict[str, Any]:
    dev = {mode: score_matrix(results, mode) for mode in results.modes}
    held = {mode: score_matrix(results, mode, holdout=True) for mode in results.modes}
    finals = {mode: aggregates(matrix) for mode, matrix in dev.items() if matrix.size}
    holdouts = {mode: aggregates(matrix) for mode, matrix in held.items() if matrix.size}
    shape = {mode: dev[mode].shape for mode in finals}  # (repeats, tasks) in each aggregate
    efficiency = efficiency_plot(results, "env_steps") if finals else None
    costs = [a for a in ("usd", "tokens") if any(getattr(r, a) and getattr(r, a)[-1] > 0 for r in results.runs)]
    cost_plot = efficiency_plot(results, costs[0]) if finals and costs else None
    milestones = _milestones(results) if finals else {}
    return {
        "name": results.name, "directory": str(directory), "rows": results.rows, "runs": results.runs,
        "excluded": results.excluded, "finals": finals, "holdouts": holdouts, "shape": shape, "metrics": METRICS,
        "references": REFERENCES, "milestones": milestones, "protocol": results.protocol,
        "unfinished": results.unfinished,
        "differing": [run.key for run in results.runs if run.holdout_differs],
        "holdout_failures": {run.key: run.holdout_failed for run in results.runs if run.holdout_failed},
        "profile": Markup(profile_plot(results)) if finals else None,
        "efficiency": Markup(efficiency) if efficiency else None,
        "cost_plot": Markup(cost_plot) if cost_plot else None, "cost_axis": costs[0] if costs else None,
        "task_curves": Markup(plot) if (plot := task_curves_plot(results)) else None,
        "generated": datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def write_campaign_report(directory: Path) -> Path:
    """Render the campaign's page; returns the path of its index.html."""
    directory = Path(directory).resolve()
    plain_folder(directory / "report")  # never written through a link out of the campaign (report.render)
    results = gather_campaign(directory)
    html = _environment().get_template("campaign.html.j2").render(**_context(results, directory))
    index = directory / "report" / "index.html"
    try:
        atomic_write(index, page_text(html))
    except OSError as exc:
        raise ReportError(f"cannot write {index}: {exc.strerror}; free space or make {index.parent} writable") from None
    return index


__all__ = ["write_campaign_report"]
