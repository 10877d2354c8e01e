"""The flight recorder: the last N calls of this rank, written to ``<dir>/rank-<r>.json`` when
the check ends the job, when a check stalls, on SIGUSR1, or when a signal ends the process.

Each record: ``n`` (this rank's call count), the fingerprint, ``state`` (``checking``: waiting
for the other ranks; ``agreed``: checked, handed to the backend; ``returned``: the backend's
function returned — for MLX that means the graph node exists, the data moves at evaluation;
``failed``), the wall-clock time it started, the seconds its check took and the user's stack.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import socket
import threading
import time
from typing import Any

# The reasons a rank writes its recorder when the check found a problem (others: signal names).
CHECK_FAILED = "check failed"
PROBLEM_AT_EXIT = "problem at exit"
PROBLEM_REASONS = (CHECK_FAILED, PROBLEM_AT_EXIT)


class Recorder:
    """A ring buffer of this rank's calls; ``dump`` is safe from a signal handler or a thread."""

    def __init__(self, rank: int, size: int, depth: int, directory: str) -> None:
        self.rank = rank
        self.size = size
        self.directory = directory
        self.records: collections.deque[dict[str, Any]] = collections.deque(maxlen=depth)
        self.count = 0
        self._lock = threading.RLock()

    def begin(self, fp: dict[str, Any], stack: list[tuple[str, int, str]]) -> dict[str, Any]:
        """Record a call about to be checked; the returned record is updated in place."""
        record = {
            "n": self.count,
            "fp": fp,
            "state": "checking",
            "time": time.time(),
            "stack": stack,
        }
        self.count += 1
        self.records.append(record)
        return record

    def dump(self, reason: str) -> str | None:
        """Write the buffer (oldest first); the file's path, or None if it could not be written."""
        with self._lock:
            calls = [
                dict(r, stack=[f"{f}:{ln} in {fn}" for f, ln, fn in r["stack"]])
                for r in list(self.records)
            ]
            data = {
                "rank": self.rank,
                "size": self.size,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "reason": reason,
                "time": time.time(),
                "calls_made": self.count,
                "calls": calls,
            }
            try:
                os.makedirs(self.directory, exist_ok=True)
                path = os.path.join(self.directory, f"rank-{self.rank}.json")
                tmp = f"{path}.{os.getpid()}.tmp"
                with open(tmp, "w", encoding="utf-8") as handle:
                    json.dump(data, handle, indent=1)
                os.replace(tmp, path)
            except OSError:
                return None
            return path

    def install_signals(self) -> None:
        """SIGUSR1 writes the buffer and carries on; SIGTERM, SIGINT and SIGHUP write it, then
        end the process as the signal would have. Handlers a program set itself are kept."""
        if threading.current_thread() is not threading.main_thread():
            return

        def on_usr1(signum: int, frame: Any) -> None:
            self.dump("SIGUSR1")

        def on_fatal(signum: int, frame: Any) -> None:
            self.dump(signal.Signals(signum).name)
            signal.signal(signum, previous[signum])
            if signum == signal.SIGINT and previous[signum] is signal.default_int_handler:
                raise KeyboardInterrupt
            os.kill(os.getpid(), signum)

        previous: dict[int, Any] = {}
        if signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None):
            signal.signal(signal.SIGUSR1, on_usr1)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            current = signal.getsignal(sig)
            if current in (signal.SIG_DFL, signal.default_int_handler):
                previous[sig] = current
                signal.signal(sig, on_fatal)
