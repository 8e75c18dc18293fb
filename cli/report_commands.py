"""``heurist report``: a run's HTML report, or several runs' score curves on one page."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cli.console import err, out
from common.safe_text import printable


def report_cmd(
    run_dirs: list[Path] = typer.Argument(..., help="A run directory or run id; with --compare, two or more."),
    compare: bool = typer.Option(False, "--compare", help="One page with the score curves of all the runs given."),
    out_file: Optional[Path] = typer.Option(None, "--out", help="Where the --compare page goes "
                                                                "(default: ./heurist-compare.html)."),
) -> None:
    """Write RUN_DIR/report/index.html: score plots, failure clips, diffs, tests, verdicts and per-role transcripts."""
    from report.render import ReportError, write_compare, write_report
    from store.rundir import find_run, read_record

    run_dirs = [find_run(run_dir) for run_dir in run_dirs]
    for run_dir in run_dirs:
        read_record(run_dir)  # a foreign directory is one line, before any work
    if compare:
        path = write_compare(run_dirs, out_file or Path("heurist-compare.html"))
        out.print(f"comparison of {len(run_dirs)} runs: {printable(str(path.resolve()))}", highlight=False,
                  markup=False, soft_wrap=True)
        return
    if out_file is not None:
        raise ReportError("--out is for --compare; a run's report is always RUN_DIR/report/index.html")
    for run_dir in run_dirs:
        err.print(f"writing the report of {printable(str(run_dir))}", highlight=False, markup=False)
        out.print(f"report: {printable(str(write_report(run_dir)))}", highlight=False, markup=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    app.command("report")(report_cmd)
