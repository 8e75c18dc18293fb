"""Policy files: one self-contained .py per policy (see envs/contract.py), starters for the built-in tasks.

The starter files in this folder import nothing from heurist; heurist never imports them
either: the evaluator executes them inside sandboxed workers.
"""

from __future__ import annotations

from pathlib import Path

from common.errors import PolicyError
from envs.tasks import TaskSpec

POLICY_DIR = Path(__file__).resolve().parent
RANDOM_POLICY = POLICY_DIR / "random_policy.py"


def starter_policy(spec: TaskSpec) -> Path:
    """The task's readable starter policy; the random floor for tasks that have none."""
    if spec.starter_policy is None:
        return RANDOM_POLICY
    path = POLICY_DIR / spec.starter_policy
    if not path.is_file():
        raise PolicyError(f"starter policy {path} for {spec.id} is missing; reinstall heurist")
    return path
