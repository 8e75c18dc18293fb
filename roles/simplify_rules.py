"""Mechanical simplifications of a policy file: edits meant to remove code without changing what it does.

The offline simplifier's whole repertoire (``roles.simplifier``); each rule finds spans of the source to
delete or replace, so every other byte (comments, formatting, the order of things) stays as the policy's
author wrote it. ``ast.unparse`` would be shorter to write and would throw the comments away.

- **unused imports**: an imported name that nothing in the file reads (``from __future__`` stays);
- **unused helpers**: a top-level function or class, or a method of ``Policy``, that no name, attribute,
  keyword or string in the file mentions (``Policy``, ``Tunables``, ``tunable``, ``setup`` and the methods
  heurist calls stay);
- **unused tunables**: a ``Tunables`` field that nothing reads (a search would tune a value nothing uses);
- **constant branches**: ``if`` statements whose test is a constant (``if False:``, ``if 0:``, ``if DEBUG:``
  where ``DEBUG`` is a module constant assigned once): the branch taken stays, dedented, the other goes;
- **constant folding**: arithmetic on number literals (``0.5 * 2``) written as its value where that is no
  longer than the expression.

Each rule is applied to a fixed point, since removing a helper can leave its import unused. The rules are
conservative where Python is dynamic (a decorated or subclassing definition, a name bound in any other
scope, a dataclass read whole, a generator's dead ``yield`` are left alone), a rule that fails or would not
parse is skipped, and whatever they produce still goes through the check, the sandboxed evaluation, every
regression test and the non-inferiority gate before it is kept: a rule that is wrong about a policy costs an
evaluation, never a regression. Branches that are merely never taken in the recorded traces are not removed: a trace shows
what happened on the dev seeds, not what cannot happen.
"""

from __future__ import annotations

import ast
import math
import operator
import textwrap
from dataclasses import dataclass

from envs.contract import line_offsets, source_lines

KEPT_NAMES = frozenset({"Policy", "Tunables", "tunable", "setup"})
# Methods heurist (or Python) calls by name: never unused, whatever the file says.
CALLED_METHODS = frozenset({"reset", "act", "observe"})
MAX_ROUNDS = 8


@dataclass(frozen=True)
class Simplification:
    """One applied rule: its kind, what it did in words, and the source after it."""

    kind: str
    description: str
    source: str


@dataclass(frozen=True)
class _Span:
    start: int  # byte offsets into the source's UTF-8 encoding
    end: int
    text: str


def simplify(source: str) -> list[Simplification]:
    """Every rule applied in turn until none changes anything; one entry per rule application that did."""
    applied: list[Simplification] = []
    for _ in range(MAX_ROUNDS):
        changed = False
        for kind, rule in RULES:
            try:
                tree = ast.parse(source)
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                return applied
            try:
                spans, what = rule(source, tree)
                if not spans:
                    continue
                candidate = _apply(source, spans)
                ast.parse(candidate)
            except Exception:  # a rule that fails, or would break the file, is skipped, never forced
                continue
            source = candidate
            applied.append(Simplification(kind, "; ".join(what), source))
            changed = True
        if not changed:
            break
    return applied


# --------------------------------------------------------------------------- positions


def _apply(source: str, spans: list[_Span]) -> str:
    data = source.encode()
    last = len(data) + 1
    for span in sorted(spans, key=lambda s: s.start, reverse=True):
        if span.end > last:  # overlapping spans: the later one alone is applied this round
            continue
        data = data[:span.start] + span.text.encode() + data[span.end:]
        last = span.start
    return data.decode()


def _statement_lines(source: str, node: ast.stmt) -> _Span:
    """The whole lines a statement occupies (decorators included), and the blank lines just above it (what
    separated it from the statement before; the separator after it stays), to delete it cleanly. Lines between
    two statements are blank or comments, never inside a string, so taking blank ones changes no value."""
    offsets = line_offsets(source)
    lines = source_lines(source)
    first = min([node.lineno, *(d.lineno for d in getattr(node, "decorator_list", []))])
    while first > 1 and not lines[first - 2].strip():
        first -= 1
    return _Span(offsets[first - 1], offsets[node.end_lineno], "")


def _alone(body: list[ast.stmt], stmt: ast.stmt) -> bool:
    """Whether ``stmt`` shares none of its lines with another statement (``import os; x = 1``)."""
    first = min([stmt.lineno, *(d.lineno for d in getattr(stmt, "decorator_list", []))])
    return not any(other is not stmt and other.lineno <= stmt.end_lineno and other.end_lineno >= first
                   for other in body)


# --------------------------------------------------------------------------- what the file mentions


