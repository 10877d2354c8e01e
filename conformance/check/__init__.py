"""Checked mode: the spec's agreement rules around a user's own MLX (or reference) program.

``import conformance.check`` at the top of a program (or running it under ``python -m
conformance check``, which sets ``CONFORMANCE_CHECK=1`` and puts ``boot/`` on ``PYTHONPATH``)
makes every collective, send, recv and split be fingerprinted and checked across the ranks that
take part before the real call runs, keeps a flight recorder of each rank's last calls, and prints
a summary at exit. Only processes a launcher started as ranks (``mlx.launch``, ``mpiexec``)
are checked; ``CONFORMANCE_CHECK=0`` leaves the program unchecked.

Where the code runs: inside each rank — ``settings`` (who am I), ``fingerprint`` (what a call
is), ``wrap`` (the checked API), ``session`` (this rank's link to the check), ``recorder`` (the
flight recorder), ``wire`` (the side channel), ``activate``; ``coordinator``, a process rank 0
starts, matches every rank's calls; in the command that drives the job — ``command`` (``python -m
conformance check``) and ``merge`` (the cross-rank view of the recorders), ``summary``.
"""

from __future__ import annotations

import os

from conformance.check.session import CheckError

__all__ = ["CheckError"]

if os.environ.get("CONFORMANCE_CHECK", "1") != "0":
    from conformance.check.activate import activate, launched_rank

    # Only in a rank a launcher started: the command that drives the job imports this package
    # too, and a lone process has no one to agree with.
    if launched_rank():
        activate()
