"""What a run is: the lines of the report header (backend, MPI library, world size, every
``CONFORMANCE_*`` variable) that make a report reproducible."""

from __future__ import annotations

import os
from pathlib import Path

# Marks a rank's watchdog stack as "waiting for the others", as opposed to stuck in test code.
WAITING = "waiting at control exchange"


def mpi_library() -> str:
    """The MPI library's one-line version, or why there is none."""
    try:
        from mpi4py import MPI
    except ImportError:
        return "none (mpi4py not installed: one rank only)"
    return MPI.Get_library_version().strip().splitlines()[0]


def mpi4py_version() -> str:
    try:
        import mpi4py
    except ImportError:
        return "not installed"
    return mpi4py.__version__


def describe_world(size: int) -> str:
    return f"world size {size}, MPI {mpi_library()}, mpi4py {mpi4py_version()}"


def conformance_variables() -> dict[str, str]:
    """Every ``CONFORMANCE_*`` environment variable, sorted by name."""
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("CONFORMANCE_")}


def header_lines(
    *, backend: str, world_size: int, timeout: float, log_dir: Path, seed: int
) -> list[str]:
    """The report header's lines."""
    variables = conformance_variables()
    shown = " ".join(f"{k}={v}" for k, v in variables.items()) or "(none)"
    return [
        f"conformance backend: {backend}",
        f"conformance world: {describe_world(world_size)}",
        f"conformance timeout: {timeout:g} s per test, seed {seed}, logs {log_dir}",
        f"conformance environment: {shown}",
    ]
