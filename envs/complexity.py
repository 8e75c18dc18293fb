"""How complex a policy file is, three ways: lines of code, branches and AST nodes.

So that a user sees whether a run is growing a ball of mud (the report plots all three against the
iterations, beside the score), and so that a simplification is judged on what it removes:

- **lines**: lines holding code; blank lines, comments and docstrings are not code, so removing
  them is not a simplification;
- **branches**: the places where control can go two ways: ``if``/``elif``, conditional
  expressions, ``for``/``while`` loops, ``except`` handlers, each extra operand of ``and``/``or``,
  each ``if`` of a comprehension, each ``case`` of a ``match`` (the decision points that
  McCabe's cyclomatic complexity counts, over the whole file);
- **ast_nodes**: every node of the parsed file, the finest measure of how much there is.
"""

from __future__ import annotations

import ast
import io
import tokenize
import zlib

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
    branches = 0
    for node in ast.walk(tree):
        if isinstance(node, _BRANCHES):
            branches += 1
        elif isinstance(node, ast.BoolOp):
            branches += len(node.values) - 1
        elif isinstance(node, ast.comprehension):
            branches += len(node.ifs)
    return Complexity(lines=len(_code_lines(source, tree)), branches=branches,
                      ast_nodes=sum(1 for _ in ast.walk(tree)))


def code_bytes(source: str) -> int:
    """How much the code says: its tokens (no comments, docstrings or layout), compressed by zlib.

    The three measures above count what Python parses, so code packed into a string, a number or compressed bytes
    and run by ``exec`` looks short; packed, it still says what it said, and compressed it is as large (a little
    larger, with what unpacks it). A simplification must not make this grow (``graph.simplify``)."""
    docstrings = _docstring_lines(ast.parse(source))
    words = [token.string for token in tokenize.generate_tokens(io.StringIO(source).readline)
             if token.type not in _LAYOUT and not (token.type == tokenize.STRING and token.start[0] in docstrings)]
    return len(zlib.compress(" ".join(words).encode("utf-8", "surrogatepass"), 9))


_LAYOUT = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING,
           tokenize.ENDMARKER}


def _docstring_lines(tree: ast.Module) -> set[int]:
    docstrings: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                docstrings.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    return docstrings


def _code_lines(source: str, tree: ast.Module) -> set[int]:
    """The numbers of the lines that hold a token of code: not blank, not only a comment, not a docstring."""
    lines: set[int] = set()
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type not in _LAYOUT:
            lines.update(range(token.start[0], token.end[0] + 1))
    return lines - _docstring_lines(tree)


__all__ = ["Complexity", "code_bytes", "complexity"]
