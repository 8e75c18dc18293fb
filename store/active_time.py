"""A run's active time, kept where a kill cannot lose more than a few seconds of it.

The state's ``spent.elapsed_s`` is counted at each iteration's end, so a session killed mid-iteration
lost the time since (a local model's slow iteration is many minutes). ``ActiveTime`` rewrites
``RUN_DIR/active_time.json`` every few seconds while a session runs: the active seconds of the
sessions before and of this one so far. The next session starts from that sum, so every second is
counted to within one beat.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from common.files import atomic_write

BEAT_S = 5.0


class ActiveTime:
    """Counts this session's seconds on top of the earlier sessions'; a daemon thread writes them down."""

    def __init__(self, run_dir: Path, at_least_before: float = 0.0):
        self.path = Path(run_dir) / "active_time.json"
        self.before = max(at_least_before, self._recorded())
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="heurist-active-time", daemon=True)

    def _recorded(self) -> float:
        try:
            data = json.loads(self.path.read_text())
            return float(data["before_s"]) + float(data["session_s"])
        except (OSError, ValueError, KeyError, TypeError):  # none yet, or damaged: the state's count stands
            return 0.0

    def total_s(self) -> float:
        return self.before + (time.monotonic() - self.started)

    def write(self) -> None:
        atomic_write(self.path, json.dumps({"before_s": round(self.before, 1),
                                            "session_s": round(time.monotonic() - self.started, 1)}))

    def _beat(self) -> None:
        while not self._stop.wait(BEAT_S):
            try:
                self.write()
            except OSError:  # a full disk: the run itself says so; the count is one beat behind
                pass

    def __enter__(self) -> "ActiveTime":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.write()
        except OSError:
            pass
