"""``heurist run``, ``resume``, ``replay``, ``runs``, ``show``, ``transcripts``, ``roles`` and ``graph``."""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from cli.console import clipped, err, out, say_skipped, say_stopped, shown
from common import interrupts
from common.errors import HeuristError
from common.events import LedgerEvent
from common.formatting import cost_text, score_text, tokens_text
from common.safe_text import printable
from store.transcripts import TranscriptLine

# What each built-in role does with no model; a plug-in role is named as placed (its own offline code runs).
OFFLINE_BACKENDS = {"log_parser": "log parser", "video_analyst": "OpenCV video analyst",
                    "coder": "CMA-ES coder over tunables", "test_writer": "template tests", "reviewer": "statistical gate"}


def offline_note(config: Any) -> str:
    """The one line saying a run is offline, naming what runs in each stage of its config (it named the built-in
    backends even where ``[stages]`` had replaced them with plug-ins)."""
    stages = config.stages
    placed = [*stages.analyse, stages.code, stages.test, *stages.review]
    backends = ", ".join(OFFLINE_BACKENDS.get(name, f"plug-in {name}") for name in placed)
    return (f"offline: no ${config.llm.api_key_env} and no --base-url, so the roles run their offline backends "
            f"({backends})")


def _finish_line(state: dict[str, Any], run_dir: Path) -> None:
    from store.summary import as_text

    status = state.get("status")
    if status == "paused":
        err.print(f"[yellow]paused:[/] {shown(state.get('stop_reason'))}", soft_wrap=True)
        raise typer.Exit(3)
    summary_file = run_dir / "summary.md"
    if summary_file.is_file():
        # soft_wrap: a table row or a path longer than the console stays one line (a pipe's console is 200 wide);
        # as text, without the escapes that keep summary.md's markdown inert (they read as noise here)
        out.print(as_text(printable(summary_file.read_text(errors="replace"))), highlight=False, markup=False,
                  soft_wrap=True)
    report = run_dir / "report" / "index.html"
    if report.is_file():
        out.print(f"report: {printable(str(report))}", highlight=False, markup=False, soft_wrap=True)
    out.print(f"run directory: {printable(str(run_dir))}", highlight=False, markup=False, soft_wrap=True)


def _execute(run_dir: Path, no_progress: bool) -> dict[str, Any]:
    from cli.live import LiveView, LogLines
    from runner.lifecycle import execute

    # The live panel only where a person watches; a log file or a pipe gets one line per iteration.
    live = not no_progress and sys.stdout.isatty() and err.is_terminal
    view = LiveView(err) if live else LogLines(err)
    with resumable(run_dir):
        if (run_dir / "ledger.jsonl").exists():
            _ledger(run_dir)  # says so if some lines are damaged; the run appends after them
        with view:
            return execute(run_dir, view)


@contextmanager
def resumable(run_dir: Path) -> Iterator[None]:
    """Around everything a command does once its run directory exists: a Ctrl-C (or a stop signal) there says how to
    go on, with the exit status of the signal (a stop just after the directory was made said a bare "interrupted")."""
    try:
        yield
    except Exception as exc:
        if not _from_ctrl_c(exc):
            raise
    except KeyboardInterrupt:
        pass
    else:
        return
    say_stopped(f"interrupted; nothing recorded is lost. Continue with: heurist resume {printable(str(run_dir))}")
    raise typer.Exit(interrupts.exit_code())


