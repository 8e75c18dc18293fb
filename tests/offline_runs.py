"""Helpers for tests that drive whole runs through the installed ``heurist`` command."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from pathlib import Path

from common.ledger import Ledger
from envs.contract import read_tunables
from policies import POLICY_DIR
from store.workspace import Workspace
from tests.warm_cli import run_heurist


def weak_cartpole() -> str:
    """The CartPole starter with every gain at zero (make run's start): it always pushes left, falls in ~9 steps."""
    source = (POLICY_DIR / "cartpole_untuned.py").read_text()
    starter = (POLICY_DIR / "cartpole.py").read_text()
    assert {t.name for t in read_tunables(source)} == {t.name for t in read_tunables(starter)}
    assert all(t.default == 0 for t in read_tunables(source))
    return source


def heurist(env: dict, *args: object, timeout: float = 300) -> subprocess.CompletedProcess:
    return run_heurist(list(args), env, timeout=timeout)


def lost_or_repeated(run_dir: Path, memory_path: Path, iterations: int) -> list[str]:
    """What is wrong with a finished run's record after faults, in words; empty when nothing is.

    The issue's list: the ledger has no lost, torn or duplicated record; the workspace's git
    history is exactly the accepted edits; memory holds each record once; transcripts and every
    atomically written file are whole; the checkpoint database is intact.
    """
    from memory.store import MemoryConfig, MemoryStore

    problems: list[str] = []
    records, bad = Ledger(run_dir / "ledger.jsonl").read()
    if bad:
        problems.append(f"{bad} torn or corrupt ledger line(s)")
    done = [r for r in records if r["event"] == "iteration"]
    numbers = [r["iteration"] for r in done]
    if numbers != list(range(1, iterations + 1)):
        missing = sorted(set(range(1, iterations + 1)) - set(numbers))
        repeated = sorted({n for n in numbers if numbers.count(n) > 1})
        problems.append(f"iteration records lost {missing} or repeated {repeated}")
    if sum(r["event"] == "run_finished" for r in records) != 1:
        problems.append("not exactly one run_finished record")
    started = {r["eval_id"] for r in records if r["event"] == "eval_started"}
    finished = [r["eval_id"] for r in records if r["event"] == "eval_finished"]
    if len(finished) != len(set(finished)) or not set(finished) <= started:
        problems.append("an evaluation finished twice, or without starting")

    workspace = Workspace(run_dir / "workspace")
    history = workspace.history()
    committed = sorted(int(c["body"].rsplit("Heurist-Iteration: ", 1)[1]) for c in history
                       if "Heurist-Iteration: " in c["body"])
    accepted = [r for r in done if r["accepted"]]
    if committed != [r["iteration"] for r in accepted]:
        problems.append(f"git commits {committed} are not the accepted iterations {[r['iteration'] for r in accepted]}")
    if workspace.git("status", "--porcelain"):
        problems.append("the workspace has uncommitted changes")
    fsck = subprocess.run(["git", "fsck", "--strict"], cwd=workspace.root, capture_output=True, text=True)
    if fsck.returncode != 0:
        problems.append(f"git fsck: {fsck.stderr.strip()[:200]}")
    if workspace.policy.read_text() != (run_dir / "best_policy.py").read_text():
        problems.append("best_policy.py is not the workspace's policy")
    if workspace.head() != (accepted[-1]["commit"] if accepted else history[-1]["commit"]):
        problems.append("the workspace's HEAD is not the last accepted edit")

    run_id = json.loads((run_dir / "run.json").read_text())["run_id"]
    with MemoryStore(MemoryConfig(path=memory_path)) as store:
        mine = [r for r in store.records() if r.run_id == run_id]
    if len({r.id for r in mine}) != len(mine):
        problems.append("a memory record is stored twice")
    fixes = sorted(r.iteration for r in mine if r.type == "fix")
    if fixes != [r["iteration"] for r in done if r["edit"]]:
        problems.append(f"fix records for iterations {fixes}, edits in {[r['iteration'] for r in done if r['edit']]}")

    for path in (run_dir / "transcripts").rglob("*.jsonl"):
        entries, torn = Ledger(path).read()
        if torn or not entries:
            problems.append(f"transcript {path.relative_to(run_dir)}: {torn} torn line(s), {len(entries)} entries")
    for path in run_dir.rglob("*.json"):
        try:
            json.loads(path.read_text())
        except ValueError:
            problems.append(f"{path.relative_to(run_dir)} is not whole")
    if [p for p in run_dir.rglob(".*.tmp") if ".git" not in p.parts]:
        problems.append("a temp file was left behind")
    with sqlite3.connect(run_dir / "checkpoints.sqlite") as db:
        if db.execute("PRAGMA integrity_check").fetchone() != ("ok",):
            problems.append("checkpoints.sqlite fails its integrity check")
    return problems
