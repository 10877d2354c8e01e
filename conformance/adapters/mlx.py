"""MLX's ``ring`` backend (``mlx.core.distributed``) as a backend under test.

Resolve it as ``--backend mlx`` (the harness maps the built-in name to
``conformance.adapters.mlx:backend``). Importing this module never imports MLX; the first access to
``backend`` does, and raises ImportError with the install hint when MLX is missing.

How the ring is formed. Every run is launched by ``mpiexec -n N``. MLX's ring backend knows
nothing of MPI: ``mx.distributed.init()`` reads ``MLX_RANK`` and ``MLX_HOSTFILE`` (a JSON list, one
entry per rank, of ``"ip:port"`` strings) and opens TCP connections to its two neighbours. On the
first ``init`` call the adapter makes each rank pick a free port on its host's address
(127.0.0.1 when all ranks share one host, else the address peers reach the host at:
``conformance.harness.hostaddr``), exchanges the addresses over its own duplicate of
``MPI.COMM_WORLD`` (never the data plane), writes the hostfile and sets both variables from the
MPI rank. At one rank nothing is configured and MLX answers with its
singleton group. Variables already set by the caller (e.g. under ``mlx.launch``) are left
alone.

Deviations of the adapter from plain MLX, all deliberate:

- The communication functions are *eager*: each result is evaluated (``mx.eval``) before the call
  returns, so errors that MLX raises at evaluation time (``[ring] sum_scatter not supported.``,
  ``[ring] Send only supported to direct neighbors ...``) surface at the call, and a ``send`` has
  gone out before the matching ``recv`` is issued. MLX evaluating a send and a recv together can
  deadlock; eager calls avoid it. Set ``CONFORMANCE_MLX_LAZY=1`` to get MLX's lazy functions
  unchanged.
- Forming the ring is bounded: if ``init`` does not return within ``CONFORMANCE_MLX_INIT_TIMEOUT``
  seconds (default 90) the job is aborted with a message, because a rank blocked in MLX's
  ``accept()`` cannot be interrupted otherwise.
- The last rank, which MLX has connect to rank 0 before anyone else connects, first waits (up to
  :data:`LISTEN_WAIT` seconds) until rank 0's port listens, when both are on this host (Linux
  ``/proc/net/tcp``). MLX retries a refused connection only after a second: without the wait
  most ring starts paid that second (3 of 4 starts at 4 ranks on the 2-core test machine).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from conformance.backend import DATA_OPS, DTYPE_NAMES, Backend, Capabilities
from conformance.harness import hostaddr, isolation

__all__ = [
    "API_NAMES",
    "DTYPE_NAMES",
    "MLXRingBackend",
    "configure_ring",
    "make_backend",
    "missing_ops",
    "ring_capabilities",
    "world_size",
]

# The communication ops are the suite's data ops; the adapter exposes them plus init and
# is_available (Group comes from MLX's init).
COMMUNICATION_OPS: tuple[str, ...] = DATA_OPS
API_NAMES: tuple[str, ...] = ("init", "is_available", *COMMUNICATION_OPS)

ENV_LAZY = "CONFORMANCE_MLX_LAZY"
ENV_INIT_TIMEOUT = "CONFORMANCE_MLX_INIT_TIMEOUT"
DEFAULT_INIT_TIMEOUT = 90.0
#: Seconds the last rank waits for rank 0 to listen before MLX's own (1 s) retry takes over.
LISTEN_WAIT = 5.0
#: /proc files listing this host's TCP sockets, and the state code of a listening one.
_PROC_TCP = ("/proc/net/tcp", "/proc/net/tcp6")
_LISTEN = "0A"
# MLX's ring reads exactly these two; MLX_RING_VERBOSE (any value) turns on its connection log.
ENV_RANK = "MLX_RANK"
ENV_HOSTFILE = "MLX_HOSTFILE"

INSTALL_HINT = (
    "the 'mlx' backend needs MLX: pip install 'mlx-distributed-conformance[mlx]' "
    "(on Linux this installs 'mlx[cpu]')"
)


def _import_mlx() -> Any:
    try:
        import mlx.core as mx
    except ImportError as exc:
        raise ImportError(INSTALL_HINT) from exc
    return mx


def ring_capabilities(world_size: int = 2, missing: tuple[str, ...] = ()) -> Capabilities:
    """What MLX 0.32 really supports in a world of ``world_size`` ranks (measured on Linux).

    Several ranks (the ring): every op accepts all 14 dtypes (bool reductions are OR/OR/AND).
    Point-to-point reaches only the two ring neighbours; ``split``, ``sum_scatter`` and sending
    to oneself raise RuntimeError. One rank: MLX's singleton group, where ``sum_scatter`` is the
    identity like every collective, so it is declared supported; ``split`` raises and
    point-to-point has no peer. MLX has no timeouts.

    ``missing`` names the communication ops the installed release does not have (see
    :func:`missing_ops`); they are declared absent.
    """
    all_dtypes = frozenset(DTYPE_NAMES)
    present = [op for op in COMMUNICATION_OPS if op not in missing]
    return Capabilities(
        # groups come from init(): declared, not exposed
        ops=frozenset((*(n for n in API_NAMES if n not in missing), "Group")),
        dtypes={op: all_dtypes for op in present},
        p2p_topology="neighbours",
        split=False,
        sum_scatter=world_size == 1 and "sum_scatter" not in missing,
        send_to_self=False,
        timeouts=False,
        agreement_checks=False,  # MLX checks nothing across ranks (SEMANTICS.md)
    )


def missing_ops(distributed: Any) -> tuple[str, ...]:
    """The communication ops an MLX release lacks (``sum_scatter`` came in 0.29.4, ``all_max`` and
    ``all_min`` in 0.25). The adapter declares them absent and stands in a function that raises
    RuntimeError naming the op and the release, so the suite checks them as unsupported instead
    of crashing on a missing attribute."""
    return tuple(op for op in COMMUNICATION_OPS if not hasattr(distributed, op))


def _absent(op: str, version: str) -> Callable[..., Any]:
    def absent(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"mlx {version} has no mx.distributed.{op}: {op} not supported")

    absent.__name__ = op
    return absent


def world_size() -> int:
    """How many ranks the ring will have: the hostfile's entries if the caller configured MLX,
    else the size of ``MPI.COMM_WORLD`` (1 without mpi4py)."""
    hostfile = os.environ.get(ENV_HOSTFILE)
    if os.environ.get(ENV_RANK) and hostfile:
        with open(hostfile, encoding="utf-8") as fh:
            return len(json.load(fh))
    try:
        from mpi4py import MPI
    except ImportError:
        return 1
    return int(MPI.COMM_WORLD.Get_size())


def _pick_free_port(host: str) -> int:
    # The port is released before MLX binds it; MLX sets SO_REUSEADDR, and the window in which
    # another process could take it is the few milliseconds of the exchange.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def configure_ring(comm: Any = None, host: str | None = None) -> str | None:
    """Point MLX's ring backend at one free port per rank; collective over ``comm``.

    Each rank listens on ``host`` if given, else on its host's address
    (:func:`conformance.harness.hostaddr.listen_addresses`: loopback on one host).

    ``comm`` defaults to a duplicate of ``MPI.COMM_WORLD`` that is freed afterwards. Every rank
    of ``comm`` must call this at the same time. Sets ``MLX_RANK`` and ``MLX_HOSTFILE`` and returns
    the hostfile path (removed at exit), or returns None and changes nothing when the world has one
    rank or both variables are already set.
    """
    if os.environ.get(ENV_RANK) and os.environ.get(ENV_HOSTFILE):
        return None
    own_comm = comm is None
    if own_comm:
        from mpi4py import MPI

        comm = MPI.COMM_WORLD.Dup()
    try:
        rank, size = comm.Get_rank(), comm.Get_size()
        if size == 1:
            return None
        addresses = [host] * size if host else hostaddr.listen_addresses(comm)
        ports = comm.allgather(_pick_free_port(addresses[rank]))
    finally:
        if own_comm:
            comm.Free()
    tmpdir = tempfile.mkdtemp(prefix=f"conformance-mlx-ring-r{rank}-")
    atexit.register(shutil.rmtree, tmpdir, ignore_errors=True)
    hostfile = os.path.join(tmpdir, "hosts.json")
    with open(hostfile, "w", encoding="utf-8") as fh:
        json.dump([[f"{a}:{p}"] for a, p in zip(addresses, ports, strict=True)], fh)
    os.environ[ENV_RANK] = str(rank)
    os.environ[ENV_HOSTFILE] = hostfile
    return hostfile


def listening_ports() -> set[int] | None:
    """Ports some socket of this host listens on (Linux ``/proc/net/tcp``, v4 and v6), or None
    where the system does not say."""
    ports: set[int] = set()
    found = False
    for path in _PROC_TCP:
        try:
            with open(path, encoding="ascii") as fh:
                lines = fh.readlines()[1:]
        except OSError:
            continue
        found = True
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == _LISTEN:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports if found else None


def wait_for_first_listener(seconds: float = LISTEN_WAIT) -> bool:
    """On the ring's last rank: wait until rank 0's port (from ``MLX_HOSTFILE``) listens, when
    rank 0 runs on this host. True once it listens; False at once on other ranks, on another
    host, or without ``/proc``; False after ``seconds`` otherwise (MLX then retries on its own)."""
    try:
        rank = int(os.environ[ENV_RANK])
        with open(os.environ[ENV_HOSTFILE], encoding="utf-8") as fh:
            nodes = json.load(fh)
    except (KeyError, ValueError, OSError):
        return False
    if len(nodes) < 2 or rank != len(nodes) - 1:
        return False
    host, _, port = str(nodes[0][0]).rpartition(":")
    if host != str(nodes[rank][0]).rpartition(":")[0] and not host.startswith("127."):
        return False  # rank 0 is on another host: its sockets are not in this host's tables
    deadline = time.monotonic() + seconds
    while True:
        ports = listening_ports()
        if ports is None:
            return False
        if int(port) in ports:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.005)


def _abort_job(message: str) -> None:
    sys.stderr.write(message + "\n")
    sys.stderr.flush()
    try:
        from mpi4py import MPI

        MPI.COMM_WORLD.Abort(3)
    finally:
        os._exit(3)


@contextlib.contextmanager
def _deadline(seconds: float, what: str) -> Any:
    """Abort the whole MPI job if the block does not finish within ``seconds``."""

    def expire() -> None:
        _abort_job(
            f"conformance.adapters.mlx: {what} did not finish within {seconds:g}s "
            f"(MLX_RANK={os.environ.get(ENV_RANK)!r}, "
            f"MLX_HOSTFILE={os.environ.get(ENV_HOSTFILE)!r}); "
            f"a peer probably failed to connect. Aborting the job."
        )

    with isolation.deadline(seconds, expire):
        yield


def _eager(mx: Any, fn: Callable[..., Any]) -> Callable[..., Any]:
    # Arguments go to MLX untouched so that its own argument errors (TypeError for a positional
    # group, ValueError for a bad rank) are what the suite sees.
    @functools.wraps(fn)
    def call(*args: Any, **kwargs: Any) -> Any:
        out = fn(*args, **kwargs)
        mx.eval(out)
        return out

    return call


class MLXRingBackend:
    """The API of ``mlx.core.distributed`` plus the adapter hooks of the backend contract."""

    name = "mlx"
    # The Backend contract's declaration: views never reach MLX (see ``asarray``).
    layout_copy = "mx.array copies every numpy input into MLX's own C-order memory"

    def __init__(self, mx: Any | None = None, *, lazy: bool | None = None) -> None:
        self.mx = mx if mx is not None else _import_mlx()
        self.distributed = self.mx.distributed
        self.version: str = str(self.mx.__version__)
        self.lazy = os.environ.get(ENV_LAZY, "") not in ("", "0") if lazy is None else lazy
        self.missing = missing_ops(self.distributed)
        self.capabilities = ring_capabilities(world_size(), self.missing)
        self.Group = self.distributed.Group
        # Before MLX 0.30.1 is_available() takes no backend name; it is passed through unchanged
        # so that the suite reports that difference from the spec.
        self.is_available = self.distributed.is_available
        self._configured = False
        self._lock = threading.Lock()
        self._dtypes = {
            name: getattr(self.mx, "bool_" if name == "bool" else name) for name in DTYPE_NAMES
        }
        for op in COMMUNICATION_OPS:
            if op in self.missing:
                setattr(self, op, _absent(op, self.version))
                continue
            fn = getattr(self.distributed, op)
            setattr(self, op, fn if self.lazy else _eager(self.mx, fn))

        def init(*args: Any, **kwargs: Any) -> Any:
            return self._init(*args, **kwargs)

        # The suite reads signatures from MLX's docstrings (nanobind functions have no
        # inspect.signature), so the wrapper carries MLX's name and docstring.
        self.init = functools.wraps(self.distributed.init)(init)

    def _init(self, *args: Any, **kwargs: Any) -> Any:
        """``mx.distributed.init`` after configuring the ring from the MPI rank (first call only).

        Collective on the first call: every MPI rank must call it. Exposed as ``init``, with
        MLX's own name, docstring and so signature.
        """
        with self._lock:
            first = not self._configured
            if first:
                configure_ring()
                self._configured = True
        timeout = float(os.environ.get(ENV_INIT_TIMEOUT, DEFAULT_INIT_TIMEOUT))
        with _deadline(timeout, "mx.distributed.init (forming the ring)"):
            if first:
                # Only the first call forms the ring; rank 0 stops listening once it has.
                wait_for_first_listener()
            return self.distributed.init(*args, **kwargs)

    def dtype(self, name: str) -> Any:
        """The MLX dtype for one of the 14 dtype names (KeyError for others)."""
        try:
            return self._dtypes[name]
        except KeyError:
            raise KeyError(f"unknown dtype name {name!r}; expected one of {DTYPE_NAMES}") from None

    def asarray(self, a: Any) -> Any:
        """numpy (any layout) -> ``mx.array`` with the same shape, dtype and values.

        dtypes outside the 14 go through MLX's own conversion unchanged (so the suite sees what
        MLX does with them, e.g. complex128 silently becoming complex64).
        """
        a = np.asarray(a)
        if not a.flags.c_contiguous:
            # MLX takes numpy input through DLPack and rejects negative strides outright
            # ("Cannot convert DLPack arrays with negative strides"); any layout is the spec's.
            a = np.array(a, order="C", copy=True)
        name = _dtype_name(a.dtype)
        if name is None:
            return self.mx.array(a)
        if name == "bfloat16":
            # Goes through the raw bits: numpy's buffer protocol has no bfloat16 format.
            bits = a.view(np.uint16)
            return self.mx.array(bits).view(self.mx.bfloat16)
        # MLX narrows float64 to float32 unless told the dtype.
        return self.mx.array(a, dtype=self._dtypes[name])

    def to_numpy(self, x: Any) -> np.ndarray:
        """``mx.array`` (or anything numpy accepts) -> a new numpy array; bfloat16 via ml_dtypes."""
        if not isinstance(x, self.mx.array):
            return np.array(x)
        self.mx.eval(x)
        if x.dtype == self.mx.bfloat16:
            import ml_dtypes

            return np.array(x.view(self.mx.uint16)).view(ml_dtypes.bfloat16)
        return np.array(x)

    def evaluate(self, *xs: Any) -> None:
        """Force MLX's lazy work on every ``mx.array`` among ``xs``."""
        arrays = [x for x in xs if isinstance(x, self.mx.array)]
        if arrays:
            self.mx.eval(*arrays)

    def __repr__(self) -> str:
        mode = "lazy" if self.lazy else "eager"
        return f"<MLXRingBackend mlx {self.version} ({mode})>"


