"""A policy's complexity, three ways: what counts as a line of code, as a branch, and as an AST node; and how much
its code says, which packing it into a string cannot shrink."""

from __future__ import annotations

import ast
import base64
import zlib

from envs.complexity import complexity, dynamic_uses, said

SOURCE = '''"""A module docstring
over two lines."""
# a comment

def decide(x, y, z, items):
    """A function docstring."""
    value = 1 if x and y or z else 0  # a trailing comment
    for item in items:
        if item > 0:
            value += 1
        elif item < 0:
            value -= 1
    try:
        value = [a for a in items if a if a != 3]
    except ValueError:
        pass
    while value and False:
        break
    return value
'''


def test_lines_are_code_only_and_branches_are_decision_points():
    measured = complexity(SOURCE)
    # def, value =, for, if, value +=, elif, value -=, try, value = [...], except, pass, while, break, return
    assert measured.lines == 14
    # if-expression 1, and/or 2, for 1, if 1, elif 1, comprehension ifs 2, except 1, while 1, its and 1
    assert measured.branches == 11
    assert measured.ast_nodes == sum(1 for _ in ast.walk(ast.parse(SOURCE))) - 4  # but the two docstrings' nodes


def test_removing_comments_and_docstrings_is_not_a_simplification():
    bare = "\n".join(line.split("#")[0].rstrip() for line in SOURCE.splitlines() if '"""' not in line
                     and "over two lines" not in line)
    assert complexity(bare) == complexity(SOURCE)


def test_what_the_code_says_counts_no_comment_or_layout_keeps_docstrings_apart_and_packing_does_not_shrink_it():
    bare = "\n".join(line.split("#")[0].rstrip() for line in SOURCE.splitlines() if '"""' not in line
                     and "over two lines" not in line)
    assert said(bare).code == said(SOURCE).code and said(bare).docstrings < said(SOURCE).docstrings
    assert said(SOURCE.replace("# a trailing comment", "")) == said(SOURCE)
    assert said(SOURCE.replace("    ", "  ")) == said(SOURCE)  # layout is not code
    assert said(SOURCE.replace("value -= 1", "pass")).code < said(SOURCE).code
    packed = f"exec({bare!r})\n"
    squeezed = f"import base64, zlib\nexec(zlib.decompress(base64.b64decode({base64.b64encode(zlib.compress(bare.encode(), 9))!r})))\n"
    for disguised in (packed, squeezed):
        assert complexity(disguised).lines < complexity(bare).lines
        assert complexity(disguised).ast_nodes < complexity(bare).ast_nodes
        # Against the documented source too: the documentation taken out buys no room for the packed code.
        assert said(disguised).code > said(SOURCE).code


def test_code_hidden_in_a_docstring_or_on_its_line_counts():
    """Red-team simplifiers kept the incumbent in the module docstring, run by ``exec(__doc__)``, and in a string
    returned on a docstring's line: lines and code bytes had left out all of it."""
    in_docstring = f"r\"\"\"{SOURCE.replace(chr(34) * 3, chr(39) * 3)}\"\"\"\nexec(__doc__)\n"
    beside = f"def packed():\n    \"\"\"The code.\"\"\"; return {SOURCE!r}\n\n\nexec(packed())\n"
    assert said(in_docstring).docstrings > said(SOURCE).docstrings
    assert said(beside).code > said(SOURCE).code
    assert complexity(beside).lines == 3  # the def, the docstring's line with its return, the exec
    assert complexity('def f():\n    """Ünïcode."""; return 1\n').lines == 2  # columns in characters, not bytes


def test_joined_lines_lone_carriage_returns_and_renames_change_nothing():
    """From red-team reviews: lone \\r line ends had made the whole file one comment to tokenize (lines 21 -> 0);
    statements joined by ';' and names shortened to one letter had measured as simpler."""
    assert complexity(SOURCE.replace("\n", "\r")) == complexity(SOURCE)
    assert said(SOURCE.replace("\n", "\r")) == said(SOURCE) == said(SOURCE.replace("\n", "\r\n"))
    joined = "x = 1; y = 2\nif x: y = 3\n"
    assert complexity(joined).lines == complexity("x = 1\ny = 2\nif x:\n    y = 3\n").lines == 4
    renamed = SOURCE.replace("value", "v").replace("items", "i").replace("decide", "d")
    assert said(renamed) == said(SOURCE)


def test_what_runs_code_from_data_or_reaches_names_by_strings_is_listed():
    assert dynamic_uses(SOURCE) == set()
    hiding = ("import zlib, base64\nfrom importlib import import_module\nexec(__doc__)\nf = getattr(x, 'a')\n"
              "g = obj.__dict__\nh = vars(obj)\n")
    assert dynamic_uses(hiding) == {"import zlib", "import base64", "import importlib", "exec", "__doc__", "getattr",
                                    ".__dict__", "vars"}
