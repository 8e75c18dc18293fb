"""``heurist doctor``: check the installation and say how to fix what does not work."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from cli.console import out, shown

MARK = {"ok": "[green]ok[/]", "warn": "[yellow]warn[/]", "fail": "[red]FAIL[/]"}


def doctor_cmd(
    config_file: Optional[Path] = typer.Option(None, "--config", help="A run config: check its LLM endpoint and model."),
    base_url: Optional[str] = typer.Option(None, "--base-url", help="An OpenAI-compatible server to check."),
    model: Optional[str] = typer.Option(None, "--model", help="The model to ask for one token."),
    skip_llm: bool = typer.Option(False, "--skip-llm", help="Do not call the LLM endpoint."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Check Python packages, ALE ROMs, MuJoCo rendering, the offline embedder, the sandbox, tools, disk and the LLM endpoint."""
    from doctor.checks import run_checks
    from store.config import LLMConfig, build_config, load_config_file

    llm = LLMConfig()
    if config_file is not None:
        data = load_config_file(config_file)
        llm = build_config({"task": "CartPole-v1", **data}, str(config_file)).llm
    from common.safe_text import also_secret, redact

    for name in llm.key_variables():  # a server's error may echo the key: whatever its variable's name, never shown
        also_secret(name)
    checks = run_checks(base_url or llm.base_url, model or llm.model, llm.api_key_env, skip_llm)
    if not skip_llm and checks[-1].name == "LLM endpoint" and checks[-1].status == "ok":
        from doctor.endpoint import probe_endpoint  # what the endpoint can do, each with one small call

        checks += probe_endpoint(base_url or llm.base_url, model or llm.model, llm.api_key_env)
    checks = [c.model_copy(update={"detail": redact(c.detail), "fix": redact(c.fix)}) for c in checks]
    failed = [c for c in checks if c.status == "fail"]
    if as_json:
        print(json.dumps([c.model_dump() for c in checks]))
    else:
        table = Table(title="heurist doctor")
        for column in ("check", "", "what was found", "fix"):
            table.add_column(column, overflow="fold")
        for c in checks:
            table.add_row(shown(c.name), MARK[c.status], shown(c.detail), shown(c.fix))
        out.print(table)
        warned = sum(c.status == "warn" for c in checks)
        out.print(f"{len(checks) - len(failed) - warned} ok, {warned} with a warning, {len(failed)} failing",
                  highlight=False)
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_cmd)
