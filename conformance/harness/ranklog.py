"""Per-rank log files: ``<log dir>/rank<N>.log``.

Every rank logs its own outcome and traceback of every test, the watchdog's stack dumps, and (on
ranks other than 0) everything pytest would have written to the terminal: only rank 0 writes to the
terminal.

Each rank writes its log on its own host. Ranks on other hosts than rank 0 send theirs to rank 0,
which keeps them in its log directory under the same names: at the end of a session over the
control plane (:func:`gather_logs`), and when a deadline passes through the watchdog's mailbox
(:func:`keep_peer_log`). Nothing needs a file system shared between hosts.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any, TextIO

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

    def text(self) -> str:
        """Everything this rank has logged so far ('' if the file is unreadable)."""
        try:
            return self.path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def close(self) -> None:
        with self._lock:
            self.stream.close()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def keep_peer_log(directory: Path, rank: int, text: str) -> bool:
    """Rank 0: store ``rank``'s log as ``rank<N>.log`` unless that rank already wrote it here (same
    host or shared file system: a file of at least that size exists). True if written."""
    path = directory / f"rank{rank}.log"
    if _size(path) >= len(text.encode("utf-8")):
        return False
    directory.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return True


def gather_logs(plane: Any, log: RankLog) -> list[int]:
    """Collective over the control plane ``plane``: the logs rank 0 cannot see in its log
    directory are sent to it and kept there. Returns those ranks (on every rank)."""
    sizes = plane.allgather(("session", "log sizes"), _size(log.path))
    missing = None
    if plane.rank == 0:
        directory = log.path.parent
        missing = [r for r, size in enumerate(sizes) if _size(directory / f"rank{r}.log") != size]
    missing = plane.bcast(("session", "logs missing"), missing)
    if missing:
        texts = plane.allgather(("session", "logs"), log.text() if plane.rank in missing else None)
        if plane.rank == 0:
            for rank in missing:
                keep_peer_log(log.path.parent, rank, texts[rank])
    return missing


def redirect_terminal(config: pytest.Config, stream: TextIO) -> None:
    """Send pytest's terminal output to ``stream`` (ranks other than 0 write to their log)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    # TerminalReporter has no public way to change its output; _tw is what it writes through.
    reporter._tw = create_terminal_writer(config, stream)