def _from_ctrl_c(exc: BaseException) -> bool:
    """Whether Ctrl-C caused this error: a KeyboardInterrupt raised inside a native module's first import comes out
    as that module's ImportError ("initialization failed"), with the interrupt as its context."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def run_cmd(
    env: Optional[str] = typer.Option(None, "--env", help="Task id (see `heurist envs`); or set task in --config."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Starting policy file (default: the task's starter)."),
    config_file: Optional[Path] = typer.Option(None, "--config", help="Run config, .toml or .json (see docs/config.md)."),
    iterations: Optional[int] = typer.Option(None, "--iterations", min=1, help="Iteration budget."),
    hours: Optional[float] = typer.Option(None, "--hours", min=0.001, help="Wall-time budget, hours."),
    env_steps: Optional[int] = typer.Option(None, "--env-steps", min=1, help="Env-step budget (all evaluations and tests)."),
    usd: Optional[float] = typer.Option(None, "--usd", min=0.0001, help="LLM spending budget, US dollars."),
    model: Optional[str] = typer.Option(None, "--model", help="Model for every role (per-role models: --config)."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1."),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="Where the run goes (default: $HEURIST_HOME/runs/RUN_ID)."),
    no_progress: bool = typer.Option(False, "--no-progress", help="No live panel: one log line per iteration, then the summary."),
    wandb: bool = typer.Option(False, "--wandb", help="Also log the run's scalars to Weights & Biases (needs wandb)."),
) -> None:
    """Improve a policy overnight: evaluate, analyse, recall, code, check, test, verify, review, commit or roll back."""
    from roles.registry import stage_roles
    from store.config import build_config, check_priced, load_config_file, merge
    from store.rundir import create_run, is_offline
    from store.wandb_log import check_wandb

    data: dict[str, Any] = load_config_file(config_file) if config_file else {}
    override: dict[str, Any] = {}
    if env:
        override["task"] = env
    if policy:
        override["policy"] = str(policy)
    budget = {k: v for k, v in {"iterations": iterations, "hours": hours, "env_steps": env_steps, "usd": usd}.items()
              if v is not None}
    if budget:
        override["budget"] = budget
    llm = {k: v for k, v in {"model": model, "base_url": base_url}.items() if v is not None}
    if llm:
        override["llm"] = llm
    if wandb:
        override["wandb"] = {"enabled": True}
    merged = merge(data, override)
    if "task" not in merged:
        raise HeuristError("no task: give --env TASK (see `heurist envs`) or set task in the --config file")
    config = build_config(merged, str(config_file) if config_file else "command line", flags=override)
    stage_roles(config.stages)  # roles that do not fit together are refused before a run directory exists
    if not is_offline(config):
        check_priced(config)
    check_wandb(config.wandb)
    directory = create_run(config, run_dir)
    with resumable(directory):
        if is_offline(config):
            err.print(offline_note(config), highlight=False, soft_wrap=True, markup=False)
        err.print(f"run directory: {printable(str(directory))}", highlight=False, markup=False)
    _finish_line(_execute(directory, no_progress), directory)


def resume_cmd(run_dir: Path = typer.Argument(..., help="A run directory or run id (see `heurist runs`)."),
               no_progress: bool = typer.Option(False, "--no-progress", help="No live panel: one log line per iteration.")) -> None:
    """Continue a run after a crash, a kill or a pause, exactly where it stopped."""
    from store.rundir import find_run, read_record, run_status

    run_dir = find_run(run_dir)
    read_record(run_dir)
    finished = run_status(run_dir) == "finished"
    state = _execute(run_dir.resolve(), no_progress)
    if finished:  # said, rather than a summary reprinted as if it had just run (after the run is read: a damaged
        # checkpoint is one line, not this and then that)
        err.print(f"{printable(str(run_dir))} has finished: there is nothing to resume; its summary:", highlight=False,
                  markup=False, soft_wrap=True)
    _finish_line(state, run_dir.resolve())


def replay_cmd(run_dir: Path = typer.Argument(..., help="The recorded run to replay: its directory or run id."),
               into: Optional[Path] = typer.Option(None, "--run-dir", help="Where the replay goes (default: a new run)."),
               no_progress: bool = typer.Option(False, "--no-progress", help="No live panel: one log line per iteration.")) -> None:
    """Re-run a run with its recorded model replies in place of the model; check it reaches the same decisions."""
    from envs.contract import policy_sha256
    from roles.registry import stage_roles
    from store.rundir import (create_run, decisions, find_run, plug_in_modules, read_record, run_config, run_status,
                              started_here)

    run_dir = find_run(run_dir)
    record = read_record(run_dir)
    config = run_config(record, run_dir, doing="replay")
    modules = plug_in_modules(record)
    if modules and not started_here(record, run_dir):
        raise HeuristError(f"{run_dir} is not a run this machine's runs index lists here (moved, or started "
                           f"elsewhere) and names code of its own ({', '.join(modules)[:120]}), which a replay would "
                           f"import and run; start a run with --env (and --config) if you trust it")
    # The run's own copy of its starting policy, as hashed when the run began: the file it was copied from may have
    # changed since (the replay then started elsewhere and "diverged"), or, in a run directory from elsewhere, name
    # any file on this machine. And evaluations on this machine: a replay contacts no Ray cluster a run.json names.
    # (Runs made before 2026-12-05 copied it as text: a CRLF file's copy differs from the bytes run.json hashed, and
    # the original, where it is unchanged, is the policy then.)
    copy = run_dir.resolve() / "starting_policy.py"
    starting = next((p for p in (copy, Path(record.starting_policy))
                     if p.is_file() and policy_sha256(p) == record.starting_sha256), None)
    if starting is None:
        raise HeuristError(f"{copy} is missing or is not the policy the run started from (its sha256 differs "
                           f"from run.json's); restore the run's copy to replay it")
    config = config.model_copy(update={"policy": starting,
                                       "eval": config.eval.model_copy(update={"backend": "local", "ray_address": None})})
    status, done = run_status(run_dir), len(decisions(run_dir))
    if status != "finished":
        # A run stopped, paused or still going has decided only its recorded iterations: a replay past them has no
        # replies to give, and would report as a divergence what was never decided.
        if not done:
            raise HeuristError(f"{run_dir} has not finished an iteration yet ({status}); there is nothing to replay")
        config = config.model_copy(update={"budget": config.budget.model_copy(update={"iterations": done})})
        err.print(f"the recorded run is {status} after {done} iterations: the replay runs those", highlight=False,
                  markup=False, soft_wrap=True)
    stage_roles(config.stages)  # roles that cannot be loaded are refused before a run directory exists, as in run
    directory = create_run(config, into, replay_of=run_dir)
    err.print(f"replaying {printable(str(run_dir))} into {printable(str(directory))}", highlight=False, markup=False)
    _execute(directory, no_progress)
    recorded, replayed = decisions(run_dir), decisions(directory)
    table = Table(title="decisions: recorded vs replayed")
    for column in ("iteration", "recorded", "replayed", "same"):
        table.add_column(column)
    def decision_text(decision: dict[str, Any] | None) -> str:  # what the ledger holds, shown inert
        if decision is None:
            return "-"
        return shown(f"{'accept' if decision['accepted'] else 'reject'} {str(decision['policy_sha256'])[:10]}")

    for i in range(max(len(recorded), len(replayed))):
        a = recorded[i] if i < len(recorded) else None
        b = replayed[i] if i < len(replayed) else None
        table.add_row(str(i + 1), decision_text(a), decision_text(b), "yes" if a == b else "[red]no[/]")
    out.print(table)
    if recorded != replayed:
        raise HeuristError(f"the replay in {directory} diverged from {run_dir}; compare their transcripts")
    out.print(f"same decisions in all {len(recorded)} iterations; replay at {printable(str(directory))}",
              highlight=False, markup=False)


def runs_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """List the runs started on this machine, newest last."""
    from common.events import IterationDone, RunStarted
    from store.rundir import indexed_runs, run_status, runs_index

    rows = []
    entries, bad = indexed_runs()
    if bad:  # as `show` says of a run's ledger: the runs those lines named are not listed
        say_skipped(bad, str(runs_index().path), "the runs they named are not listed")
    for entry in entries:
        directory = Path(entry.run_dir)
        if not (directory / "run.json").is_file():
            continue
        try:
            records = _ledger(directory)
        except HeuristError as exc:  # one run's damage is said, and the others are listed
            err.print(f"warning: {printable(str(exc))}", highlight=False, soft_wrap=True, markup=False)
            continue
        iterations = [r for r in records if isinstance(r, IterationDone)]
        start = next((r.start.get("mean") for r in records if isinstance(r, RunStarted) and isinstance(r.start, dict)),
                     None)
        best = iterations[-1].mean_after if iterations else start
        rows.append({**entry.model_dump(), "status": run_status(directory), "iterations": len(iterations),
                     "start_mean": start, "best_mean": best})
    if as_json:
        print(json.dumps(rows))
        return
    table = Table(title=f"{len(rows)} runs")
    for column in ("run", "task", "status", "iterations", "dev mean start → best", "directory"):
        table.add_column(column)
    for r in rows:
        table.add_row(shown(r["run_id"]) + (" (replay)" if r.get("replay_of") else ""), shown(r["task"]), r["status"],
                      str(r["iterations"]),
                      f"{score_text(r['start_mean'])} → {score_text(r['best_mean'])}", shown(r["run_dir"]))
    out.print(table)


def _ledger(run_dir: Path) -> list[LedgerEvent]:
    """The run's ledger records; damaged lines are skipped, and said so, never fatal."""
    from common.events import read_events
    from common.ledger import Ledger

    records, bad = read_events(Ledger(run_dir / "ledger.jsonl"))
    if bad:
        say_skipped(bad, str(run_dir / "ledger.jsonl"), "every other record is used")
    return records



