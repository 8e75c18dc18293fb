"""``heurist memory``: search, count, export, import and forget the records of past runs."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cli.console import err, out, shown, shown_line
from common.errors import HeuristError
from common.safe_text import printable

memory_app = typer.Typer(no_args_is_help=True, help="Search and manage the memory of past failures, fixes and lessons.")

MEMORY_DIR = typer.Option(None, "--memory", help="Memory store directory (default: $HEURIST_HOME/memory).")
MEMORY_URL = typer.Option(None, "--memory-url", envvar="HEURIST_MEMORY_URL",
                          help="A Chroma server (http://host:port) shared by several machines.")


EMBEDDER = typer.Option(None, "--embedder", metavar="JSON",
                        help="The embedder to use, as memory.embedder in a run's config, e.g. "
                             "'{\"kind\": \"openai\", \"model\": \"text-embedding-3-small\"}' (default: the "
                             "offline one the store was made with; a store's own server or model file is never "
                             "taken unless named here).")


def _open(memory: Optional[Path], memory_url: Optional[str], embedder: Optional[str], reading: bool = True):
    """The store to read (or, for an import, to write: ``reading=False`` makes one where none is). A --memory folder
    that does not exist is a typo, not a new store: reading it made an empty store there and reported 0 records."""
    from pydantic import ValidationError

    from memory.embedders import EMBEDDER_ADAPTER
    from memory.store import MemoryConfig, MemoryStore

    named = None
    if embedder is not None:
        try:
            named = EMBEDDER_ADAPTER.validate_json(embedder)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(part) for part in first["loc"]) or "the value"
            raise HeuristError(f"--embedder is not an embedder ({where}: {first['msg']}); give JSON such as "
                               f"'{{\"kind\": \"minilm-onnx\"}}' (docs/memory.md)") from None
    if reading and memory is not None and memory_url is None and not memory.expanduser().exists():
        raise HeuristError(f"no memory store at {printable(str(memory))}; give --memory a store's folder (runs keep "
                           f"theirs at $HEURIST_HOME/memory), or make one with `heurist memory import`")
    return MemoryStore(MemoryConfig(path=memory, url=memory_url, embedder=named))


@memory_app.command("search")
def search_cmd(
    text: str = typer.Argument(..., help="A failure described in words, e.g. \"ball passes the paddle on the left\"."),
    env: Optional[str] = typer.Option(None, "--env", help="Only failures and fixes of this task; lessons of its family."),
    kind: Optional[str] = typer.Option(None, "--kind", help="Only failures of this kind, e.g. life_lost."),
    outcome: Optional[str] = typer.Option(None, "--outcome", help="Only fixes that were accepted or rejected."),
    k: int = typer.Option(5, "-k", "--k", min=1, max=1000, help="How many of each record type."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    memory: Optional[Path] = MEMORY_DIR,
    memory_url: Optional[str] = MEMORY_URL,
    embedder: Optional[str] = EMBEDDER,
) -> None:
    """Similar past failures with the fixes tried for them (worked first), similar fixes, and lessons."""
    if outcome not in (None, "accepted", "rejected"):
        raise HeuristError(f"unknown outcome {outcome!r}; choose accepted or rejected")
    family = None
    if env:
        from envs.tasks import get_task

        spec = get_task(env)
        env, family = spec.id, spec.family
    with _open(memory, memory_url, embedder) as store:
        # The task narrows failures and fixes; its family (implied by the task for those) is
        # what lessons are shared by.
        found = store.recall(text, k=k, task=env, family=family, kind=kind, outcome=outcome)
    if as_json:
        print(json.dumps(found.model_dump(mode="json")))  # ASCII: no control character reaches a terminal
        return
    if not (found.failures or found.fixes or found.lessons):
        out.print("no matching records")
        return
    for hit in found.failures:
        f = hit.failure
        out.print(f"[bold]failure[/] {hit.similarity:.2f}  " + shown_line(
            f"{f.task} seed {f.seed} step {f.step} [{f.kind}] (run {f.run_id}, iteration {f.iteration})"),
            highlight=False)
        out.print("    " + shown_line(f.description), highlight=False)
        for fix_hit in hit.fixes:
            out.print(f"    ↳ {_fix_line(fix_hit.fix)}", highlight=False)
    for hit in found.fixes:
        out.print(f"[bold]fix[/] {hit.similarity:.2f}  {_fix_line(hit.fix)}", highlight=False)
    for hit in found.lessons:
        l = hit.lesson
        out.print(f"[bold]lesson[/] {hit.similarity:.2f}  " + shown_line(f"[{l.family}] {l.statement} (learned on {l.task})"),
                  highlight=False)


def _fix_line(fix) -> str:
    delta = fix.score_delta
    change = f" Δ{delta:+.2f}" if delta is not None else ""
    colour = "green" if fix.outcome == "accepted" else "red"
    return f"[{colour}]{fix.outcome}[/]" + shown_line(f"{change}: {fix.rationale} — {fix.reason} "
                                                  f"({fix.task}, run {fix.run_id}, iteration {fix.iteration})")


@memory_app.command("stats")
def stats_cmd(as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
              memory: Optional[Path] = MEMORY_DIR, memory_url: Optional[str] = MEMORY_URL,
               embedder: Optional[str] = EMBEDDER) -> None:
    """How many records of each type, task and outcome; where the store is and which embedder it uses."""
    with _open(memory, memory_url, embedder) as store:
        stats = store.stats()
    if as_json:
        print(json.dumps(stats.model_dump(mode="json")))
        return
    table = Table(title="memory", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("location", shown(stats.location))
    table.add_row("embedder", shown(stats.embedder))
    table.add_row("records", str(stats.records))
    table.add_row("by type", shown(", ".join(f"{t} {n}" for t, n in sorted(stats.by_type.items())) or "none"))
    table.add_row("fixes", shown(", ".join(f"{o} {n}" for o, n in sorted(stats.fixes_by_outcome.items())) or "none"))
    table.add_row("runs", str(stats.runs))
    table.add_row("by task", shown(", ".join(f"{t} {n}" for t, n in stats.by_task.items()) or "none"))
    if stats.disk_bytes is not None:
        table.add_row("on disk", f"{stats.disk_bytes / 1e6:.1f} MB")
    if stats.unreadable:
        table.add_row("unreadable", shown(f"{len(stats.unreadable)} left out of every answer (a newer heurist's?): "
                                          + ", ".join(stats.unreadable[:5])))
    out.print(table)


@memory_app.command("export")
def export_cmd(file: Path = typer.Argument(..., help="JSONL file to write (one record a line)."),
               memory: Optional[Path] = MEMORY_DIR, memory_url: Optional[str] = MEMORY_URL,
               embedder: Optional[str] = EMBEDDER) -> None:
    """Write every record to FILE as JSON lines, oldest first."""
    with _open(memory, memory_url, embedder) as store:
        count = store.export(file)
        left_out = sorted(store.unreadable)
    out.print(f"exported {count} records to {printable(str(file))}", markup=False)
    if left_out:  # an export is how a store moves: what it cannot carry is said, not lost quietly
        err.print(shown_line(f"warning: {len(left_out)} records this heurist cannot read (a newer heurist's, or "
                             f"damaged) were left out: {', '.join(left_out[:5])}"
                             + (" ..." if len(left_out) > 5 else "")), markup=False, highlight=False)


@memory_app.command("import")
def import_cmd(file: Path = typer.Argument(..., help="A JSONL file written by `heurist memory export`."),
               memory: Optional[Path] = MEMORY_DIR, memory_url: Optional[str] = MEMORY_URL,
               embedder: Optional[str] = EMBEDDER) -> None:
    """Add the records of FILE, embedded by this store's embedder; records already there are left as they were.
    The runs the new ones name are another store's, named imported:RUN_ID here."""
    if not file.is_file():
        raise HeuristError(f"{file} is not a file; give a file written by `heurist memory export`")
    with _open(memory, memory_url, embedder, reading=False) as store:
        added, held = store.import_file(file)
    out.print(f"imported {added + held} records from {printable(str(file))} ({added} new, {held} already there, "
              f"left as they were)"
              + ("; their runs are named imported:RUN_ID here (`heurist memory forget --run imported:RUN_ID` removes "
                 "one's)" if added else ""), markup=False)


@memory_app.command("forget")
def forget_cmd(run: str = typer.Option(..., "--run", help="The run id whose records to delete."),
               memory: Optional[Path] = MEMORY_DIR, memory_url: Optional[str] = MEMORY_URL,
               embedder: Optional[str] = EMBEDDER) -> None:
    """Delete every record that run RUN_ID wrote."""
    with _open(memory, memory_url, embedder) as store:
        count = store.forget(run)
    out.print(f"forgot {count} records of run {printable(str(run))}", markup=False)
