"""What ``heurist run`` shows while it works: a Rich live panel in a terminal, plain log lines elsewhere.

Both are fed the run's events (``Services.event``): ``started``, ``stage`` (a node began),
``iteration``, ``role``, ``evaluating``, ``evaluated``, ``testing``, ``verdict``, ``report``,
``warning`` and ``node`` (a node ended). Every event carries the tokens and dollars spent so far.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from cli.console import shown
from common.formatting import cost_text, score_text
from common.safe_text import cut, one_line, printable

# What a node does, in the words the panel shows.
STAGE_WORDS = {"begin": "starting: workspace and first evaluation", "evaluate": "evaluating the incumbent",
               "recall": "recalling similar failures and fixes", "code": "coding an edit",
               "check": "checking the edit (applies, parses, smoke episode)", "write_tests": "writing a regression test",
               "verify": "running the regression tests and scoring the candidate", "review": "reviewing",
               "commit": "committing the accepted edit", "roll_back": "rolling back", "remember": "remembering",
               "finish": "finishing: holdout evaluation (where the run has one) and summary", "pause": "pausing",
               "analyse": "analysing the evaluation, the analysts side by side"}



class _RunTally:
    """The numbers both views show, kept up to date from the events."""

    def __init__(self) -> None:
        self.run_id = self.task = self.roles = ""
        self.budget: dict[str, Any] = {}
        self.iteration, self.best, self.latest = 0, None, None
        self.env_steps, self.tokens, self.usd, self.unpriced_tokens, self.estimated_tokens = 0, 0, 0.0, 0, 0
        self.elapsed_before, self.started = 0.0, time.monotonic()
        self.stage, self.role, self.activity = "starting", "", ""
        self.analysts: list[str] = []  # the analyse nodes started since the stage became "analyse"
        self.verdict: dict[str, Any] | None = None
        self.warnings: list[str] = []
        self.call: dict[str, Any] | None = None  # the model call under way, as it streams
        self.tool: dict[str, Any] | None = None  # the coder agent's last tool call

    def elapsed_s(self) -> float:
        return self.elapsed_before + time.monotonic() - self.started

    def update(self, kind: str, f: dict[str, Any]) -> None:
        self.tokens, self.usd = f.get("tokens", self.tokens), f.get("usd", self.usd)
        self.unpriced_tokens = f.get("unpriced_tokens", self.unpriced_tokens)
        self.estimated_tokens = f.get("estimated_tokens", self.estimated_tokens)
        if kind == "started":
            self.run_id, self.task, self.budget = f["run_id"], f["task"], f["budget"]
            self.roles = "offline roles" if f["offline"] else f"model {f['model']}"
            self.iteration, self.best = f["iteration"], f["best"]
            spent = f["spent"]
            self.env_steps, self.elapsed_before = int(spent.get("env_steps", 0)), float(spent.get("elapsed_s", 0.0))
            self.started = time.monotonic()
            if f["history"]:
                self.verdict = f["history"][-1]
                self.latest = self.verdict.get("mean_candidate")
        elif kind == "stage":
            node, role = f["node"], ""
            if node.startswith("analyse_"):  # the analysts run in parallel: one stage naming them all, not the
                # last node's name beside the last role event of another (a real-model review, 2026-12-06)
                self.analysts = (self.analysts if self.stage == "analyse" else []) + [node.removeprefix("analyse_")]
                node, role = "analyse", ", ".join(self.analysts)
            self.stage, self.role, self.activity, self.call, self.tool = node, role, "", None, None
        elif kind == "model_call":
            self.call = f
        elif kind == "iteration":
            self.iteration = f["iteration"]
        elif kind == "role":
            self.call = None
            if self.stage != "analyse":  # there the stage already names every analyst in flight
                self.role = f["role"]
        elif kind == "evaluating":
            self.activity = f"evaluating {f['policy']} on {f['seeds']} {f['split']} seeds"
        elif kind == "evaluated":
            self.env_steps += int(f.get("env_steps") or 0)
            if f.get("seeds") and self.best is None and f.get("mean") is not None:
                self.best = f["mean"]  # the starting policy's first evaluation
        elif kind == "testing":
            self.activity = f"running {f['tests']} regression test files (sandboxed)"
        elif kind == "verdict":
            self.verdict = f
            self.best, self.latest = f["mean_after"], f["mean_candidate"]
            self.env_steps = int(f["spent"].get("env_steps", self.env_steps))  # the ledger's count wins
        elif kind == "warning":
            self.warnings = [*self.warnings[-2:], f["message"]]
        elif kind == "chosen":
            self.activity = f["message"]
        elif kind == "simplified":
            self.activity = f"simplify after iteration {f['iteration']}: {'kept' if f['accepted'] else 'not kept'}: " \
                            f"{f['message']}"
        elif kind == "agent_turn":
            self.call = None
            self.activity = f"turn {f['turn']}: " + (", ".join(f["tools"]) or "no tool called")
        elif kind == "tool":
            self.tool = f
            self.activity = f"tool call {f['tool_calls']} of {f['max_tool_calls']}: {f['name']}"

    def _estimated(self) -> str:
        """How many of the tokens heurist estimated (the server gave no counts), in a few characters."""
        if not self.estimated_tokens:
            return ""
        return " (est.)" if self.estimated_tokens >= self.tokens else f" ({self.estimated_tokens:,} est.)"

    def budget_line(self) -> str:
        """What was spent, each against its budget where there is one."""
        b = self.budget
        hours = b.get("hours")
        shown = [(f"{self.env_steps:,} env steps", b.get("env_steps") and f"{b['env_steps']:,}"),
                 (f"{self.tokens:,} tokens" + self._estimated(), b.get("tokens") and f"{b['tokens']:,}"),
                 (cost_text(self.usd, self.unpriced_tokens), b.get("usd") and f"${b['usd']:g}"),
                 (f"{self.elapsed_s() / 60:.1f} min", hours and f"{hours * 60:g} min")]
        return " · ".join(used + (f" of {limit}" if limit else "") for used, limit in shown)

    def verdict_line(self) -> str:
        v = self.verdict
        if not v:
            return "none yet"
        word = "accepted" if v["accepted"] else "rejected"
        return f"iteration {v['iteration']} {word}: {v['reason']}"


class LiveView:
    """A Rich live panel on the terminal, redrawn four times a second."""

    def __init__(self, console: Console):
        self.tally = _RunTally()
        self.console = console
        self._live = Live(console=console, get_renderable=self.render, refresh_per_second=4, transient=False)

    def __enter__(self) -> "LiveView":
        self._live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._live.__exit__(*exc)

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        self.tally.update(kind, fields)

    def render(self) -> Panel:
        t = self.tally
        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        iterations = t.budget.get("iterations")
        grid.add_row("iteration", f"{t.iteration}" + (f" of {iterations}" if iterations else ""))
        now = STAGE_WORDS.get(t.stage, t.stage.replace("_", " "))
        grid.add_row("now", now + (f" · role [cyan]{shown(t.role)}[/]" if t.role else "")
                     + (f" · {shown(t.activity)}" if t.activity else ""))
        if t.call:  # a slow local model shows its progress, not a frozen "0 tokens"
            c = t.call
            grid.add_row("model call", f"{shown(c['role'])} · attempt {c['attempt']} · {c['elapsed_s']:.0f} s · "
                                       f"{c['call_tokens']:,} tokens so far · gives up after {c['timeout_s']:g} s of silence")
            grid.add_row("", Text(printable(" ".join(c["tail"].split())[-120:]), style="dim"))
        if t.tool:  # the coder agent's last tool call: what it cost and the start of what it returned
            c = t.tool
            grid.add_row("last tool", Text(printable(f"{c['name']}({cut(c['arguments'], 80)}) · {c['seconds']:.1f} s · "
                                                     f"{c['env_steps']:,} env steps"), style="cyan"))
            grid.add_row("", Text(printable(cut(" ".join(c["result"].split()), 160)), style="dim"))
        grid.add_row("dev mean", f"best {score_text(t.best)} · latest candidate {score_text(t.latest)}")
        grid.add_row("spent", t.budget_line())
        v = t.verdict
        colour = "green" if v and v["accepted"] else "yellow"
        # The verdict's reasons quote test output and model text: plain Text, never markup.
        grid.add_row("last verdict", Text(printable(t.verdict_line()), style=colour) if v else "none yet")
        parts: list[Any] = [grid]
        parts += [Text(printable(f"warning: {w}"), style="red") for w in t.warnings]
        return Panel(Group(*parts), title=f"heurist · {shown(t.task)} · {shown(t.roles)}", subtitle=shown(t.run_id),
                     expand=True)


class LogLines:
    """Quiet, log-friendly progress: one timestamped line per iteration, plus the start, warnings and the end."""

    def __init__(self, console: Console):
        self.tally = _RunTally()
        self.console = console

    def __enter__(self) -> "LogLines":
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def _line(self, text: str) -> None:
        stamp = datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S")
        self.console.print(one_line(f"{stamp} {text}"), markup=False, highlight=False, soft_wrap=True)

    def __call__(self, kind: str, fields: dict[str, Any]) -> None:
        t = self.tally
        t.update(kind, fields)
        if kind == "started":
            self._line(f"run {t.run_id} · {t.task} · {t.roles} · from iteration {t.iteration}, best dev mean "
                       f"{score_text(t.best)}")
        elif kind == "verdict":
            self._line(f"iteration {fields['iteration']} {'accepted' if fields['accepted'] else 'rejected'}: dev "
                       f"{score_text(fields['mean_before'])} -> candidate {score_text(fields['mean_candidate'])}, best "
                       f"{score_text(t.best)} · {t.budget_line()} · {fields['reason']}")
        elif kind == "warning":
            self._line(f"warning: {fields['message']}")
        elif kind == "chosen":
            self._line(fields["message"])
        elif kind == "simplified":
            self._line(t.activity)
        elif kind == "tool":  # the coder agent's tool calls, one line each: an overnight log shows the loop
            self._line(f"  coder tool {fields['tool_calls']}/{fields['max_tool_calls']} {fields['name']}"
                       f"({cut(fields['arguments'], 80)}) {fields['seconds']:.1f} s, {fields['env_steps']:,} env steps: "
                       + cut(" ".join(fields["result"].split()), 160))
        elif kind == "stage" and fields["node"] == "finish":
            self._line("finishing: holdout evaluation and summary")
