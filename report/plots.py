"""The report's plots, drawn with matplotlib as inline SVG (text kept as text, so a page search finds it).

``Figure`` is used directly rather than pyplot: no global figure state and no GUI backend,
which matters when a report is drawn inside a long run after every iteration.
"""

from __future__ import annotations

import io
from typing import Any, Literal

import matplotlib
from matplotlib.figure import Figure

from report.views import Point, ReportData

Axis = Literal["env_steps", "usd", "tokens"]
AXIS_LABEL = {"env_steps": "cumulative env steps (every evaluation, search and regression test)",
              "usd": "cumulative LLM cost (USD)", "tokens": "cumulative LLM tokens"}
COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]

# Titles and legends carry run ids, tasks and model names from a user's config: text to show, never mathtext to
# parse (a model named "acme/$\frac{x}{y$" stopped the compare page). Read when each Text is made, so set for every
# figure of this process (the report child, or `heurist report --compare`).
matplotlib.rcParams["text.parse_math"] = False


def _svg(figure: Figure, name: str) -> str:
    """The figure as an <svg> element; ids are salted by name so several plots can share a page."""
    buffer = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": name}):
        figure.savefig(buffer, format="svg", bbox_inches="tight")
    text = buffer.getvalue()
    return text[text.index("<svg"):]


def cost_axis(data: ReportData) -> Axis | None:
    """What the second score plot is drawn against: dollars, else tokens (an unpriced local model), else nothing."""
    if any(p.usd > 0 for p in data.points):
        return "usd"
    if any(p.tokens > 0 for p in data.points):
        return "tokens"
    return None


def _best_line(points: list[Point], axis: Axis) -> tuple[list[float], list[float]]:
    """The best dev mean so far: the start, then every accepted candidate, held to the last point."""
    xs, ys = [], []
    for p in points:
        if p.kind == "start" or (p.kind == "candidate" and p.accepted):
            xs.append(getattr(p, axis))
            ys.append(p.mean)
    others = [getattr(p, axis) for p in points if p.kind != "holdout"]
    if xs and others and max(others) > xs[-1]:
        xs.append(max(others))
        ys.append(ys[-1])
    return xs, ys


def _targets(ax, data: ReportData) -> None:
    if data.target is not None:
        ax.axhline(data.target, color="#555", linestyle="--", linewidth=1, label=f"target {data.target:g}")
    if data.max_return is not None and data.max_return != data.target:
        ax.axhline(data.max_return, color="#999", linestyle=":", linewidth=1, label=f"maximum {data.max_return:g}")


def score_plot(data: ReportData, axis: Axis = "env_steps") -> str:
    figure = Figure(figsize=(9, 4.2))
    ax = figure.add_subplot()
    groups = {
        "search": dict(marker=".", color="#9a9a9a", alpha=0.45, s=18,
                       label="search and test scoring (a few dev seeds)"),
        "start": dict(marker="s", color="black", s=40, label="start"),
        "rejected": dict(marker="x", color="#d62728", s=40, label="candidate, rejected"),
        "accepted": dict(marker="o", color="#2ca02c", s=40, label="candidate, accepted"),
        "holdout": dict(marker="*", color="#1f77b4", s=160, zorder=5, label="best policy on holdout (once)"),
    }
    for name, style in groups.items():
        if name in ("rejected", "accepted"):
            chosen = [p for p in data.points if p.kind == "candidate" and p.accepted == (name == "accepted")]
        else:
            chosen = [p for p in data.points if p.kind == name]
        if chosen:
            ax.scatter([getattr(p, axis) for p in chosen], [p.mean for p in chosen], **style)
    xs, ys = _best_line(data.points, axis)
    if xs:
        ax.plot(xs, ys, drawstyle="steps-post", color="#2ca02c", linewidth=2, label="best so far")
    _targets(ax, data)
    seeds = data.dev_seeds
    span = f"dev seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} episodes)" if seeds else "no dev evaluation yet"
    ax.set_title(f"{data.task} · protocol {data.protocol} · {span}", fontsize=10)
    ax.set_xlabel(AXIS_LABEL[axis])
    ax.set_ylabel("mean return")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _svg(figure, f"score-{axis}")


