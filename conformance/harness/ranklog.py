"""Per-rank log files: ``<log dir>/rank<N>.log``.

Every rank logs its own outcome and traceback of every test, the watchdog's stack dumps, and (on
ranks other than 0) everything pytest would have written to the terminal: only rank 0 writes to the
terminal.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import TextIO

import pytest
from _pytest.config import create_terminal_writer


class RankLog:
    """One rank's log file, line-buffered so a killed job keeps what was written."""

    def __init__(self, directory: Path, rank: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.path = directory / f"rank{rank}.log"
        self.rank = rank
        self.stream: TextIO = open(self.path, "a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def write(self, text: str) -> None:
        """Append ``text`` with a timestamp; safe from the watchdog thread."""
        stamp = time.strftime("%H:%M:%S")
        with self._lock:
            self.stream.write(f"[{stamp} rank {self.rank}] {text.rstrip()}\n")
            self.stream.flush()

    def close(self) -> None:
        with self._lock:
            self.stream.close()


def redirect_terminal(config: pytest.Config, stream: TextIO) -> None:
    """Send pytest's terminal output to ``stream`` (ranks other than 0 write to their log)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    # TerminalReporter has no public way to change its output; _tw is what it writes through.
    reporter._tw = create_terminal_writer(config, stream)