def show_cmd(run_dir: Path = typer.Argument(..., help="A run directory or run id (see `heurist runs`).")) -> None:
    """The score history, every edit with its verdict and reasons, and the budget used."""
    from common.events import IterationDone, RunFinished, RunStarted
    from store.rundir import find_run, read_record, recorded_model, run_status
    from store.summary import control_sentences

    run_dir = find_run(run_dir)
    record = read_record(run_dir)
    records = _ledger(run_dir)
    started = next((r for r in records if isinstance(r, RunStarted)), None)
    iterations = [r for r in records if isinstance(r, IterationDone)]
    out.print(f"[bold]{shown(record.run_id)}[/]  {shown(record.task)} · protocol {shown(record.protocol)} · "
              f"{'offline roles' if record.offline else 'model ' + shown(recorded_model(record.config))} · "
              f"{run_status(run_dir)}", highlight=False)
    if started and started.dev_seeds:
        seeds = started.dev_seeds
        start = started.start if isinstance(started.start, dict) else {}
        per_seed = start.get("per_seed") if isinstance(start.get("per_seed"), dict) else {}
        failed = sum(r is None for r in per_seed.values())  # the mean is over the episodes that completed
        out.print(f"dev split, seeds {seeds[0]}..{seeds[-1]} ({len(seeds)} episodes); starting dev mean "
                  f"{score_text(start.get('mean'))}" + (f" over {len(per_seed) - failed} of {len(per_seed)} "
                                                        f"episodes ({failed} failed)" if failed else ""),
                  highlight=False)
    table = Table(title="iterations")
    for column in ("#", "verdict", "dev mean before", "candidate", "edit", "reason"):
        table.add_column(column, overflow="fold")
    for r in iterations:
        table.add_row(str(r.iteration), "[green]accepted[/]" if r.accepted else "[yellow]rejected[/]",
                      score_text(r.mean_before), score_text(r.mean_candidate), shown(r.edit or "-"), shown(r.reason))
    out.print(table)
    finished = next((r for r in reversed(records) if isinstance(r, RunFinished)), None)
    spent = (iterations[-1].spent if iterations else {}) | (finished.spent if finished else {})
    if spent:
        def count(name: str) -> float:  # a damaged ledger's value that is no finite number counts as 0
            value = spent.get(name, 0)
            return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else 0.0

        out.print(f"spent: {int(count('env_steps')):,} env steps, "
                  f"{tokens_text(int(count('tokens')), int(count('estimated_tokens')))} in "
                  f"{int(count('llm_calls'))} calls, {cost_text(count('usd'), int(count('unpriced_tokens')))}, "
                  f"{count('elapsed_s') / 60:.1f} min",
                  highlight=False)
    if finished:
        out.print(f"finished: {shown(finished.reason)}; best dev mean {score_text(finished.best_mean)}",
                  highlight=False)
        if finished.holdout:
            h = finished.holdout
            seeds = h.get("seeds") if isinstance(h.get("seeds"), list) and h.get("seeds") else ["?"]
            failed = h.get("episodes_failed")
            out.print(shown(f"holdout (once), seeds {seeds[0]}..{seeds[-1]} ({h.get('episodes')} episodes): "
                            f"mean {score_text(h.get('mean'))} ± {score_text(h.get('std'))}"
                            + (f", {failed} failed (mean over the others)" if isinstance(failed, int) and failed
                               else "")), highlight=False)
            for sentence in control_sentences(h.get("control")) or ():
                if sentence:
                    out.print(shown(sentence), highlight=False)


