"""Where heurist keeps its data when the user does not say: $HEURIST_HOME, else the XDG data home."""

from __future__ import annotations

import os
from pathlib import Path


def heurist_home() -> Path:
    if os.environ.get("HEURIST_HOME"):
        return Path(os.environ["HEURIST_HOME"]).expanduser()
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "heurist"


def default_ledger_path() -> Path:
    return heurist_home() / "ledger.jsonl"
