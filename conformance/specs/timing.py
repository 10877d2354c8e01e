"""The deadline the robust tests give a backend, and how late its TimeoutError may come.

SEMANTICS.md, "Hangs (robust)": a blocking call whose peer never comes raises TimeoutError within
the deadline plus :data:`ALLOWANCE`. The allowance covers scheduling only (4 ranks on 2 busy
cores, CPython's thread switch interval, the backend's polling period); it was derived from the
lateness of the reference's TimeoutError measured that way (docs/SEMANTICS.md gives the figures).
A backend whose deadline is 3x what was set raises 2 s late and fails.
"""

from __future__ import annotations

#: Seconds the robust tests set with ``set_timeout``.
DEADLINE = 1.0
#: Seconds past :data:`DEADLINE` within which the TimeoutError (or a survivor's error) must come.
ALLOWANCE = 0.5


def limit() -> float:
    """Seconds a blocking call may take at most under :data:`DEADLINE`."""
    return DEADLINE + ALLOWANCE
