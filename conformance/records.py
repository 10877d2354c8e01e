"""The results file the runner consumes: one JSON object per line per test, from rank 0 only.

Fields (docs/contracts.md, "Plugin ↔ runner"): nodeid, outcome (passed, failed, skipped, xfailed,
xpassed, hung, error), failing_ranks, message, longrepr, duration, level, area, seed, world_size,
backend; a hung record also has ``stacks`` ({rank: text}).
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

OUTCOMES = ("passed", "failed", "skipped", "xfailed", "xpassed", "hung", "error")


class ResultsFile:
    """Appends records to one file; each line is flushed and synced when written, so a job that
    is killed right after a test still leaves that test's record."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()  # the watchdog thread writes the hung record

    def write(self, record: dict[str, Any]) -> None:
        """Append one record (a JSON object on one line)."""
        if record.get("outcome") not in OUTCOMES:
            raise ValueError(f"record outcome {record.get('outcome')!r} is not one of {OUTCOMES}")
        line = json.dumps(record, sort_keys=True, default=str) + "\n"
        with self._lock, open(self.path, "a", encoding="utf-8") as stream:
            stream.write(line)
            stream.flush()
            os.fsync(stream.fileno())


def read_records(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """All records of a results file, in order."""
    text = Path(path).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]
