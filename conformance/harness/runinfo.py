"""What a run is (runs inside every rank; rank 0 writes it): the lines of the report header
(backend, MPI library, world size, every ``CONFORMANCE_*`` variable) that make a report
reproducible, and the results file's session header (backend, version, declared capabilities)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from conformance.records import SessionRecord, make_session

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


def capabilities_dict(capabilities: Any) -> dict[str, Any]:
    """A ``conformance.backend.Capabilities`` as JSON-ready data (sets as sorted lists)."""
    return {
        "ops": sorted(capabilities.ops),
        "dtypes": {op: sorted(names) for op, names in sorted(capabilities.dtypes.items())},
        "p2p_topology": capabilities.p2p_topology,
        "split": capabilities.split,
        "sum_scatter": capabilities.sum_scatter,
        "send_to_self": capabilities.send_to_self,
        "timeouts": capabilities.timeouts,
    }


def session_header(
    spec: str, backend: Any, world_size: int, error: BaseException | None = None
) -> SessionRecord:
    """The results file's session header: the backend, its version, what it declares (every
    declared-unsupported feature, each marked optional or not by the manifest)."""
    if backend is None:
        return make_session(
            backend=spec, world_size=world_size, load_error=f"{type(error).__name__}: {error}"
        )
    from conformance.specs.manifest import declared_unsupported

    declared = [
        {"feature": d.feature, "optional": d.optional, "rule": d.rule}
        for d in declared_unsupported(backend.capabilities)
    ]
    return make_session(
        backend=spec,
        backend_name=str(backend.name),
        backend_version=str(backend.version),
        capabilities=capabilities_dict(backend.capabilities),
        declared=declared,
        world_size=world_size,
    )


def declared_line(backend: Any) -> list[str]:
    """The header line naming every feature the backend declares unsupported, each marked
    optional or core by the manifest (none: no line)."""
    from conformance.specs.manifest import declared_unsupported

    found = declared_unsupported(backend.capabilities)
    if not found:
        return []
    shown = ", ".join(f"{d.feature} ({'optional' if d.optional else 'CORE'})" for d in found)
    return [f"conformance declared unsupported: {shown}"]