def transcripts_cmd(run_dir: Path = typer.Argument(..., help="A run directory or run id (see `heurist runs`)."),
                    role: Optional[str] = typer.Option(None, "--role", help="Only this role."),
                    iteration: Optional[int] = typer.Option(None, "--iter", min=0, help="Only this iteration."),
                    as_json: bool = typer.Option(False, "--json", help="Raw JSON lines."),
                    width: int = typer.Option(1500, "--chars", min=80, help="Characters shown per message.")) -> None:
    """Print the roles' transcripts readably: messages, images by path, replies, parsed output, tokens, cost."""
    from store.rundir import find_run, read_record
    from store.transcripts import TranscriptRecorder

    run_dir = find_run(run_dir)
    read_record(run_dir)
    recorder = TranscriptRecorder(run_dir)
    entries = recorder.read(iteration, role)
    if recorder.skipped:  # said, as the ledger's readers say theirs: a role with only damaged lines is not "none"
        err.print(f"warning: {recorder.skipped} damaged transcript line(s) skipped (not JSON, or of no known kind)",
                  highlight=False, soft_wrap=True, markup=False)
    if not entries:
        known = recorder.roles()
        if role and known and role not in known:  # a name mistyped: the names there are
            raise HeuristError(f"no transcripts in {run_dir} for role {role}; its roles are {', '.join(known)}")
        raise HeuristError(f"no transcripts in {run_dir}" + (f" for role {role}" if role else "")
                           + (f" in iteration {iteration}" if iteration is not None else "")
                           + "; see `heurist show` for the iterations it ran")
    if as_json:
        for line in TranscriptRecorder(run_dir).stored(iteration, role):
            print(json.dumps(line))
        return
    current = None
    for e in entries:
        if (e.iteration, e.role) != current:
            current = (e.iteration, e.role)
            out.rule(f"iteration {e.iteration} · {shown(e.role)}")
        try:
            text = _render(e, width)
        except Exception as exc:  # a line of the right kind whose parts are not (a message's content of numbers)
            text = f"• a damaged {e.kind} line ({type(exc).__name__}): {clipped(e.model_dump(mode='json'), width)}"
        out.print(printable(text), highlight=False, markup=False, soft_wrap=True)


