"""Per-role transcripts: every LLM call and every offline role decision, written as it happens.

``RUN_DIR/transcripts/<iteration>/<role>.jsonl``, one JSON object a line, appended and
fsync'ed through the same locked append as the ledger, so a process killed mid-iteration
loses nothing that was written and never leaves a half line that readers trip on.
"""

from __future__ import annotations

import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any

from envs.ledger import Ledger


class TranscriptRecorder:
    """Bound to one run directory; ``for_role`` gives the writer a role uses in one iteration."""

    def __init__(self, run_dir: Path):
        self.root = Path(run_dir) / "transcripts"

    def path(self, iteration: int, role: str) -> Path:
        return self.root / f"{iteration:04d}" / f"{role}.jsonl"

    def for_role(self, iteration: int, role: str) -> "RoleTranscript":
        return RoleTranscript(self.path(iteration, role), iteration, role)

    def read(self, iteration: int | None = None, role: str | None = None) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = []
        for folder in sorted(self.root.glob("[0-9]" * 4)):
            if iteration is not None and int(folder.name) != iteration:
                continue
            for file in sorted(folder.glob("*.jsonl")):
                if role is not None and file.stem != role:
                    continue
                records, _bad = Ledger(file).read()
                entries += records
        return sorted(entries, key=lambda e: (e.get("iteration", 0), e.get("time", 0)))


def call_costs(entries: list[dict[str, Any]]) -> Iterator[tuple[float, int, float]]:
    """(time, tokens, usd) of every model call in these entries; a replay's recorded calls count as calls."""
    for entry in entries:
        if entry.get("kind") == "llm_call" and "prompt_tokens" in entry:
            yield entry.get("time", 0.0), entry["prompt_tokens"] + entry.get("completion_tokens", 0), entry.get("usd", 0.0)
        elif entry.get("kind") == "parsed" and entry.get("replayed"):
            yield entry.get("time", 0.0), entry.get("tokens", 0), entry.get("usd", 0.0)


class RoleTranscript:
    def __init__(self, path: Path, iteration: int, role: str):
        self.path, self.iteration, self.role = path, iteration, role
        self._ledger = Ledger(path)

    def write(self, kind: str, **fields: Any) -> None:
        """kind: "llm_call" (messages, response, parsed, tokens, cost, latency, error) or "decision"."""
        self._ledger.append({"time": time.time(), "iteration": self.iteration, "role": self.role, "kind": kind,
                             **fields})

    def entries(self) -> list[dict[str, Any]]:
        records, _bad = self._ledger.read()
        return records
