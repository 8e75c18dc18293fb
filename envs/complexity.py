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
"""

from __future__ import annotations

import ast
import io
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
    return Complexity(lines=len(_code_lines(source, docstrings)), branches=branches,
                      ast_nodes=sum(1 for _ in ast.walk(tree)) - 2 * len(docstrings))


class Said(NamedTuple):
    """How much a policy's code says, and how much its docstrings say: zlib-compressed bytes of their tokens."""

    code: int
    docstrings: int


def said(source: str) -> Said:
    """How much the code says, and apart from it the docstrings: their tokens (comments and layout are neither),
    each part compressed by zlib.

    The three measures above count what Python parses, so code packed into a string, a number or compressed bytes
    and run by ``exec`` looks short; packed, it still says what it said, and compressed it is as large (a little
    larger, with what unpacks it). Docstrings are a part of their own, since ``__doc__`` can be run too: a
    simplification must make neither part grow (``graph.simplify``), so documentation taken out buys no room for
    code packed into a string, and code packed into a docstring costs what it holds."""
    tree = ast.parse(source)
    spans = _spans(source, _docstrings(tree))
    code: list[str] = []
    docs: list[str] = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _LAYOUT:
            (docs if _inside(token, spans) else code).append(token.string)
    return Said(*(len(zlib.compress(" ".join(words).encode("utf-8", "surrogatepass"), 9)) for words in (code, docs)))


_LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING,
           tokenize.ENDMARKER}


def _docstrings(tree: ast.Module) -> list[ast.Expr]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                found.append(first)
    return found


Span = tuple[tuple[int, int], tuple[int, int]]  # (line, column) to (line, column), as tokenize counts them


def _spans(source: str, docstrings: list[ast.Expr]) -> list[Span]:
    lines = source.splitlines()

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


__all__ = ["Complexity", "Said", "complexity", "said"]
