"""From a coder's edit to a candidate: applied, checked against the contract and the rules, smoke-tested;
and, with coders side by side, what each pursues and how their candidates are ranked for the gate."""

from __future__ import annotations

from typing import Any

from common.errors import PolicyError
from envs.contract import check_policy_source, seed_special_cases
from graph.context import Services, per_seed
from graph.state import Candidate, CodeOutcome
from roles.coder import search_score
from roles.edits import Edit, apply_edit, diff_summary, unified_diff
from roles.stages import FailureFinding

# What side-by-side coders pursue once the failures the analysts found are shared out.
HYPOTHESES = ("a new rule in the policy's structure for the state it fails in",
              "better values for the policy's thresholds and gains, the structure kept",
              "a simpler policy that fails less, with rules that never fire removed")


def focus_of(branch: int, failures: list[FailureFinding]) -> str:
    """What the coder of one branch pursues: a different failure kind each, then a different hypothesis."""
    distinct = list({f.kind: f for f in failures}.values())
    if branch < len(distinct):
        f = distinct[branch]
        return f"fix the {f.kind} failure (seed {f.seed}, step {f.step}): {f.description[:300]}"
    return f"try {HYPOTHESES[(branch - len(distinct)) % len(HYPOTHESES)]}"


def checked(s: Services, incumbent_commit: str, edit: Edit) -> tuple[Candidate | None, str | None]:
    """The edited policy if it applies, parses, keeps the contract and the rules, and survives its smoke
    episode; else why not."""
    source = s.workspace.source_at(incumbent_commit)
    try:
        candidate = apply_edit(source, edit)
        check_policy_source(candidate, "policy.py")
        compile(candidate, "policy.py", "exec")
    except (PolicyError, SyntaxError, ValueError) as exc:
        return None, f"the edit does not apply or parse: {exc}"
    if candidate == source:
        return None, "the edit changes nothing in the policy file"
    if "\r" in candidate:  # read back from git as text it would be \n: the bytes scored must be the bytes committed
        return None, "the edit writes a carriage return into the policy file; end its lines with \\n alone"
    special = seed_special_cases(candidate, before=source)  # within check_policy_source's MAX_NESTING: walkable
    if special:
        return None, f"the edited policy {special}"
    smoke_seed = s.dev_seeds()[0]
    episode = s.evaluate_cached(s.candidate_file(candidate), "dev", [smoke_seed]).episodes[0]
    if episode.status != "ok":
        return None, (f"the edited policy failed its smoke episode on dev seed {smoke_seed}: {episode.status}: "
                      f"{episode.error}")
    diff = unified_diff(source, candidate)
    return {"source": candidate, "diff": diff, "summary": diff_summary(diff)}, None


def ranked_candidates(s: Services, incumbent_commit: str, incumbent: dict[int, float | None],
                      proposals: dict[str, CodeOutcome]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every side-by-side proposal checked and scored on the dev seeds, best first in the gate's order against the
    incumbent (``roles.coder.search_score``: the offline search's order; then the earlier branch), as {"coder",
    "candidate", "name"}; and why the others fell. Ranked by failures and mean alone, a candidate that lost on every
    other seed to complete a failed one went to the gate, and was rejected, before one the gate accepts.
    ``incumbent``: its returns by dev seed, as the gate reads them."""
    ranked, notes, seen = [], [], {}
    for key in sorted(proposals, key=int):
        out, name = proposals[key], f"candidate {int(key) + 1}"
        if not out.get("edit"):
            notes.append(f"{name}: no edit: {out.get('reason', '')[:300]}")
            continue
        candidate, error = checked(s, incumbent_commit, Edit.model_validate(out["edit"]))
        if candidate is None:
            notes.append(f"{name}: {(error or '')[:300]}")
            continue
        if candidate["source"] in seen:  # the same policy twice is gated once
            notes.append(f"{name}: the same policy as {seen[candidate['source']]}")
            continue
        seen[candidate["source"]] = name
        result = s.evaluate_cached(s.candidate_file(candidate["source"]))
        ranked.append(((search_score(per_seed(result), incumbent).key, -int(key)),
                       {"coder": out, "candidate": candidate, "name": name}))
    ranked.sort(key=lambda r: r[0], reverse=True)
    return [r[1] for r in ranked], notes
