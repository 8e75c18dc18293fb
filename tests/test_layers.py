"""The folder tree is the data flow: each layer imports only the layers below it, and no import goes in a circle.

Read from the source (every ``import`` and ``from … import``, inside functions and
``TYPE_CHECKING`` blocks too), so a shortcut that runs back up the layers fails here, not in
a newcomer's head. DEVELOPERS.md, "Layers", draws the same order.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Bottom to top. A package may import its own modules and any package of a lower layer, nothing else.
LAYERS: list[tuple[str, ...]] = [
    ("common",),  # errors, paths, atomic files, JSONL, ledger events, redaction
    ("envs",),  # tasks, the policy contract, the sandbox, the evaluator, regression tests
    ("policies", "memory"),  # starter policies; the memory of failures, fixes and lessons
    ("store",),  # what a run keeps on disk: config, run directory, transcripts, workspace, summary
    ("roles",),  # the roles, what each stage takes and gives, the model client
    ("graph",),  # the loop: state, topology, nodes, their context
    ("campaign",),  # many runs on Ray: the file, the ledger, budget shares, the driver (runs `heurist resume`)
    ("runner", "report", "doctor"),  # driving a run; views of a run, a campaign and the installation
    ("cli",),  # the command line
]
LAYER = {package: level for level, packages in enumerate(LAYERS) for package in packages}


def _imports(root: Path = ROOT) -> dict[str, set[str]]:
    """Every heurist module under ``root`` and the heurist modules (or packages) it imports."""
    found: dict[str, set[str]] = {}
    for package in LAYER:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            names: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names.update(alias.name for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names.add(node.module)
                    names.update(f"{node.module}.{alias.name}" for alias in node.names)
                elif isinstance(node, ast.ImportFrom):
                    raise AssertionError(f"{path}: relative import; heurist imports by absolute name")
            found[module] = {n for n in names if n.split(".")[0] in LAYER}
    modules = set(found)
    # `from pkg import name` names a module only when pkg.name is one; otherwise it names pkg itself.
    return {m: {n if n in modules else n.rsplit(".", 1)[0] for n in names} - {m} for m, names in found.items()}


def _upward(graph: dict[str, set[str]]) -> list[str]:
    upward = []
    for module, names in graph.items():
        own = module.split(".")[0]
        for name in names:
            other = name.split(".")[0]
            if other != own and LAYER[other] >= LAYER[own]:
                upward.append(f"{module} imports {name} ({other} is not below {own})")
    return sorted(upward)


def _cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for name in sorted(graph.get(module, ())):
            if name not in graph:
                continue
            if state.get(name) == 1:
                cycles.append(" -> ".join(path[path.index(name):] + [name]))
            elif name not in state:
                visit(name, [*path, name])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return cycles


def test_every_top_level_package_has_a_layer():
    packages = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests", "benchmarks"}
    assert packages == set(LAYER), f"packages without a layer: {packages - set(LAYER)}"


def test_no_import_runs_up_the_layers():
    assert not _upward(_imports()), "\n".join(_upward(_imports()))


def test_no_modules_import_each_other_in_a_circle():
    assert not _cycles(_imports()), "\n".join(_cycles(_imports()))


def test_the_checks_see_an_upward_import_and_a_circle(tmp_path):
    """The scan is not vacuous: the loop importing the command line is named, and so is the circle."""
    for package in ("graph", "cli"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "graph" / "nodes.py").write_text("from cli.console import shown\n")
    (tmp_path / "cli" / "console.py").write_text("def f():\n    import graph.nodes\n")
    graph = _imports(tmp_path)
    assert _upward(graph) == ["graph.nodes imports cli.console (cli is not below graph)"]
    assert _cycles(graph) == ["cli.console -> graph.nodes -> cli.console"]


def test_the_readme_layout_lists_every_package_in_layer_order():
    """README's Layout block names the packages bottom-up, and every module file it names exists."""
    block = (ROOT / "README.md").read_text().split("## Layout", 1)[1].split("```", 2)[1]
    sections: dict[str, str] = {}
    for line in block.strip("\n").splitlines():
        if line[:1].isalpha():  # "envs/       tasks ..." starts a package; indented lines continue it
            package, _, text = line.partition("/")
            sections[package] = text
        else:
            sections[package] += " " + line.strip()
    assert list(sections) == [p for packages in LAYERS for p in packages] + ["benchmarks", "tests"]
    for package, text in sections.items():
        for name in re.findall(r"(?<![\w*])(\w+\.py)\b", text):  # a glob (*_commands.py) is not a name
            assert list((ROOT / package).rglob(name)), f"README's layout names {package}/{name}, which is not there"
