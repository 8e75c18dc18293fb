"""Where heurist keeps its data when the user does not say: $HEURIST_HOME, else the XDG data home."""

from __future__ import annotations

import os
from pathlib import Path

from common.errors import HeuristError


def heurist_home() -> Path:
    """heurist's data folder (its runs, ledger and memory); one line naming it where a file is in its place (every
    command blamed the --ledger or --run-dir the user never gave, or listed no runs)."""
    if os.environ.get("HEURIST_HOME"):
        home, named = Path(os.environ["HEURIST_HOME"]).expanduser(), "HEURIST_HOME"
    else:
        home, named = Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "heurist", None
    if os.path.exists(home) and not os.path.isdir(home):  # os.path's: False, not an error, where it may not look
        where = f"HEURIST_HOME={home}" if named else f"{home}, heurist's data folder,"
        raise HeuristError(f"{where} is not a folder; heurist keeps its runs, ledger and memory there: point "
                           f"HEURIST_HOME at a folder")
    return home


def default_ledger_path() -> Path:
    return heurist_home() / "ledger.jsonl"
