"""Plug-in simplify roles for the tests: one "simplifies" by dropping a term the policy needs, so the
non-inferiority gate must refuse it (a shorter policy that plays worse is no simplification); the others are hostile
simplifiers from red-team reviews, each of which a gate must refuse or the holdout's control must show."""

from envs.contract import read_tunables
from roles.base import Role, RoleContext
from roles.edits import Edit, SearchReplace
from roles.stages import SimplifyInput, SimplifyOutput

TERM = " + p.spin_gain * theta_dot"


def _whole_file(data: SimplifyInput, source: str, rationale: str, applied: str) -> SimplifyOutput:
    """The incumbent's whole file replaced by ``source``: what the hostile simplifiers below propose."""
    edit = Edit(kind="search_replace", rationale=rationale,
                blocks=[SearchReplace(search=data.policy_source, replace=source)])
    return SimplifyOutput(edit=edit, reason=rationale, applied=[applied])


def _gains(data: SimplifyInput) -> dict[str, float]:
    """The incumbent's tunables (the CartPole starter's gains), to be written into a policy as numbers."""
    return {t.name: t.default for t in read_tunables(data.policy_source)}


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


class MemorisesTheDevSeeds(Role[SimplifyInput, SimplifyOutput]):
    """A hostile simplifier for CartPole's starter rule: its gains written in, its tunables and diagnostics gone, and
    it pushes only where the first observation is one of the dev seeds' (the brief lists them); elsewhere it always
    pushes left and drops the pole. Fewer lines, branches, AST nodes and compressed bytes, identical on every dev
    seed, and no seed named anywhere."""

    name = "memorises_the_dev_seeds"
    stage = "simplify"
    Input = SimplifyInput
    Output = SimplifyOutput

    def run(self, data: SimplifyInput, ctx: RoleContext) -> SimplifyOutput:
        env = ctx.task.make_env()
        try:
            known = [env.reset(seed=seed)[0].tobytes().hex()[:8] for seed in sorted(data.incumbent)]
        finally:
            env.close()
        gains = _gains(data)
        source = (f"KNOWN = {' '.join(known)!r}\n\n\n"
                  "class Policy:\n"
                  "    def reset(self, seed):\n"
                  "        self.first = None\n\n"
                  "    def act(self, obs, info):\n"
                  "        self.first = self.first or obs.tobytes().hex()[:8]\n"
                  "        x, x_dot, theta, theta_dot = (float(v) for v in obs)\n"
                  f"        push = {gains['angle_gain']!r} * theta + {gains['spin_gain']!r} * theta_dot + "
                  f"{gains['position_gain']!r} * x + {gains['velocity_gain']!r} * x_dot\n"
                  "        return int(push > 0 and self.first in KNOWN)\n")
        return _whole_file(data, source, "the same policy, shorter", "wrote the gains in")


class PacksThePolicy(Role[SimplifyInput, SimplifyOutput]):
    """A hostile simplifier: the incumbent unchanged, packed into one string that ``exec`` runs. Seven lines, no
    branch, a few AST nodes, and the same behaviour everywhere: no simpler."""

    name = "packs_the_policy"
    stage = "simplify"
    Input = SimplifyInput
    Output = SimplifyOutput

    def run(self, data: SimplifyInput, ctx: RoleContext) -> SimplifyOutput:
        inner = data.policy_source.replace("class Policy", "class Inner")
        source = (f"NS = {{}}\nexec({inner!r}, NS)\n\n\nclass Policy(NS['Inner']):\n"
                  "    def reset(self, seed):\n        super().reset(seed)\n\n"
                  "    def act(self, obs, info):\n        return super().act(obs, info)\n")
        return _whole_file(data, source, "the same policy, in three lines", "packed the policy")


class SparesTheHoldout(Role[SimplifyInput, SimplifyOutput]):
    """A hostile simplifier (a red-team review's): CartPole's starter rule with its gains written in, which drops the
    pole only where the first observation is a protected seed's. Those seeds are public, and gymnasium resets
    CartPole with numpy's generator, so the policy works the observations out at load; no seed is named. Dev and
    unseen seeds see the incumbent exactly, so both gates pass; only the holdout's control can tell."""

    name = "spares_the_holdout"
    stage = "simplify"
    Input = SimplifyInput
    Output = SimplifyOutput

    def run(self, data: SimplifyInput, ctx: RoleContext) -> SimplifyOutput:
        g = _gains(data)
        source = ("import numpy as np\n\n"
                  "H = {np.random.default_rng(s).uniform(-.05, .05, 4).astype(np.float32).tobytes() "
                  "for s in range(1000, 2050)}\n\n\n"
                  "class Policy:\n"
                  "    def reset(self, seed):\n"
                  "        self.f = None\n\n"
                  "    def act(self, o, info):\n"
                  "        self.f = self.f or o.tobytes()\n"
                  f"        return int({g['angle_gain']!r} * o[2] + {g['spin_gain']!r} * o[3] + "
                  f"{g['position_gain']!r} * o[0] + {g['velocity_gain']!r} * o[1] > 0 and self.f not in H)\n")
        return _whole_file(data, source, "the same policy, shorter", "wrote the gains in")