def _mentioned(tree: ast.Module, skip: ast.AST | None = None) -> set[str]:
    """Every name the file reads, every attribute and keyword it names, every identifier-like string."""
    inside = set(ast.walk(skip)) if skip is not None else set()
    found: set[str] = set()
    for node in ast.walk(tree):
        if node in inside:
            continue
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Store):
            found.add(node.id)
        elif isinstance(node, ast.Attribute):
            found.add(node.attr)
        elif isinstance(node, ast.keyword) and node.arg:
            found.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.isidentifier():
            found.add(node.value)  # getattr(self, "name"), __all__ = ["name"]
    return found


def _bodies(tree: ast.AST):
    """Every statement list in the tree with the node that holds it."""
    for node in ast.walk(tree):
        for field in ("body", "orelse", "finalbody"):
            body = getattr(node, field, None)
            if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
                yield node, body


# --------------------------------------------------------------------------- rules


def unused_imports(source: str, tree: ast.Module) -> tuple[list[_Span], list[str]]:
    used = _mentioned(tree)
    spans, what = [], []
    for holder, body in _bodies(tree):
        for stmt in body:
            if not isinstance(stmt, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(stmt, ast.ImportFrom) and stmt.module == "__future__":
                continue
            names = [(alias, (alias.asname or alias.name).split(".")[0]) for alias in stmt.names]
            if any(alias.name == "*" for alias, _ in names):
                continue
            unused = [alias for alias, bound in names if bound not in used]
            if not unused:
                continue
            if not _alone(body, stmt):
                continue
            if len(unused) == len(names):
                if len(body) == 1:  # the only statement of a block: it becomes `pass`
                    continue
                spans.append(_statement_lines(source, stmt))
            else:
                kept = [alias for alias in stmt.names if alias not in unused]
                rebuilt = ast.unparse(type(stmt)(**{**{f: getattr(stmt, f) for f in stmt._fields}, "names": kept}))
                offsets = line_offsets(source)
                spans.append(_Span(offsets[stmt.lineno - 1] + stmt.col_offset,
                                   offsets[stmt.end_lineno - 1] + stmt.end_col_offset, rebuilt))
            what.append("removed the unused import of " + ", ".join(a.asname or a.name for a in unused))
    return spans, what


# Calls and attributes through which code reaches a name it does not spell out: where the file uses one with a
# name it computes (getattr(self, "_mode_" + m)), any function, method or constant may be reached, so none is removed.
DYNAMIC_LOOKUPS = frozenset({"getattr", "hasattr", "attrgetter", "methodcaller", "globals", "locals", "vars",
                             "eval", "exec"})


def _looks_up_by_computed_name(tree: ast.Module) -> bool:
    """Whether the file reaches a name it computes: a builtin lookup (``getattr(obj, name)``, ``globals()``) whose
    name is not a literal, or a class's or instance's ``__dict__``. (A method of the same name on some object,
    ``net.eval()``, is not one; ``setattr`` only writes.)"""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = (func.id if isinstance(func, ast.Name) else
                    func.attr if isinstance(func, ast.Attribute) and func.attr in ("attrgetter", "methodcaller")
                    else None)
            if name in DYNAMIC_LOOKUPS:
                named = node.args[1:2] if name in ("getattr", "hasattr") else node.args[:1]
                if name in ("globals", "locals", "vars", "eval", "exec") or not all(
                        isinstance(a, ast.Constant) and isinstance(a.value, str) for a in named):
                    return True
        elif isinstance(node, ast.Attribute) and node.attr in ("__dict__", "__getattribute__", "__getattr__"):
            return True
    return False


def unused_helpers(source: str, tree: ast.Module) -> tuple[list[_Span], list[str]]:
    spans, what = [], []
    if _looks_up_by_computed_name(tree):
        return spans, what
    for stmt in tree.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and stmt.name not in KEPT_NAMES \
                and not stmt.name.startswith("__") and _alone(tree.body, stmt) and not _acts_when_defined(stmt) \
                and stmt.name not in _mentioned(tree, skip=stmt):
            spans.append(_statement_lines(source, stmt))
            what.append(f"removed the unused {'class' if isinstance(stmt, ast.ClassDef) else 'function'} {stmt.name}")
        elif isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name) \
                and stmt.targets[0].id in _module_constants(tree) and not stmt.targets[0].id.startswith("__") \
                and _alone(tree.body, stmt) and stmt.targets[0].id not in _mentioned(tree):
            spans.append(_statement_lines(source, stmt))
            what.append(f"removed the unused constant {stmt.targets[0].id}")
    policy = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Policy"), None)
    if policy is not None:
        methods = [n for n in policy.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        for method in methods:
            name = method.name
            if name in CALLED_METHODS or name.startswith("__") or method.decorator_list or len(policy.body) == 1 \
                    or not _alone(policy.body, method):
                continue
            if name not in _mentioned(tree, skip=method):
                spans.append(_statement_lines(source, method))
                what.append(f"removed the unused method Policy.{name}")
    return spans, what


def _acts_when_defined(stmt: ast.stmt) -> bool:
    """A definition whose mere existence may do something: a decorator (a registry), a base class
    (``__init_subclass__``), a metaclass or class keyword."""
    return bool(stmt.decorator_list) or (isinstance(stmt, ast.ClassDef) and bool(stmt.bases or stmt.keywords))


# Ways to read a dataclass's fields all at once: a field nothing names may still be read through them.
WHOLE_READS = frozenset({"astuple", "asdict", "fields", "replace", "vars", "__dict__", "__dataclass_fields__"})


def unused_tunables(source: str, tree: ast.Module) -> tuple[list[_Span], list[str]]:
    tunables = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Tunables"), None)
    if tunables is None:
        return [], []
    fields = [s for s in tunables.body if isinstance(s, ast.AnnAssign) and isinstance(s.target, ast.Name)]
    used = _mentioned(tree, skip=tunables)
    if used & WHOLE_READS or _looks_up_by_computed_name(tree):  # getattr(p, f"amp_{j}") reads fields by name
        return [], []
    unused = [f for f in fields if f.target.id not in used and _alone(tunables.body, f)]
    if len(unused) == len(tunables.body):  # an empty class body would not parse; leave the last one
        unused = unused[1:]
    return ([_statement_lines(source, f) for f in unused],
            [f"removed the unused tunable {f.target.id}" for f in unused])


def _bindings(tree: ast.Module) -> dict[str, int]:
    """How many times each name is bound anywhere in the file, in any scope: assignments and deletions, loop, with,
    walrus and comprehension targets, parameters, ``except ... as``, ``match`` captures, imports, definitions, and
    ``global``/``nonlocal`` (a name rebound elsewhere through them is never a constant)."""
    bound: dict[str, int] = {}

    def add(name: str | None, times: int = 1) -> None:
        if name:
            bound[name] = bound.get(name, 0) + times

    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            add(node.id)
        elif isinstance(node, ast.arg):
            add(node.arg)
        elif isinstance(node, ast.ExceptHandler):
            add(node.name)
        elif isinstance(node, (ast.MatchAs, ast.MatchStar)):
            add(node.name)
        elif isinstance(node, ast.MatchMapping):
            add(node.rest)
        elif isinstance(node, ast.alias):
            add((node.asname or node.name).split(".")[0])
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            add(node.name)
        elif isinstance(node, (ast.Global, ast.Nonlocal)):
            for name in node.names:
                add(name, 2)
    return bound


def _module_constants(tree: ast.Module, immutable: bool = False) -> dict[str, object]:
    """Module-level names assigned exactly once, to a literal, and bound nowhere else in any scope; with
    ``immutable``, only those whose value cannot change (a list or a dict may be filled in later: MODES.append)."""
    bound = _bindings(tree)
    constants: dict[str, object] = {}
    for stmt in tree.body:
        if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name) \
                and bound.get(stmt.targets[0].id) == 1:
            try:
                value = ast.literal_eval(stmt.value)
            except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
                continue
            if not immutable or _immutable(value):
                constants[stmt.targets[0].id] = value
    return constants


