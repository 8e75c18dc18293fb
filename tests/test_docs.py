"""The README and the pages under docs/ stay true: their links lead somewhere, every command and every
run-config key is documented, the config example is a valid config, and the README stays short."""

from __future__ import annotations

import re
import tomllib
import types
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
DOCS = REPO / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]

FENCE = re.compile(r"^```.*?^```[ \t]*$", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)


def prose(path: Path) -> str:
    """The page without its fenced code blocks (a `# comment` there is no heading, a [x](y) no link)."""
    return FENCE.sub("", path.read_text())


def anchors(path: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    found = set()
    for _, title in HEADING.findall(prose(path)):
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", title)  # a link in a heading anchors on its text
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def test_the_docs_pages_exist_and_each_starts_with_a_title_and_what_it_covers():
    names = {page.name for page in DOCS.glob("*.md")}
    assert {"commands.md", "running.md", "config.md", "roles.md", "evaluator.md", "memory.md", "report.md",
            "benchmarks.md"} <= names
    for page in DOCS.glob("*.md"):
        lines = page.read_text().splitlines()
        assert lines[0].startswith("# "), f"{page.name} does not start with a title"
        assert lines[1] == "" and lines[2].strip(), f"{page.name}: the title is not followed by what the page covers"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
    broken = []
    for target in LINK.findall(INLINE_CODE.sub("code", prose(page))):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(REPO)}")
    assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


def _commands(command, prefix=()):
    subcommands = getattr(command, "commands", None)
    if subcommands:
        for name, sub in subcommands.items():
            yield from _commands(sub, (*prefix, name))
    else:
        yield " ".join(prefix)


def test_every_heurist_command_is_in_the_commands_page():
    import typer

    from cli.main import app

    commands = list(_commands(typer.main.get_command(app)))
    assert len(commands) >= 10 and "eval" in commands and "memory search" in commands, commands
    page = (DOCS / "commands.md").read_text()
    missing = [c for c in commands if not re.search(rf"`heurist {re.escape(c)}(?=[ `])", page)]
    assert not missing, f"docs/commands.md does not list: {', '.join('heurist ' + c for c in missing)}"


def _table_model(annotation) -> type[BaseModel] | None:
    """The model behind a field that is a TOML table (``Model`` or ``Model | None``), else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _table_model(args[0])
    return None


def _config_keys(model: type[BaseModel], prefix: str = ""):
    """Every key of the run config, dotted; a dict-valued field (llm.roles, llm.prices) is one free-form key."""
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        table = _table_model(field.annotation)
        if table is None:
            yield key
        else:
            yield from _config_keys(table, f"{key}.")


def _config_example() -> str:
    page = (DOCS / "config.md").read_text()
    return page.split("```toml\n", 1)[1].split("```", 1)[0]


def _example_keys(example: str) -> tuple[set[str], set[str]]:
    """The dotted keys the example sets (and every table above them), and those it shows commented out."""
    keys: set[str] = set()

    def walk(table: dict, prefix: str) -> None:
        for name, value in table.items():
            keys.add(prefix + name)
            if isinstance(value, dict):
                walk(value, f"{prefix}{name}.")

    walk(tomllib.loads(example), "")
    commented, table = set(), ""
    for line in example.splitlines():
        if header := re.match(r"^\s*\[([^\]]+)\]", line):
            table = header.group(1).strip() + "."
        elif shown := re.match(r"^\s*#\s*([A-Za-z_][\w-]*)\s*=", line):
            commented.add(table + shown.group(1))
    return keys, commented


def test_every_run_config_key_is_in_the_config_example():
    from store.config import RunConfig

    expected = set(_config_keys(RunConfig))
    assert {"task", "budget.usd", "llm.roles", "llm.prices", "eval.allow_unconfined", "memory.embedder"} <= expected
    keys, commented = _example_keys(_config_example())
    missing = sorted(expected - keys - commented)
    assert not missing, f"docs/config.md's example lacks: {', '.join(missing)}"
    unknown = sorted(commented - expected)
    assert not unknown, f"docs/config.md's example shows keys the run config does not have: {', '.join(unknown)}"


def test_the_config_example_is_a_valid_config():
    from store.config import build_config

    config = build_config(tomllib.loads(_config_example()), "docs/config.md")
    assert config.stages.analyse == ["video_analyst", "log_parser"] and config.budget.usd == 20.0


def test_the_readme_stays_short():
    lines = README.read_text().splitlines()
    assert len(lines) < 200, f"README.md has {len(lines)} lines; move reference material to docs/"


def test_the_plug_in_examples_are_the_tested_plug_ins():
    """docs/roles.md shows tests/plugins/plugin_roles.py's classes as they are, so the examples run in the suite."""
    tested = (REPO / "tests" / "plugins" / "plugin_roles.py").read_text()
    page = (REPO / "docs" / "roles.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.S)
    assert len(blocks) == 3
    for block in blocks:
        code = block.removeprefix("# my_roles.py\n")
        assert code.strip() in tested, code[:200]
    assert "error: test_writer (the test stage) reads the fact 'seeds_by_kind'" in page
