"""Helpers for this workspace's regression tests. Written by heurist; edits here are overwritten.

Each call runs one real episode of the task, in this (sandboxed) test process, with the
same env and policy code the evaluator uses, so a test sees exactly what an evaluation sees.
"""

import json
import os
from pathlib import Path

HERE = Path(__file__).resolve().parent
_SETTINGS = json.loads((HERE / "heurist_task.json").read_text())


def _count(steps):
    """Tell heurist how many env steps the tests used: it counts every step toward the budget."""
    path = os.environ.get("HEURIST_STEPS_FILE")
    if path:
        with open(path, "a") as fh:
            fh.write(f"{steps}\n")


def run_episode(seed, policy=None):
    from envs.policy_host import PolicyRunner
    from envs.worker import Worker

    runner = PolicyRunner(str(policy or HERE / "policy.py"))
    worker = Worker(json.dumps(_SETTINGS["task"]), _SETTINGS["protocol"], runner)
    try:
        result = worker.episode({"seed": int(seed), "trace_window": 16, "max_windows": 3, "cpu_s": 120})
    finally:
        worker.discard_env()
    _count(result["env_steps"])
    return result


def first_event(result, kind):
    steps = [e["step"] for e in result["events"] if e["kind"] == kind]
    return min(steps) if steps else None


def load_policy():
    import importlib.util

    spec = importlib.util.spec_from_file_location("workspace_policy", HERE / "policy.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.Policy()