def _render(e: TranscriptLine, width: int) -> str:
    from store.transcripts import AgentTurn, Decision, LLMCall, Parsed, Resumed, ToolRun, ValidationFailed

    if isinstance(e, Decision):
        return f"• decision: {clipped(e.summary, width)}" + (f"\n  {clipped(e.details, width)}" if e.details else "")
    if isinstance(e, LLMCall):
        head = f"• call {e.model} attempt {e.attempt}: "
        if e.error:
            head += f"ERROR {clipped(e.error, width)}"
        else:
            head += (f"{e.prompt_tokens or 0}+{e.completion_tokens or 0} tokens, "
                     f"{cost_text(e.usd, 0, 5) if e.priced is not False else 'unpriced'}, {e.latency_s:.2f} s")
        lines = [head]
        for message in e.messages:
            content = message.get("content")
            if isinstance(content, list):
                content = " ".join(p.get("text", "") if p.get("type") == "text" else f"[image {p.get('path')}]"
                                   for p in content)
            lines.append(f"  {message.get('role')}: {clipped(content, width)}")
        if e.response:
            lines.append(f"  reply: {clipped(e.response, width)}")
        for call in e.tool_calls or []:
            lines.append(f"  calls {clipped(call.get('name'), 200)}({clipped(call.get('arguments', ''), width)})")
        if e.refusal:
            lines.append(f"  refusal: {clipped(e.refusal, width)}")
        return "\n".join(lines)
    if isinstance(e, Parsed):
        return f"• parsed{' (replayed)' if e.replayed else ''}: {clipped(e.parsed, width)}"
    if isinstance(e, ValidationFailed):
        return f"• reply did not match the schema (attempt {e.attempt}): {clipped(e.error, width)}"
    if isinstance(e, AgentTurn):
        calls = "; ".join(f"{clipped(c.get('name'), 200)}({clipped(c.get('arguments'), 200)})" for c in e.tool_calls) \
            or "no tool"
        return (f"• {e.loop} turn {e.turn}{' (replayed)' if e.replayed else ''}: {e.tokens:,} tokens, calls {calls}"
                + (f"\n  said: {clipped(e.content, width)}" if e.content else ""))
    if isinstance(e, ToolRun):
        return (f"• {e.loop} tool {e.name} ({e.seconds:.2f} s, {e.env_steps:,} env steps): "
                f"{clipped(e.result, width)}" + (f" [image {e.image}]" if e.image else ""))
    if isinstance(e, Resumed):
        return "— the run was resumed: a later session wrote what follows —"
    return f"• ERROR {clipped(e.error, width)}"


