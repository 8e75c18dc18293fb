"""``heurist campaign``: many runs across tasks, on this machine or a Ray cluster (start, status, resume, stop)."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cli.console import clipped, err, out, say_skipped, shown
from common.errors import HeuristError
from common.formatting import finite_number
from common.safe_text import printable

campaign_app = typer.Typer(no_args_is_help=True,
                           help="Campaigns: every task and observation mode of a file, times its repeats, on Ray.")

ADDRESS = typer.Option(None, "--address", envvar="RAY_ADDRESS",
                       help="A Ray cluster (e.g. 10.0.0.5:6379); default: Ray started on this machine.")
MAX_CONCURRENT = typer.Option(None, "--max-concurrent", min=1,
                              help="Runs at once, at most (default: the cluster's CPUs / resources.cpus_per_run).")


def _drive(directory: Path, address: Optional[str], max_concurrent: Optional[int]) -> None:
    from campaign.engine import Driver
    from campaign.record import CampaignDir
    from common.paths import heurist_home

    driver = Driver(CampaignDir(directory), address=address, max_concurrent=max_concurrent, home=str(heurist_home()),
                    on_line=lambda line: err.print(shown(line), highlight=False, soft_wrap=True))
    with driver.campaign.driving():
        driver.campaign.clear_stop()  # a stop asked of an earlier driver is not one asked of this one
        status = driver.run()
    from campaign.status import campaign_status

    out.print(f"campaign {status}: {printable(str(directory))} ({_runs_by_status(campaign_status(directory)[0])})",
              highlight=False, markup=False, soft_wrap=True)
    out.print(f"status: heurist campaign status {printable(str(directory))}",
              highlight=False, markup=False, soft_wrap=True)
    from common import interrupts

    if interrupts.received.is_set():  # stopped by Ctrl-C, SIGTERM or SIGHUP: said as every command says it
        raise typer.Exit(interrupts.exit_code())


def _runs_by_status(rows: list[dict]) -> str:
    """The runs (``campaign_status``'s rows) by where they stand, in a few words ("2 runs: 1 finished, 1 failed"):
    "campaign finished" alone hid a failed run."""
    from collections import Counter

    counts = Counter(row["status"] for row in rows)
    return f"{len(rows)} run{'s' if len(rows) != 1 else ''}: " + ", ".join(f"{n} {s}" for s, n in counts.items())


@campaign_app.command("start")
def start_cmd(
    file: Path = typer.Argument(..., help="The campaign file (TOML; see docs/campaigns.md)."),
    directory: Optional[Path] = typer.Option(None, "--dir",
                                             help="Where the campaign goes (default: $HEURIST_HOME/campaigns/NAME-TIME)."),
    address: Optional[str] = ADDRESS,
    max_concurrent: Optional[int] = MAX_CONCURRENT,
    memory_url: Optional[str] = typer.Option(None, "--memory-url", envvar="HEURIST_MEMORY_URL",
                                             help="A Chroma server every run shares (default: one the campaign "
                                                  "serves from DIR/memory while it runs)."),
) -> None:
    """Plan every run of FILE, then drive them on Ray until each has ended or the campaign budget is spent."""
    from campaign.engine import check_address
    from campaign.memory_server import choose_url
    from campaign.plan import load_campaign
    from campaign.record import CampaignDir
    from common.paths import heurist_home
    from store.config import merge

    spec, runs = load_campaign(file)
    check_address(address)  # before the campaign's folder exists
    served = None
    if not memory_url and not any({"url", "path"} & set(r.config.get("memory") or {}) for r in runs):
        served = memory_url = choose_url(address)  # the runs name no memory of their own: the campaign serves one
    if memory_url:
        runs = [r.model_copy(update={"config": merge(r.config, {"memory": {"url": memory_url}})}) for r in runs]
    if directory is None:
        directory = heurist_home() / "campaigns" / f"{spec.name}-{datetime.now(timezone.utc):%Y%m%d-%H%M%S}"
    CampaignDir.create(directory, file, spec, runs, memory_server=served)
    _say_which_runs_are_offline(runs)
    err.print(f"campaign directory: {printable(str(directory.resolve()))} ({len(runs)} runs)",
              highlight=False, markup=False, soft_wrap=True)
    _drive(directory.resolve(), address, max_concurrent)


def _say_which_runs_are_offline(runs) -> None:
    """As `heurist run` does, where it is decided: here, from this environment (the key itself is never recorded)."""
    from store.config import build_config
    from store.rundir import is_offline

    offline = sum(is_offline(build_config(r.config)) for r in runs)
    if offline:
        err.print(f"offline: {offline} of {len(runs)} runs have no API key or server here, so their roles run their "
                  "offline backends (docs/campaigns.md)", highlight=False, markup=False, soft_wrap=True)


@campaign_app.command("resume")
def resume_cmd(
    directory: Path = typer.Argument(..., help="A campaign directory."),
    address: Optional[str] = ADDRESS,
    max_concurrent: Optional[int] = MAX_CONCURRENT,
) -> None:
    """Go on with a stopped or killed campaign: runs not ended start (again) from their checkpoints."""
    from campaign.record import CampaignDir
    from campaign.status import campaign_status

    CampaignDir(directory).record()  # not a campaign: one line, before Ray starts
    rows, summary = campaign_status(directory)
    if rows and summary["ended"] == summary["runs"] and not summary["state"].startswith(("running", "stopped")):
        # As `heurist resume` of a finished run: said, not a Ray started and two ledger lines written for nothing.
        out.print(f"campaign {shown(summary['state'])}: {printable(str(directory))} ({_runs_by_status(rows)}); "
                  f"nothing to resume", highlight=False, markup=False, soft_wrap=True)
        return
    _drive(directory.resolve(), address, max_concurrent)


@campaign_app.command("stop")
def stop_cmd(directory: Path = typer.Argument(..., help="A campaign directory.")) -> None:
    """Ask the process driving the campaign to stop its runs (each records its interruption) and itself."""
    from campaign.record import CampaignDir

    campaign = CampaignDir(directory)
    campaign.record()
    if not campaign.driven():
        raise HeuristError(f"no process is driving {directory}; nothing to stop (`heurist campaign resume "
                           f"{directory}` goes on with it)")
    campaign.request_stop()
    out.print(f"stop asked; the runs record their interruption and the driver ends: {printable(str(directory))}",
              highlight=False,
              markup=False, soft_wrap=True)


@campaign_app.command("status")
def status_cmd(directory: Path = typer.Argument(..., help="A campaign directory.")) -> None:
    """Each run of the campaign: where it stands, its attempts, what it spent, its best dev mean."""
    from campaign.status import campaign_status

    rows, summary = campaign_status(directory)
    if summary["unreadable"]:  # what they recorded (a run ended, a launch) is missing from the rows below
        say_skipped(summary["unreadable"], "the campaign's ledger", "the rows below may miss what they recorded")
    # A campaign folder may be a stranger's: every text in it is shown, never read as markup or escapes.
    table = Table(title=f"campaign {shown(summary['name'])}: {shown(summary['state'])}")
    for column in ("run", "task", "status", "attempts", "env steps", "tokens", "best dev mean", "why"):
        table.add_column(column)
    for row in rows:
        best = row["best_mean"]
        table.add_row(shown(clipped(row["key"], 200)), shown(clipped(row["task"], 200)),
                      shown(clipped(row["status"], 200)), str(row["attempts"]), f"{row['env_steps']:,}",
                      f"{row['tokens']:,}" + (f" ({row['estimated_tokens']:,} est.)" if row["estimated_tokens"] else ""),
                      "-" if finite_number(best) is None else f"{best:g}",
                      shown(clipped(row["reason"] or "", 500)))
    out.print(table)
    out.print(f"{summary['ended']} of {summary['runs']} runs ended; env steps {summary['env_steps']:,}, tokens "
              f"{summary['tokens']:,}", highlight=False, markup=False)


@campaign_app.command("report")
def report_cmd(directory: Path = typer.Argument(..., help="A campaign directory.")) -> None:
    """Write DIR/report/index.html: HNS aggregates with bootstrap intervals, sample-efficiency curves, performance
    profiles, each task and run, beside published numbers."""
    from report.campaign_page import write_campaign_report

    out.print(f"report: {printable(str(write_campaign_report(directory)))}",
              highlight=False, markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.add_typer(campaign_app, name="campaign")


__all__ = ["campaign_app", "register"]
