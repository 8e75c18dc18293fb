"""A plug-in simplify role for the tests: it "simplifies" by dropping a term the policy needs, so the
non-inferiority gate must refuse it (a shorter policy that plays worse is no simplification)."""

from roles.base import Role, RoleContext
from roles.edits import Edit, SearchReplace
from roles.stages import SimplifyInput, SimplifyOutput

TERM = " + p.spin_gain * theta_dot"


class DropsATerm(Role[SimplifyInput, SimplifyOutput]):
    """Removes the pole's angular velocity from the push: shorter, and it drops the pole."""

    name = "drops_a_term"
    stage = "simplify"
    Input = SimplifyInput
    Output = SimplifyOutput

    def run(self, data: SimplifyInput, ctx: RoleContext) -> SimplifyOutput:
        if TERM not in data.policy_source:
            return SimplifyOutput(reason="no spin term to drop")
        edit = Edit(kind="search_replace", rationale="the spin term looks redundant",
                    blocks=[SearchReplace(search=TERM, replace="")])
        return SimplifyOutput(edit=edit, reason=edit.rationale, applied=["dropped the spin term"])