def _dtype_name(dt: np.dtype) -> str | None:
    if dt == np.bool_:
        return "bool"
    if dt.name in DTYPE_NAMES and dt.kind != "V":
        return dt.name
    try:
        import ml_dtypes
    except ImportError:
        return None
    return "bfloat16" if dt == ml_dtypes.bfloat16 else None


def make_backend(*, lazy: bool | None = None) -> Backend:
    """A new MLX ring backend for the suite (imports MLX; ImportError with the install hint).

    ``lazy`` defaults to ``CONFORMANCE_MLX_LAZY``; see the module docstring.
    """
    return as_backend(MLXRingBackend(lazy=lazy))


def as_backend(adapter: MLXRingBackend) -> Backend:
    """The suite's Backend for an MLX adapter object (its API, hooks and capabilities)."""
    return Backend(
        adapter.name,
        adapter,
        version=adapter.version,
        asarray=adapter.asarray,
        to_numpy=adapter.to_numpy,
        evaluate=adapter.evaluate,
        dtype=adapter.dtype,
        capabilities=adapter.capabilities,
        layout_copy=adapter.layout_copy,
    )


_backend: Backend | None = None


def __getattr__(name: str) -> Any:
    # ``backend`` is created on first access so that importing this module never needs MLX.
    global _backend
    if name == "backend":
        if _backend is None:
            _backend = make_backend()
        return _backend
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
