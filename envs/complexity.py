"""How complex a policy file is, three ways: lines of code, branches and AST nodes.

So that a user sees whether a run is growing a ball of mud (the report plots all three against the
iterations, beside the score), and so that a simplification is judged on what it removes:

- **lines**: lines holding code; blank lines, comments and docstrings are not code, so removing
  them is not a simplification;
- **branches**: the places where control can go two ways: ``if``/``elif``, conditional
  expressions, ``for``/``while`` loops, ``except`` handlers, each extra operand of ``and``/``or``,
  each ``if`` of a comprehension, each ``case`` of a ``match`` (the decision points that
  McCabe's cyclomatic complexity counts, over the whole file);
- **ast_nodes**: every node of the parsed file but docstrings, the finest measure of how much there is.

Lines are counted as statements are: two statements joined by ``;`` are two lines. Besides these, ``said`` measures
how much the code says and ``dynamic_uses`` lists what runs code from data or reaches names by strings; the
simplify stage reads all of them (``graph.simplify``).
"""

from __future__ import annotations

import ast
import io
import keyword
import tokenize
import zlib
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict


class Complexity(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    lines: int
    branches: int
    ast_nodes: int


_BRANCHES = (ast.If, ast.IfExp, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.match_case)


def complexity(source: str) -> Complexity:
    """The three measures of a policy's source (which must parse: the evaluator's check comes first)."""
    source = _newlines(source)
    tree = ast.parse(source)
    docstrings = _docstrings(tree)
    branches = 0
    for node in ast.walk(tree):
        if isinstance(node, _BRANCHES):
            branches += 1
        elif isinstance(node, ast.BoolOp):
            branches += len(node.values) - 1
        elif isinstance(node, ast.comprehension):
            branches += len(node.ifs)
    # A docstring is two nodes (its expression and its string): not code, so taking one out simplifies nothing.
    return Complexity(lines=len(_code_lines(source, docstrings)) + _joined(tree, docstrings), branches=branches,
                      ast_nodes=sum(1 for _ in ast.walk(tree)) - 2 * len(docstrings))


class Said(NamedTuple):
    """How much a policy's code says, and how much its docstrings say: zlib-compressed bytes of their tokens."""

    code: int
    docstrings: int

    @property
    def total(self) -> int:
        return self.code + self.docstrings


def said(source: str) -> Said:
    """How much the code says, and apart from it the docstrings: their tokens (comments and layout are neither),
    each part compressed by zlib, with every name written as a placeholder numbered by its first use.

    The three measures above count what Python parses, so code packed into a string, a number or compressed bytes
    looks short; packed, it still says what it said, and compressed it is as large (a little larger, with what
    unpacks it). Names are placeholders so that renaming (to one letter, or to clearer words) changes nothing here;
    a string keeps its text, so code packed into one keeps its names."""
    source = _newlines(source)
    spans = _spans(source, _docstrings(ast.parse(source)))
    names: dict[str, str] = {}
    code: list[str] = []
    docs: list[str] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in _LAYOUT:
            continue
        text = token.string
        if token.type == tokenize.NAME and not keyword.iskeyword(text):
            text = names.setdefault(text, f"n{len(names)}")
        (docs if _inside(token, spans) else code).append(text)
    return Said(*(len(zlib.compress(" ".join(words).encode("utf-8", "surrogatepass"), 9)) for words in (code, docs)))


# What runs code made from data, or reaches a name through a string or an object's insides: a simpler policy needs
# none it did not need before, and with them code hides where no measure reads it (exec(__doc__), a compressed
# blob decoded and run, getattr(builtins, "ex" + "ec")).
DYNAMIC_NAMES = frozenset({
    "exec", "eval", "compile", "__import__", "getattr", "setattr", "delattr", "vars", "globals", "locals",
    "__builtins__", "__doc__", "breakpoint", "open", "input", "memoryview"})
DYNAMIC_ATTRIBUTES = frozenset({
    "__dict__", "__doc__", "__globals__", "__code__", "__builtins__", "__subclasses__", "__getattribute__",
    "__class__", "__bases__", "__mro__", "__closure__", "__func__", "__self__", "__module__", "__loader__",
    "__spec__", "__import__", "__reduce__", "__reduce_ex__", "f_globals", "f_locals", "f_back"})
DYNAMIC_MODULES = frozenset({
    "importlib", "pickle", "marshal", "types", "inspect", "ctypes", "zlib", "bz2", "lzma", "gzip", "zipfile",
    "base64", "binascii", "codecs", "builtins", "sys", "os", "io", "runpy", "code", "codeop", "dis", "ast",
    "operator", "functools", "copyreg", "shelve", "subprocess"})


def dynamic_uses(source: str) -> set[str]:
    """The names, attributes and imports of ``DYNAMIC_*`` this source uses."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(_newlines(source))):
        if isinstance(node, ast.Name) and node.id in DYNAMIC_NAMES:
            found.add(node.id)
        elif isinstance(node, ast.Attribute) and node.attr in DYNAMIC_ATTRIBUTES:
            found.add(f".{node.attr}")
        elif isinstance(node, ast.Import):
            found.update(f"import {a.name}" for a in node.names if a.name.split(".")[0] in DYNAMIC_MODULES)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in DYNAMIC_MODULES:
            found.add(f"import {node.module}")
    return found


_LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING,
           tokenize.ENDMARKER}


def _newlines(source: str) -> str:
    """Line ends as ``\n`` alone: Python's parser also ends a line at a lone ``\r``, which ``tokenize`` (reading by
    ``\n``) does not, and a policy written with lone ``\r`` had been one line of comment to it."""
    return source.replace("\r\n", "\n").replace("\r", "\n")


def _docstrings(tree: ast.Module) -> list[ast.Expr]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.append(first)
    return found


def _joined(tree: ast.Module, docstrings: list[ast.Expr]) -> int:
    """Statements that start on a line another statement started on (``a = 1; b = 2``, ``if x: y()``): each counts
    as a line of its own, so joining lines is not a simplification."""
    starts: dict[int, int] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.stmt) and node not in docstrings:
            starts[node.lineno] = starts.get(node.lineno, 0) + 1
    return sum(n - 1 for n in starts.values())


Span = tuple[tuple[int, int], tuple[int, int]]  # (line, column) to (line, column), as tokenize counts them


def _spans(source: str, docstrings: list[ast.Expr]) -> list[Span]:
    lines = source.split("\n")  # as the parser and tokenize count lines (str.splitlines also breaks at a form feed)

    def column(line: int, offset: int) -> int:  # the AST counts UTF-8 bytes along a line, tokenize characters
        return len(lines[line - 1].encode("utf-8", "surrogatepass")[:offset].decode("utf-8", "surrogatepass"))

    return [((d.lineno, column(d.lineno, d.col_offset)), (d.end_lineno, column(d.end_lineno, d.end_col_offset)))
            for d in docstrings if d.end_lineno is not None and d.end_col_offset is not None]


def _inside(token: tokenize.TokenInfo, spans: list[Span]) -> bool:
    return any(start <= token.start and token.end <= end for start, end in spans)


def _code_lines(source: str, docstrings: list[ast.Expr]) -> set[int]:
    """The numbers of the lines that hold a token of code: not blank, not only a comment or a docstring (code on a
    docstring's line, after a ``;``, is code)."""
    spans = _spans(source, docstrings)
    code: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _LAYOUT and not _inside(token, spans):
            code.update(range(token.start[0], token.end[0] + 1))
    return code


__all__ = ["Complexity", "Said", "complexity", "dynamic_uses", "said"]
