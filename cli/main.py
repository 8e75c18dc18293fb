"""The ``heurist`` command line.

Bad input gets one line naming the problem and the fix, and a non-zero exit; ``--debug``
(anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cli.campaign_commands import register as register_campaign_commands
from cli.console import RedactingStream, err, new_command, out, say_stopped, shown, stdout_for_json_only
from cli.doctor_commands import register as register_doctor_command
from cli.memory_commands import memory_app
from cli.report_commands import register as register_report_command
from cli.run_commands import register as register_run_commands
from common import interrupts
from common.errors import HeuristError
from common.paths import default_ledger_path
from common.safe_text import one_line

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="heurist: Heuristic Learning — improve readable Python policies by editing code, not weights.")
app.add_typer(memory_app, name="memory")
register_run_commands(app)
register_report_command(app)
register_doctor_command(app)
register_campaign_commands(app)


def _print_version(asked: bool) -> None:
    if asked:
        from importlib.metadata import PackageNotFoundError, version

        try:
            out.print(f"heurist {version('heurist')}", highlight=False, markup=False)
        except PackageNotFoundError:  # run from a checkout that was never installed
            out.print("heurist (not installed: run `make setup`)", highlight=False, markup=False)
        raise typer.Exit()


@app.callback()
def _heurist(version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                          help="Print heurist's version and exit.")) -> None:
    """heurist: Heuristic Learning — improve readable Python policies by editing code, not weights."""


@app.command("eval")
def eval_cmd(
    policy_file: Path = typer.Argument(..., help="The policy .py file to evaluate, or a folder holding policy.py "
                                                 "and the data files it reads (read-only in the sandbox)."),
    env: str = typer.Option(..., "--env", help="Task id (see `heurist envs`) or module:attr of a TaskSpec."),
    split: Optional[str] = typer.Option(None, "--split", help="Seed split: dev (default), holdout or audit."),
    seeds: Optional[str] = typer.Option(None, "--seeds", help="Any seeds instead of a split, e.g. 100-104 or 3,7,9-12 "
                                                              "(recorded as a custom split)."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", min=1, help="Cut each episode after this many steps: "
                                                                            "a quick look, not the protocol's score."),
    eval_timeout: Optional[float] = typer.Option(None, "--eval-timeout", min=1, help=(
        "Wall-clock seconds for the whole evaluation; what is left is not run (default: an hour, or each worker's "
        "share of the seeds at the episode limit, if longer).")),
    episodes: Optional[int] = typer.Option(None, "--episodes", min=1, help="First N seeds of the split (default: all)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help="Worker pairs at most (default: all cores); "
                                                              "locally, in a short evaluation, pairs after the first "
                                                              "start only if seeds still wait after half a second of "
                                                              "episodes."),
    lockstep: Optional[int] = typer.Option(None, "--lockstep", min=1, max=64,
                                           help="Episodes each worker steps together (1: one at a time; "
                                                "default: 4 for Atari, 32 otherwise)."),
    protocol: Optional[str] = typer.Option(None, "--protocol", help="Task protocol, e.g. standard or deterministic for Atari."),
    video: bool = typer.Option(False, "--video", help="Write failure clips (mp4 + contact sheet) for the worst episodes."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object and nothing else on stdout."),
    confirm_protected: bool = typer.Option(False, "--confirm-protected", help="Allow the holdout or audit split; the ledger records it."),
    ledger: Optional[Path] = typer.Option(None, "--ledger", help="Append-only ledger file (default: $HEURIST_HOME/ledger.jsonl)."),
    out_dir: Optional[Path] = typer.Option(None, "--out", help="Where clips go (default: ./heurist-clips)."),
    episode_timeout: float = typer.Option(300.0, "--episode-timeout", min=1, help=(
        "Wall-clock and CPU seconds per episode, at least; --step-seconds may size it up from the task.")),
    step_seconds: float = typer.Option(0.005, "--step-seconds", min=0, help=(
        "Seconds a policy may spend per env step: each episode's limit is at least this times the most steps an "
        "episode of the task can take (e.g. 1.5 for a planner spending a CPU-second a step; 0: the episode "
        "limit alone).")),
    memory_mb: int = typer.Option(4096, "--memory-mb", min=256, help="Address-space limit per worker, MiB."),
    backend: str = typer.Option("local", "--backend", help="Where worker pairs run: local (this machine) or ray "
                                                           "(Ray tasks over a cluster's nodes, one CPU each)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", envvar="RAY_ADDRESS",
                                               help="The Ray cluster for --backend ray (default: Ray started here)."),
) -> None:
    """Evaluate POLICY_FILE on a task's fixed seeds in sandboxed workers and append the result to the ledger."""
    from common.ledger import Ledger, check_ledger_file
    from pydantic import ValidationError

    from envs.evaluator import EvalRequest, evaluate, heurists_files
    from envs.limits import Limits
    from envs.tasks import get_task

    json_out = stdout_for_json_only() if as_json else None
    if seeds is not None and split is not None:
        raise HeuristError("give --seeds or --split, not both (--seeds is a split of its own: custom)")
    if seeds is not None and episodes is not None:
        raise HeuristError("give --seeds or --episodes, not both (--seeds runs exactly the seeds it names)")
    split = "custom" if seeds is not None else (split or "dev")
    if split not in ("dev", "holdout", "audit", "custom"):
        raise HeuristError(f"unknown split {split!r}; choose dev, holdout or audit")
    chosen = parse_seeds(seeds) if seeds is not None else None
    if backend not in ("local", "ray"):
        raise HeuristError(f"unknown backend {backend!r}; choose local or ray")
    spec = get_task(env)
    try:
        request = EvalRequest(policy_path=policy_file, task_id=spec.id, protocol=protocol, split=split,
                              episodes=episodes, seeds=chosen, max_steps=max_steps, eval_timeout_s=eval_timeout,
                              step_s=step_seconds, workers=workers, lockstep=lockstep,
                              confirm_protected=confirm_protected, video=video, out_dir=out_dir, backend=backend,
                              ray_address=ray_address if backend == "ray" else None,
                              limits=Limits(episode_timeout_s=episode_timeout, episode_cpu_s=episode_timeout,
                                            memory_mb=memory_mb))
    except ValidationError as exc:  # a limit past what a clock or the kernel takes ("inf", "nan", 1e300)
        first = exc.errors()[0]
        raise HeuristError(f"{first['loc'][-1]}: {first['msg']} (given {first.get('input')!r}); give a finite "
                           f"number within it (`heurist eval --help`)") from None
    from envs.contract import check_policy_source, lazy_imports
    from envs.policy_files import read_policy

    ledger_file = ledger or default_ledger_path()
    check_ledger_file(ledger_file)
    # Read as the evaluator reads it, for its warnings; only the source is kept (the evaluator reads the folder
    # again, and a folder's data files may be hundreds of MiB).
    bundle = read_policy(policy_file, heurists_files(request, ledger_file))
    source, entry = bundle.source, bundle.entry
    del bundle
    for warning in lazy_imports(check_policy_source(source, str(entry)), entry.name):
        err.print(f"warning: {shown(warning)}", highlight=False, markup=False, soft_wrap=True)
    total = len(chosen) if chosen else (episodes or len(spec.seeds.seeds(split)))  # type: ignore[arg-type]
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[last]}"), TimeElapsedColumn(), console=err,
                  disable=as_json or not err.is_terminal, transient=True) as bar:
        task = bar.add_task(shown(f"{spec.id} {split}"), total=total, last="")

        def tick(episode) -> None:
            last = f"seed {episode.seed}: {episode.return_:.1f}" if episode.status == "ok" else f"seed {episode.seed}: {episode.status}"
            bar.update(task, advance=1, last=last)

        result = evaluate(spec, request, Ledger(ledger_file), progress=tick)

    summary = result.summary()
    if result.backend == "ray":
        summary |= {"backend": "ray", "nodes": result.nodes}
    if json_out is not None:
        json_out.print(json.dumps(summary))
    else:
        _print_result(result, ledger_file)
    if result.status == "broken":
        first = next((e.error for e in result.episodes if e.error), "no episode completed")
        raise HeuristError(f"{policy_file} did not run on {spec.id}: {first}")


