"""How busy the machine is while we measure, so noisy figures can be told apart.

On a shared machine the benchmark's ranks compete with whatever else runs; the kernel's count
of runnable tasks (``/proc/loadavg``, Linux) taken during the samples says how many others
wanted a core at the same time. Elsewhere nothing is recorded.

It also charges each side of a case the resident memory it adds (``Footprint``, from
``/proc/self/status`` and ``clear_refs``), so a backend's peak memory per rank can be reported
next to raw mpi4py's although both run in one process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

_LOADAVG = Path("/proc/loadavg")


def runnable_tasks() -> int | None:
    """Tasks running or ready to run right now, machine-wide (None where unknown)."""
    try:
        fields = _LOADAVG.read_text().split()
        return int(fields[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (None where unknown)."""
    try:
        return [round(float(v), 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def others_runnable(own_ranks: int) -> int | None:
    """Runnable tasks beyond the benchmark's own ranks (which spin, so count as runnable)."""
    count = runnable_tasks()
    return None if count is None else max(0, count - own_ranks)


_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _resident() -> tuple[int, int] | None:
    """This process's (current, peak) resident set in bytes (VmRSS, VmHWM), None where unknown."""
    try:
        fields = dict(
            line.split(":", 1) for line in _STATUS.read_text().splitlines() if ":" in line
        )
        return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _reset_peak() -> int | None:
    """Reset the peak resident set to the current one (Linux >= 4.0); the current one, or None."""
    try:
        _CLEAR_REFS.write_text("5")
    except OSError:
        return None
    now = _resident()
    return None if now is None else now[0]


class Footprint:
    """The peak resident memory of each side of a case, as if it ran alone in the process.

    Both sides run in one process, so the process's own peak would mix them. Instead every run
    of a side is bracketed: the peak reset before it, then how far the peak rose above the start
    (what the run touched at its worst) and what it still holds at its end. A side's peak is the
    worst of (what its earlier runs still hold + the rise of this run), and ``peak(side)`` adds
    the process's resident set before the case (interpreter, libraries, the case's input).
    """

    def __init__(self) -> None:
        now = _resident()
        self.base = None if now is None else now[0]
        self._held: dict[str, int] = {}
        self._rise: dict[str, int] = {}

    def run(self, side: str, run: Any) -> Any:
        """``run()``, its memory charged to ``side``."""
        start = _reset_peak() if self.base is not None else None
        result = run()
        after = _resident() if start is not None else None
        if start is not None and after is not None:
            held = self._held.get(side, 0)
            self._rise[side] = max(self._rise.get(side, 0), held + after[1] - start)
            self._held[side] = held + after[0] - start
        return result

    def peak(self, side: str) -> int | None:
        """Bytes: the side's peak resident set as if alone (None when not measured)."""
        if self.base is None or side not in self._rise:
            return None
        return self.base + self._rise[side]