def complexity_plot(data: ReportData) -> str | None:
    """The kept policy's lines of code, branches and AST nodes after each iteration, one panel each; a triangle marks
    a simplification kept after an iteration."""
    if not data.complexity:
        return None
    figure = Figure(figsize=(9, 2.6))
    iterations = [p.iteration for p in data.complexity]
    measures = (("lines", "lines of code"), ("branches", "branches"), ("ast_nodes", "AST nodes"))
    for i, (field, label) in enumerate(measures):
        ax = figure.add_subplot(1, 3, i + 1)
        ax.plot(iterations, [getattr(p, field) for p in data.complexity], marker="o", drawstyle="steps-post",
                color=COLOURS[i])
        kept = [p for p in data.complexity if p.simplified]
        if kept:  # where a simplify stage kept a shorter policy
            ax.plot([p.iteration for p in kept], [getattr(p, field) for p in kept], linestyle="none", marker="v",
                    markersize=8, color="black", label="simplified")
            ax.legend(fontsize=7, loc="lower left")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.set_ylim(bottom=0)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
    figure.tight_layout()
    return _svg(figure, "complexity")


def failure_plot(data: ReportData) -> str | None:
    """How often each failure kind occurs on the dev seeds, for the incumbent each iteration started from."""
    if not data.failure_kinds:
        return None
    figure = Figure(figsize=(9, 3.2))
    ax = figure.add_subplot()
    iterations = [view.iteration for view in data.iterations]
    for i, kind in enumerate(data.failure_kinds):
        ax.plot(iterations, [view.failures.get(kind, 0) for view in data.iterations], marker="o",
                color=COLOURS[i % len(COLOURS)], label=kind)
    ax.set_xlabel("iteration (the incumbent it started from)")
    ax.set_ylabel(f"failure events on {len(data.dev_seeds)} dev seeds")
    ax.set_xticks(iterations)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _svg(figure, "failures")


def incomparable(runs: list[ReportData]) -> list[str]:
    """What differs between runs whose scores a comparison puts side by side: the task, the protocol (Atari's
    deterministic protocol counts every frame an env step, the standard one every fourth), the dev seeds the curves
    are means over, the holdout seeds. Empty where their numbers are measured alike."""
    def seeds(values: Any) -> str:
        return f"{values[0]}..{values[-1]} ({len(values)})" if isinstance(values, list) and values else "none"

    aspects = [("tasks", [d.task for d in runs]), ("protocols", [d.protocol for d in runs]),
               ("dev seeds", [seeds(d.dev_seeds) for d in runs]),
               ("holdout seeds", [seeds(d.holdout.get("seeds")) for d in runs if isinstance(d.holdout, dict)])]
    return [f"{name} ({', '.join(dict.fromkeys(str(v) for v in values))})"
            for name, values in aspects if len(set(values)) > 1]


def compare_plot(runs: list[ReportData], axis: Axis = "env_steps") -> str:
    """The best-so-far curves of several runs on one plot, each run's candidates as faint points."""
    figure = Figure(figsize=(9, 4.6))
    ax = figure.add_subplot()
    for i, data in enumerate(runs):
        colour = COLOURS[i % len(COLOURS)]
        candidates = [p for p in data.points if p.kind == "candidate"]
        if candidates:
            ax.scatter([getattr(p, axis) for p in candidates], [p.mean for p in candidates], color=colour,
                       alpha=0.35, s=16)
        xs, ys = _best_line(data.points, axis)
        if xs:
            ax.plot(xs, ys, drawstyle="steps-post", color=colour, linewidth=2,
                    label=f"{data.run_id} ({data.task}, {data.roles_label})")
        holdout = [p for p in data.points if p.kind == "holdout"]
        if holdout:
            ax.scatter([getattr(holdout[0], axis)], [holdout[0].mean], marker="*", s=140, color=colour, zorder=5)
    differs = incomparable(runs)
    if not differs:
        _targets(ax, runs[0])
    ax.set_title("best dev mean so far" + (f" · {runs[0].task}" if not differs else
                                           f" · different {', '.join(d.split(' (')[0] for d in differs)}: compare "
                                           f"shapes, not heights"), fontsize=10)
    ax.set_xlabel(AXIS_LABEL[axis])
    ax.set_ylabel("mean return (dev seeds); ★ holdout")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _svg(figure, f"compare-{axis}")