def parse_seeds(text: str) -> list[int]:
    """``100-104``, ``3,7,9-12``: the seeds, in order, each once; anything else is one line naming it."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        low, dash, high = part.partition("-") if not part.startswith("-") else (part, "", "")
        try:
            first, last = (int(low), int(high)) if dash else (int(part), int(part))
        except ValueError:
            raise HeuristError(f"--seeds {text!r}: {part!r} is not a seed or a range; e.g. 100-104 or 3,7,9-12") from None
        if first < 0 or last < first:
            raise HeuristError(f"--seeds {text!r}: {part!r} is not a range of seeds from low to high, both at least 0")
        if len(seeds) + last - first >= 100_000:
            raise HeuristError(f"--seeds {text!r} names more than 100,000 seeds; give fewer")
        seeds.extend(range(first, last + 1))
    return list(dict.fromkeys(seeds))


def _print_result(result, ledger_file: Path) -> None:
    s = result.stats
    # A task's id and protocol may be a plug-in's (``module:attr``): shown, never read as markup or escapes.
    table = Table(title=shown(f"{result.task} · protocol {result.protocol} · split {result.split} "
                              f"· seeds {result.seeds[0]}..{result.seeds[-1]}"), show_header=False)
    table.add_column(style="bold")
    table.add_column()
    failed = sum(e.status != "ok" for e in result.episodes)
    table.add_row("policy", f"{shown(result.policy_path)} (sha256 {result.policy_sha256[:12]})")
    table.add_row("episodes", f"{len(result.episodes)} ({failed} failed)" if failed else str(len(result.episodes)))
    if s:
        table.add_row("mean ± std", f"{s.mean:.2f} ± {s.std:.2f}")
        table.add_row("median / min / max", f"{s.median:.2f} / {s.min:.2f} / {s.max:.2f}")
        if s.ci95:
            table.add_row("95% CI of mean", f"[{s.ci95[0]:.2f}, {s.ci95[1]:.2f}]")
        if s.hns_mean is not None:
            table.add_row("human-normalised", f"{s.hns_mean:.3f}")
    if result.target is not None:
        met = s is not None and s.mean >= result.target and not failed
        table.add_row("target", f"{result.target:g} ({'met' if met else 'not met'})")
    if result.max_steps is not None:
        table.add_row("cut", f"[yellow]every episode at {result.max_steps:,} steps (--max-steps): a quick look, "
                             f"not the protocol's score[/]")
    if result.policy_files:
        table.add_row("data files", f"{len(result.policy_files)} (read-only, in the policy's sha256)")
    if result.setup_runs:
        table.add_row("set-up", f"ran {result.setup_runs} time{'s' if result.setup_runs != 1 else ''} "
                                f"(once per worker), {sum(e.setup_s or 0 for e in result.episodes):.1f} CPU s")
    if result.limits:
        table.add_row("limits", f"{result.limits['episode_timeout_s']:g} s per episode, "
                                f"{result.limits['eval_timeout_s']:g} s in all")
    table.add_row("env steps", f"{result.env_steps:,}")
    table.add_row("wall time", f"{result.wall_s:.1f} s")
    if result.backend == "ray":
        table.add_row("ran on", ", ".join(f"{shown(node)} ×{n}" for node, n in sorted(result.nodes.items())))
    table.add_row("failures", shown(", ".join(f"{k} ×{v}" for k, v in sorted(result.failures.items())) or "none"))
    for e in result.episodes:
        if e.error:
            table.add_row(f"seed {e.seed}", f"[red]{e.status}[/]: {shown(e.error)}")
    for clip in result.clips:
        table.add_row("clip", f"{shown(clip.mp4)} ({clip.frames} frames)")
    for error in result.clip_errors:
        table.add_row("no clip", shown(error))
    table.add_row("ledger", f"{shown(ledger_file)} (eval {result.eval_id})")
    out.print(table)


@app.command("envs")
def envs_cmd(family: Optional[str] = typer.Option(None, "--family", help="Only this family: classic_control, box2d, atari, mujoco, custom."),
             as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
             protocols: bool = typer.Option(False, "--protocols", help="Each protocol's settings, and its tasks.")) -> None:
    """List registered tasks with their targets, protocols and starter policies."""
    from envs.tasks import registry

    reg = registry()
    specs = [s for s in reg.all() if family is None or s.family == family]
    if family is not None and not specs:
        raise HeuristError(f"no tasks in family {family!r}; families: classic_control, box2d, atari, mujoco, custom")
    if protocols:
        _print_protocols(specs, as_json)
        return
    if as_json:
        print(json.dumps([{"id": s.id, "family": s.family, "obs_mode": s.obs_mode, "target": s.target,
                           "protocols": [p.name for p in s.protocols], "starter_policy": s.starter_policy,
                           "source": reg.source(s.id)} for s in specs]))
        return
    table = Table(title=f"{len(specs)} tasks")
    for col in ("task", "family", "obs", "target", "protocols", "starter", "source"):
        table.add_column(col)
    for s in specs:
        table.add_row(shown(s.id), s.family, s.obs_mode, "" if s.target is None else f"{s.target:g}",
                      shown(", ".join(p.name for p in s.protocols)), shown(s.starter_policy or "random"),
                      shown(reg.source(s.id)))
    out.print(table)


def _print_protocols(specs, as_json: bool) -> None:
    """Every distinct protocol (name and settings) of these tasks, with the tasks that have it."""
    groups: dict[str, dict] = {}
    for spec in specs:
        for protocol in spec.protocols:
            settings = protocol.settings()
            key = json.dumps([protocol.name, settings], sort_keys=True, default=str)
            group = groups.setdefault(key, {"protocol": protocol.name, "description": protocol.description,
                                            "settings": settings, "tasks": []})
            group["tasks"].append(spec.id)
    if as_json:
        print(json.dumps(list(groups.values()), default=str))
        return
    table = Table(title=f"{len(groups)} protocols")
    for col in ("protocol", "settings", "tasks", "description"):
        table.add_column(col)
    for g in groups.values():
        tasks = g["tasks"]
        named = ", ".join(tasks[:3]) + (f" and {len(tasks) - 3} more" if len(tasks) > 3 else "")
        table.add_row(shown(g["protocol"]), shown(", ".join(f"{k}={v}" for k, v in g["settings"].items())), shown(named),
                      shown(g["description"]))
    out.print(table)


def _error(label: str, message: str) -> None:
    """One error line: the label styled, the message (which may quote untrusted text) shown as plain text."""
    err.print(Text.assemble((label, "red"), " ", one_line(message)), highlight=False, soft_wrap=True)


def main() -> None:
    # A Ctrl-C is remembered, so one a library swallows still stops a run or an evaluation (common/interrupts.py).
    with interrupts.remembering():
        _main()


def _main() -> None:
    debug = "--debug" in sys.argv
    if debug:
        sys.argv.remove("--debug")
    # Whatever any command prints, no secret of heurist's environment reaches the terminal or a log file.
    sys.stdout, sys.stderr = RedactingStream(sys.stdout), RedactingStream(sys.stderr)
    new_command()
    try:
        # Not standalone: click's own error box is several lines; a usage error here is one, like any other.
        code = app(prog_name="heurist", standalone_mode=False)
    except typer.TyperException as exc:  # a usage error: unknown option, wrong type, missing argument
        if debug:
            raise
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "heurist"
        message = exc.format_message().rstrip(".")
        if message:  # empty after a bare `heurist`, whose help was just printed
            joint = " " if message.endswith("?") else "; "  # click's "Did you mean 'show'?" read "?;" before the hint
            _error("error:", f"{message}{joint}`{command} --help` lists what it takes")
        sys.exit(exc.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        say_stopped("interrupted")
        sys.exit(interrupts.exit_code())
    except HeuristError as exc:
        if debug:
            raise
        _error("error:", str(exc))
        sys.exit(2)
    except Exception as exc:  # a bug of ours: still one line, with the way to see more
        if debug:
            raise
        _error("internal error:", f"{type(exc).__name__}: {exc} (run again with --debug for the traceback)")
        sys.exit(1)
    if code == 130 and interrupts.received.is_set():  # typer's own answer to a KeyboardInterrupt a command let out
        say_stopped("interrupted")
        sys.exit(interrupts.exit_code())  # 128 + the signal: 130 for Ctrl-C, 143 for SIGTERM
    if isinstance(code, int) and code:  # typer.Exit(code) from a command, e.g. doctor's failed checks
        sys.exit(code)


if __name__ == "__main__":
    main()
