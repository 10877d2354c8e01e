"""How busy the machine is while we measure, so noisy figures can be told apart.

On a shared machine the benchmark's ranks compete with whatever else runs; the kernel's count
of runnable tasks (``/proc/loadavg``, Linux) taken during the samples says how many others
wanted a core at the same time. Elsewhere nothing is recorded.
"""

from __future__ import annotations

import os
from pathlib import Path

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