def _immutable(value: object) -> bool:
    if isinstance(value, tuple):
        return all(_immutable(v) for v in value)
    return isinstance(value, (bool, int, float, complex, str, bytes, type(None), frozenset))


def _constant_test(test: ast.expr, constants: dict[str, object]) -> tuple[bool, bool]:
    """(whether the test is constant, its truth)."""
    if isinstance(test, ast.Name) and test.id in constants:
        return True, bool(constants[test.id])
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        known, value = _constant_test(test.operand, constants)
        return known, not value
    if isinstance(test, ast.Constant) and isinstance(test.value, (bool, int, float, str, type(None))):
        return True, bool(test.value)
    return False, False


def constant_branches(source: str, tree: ast.Module) -> tuple[list[_Span], list[str]]:
    constants = _module_constants(tree, immutable=True)
    lines = source_lines(source)
    elifs = {id(n.orelse[0]) for n in ast.walk(tree) if isinstance(n, ast.If) and len(n.orelse) == 1
             and isinstance(n.orelse[0], ast.If)}
    spans, what = [], []
    for holder, body in _bodies(tree):
        for stmt in body:
            if not isinstance(stmt, ast.If) or id(stmt) in elifs or not _alone(body, stmt):
                continue
            if not lines[stmt.lineno - 1][stmt.col_offset:].startswith("if"):
                continue  # an `elif` written out: its own `if` is the one to judge
            known, truth = _constant_test(stmt.test, constants)
            if not known or stmt.body[0].lineno == stmt.lineno:  # `if X: y` on one line: nothing to dedent
                continue
            if any(isinstance(n, (ast.Yield, ast.YieldFrom, ast.Await, ast.Global, ast.Nonlocal))
                   for n in ast.walk(stmt)):
                continue  # even a branch never taken makes a function a generator, or a name global
            kept = stmt.body if truth else stmt.orelse
            if any(isinstance(n, ast.Constant) and isinstance(n.value, (str, bytes)) and n.end_lineno != n.lineno
                   for branch in kept for n in ast.walk(branch)):
                continue  # re-indenting would change a multi-line string's contents
            whole = _statement_lines(source, stmt)
            test_text = ast.unparse(stmt.test)
            if not kept:
                if len(body) == 1:
                    continue  # the block would be empty
                spans.append(whole)
                what.append(f"removed the branch `if {test_text}:`, never taken")
                continue
            if kept is stmt.orelse and isinstance(kept[0], ast.If) and id(kept[0]) in elifs:
                continue  # an elif chain: rewriting it as an if is not a mechanical edit worth the risk
            # From the line after the branch's header (`if ...:` or `else:`), so comments above its first statement
            # go with it; the header is the last line above that is not blank or a comment.
            first = min([kept[0].lineno, *(d.lineno for d in getattr(kept[0], "decorator_list", []))])
            floor = stmt.test.end_lineno if kept is stmt.body else stmt.body[-1].end_lineno
            while first - 1 > floor and (not lines[first - 2].strip() or lines[first - 2].lstrip().startswith("#")):
                first -= 1
            block = "".join(lines[first - 1:kept[-1].end_lineno])
            block = textwrap.indent(textwrap.dedent(block), " " * stmt.col_offset)
            spans.append(_Span(whole.start, whole.end, block))
            what.append(f"kept only the branch `if {test_text}:` always takes")
    return spans, what


