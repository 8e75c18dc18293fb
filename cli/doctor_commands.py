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
    from common.errors import HeuristError
    from doctor.checks import check_llm, run_checks
    from store.config import LLMConfig, build_config, http_url, load_config_file

    try:
        http_url(base_url)
    except ValueError as exc:
        raise HeuristError(f"--base-url {exc}") from None
    llm = LLMConfig()
    if config_file is not None:
        data = load_config_file(config_file)
        llm = build_config({"task": "CartPole-v1", **data}, str(config_file)).llm
    from common.safe_text import also_secret, redact

    for name in llm.key_variables():  # a server's error may echo the key: whatever its variable's name, never shown
        also_secret(name)
    checks = run_checks(base_url or llm.base_url, model or llm.model, llm.api_key_env, skip_llm=True)
    if not skip_llm:
        from doctor.endpoint import probe_endpoint  # what the endpoint can do, each with one small call

        for (url, name, key_env), roles in endpoints(llm, base_url, model).items():
            before = len(checks)
            checks.append(check_llm(url, name, key_env))
            if checks[-1].status == "ok":
                checks += probe_endpoint(url, name, key_env)
            if roles:  # a role's own server or model: each of its checks says whose it is
                for check in checks[before:]:
                    check.name += f" ({', '.join(roles)})"
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


def endpoints(llm, base_url: str | None, model: str | None) -> dict[tuple[str | None, str, str], list[str]]:
    """Each distinct (server, model, key variable) a run would call, with the roles that call it alone (none for
    the run's own): a role given its own server or model in ``llm.roles`` is checked too. As ``roles.llm``'s
    ``settings_for`` picks them: the run's key goes to the run's server only."""
    run = (base_url or llm.base_url, model or llm.model, llm.api_key_env)
    found: dict[tuple[str | None, str, str], list[str]] = {run: []}
    for role, own in sorted(llm.roles.items()):
        if own.offline or not (own.base_url or own.model):
            continue
        server = own.base_url or run[0]
        key = own.api_key_env if own.base_url and own.api_key_env else \
            "" if own.base_url and own.base_url != run[0] else run[2]
        endpoint = (server, own.model or run[1], key)
        if endpoint != run:  # the run's own, checked as such
            found.setdefault(endpoint, []).append(role)
    return found


def register(app: typer.Typer) -> None:
    app.command("doctor")(doctor_cmd)