def roles_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
              config_file: Optional[Path] = typer.Option(None, "--config", help=(
                  "A run config: its [stages] are loaded and checked as a run would, module:Class roles included, "
                  "and each role says where the config places it."))) -> None:
    """Every role heurist can use, with its stage and where it comes from (built in or a plug-in)."""
    from roles.registry import RoleInfo, available, stage_roles
    from store.config import build_config, load_config_file, merge

    roles = available()
    placed: dict[str, str] = {}
    if config_file is not None:  # a module:Class role could be checked nowhere but in `heurist graph` (a review)
        data = load_config_file(config_file)
        config = build_config(merge({"task": "CartPole-v1"}, data), str(config_file))
        for stage, instances in stage_roles(config.stages).items():
            for role in instances:
                placed[role.name] = stage
                cls = type(role)
                roles.setdefault(role.name, RoleInfo(role.name, role.stage, f"module {cls.__module__}:{cls.__qualname__}",
                                                     cls))
    if as_json:
        print(json.dumps([{"name": r.name, "stage": r.stage, "source": r.source}
                          | ({"placed": placed.get(r.name)} if config_file is not None else {}) for r in roles.values()]))
        return
    table = Table(title=f"{len(roles)} roles" + (f", as {printable(str(config_file))} places them" if placed else ""))
    columns = ("role", "stage", "source", *(("placed in",) if config_file is not None else ()), "what it does")
    for column in columns:
        table.add_column(column, overflow="fold")
    for r in roles.values():
        doc = (r.cls.__doc__ or sys.modules[r.cls.__module__].__doc__ or "").strip().splitlines()
        where = (placed.get(r.name, "-"),) if config_file is not None else ()
        table.add_row(shown(r.name), r.stage, shown(r.source), *where, shown(doc[0]) if doc else "")
    out.print(table)


def graph_cmd(config_file: Optional[Path] = typer.Option(None, "--config", help="A run config; its stages shape the graph."),
              env: str = typer.Option("CartPole-v1", "--env", help="Task (the topology does not depend on it).")) -> None:
    """Print the graph's topology as a Mermaid diagram."""
    from runner.lifecycle import mermaid
    from store.config import build_config, load_config_file, merge

    data = load_config_file(config_file) if config_file else {}
    drawn = mermaid(build_config(merge({"task": env}, data), str(config_file or "defaults")))
    sys.stdout.write(drawn if drawn.endswith("\n") else drawn + "\n")


def register(app: typer.Typer) -> None:
    app.command("run")(run_cmd)
    app.command("resume")(resume_cmd)
    app.command("replay")(replay_cmd)
    app.command("runs")(runs_cmd)
    app.command("show")(show_cmd)
    app.command("transcripts")(transcripts_cmd)
    app.command("roles")(roles_cmd)
    app.command("graph")(graph_cmd)