_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_FOLDABLE = tuple(_OPERATORS)


def _number(node: ast.expr) -> float | int | None:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        inner = _number(node.operand)
        if inner is not None:
            return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and isinstance(node.op, _FOLDABLE):
        left, right = _number(node.left), _number(node.right)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Pow) and (abs(right) > 64 or abs(left) > 1e6):
            return None  # never compute something huge
        try:
            value = _OPERATORS[type(node.op)](left, right)
        except (ArithmeticError, ValueError):
            return None
        if type(value) not in (int, float) or (isinstance(value, float) and not math.isfinite(value)):
            return None
        return value
    return None


def constant_folding(source: str, tree: ast.Module) -> tuple[list[_Span], list[str]]:
    offsets = line_offsets(source)
    data = source.encode()
    spans, what = [], []
    tunables = next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Tunables"), None)
    declared = set(ast.walk(tunables)) if tunables is not None else set()
    taken: list[tuple[int, int]] = []
    for node in ast.walk(tree):  # outermost first: a folded expression takes its parts with it
        if not isinstance(node, ast.BinOp) or node in declared:
            continue
        value = _number(node)
        if value is None:
            continue
        start = offsets[node.lineno - 1] + node.col_offset
        end = offsets[node.end_lineno - 1] + node.end_col_offset
        if any(a <= start and end <= b for a, b in taken):
            continue
        original = data[start:end].decode()
        text = repr(value)
        if len(text) > len(original.replace(" ", "")) or "\n" in original:
            continue
        if not text.startswith("-") and start > 0 and data[start - 1:start] == b"(" and data[end:end + 1] == b")" \
                and not (data[start - 2:start - 1].isalnum() or data[start - 2:start - 1] in (b"_", b")", b"]")):
            start, end = start - 1, end + 1  # (2 * 0.5) -> 1.0: the parentheses held an expression, not a call
        taken.append((start, end))
        spans.append(_Span(start, end, text if not text.startswith("-") else f"({text})"))
        what.append(f"folded {original} into {text}")
    return spans, what


RULES = (("unused imports", unused_imports), ("unused helpers", unused_helpers),
         ("unused tunables", unused_tunables), ("constant branches", constant_branches),
         ("constant folding", constant_folding))

__all__ = ["RULES", "Simplification", "simplify"]
