"""Apply a coder's edit to a policy file: SEARCH/REPLACE blocks, or new values for declared tunables.

A SEARCH block must match the file exactly once. When it does not, the error quotes the
nearest lines of the file, as aider does, so the coder can correct its block on the next
try instead of guessing. difflib (standard library) finds them.
"""

from __future__ import annotations

import difflib
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from common.errors import PolicyError
from envs.contract import read_tunables, rewrite_tunables


class EditError(PolicyError):
    """An edit that cannot be applied as written."""


class SearchReplace(BaseModel):
    model_config = ConfigDict(extra="forbid")

    search: str = Field(..., description="Exact lines of the current policy file, copied with their indentation.")
    replace: str = Field(..., description="The lines that take their place.")


class Edit(BaseModel):
    """What the coder proposes: code blocks, or tunable values, with the reason."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["search_replace", "tunables"]
    rationale: str = Field(..., min_length=1, description="What failure this fixes and why the change should fix it.")
    blocks: list[SearchReplace] = Field(default_factory=list)
    tunables: dict[str, float] = Field(default_factory=dict)
    target_seeds: list[int] = Field(default_factory=list, description="Dev seeds whose failures it targets.")
    target_kinds: list[str] = Field(default_factory=list, description="Failure kinds it targets.")


# The nearest-lines hint is a hint: what it costs must not grow with what the model sends. A window-by-window
# SequenceMatcher was quadratic (8 s for one failed SEARCH of 4,000 lines in an 8,000-line file, holding the GIL);
# its ratio() is quadratic in the characters compared, so few windows get it, and on few characters.
_COMMON_LINE = 50  # a line found more often than this ("return 0", "else:") says nothing about where a block is
_COMPARED_LINES, _COMPARED_CHARS = 40, 1000  # of a window and of the SEARCH, when their likeness is measured
_MOST_WINDOWS = 400  # looked at (by the cheap quick_ratio) in a pass through the file, and again around the best
_MEASURED = 8  # of those, the best by quick_ratio get the full ratio()


def _nearest(source: str, search: str) -> str:
    lines = source.splitlines()
    wanted = search.strip("\n").splitlines()
    if not lines or not wanted:
        return ""
    size = len(wanted)
    last = max(0, len(lines) - size)
    compared = min(size, _COMPARED_LINES)
    target = "\n".join(wanted[:compared])[:_COMPARED_CHARS]
    matcher = difflib.SequenceMatcher(None, b=target)  # b is analysed once, for every window

    def best_of(starts: list[int]) -> tuple[float, int]:
        """The most alike of these windows, as (likeness, -start): the earliest on a tie."""
        quick = []
        for start in starts:
            matcher.set_seq1("\n".join(lines[start:start + compared])[:_COMPARED_CHARS])
            quick.append((matcher.quick_ratio(), -start))
        measured = []
        for _, negative in sorted(quick, reverse=True)[:_MEASURED]:
            matcher.set_seq1("\n".join(lines[-negative:-negative + compared])[:_COMPARED_CHARS])
            measured.append((matcher.ratio(), negative))
        return max(measured)

    # Where the SEARCH's own lines are (whitespace aside), each votes for the start its offset gives.
    where: dict[str, list[int]] = {}
    for number, line in enumerate(lines):
        if line.strip():
            where.setdefault(line.strip(), []).append(number)
    votes: dict[int, int] = {}
    for offset, line in enumerate(wanted):
        found = where.get(line.strip(), [])
        if 0 < len(found) <= _COMMON_LINE:
            for number in found:
                start = min(max(0, number - offset), last)
                votes[start] = votes.get(start, 0) + 1
    if votes:
        most = max(votes.values())
        alike, best = best_of(sorted(start for start, count in votes.items() if count == most)[:_MOST_WINDOWS])
    else:  # a pass through the file, then every window around the best (at most _MOST_WINDOWS each)
        stride = -(-(last + 1) // _MOST_WINDOWS)
        alike, best = best_of(list(range(0, last + 1, stride)))
        if stride > 1:
            near = range(max(0, -best - stride + 1), min(last, -best + stride - 1) + 1)
            alike, best = best_of(list(near)[::-(-len(near) // _MOST_WINDOWS)])
    shown = "\n".join(lines[-best:-best + size])
    alike = min(alike, 0.99)  # measured on the first lines only: never "100%" for a SEARCH that does not match
    return f"the nearest lines (from line {1 - best}, {alike:.0%} alike) are:\n{shown}"


def apply_search_replace(source: str, blocks: list[SearchReplace]) -> str:
    if not blocks:
        raise EditError("the edit has no SEARCH/REPLACE blocks")
    for number, block in enumerate(blocks, start=1):
        if not block.search.strip():
            raise EditError(f"block {number}: SEARCH is empty; copy the lines to replace from the policy file")
        count = source.count(block.search)
        if count == 0:
            raise EditError(f"block {number}: SEARCH does not match the policy file exactly; "
                            + _nearest(source, block.search))
        if count > 1:
            raise EditError(f"block {number}: SEARCH matches {count} places; include more lines so it matches one")
        source = source.replace(block.search, block.replace, 1)
    return source


def apply_edit(source: str, edit: Edit) -> str:
    """The new policy source, or EditError saying precisely why the edit does not apply."""
    if edit.kind == "search_replace":
        return apply_search_replace(source, edit.blocks)
    declared = {t.name: t for t in read_tunables(source)}
    if not edit.tunables:
        raise EditError("the edit sets no tunables")
    for name, value in edit.tunables.items():
        if name not in declared:
            raise EditError(f"tunable {name!r} is not declared; declared: {', '.join(sorted(declared)) or 'none'}")
        t = declared[name]
        if not t.low <= value <= t.high:
            raise EditError(f"tunable {name} = {value} is outside its declared range [{t.low}, {t.high}]")
    return rewrite_tunables(source, edit.tunables)


def unified_diff(before: str, after: str, name: str = "policy.py") -> str:
    return "".join(difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                        f"a/{name}", f"b/{name}"))


def diff_summary(diff: str) -> str:
    """A one-line count of what changed, for memory and commit messages."""
    added = sum(1 for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))
    removed = sum(1 for line in diff.splitlines() if line.startswith("-") and not line.startswith("---"))
    return f"{added} lines added, {removed} removed"
