"""The simplifier: a shorter, clearer policy with the same behaviour (the simplify stage).

Offline it applies the mechanical rules of ``roles.simplify_rules`` (unused imports, helpers and tunables,
constant branches, constant folding); with a model it asks, in one structured call, for SEARCH/REPLACE blocks
that remove or merge code without changing what the policy does (``prompts/simplifier.md``). Either way it only
proposes: the graph's ``simplify`` node checks, scores and tests the proposal and keeps it only through the
non-inferiority gate (``roles.reviewer.non_inferiority_gate``) and only where the complexity falls.
"""

from __future__ import annotations

import json

from roles.base import Role, RoleContext
from roles.edits import Edit, SearchReplace
from roles.simplify_rules import simplify
from roles.stages import SimplifyInput, SimplifyOutput


class Simplifier(Role[SimplifyInput, SimplifyOutput]):
    name = "simplifier"
    stage = "simplify"
    Input = SimplifyInput
    Output = SimplifyOutput

    def run(self, data: SimplifyInput, ctx: RoleContext) -> SimplifyOutput:
        if ctx.offline:
            return self.mechanical(data, ctx)
        return self.ask_model(data, ctx)

    def mechanical(self, data: SimplifyInput, ctx: RoleContext) -> SimplifyOutput:
        steps = simplify(data.policy_source)
        applied = [f"{step.kind}: {step.description}" for step in steps]
        ctx.decide(f"mechanical simplification: {len(steps)} rule applications" if steps else
                   "mechanical simplification: nothing to remove", applied=applied)
        if not steps:
            return SimplifyOutput(reason="no mechanical simplification applies (no unused import, helper or "
                                         "tunable, no constant branch, nothing to fold)")
        # One block holding the whole file: the rules edit many places, and the result is exact.
        edit = Edit(kind="search_replace", rationale="; ".join(applied)[:2000],
                    blocks=[SearchReplace(search=data.policy_source, replace=steps[-1].source)])
        return SimplifyOutput(edit=edit, reason=edit.rationale, applied=applied)

    def ask_model(self, data: SimplifyInput, ctx: RoleContext) -> SimplifyOutput:
        brief = [f"Task: {data.task}: {data.task_description}",
                 "Current policy file (policy.py):\n```python\n" + data.policy_source + "\n```",
                 "Its complexity: " + json.dumps(data.complexity),
                 "Dev-seed returns it must keep (None = the episode failed): " + json.dumps(
                     {str(k): v for k, v in data.incumbent.items()}),
                 "Regression test files it must still pass: " + (", ".join(data.tests) or "none")]
        messages = [{"role": "system", "content": self.prompt()}, {"role": "user", "content": "\n\n".join(brief)}]
        edit = ctx.llm.structured(ctx.transcript, messages, Edit)
        return SimplifyOutput(edit=edit, reason=edit.rationale, applied=[edit.rationale[:300]])
