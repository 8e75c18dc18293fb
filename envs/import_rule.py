"""Which modules a policy may import: the standard library and a few numeric and simulator packages, never heurist.

One small module without dependencies, because the policy process checks every import the policy's own code
makes (``envs.policy_slots``) and must start fast; ``envs.contract`` checks the same rule statically.
"""

from __future__ import annotations

import sys

ALLOWED_THIRD_PARTY = frozenset({"numpy", "scipy", "cv2", "mujoco", "ale_py", "Box2D"})
HEURIST_PACKAGES = frozenset({"common", "envs", "policies", "memory", "store", "roles", "graph", "runner",
                              "report", "doctor", "cli", "campaign", "heurist"})


def allowed_import(module: str) -> str | None:
    """Why a policy may not import ``module``, or None when it may."""
    top = module.split(".")[0]
    if top in HEURIST_PACKAGES:
        return f"imports {module}; a policy must not import heurist itself"
    if top not in sys.stdlib_module_names and top not in ALLOWED_THIRD_PARTY:
        return (f"imports {module}; policies may import only the standard library and "
                f"{', '.join(sorted(ALLOWED_THIRD_PARTY))}")
    return None


__all__ = ["ALLOWED_THIRD_PARTY", "HEURIST_PACKAGES", "allowed_import"]
