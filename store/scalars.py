"""TensorBoard event files of a run (and of a campaign), written from its ledger, with CleanRL's scalar names.

A run's scalars come from its ledger, one point per iteration at the env steps spent by then:

- ``charts/episodic_return``: the incumbent's mean return on the dev seeds (the policy kept after the
  iteration), as CleanRL's plots of PPO read it;
- ``charts/SPS``: env steps per second of the run's active time;
- ``heurist/candidate_return``, ``heurist/accepted_edits`` (so far), ``heurist/tokens``, ``heurist/usd``,
  ``heurist/iteration``.

The file is written again whole after each iteration (to a temp folder, then renamed over the old
one) rather than appended to: a node that runs twice after a crash would otherwise log its point
twice, and the ledger is the record. tensorboardX writes the event format (TFRecord of protobuf
``Event``s) so that TensorBoard, and anything else that reads it, needs nothing from heurist.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable

from common.events import IterationDone, read_events
from common.ledger import Ledger

EVENT_FILE = "events.out.tfevents.heurist"  # TensorBoard reads any file whose name holds "tfevents"

Scalar = tuple[str, float, int]  # (tag, value, global step)
Row = tuple[int, dict[str, float]]  # (global step, the points logged at it): one iteration of a run


def run_rows(run_dir: Path) -> list[Row]:
    """A run's points from its ledger, one row per iteration, in order."""
    rows: list[Row] = []
    accepted = 0
    for event in read_events(Ledger(run_dir / "ledger.jsonl"))[0]:
        if not isinstance(event, IterationDone):
            continue
        spent = event.spent if isinstance(event.spent, dict) else {}
        step = int(spent.get("env_steps", 0))
        accepted += event.accepted
        elapsed = float(spent.get("elapsed_s", 0.0))
        points = {"charts/episodic_return": event.mean_after, "heurist/candidate_return": event.mean_candidate,
                  "heurist/accepted_edits": accepted, "heurist/tokens": spent.get("tokens", 0),
                  "heurist/usd": spent.get("usd", 0.0), "heurist/iteration": event.iteration,
                  "charts/SPS": step / elapsed if elapsed > 0 else None}
        rows.append((step, {tag: float(value) for tag, value in points.items() if value is not None}))
    return rows


def flatten(rows: list[Row]) -> list[Scalar]:
    return [(tag, value, step) for step, points in rows for tag, value in points.items()]


def run_scalars(run_dir: Path) -> list[Scalar]:
    """A run's scalars from its ledger, in order."""
    return flatten(run_rows(run_dir))


def write_scalars(folder: Path, scalars: Iterable[Scalar]) -> Path:
    """Write ``folder/events.out.tfevents.heurist`` with these scalars, replacing what was there at once."""
    from tensorboardX import SummaryWriter

    folder.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".scalars.", dir=folder))
    try:
        writer = SummaryWriter(logdir=str(scratch), flush_secs=3600)
        for tag, value, step in scalars:
            writer.add_scalar(tag, value, global_step=step)
        writer.close()
        written = next(p for p in scratch.iterdir() if "tfevents" in p.name)
        target = folder / EVENT_FILE
        os.replace(written, target)
        return target
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def write_run_scalars(run_dir: Path) -> Path:
    return write_scalars(run_dir / "tensorboard", run_scalars(run_dir))
