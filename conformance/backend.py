"""The backend under test: its API, its adapter hooks, its capabilities, and how one is chosen.

A backend is any object with the API of SEMANTICS.md (``init``, ``is_available``, ``all_sum``, ...)
plus four adapter hooks (``asarray``, ``to_numpy``, ``evaluate``, ``dtype``), ``capabilities`` and
``layout_copy`` (whether ``asarray`` keeps numpy layouts).
A module that implements the API directly on numpy arrays (like ``reference``) needs no adapter:
``load_backend`` wraps it with numpy hooks and full capabilities, using any hook or ``capabilities``
attribute the module does define.

Selection strings, most specific first (see ``load_backend``): a built-in name (``reference``,
``mlx``, ``faulty:<fault>``), an entry point in group ``conformance.backends``, or
``package.module[:attribute]``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import mmap
import sys
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import ml_dtypes
import numpy as np

# The operations that move data; these are the ones with a per-dtype support table.
DATA_OPS: tuple[str, ...] = (
    "all_sum",
    "all_max",
    "all_min",
    "all_gather",
    "sum_scatter",
    "send",
    "recv",
    "recv_like",
)

API_NAMES: tuple[str, ...] = ("init", "is_available", "Group", *DATA_OPS)

DTYPE_NAMES: tuple[str, ...] = (
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex64",
)

HOOK_NAMES: tuple[str, ...] = ("asarray", "to_numpy", "evaluate", "dtype")

ENTRY_POINT_GROUP = "conformance.backends"

# Built-in names resolve lazily: their modules import heavy or optional packages (mlx).
_BUILTIN_TARGETS: dict[str, str] = {
    "reference": "reference",
    "mlx": "conformance.adapters.mlx:backend",
}
_FAULTY_FACTORY = "conformance.adapters.faulty:make_backend"

TOPOLOGIES = ("any", "neighbours")

# numpy 2 moved byte_bounds to numpy.lib.array_utils; numpy 1.x has it at the top level.
_byte_bounds = getattr(getattr(np.lib, "array_utils", np), "byte_bounds", None) or np.byte_bounds

# The widest alignment a backend may rely on (cache lines, AVX-512 loads): the numpy asarray hook
# keeps an input's address modulo this, so an unaligned view stays unaligned.
_ALIGNMENT = 64
_OWN_PAGES_FROM = 64 * 1024
# numpy advises transparent huge pages for its allocations from 4 MiB (numpy's alloc.c).
_HUGE_PAGES_FROM = 4 << 20
_ADVISE_HUGE = getattr(mmap, "MADV_HUGEPAGE", None)


class BackendControlFlowError(RuntimeError):
    """A backend call raised one of the test runner's control-flow exceptions (a pytest skip,
    xfail, fail or exit; a Hypothesis ``assume``). Only the spec decides what is tested: a
    backend that skips its own inputs would turn untested cases into skips or passes."""


# The runners' control-flow exceptions: (module, class names).
_CONTROL_FLOW = (
    ("_pytest.outcomes", ("OutcomeException", "Exit")),
    ("unittest", ("SkipTest",)),  # pytest reads it as a skip too
    ("hypothesis.errors", ("UnsatisfiedAssumption",)),
)


def _control_flow_types() -> tuple[type[BaseException], ...]:
    """The control-flow exception types of the runners loaded in this process. A backend can
    only raise one from a module already loaded, so nothing is imported here: an import in the
    error path (Hypothesis takes about 0.5 s) would count against the backend's deadline."""
    types_: list[type[BaseException]] = []
    for module_name, names in _CONTROL_FLOW:
        module = sys.modules.get(module_name)
        types_ += [getattr(module, name) for name in names if hasattr(module, name)]
    return tuple(types_)


def guarded(what: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` (an API op or adapter hook named ``what``) such that a test-runner control
    flow exception raised inside it (``pytest.skip``, ``xfail``, ``fail``, ``exit``,
    ``unittest.SkipTest``, Hypothesis' ``assume``) becomes :class:`BackendControlFlowError`
    naming the call: an error of the test, never a skip, expected failure or ended session."""

    @functools.wraps(function)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except BaseException as exc:
            if not isinstance(exc, _control_flow_types()):
                raise
            raise BackendControlFlowError(
                f"the backend call {what} raised {type(exc).__name__} ({exc}): a backend must "
                "not skip, xfail, fail or exit the test; it returns a result or raises an error"
            ) from exc

    return call


class BackendLoadError(RuntimeError):
    """A backend selection string could not be turned into a Backend (the message says why)."""


@dataclass(frozen=True)
class Capabilities:
    """What a backend declares it supports. The suite tests declared-unsupported features by
    asserting that they raise on every rank, never by skipping them."""

    ops: frozenset[str] = frozenset(API_NAMES)
    dtypes: Mapping[str, frozenset[str]] = field(
        default_factory=lambda: {op: frozenset(DTYPE_NAMES) for op in DATA_OPS}
    )
    p2p_topology: str = "any"
    split: bool = True
    sum_scatter: bool = True
    send_to_self: bool = True
    timeouts: bool = False
    #: Whether mismatched collectives are detected across ranks before data moves. Without such
    #: checks a robust test can pass yet leave stray bytes behind, so ``--isolate=auto`` checks
    #: the world group after every robust test (``harness.isolation.check_group``) and gives the
    #: next test a fresh job unless every link is clean.
    agreement_checks: bool = True

    def __post_init__(self) -> None:
        unknown_ops = set(self.ops) - set(API_NAMES)
        if unknown_ops:
            raise ValueError(f"Capabilities.ops has unknown names {sorted(unknown_ops)}")
        if self.p2p_topology not in TOPOLOGIES:
            raise ValueError(
                f"Capabilities.p2p_topology must be one of {TOPOLOGIES}, not {self.p2p_topology!r}"
            )
        for op, names in self.dtypes.items():
            unknown = set(names) - set(DTYPE_NAMES)
            if unknown:
                raise ValueError(
                    f"Capabilities.dtypes[{op!r}] has unknown dtypes {sorted(unknown)}"
                )

    @classmethod
    def full(cls, *, timeouts: bool = False) -> Capabilities:
        """Every op, every dtype, any topology: what a numpy implementation of the API offers."""
        return cls(timeouts=timeouts)

    def supports(self, op: str, dtype: str | None = None) -> bool:
        """Whether ``op`` (and, if given, ``op`` on ``dtype``) is declared supported.
        ``split`` and ``sum_scatter`` also need their flags."""
        if op not in API_NAMES and op != "split":
            raise ValueError(f"unknown op {op!r}; expected one of {[*API_NAMES, 'split']}")
        if op == "split":
            return self.split
        if op not in self.ops or (op == "sum_scatter" and not self.sum_scatter):
            return False
        if dtype is None:
            return True
        if dtype not in DTYPE_NAMES:
            raise ValueError(f"unknown dtype {dtype!r}; expected one of {list(DTYPE_NAMES)}")
        return dtype in self.dtypes.get(op, frozenset())

    def p2p_allowed(self, src: int, dst: int, size: int) -> bool:
        """Whether the topology allows a message from rank ``src`` to rank ``dst``."""
        if src == dst:
            return self.send_to_self
        if self.p2p_topology == "any":
            return True
        return (dst - src) % size in (1, size - 1)


def numpy_dtype(name: str) -> np.dtype:
    """The numpy dtype for one of the 14 dtype names (bfloat16 is ``ml_dtypes.bfloat16``)."""
    if name not in DTYPE_NAMES:
        raise ValueError(f"unknown dtype name {name!r}; expected one of {list(DTYPE_NAMES)}")
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def own_pages(nbytes: int) -> np.ndarray:
    """``nbytes`` of uint8 on an anonymous mapping of their own, advised as transparent huge
    pages from 4 MiB as numpy advises its own large arrays.

    For buffers whose transfer speed is measured: on the MPICH wheel the same raw call ran up to
    3.5x slower on malloc's heap than on pages of their own (all_sum of 256 KiB: 240 against
    68 us), and which of the two an ``np.empty`` got changed from run to run. MPICH reads a
    peer's memory faster from huge pages (a 64 MiB Send/Recv 6.9 ms against 11.1 ms), so large
    buffers get them as numpy's own large arrays do.
    """
    region = mmap.mmap(-1, max(nbytes, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if nbytes >= _HUGE_PAGES_FROM and _ADVISE_HUGE is not None:
        try:
            region.madvise(_ADVISE_HUGE)
        except OSError:  # THP disabled or unsupported: ordinary pages still work
            pass
    return np.frombuffer(region, np.uint8, nbytes)


def _numpy_asarray(a: np.ndarray) -> np.ndarray:
    """A copy of ``a`` with ``a``'s layout: the same shape, strides, read-only flag and address
    modulo 64 (so a Fortran-order, strided, reversed, broadcast or unaligned view reaches the
    backend as such), in a buffer of its own (so a backend that keeps a reference to its input
    cannot see the caller's later edits, nor edit the caller's array)."""
    a = np.asarray(a)
    if a.size:
        low, high = _byte_bounds(a)
    else:
        low = high = a.ctypes.data
    nbytes = high - low + _ALIGNMENT
    # Large inputs on pages of their own, as the bench's baseline has its buffers.
    raw = np.empty(nbytes, np.uint8) if nbytes < _OWN_PAGES_FROM else own_pages(nbytes)
    start = (low - raw.ctypes.data) % _ALIGNMENT
    copy: np.ndarray = np.ndarray(
        a.shape, a.dtype, buffer=raw, offset=start + a.ctypes.data - low, strides=a.strides
    )
    copy[...] = a
    copy.flags.writeable = a.flags.writeable
    return copy


def _numpy_to_numpy(x: Any) -> np.ndarray:
    return np.asarray(x)


def _numpy_evaluate(*xs: Any) -> None:
    del xs  # numpy is eager: nothing to force


class Backend:
    """A backend under test: the API names as attributes, the adapter hooks, its capabilities.

    ``api`` is any object (usually a module) with the API names as attributes; ``Backend``
    exposes those it has. Hooks default to the numpy ones, capabilities to ``Capabilities.full``
    (with ``timeouts`` set when ``set_timeout`` is given).

    ``layout_copy`` is the adapter's declaration about ``asarray``: empty when numpy inputs reach
    the API with their layout (strides, offset, read-only flag; the numpy hook does this), else a
    sentence saying how the adapter copies them (MLX: into its own C-order memory). The layout
    specs show it, because with a copying adapter they test the adapter's copy, not the backend.
    """

    def __init__(
        self,
        name: str,
        api: Any,
        *,
        version: str = "unknown",
        asarray: Callable[[np.ndarray], Any] | None = None,
        to_numpy: Callable[[Any], np.ndarray] | None = None,
        evaluate: Callable[..., None] | None = None,
        dtype: Callable[[str], Any] | None = None,
        capabilities: Capabilities | None = None,
        set_timeout: Callable[[float], float] | None = None,
        layout_copy: str = "",
    ) -> None:
        self.name = name
        self.version = version
        self.api = api
        self._asarray = guarded("asarray", asarray or _numpy_asarray)
        self._to_numpy = guarded("to_numpy", to_numpy or _numpy_to_numpy)
        self._evaluate = guarded("evaluate", evaluate or _numpy_evaluate)
        self._dtype = dtype or numpy_dtype
        self._set_timeout = set_timeout
        self.layout_copy = layout_copy
        self.capabilities = capabilities or Capabilities.full(timeouts=set_timeout is not None)
        if self.capabilities.timeouts and set_timeout is None:
            raise BackendLoadError(
                f"backend {name!r} declares timeouts=True but provides no set_timeout"
            )

    def __getattr__(self, attr: str) -> Any:
        # Only reached for attributes not set in __init__: the API names. The function is then
        # kept on the instance, so later calls (a bench loop, a test's thousand calls) cost one
        # attribute lookup, as a module attribute does for a user of the API. The functions are
        # guarded (a skip inside one is an error naming it); Group stays the backend's own class.
        if attr in API_NAMES:
            try:
                function = getattr(self.__dict__.get("api"), attr)
            except AttributeError:
                raise AttributeError(f"backend {self.name!r} does not provide {attr!r}") from None
            if attr != "Group" and callable(function):
                function = guarded(attr, function)
            self.__dict__[attr] = function
            return function
        raise AttributeError(f"{type(self).__name__!s} has no attribute {attr!r}")

    def __repr__(self) -> str:
        return f"<Backend {self.name} {self.version}>"

    def asarray(self, a: np.ndarray) -> Any:
        """numpy array -> the backend's array (layout kept unless ``layout_copy`` says why not)."""
        return self._asarray(a)

    def to_numpy(self, x: Any) -> np.ndarray:
        """The backend's array -> numpy (bfloat16 as ``ml_dtypes.bfloat16``)."""
        return self._to_numpy(x)

    def evaluate(self, *xs: Any) -> None:
        """Force lazy work on ``xs``; a no-op for eager backends."""
        self._evaluate(*xs)

    def dtype(self, name: str) -> Any:
        """One of the 14 dtype names -> the backend's dtype object."""
        return self._dtype(name)

    def set_timeout(self, seconds: float) -> float:
        """Set the backend's deadline for blocking operations; returns the previous one."""
        if self._set_timeout is None:
            raise NotImplementedError(f"backend {self.name!r} has no set_timeout")
        return self._set_timeout(seconds)


def load_backend(spec: str) -> Backend:
    """Resolve a selection string to a Backend.

    ``reference`` and ``mlx`` are built in (``mlx`` is ``conformance.adapters.mlx:backend``);
    ``faulty:<fault>`` is ``conformance.adapters.faulty:make_backend(fault)``. Otherwise an entry
    point named ``spec`` in group ``conformance.backends``, else ``package.module[:attribute]``.
    Raises BackendLoadError naming the route tried and the underlying error.
    """
    spec = spec.strip()
    if not spec:
        raise BackendLoadError("empty backend name")
    if spec.startswith("faulty:"):
        fault = spec.removeprefix("faulty:")
        factory = _import_target(_FAULTY_FACTORY, f"built-in backend {spec!r}")
        return _as_backend(_call_factory(factory, spec, fault), spec)
    if spec in _BUILTIN_TARGETS:
        return _as_backend(
            _import_target(_BUILTIN_TARGETS[spec], f"built-in backend {spec!r}"), spec
        )
    entry_point = _find_entry_point(spec)
    if entry_point is not None:
        try:
            target = entry_point.load()
        except Exception as exc:
            raise BackendLoadError(
                f"entry point {spec!r} ({entry_point.value}) in group {ENTRY_POINT_GROUP!r} "
                f"failed to load: {type(exc).__name__}: {exc}"
            ) from exc
        return _as_backend(target, spec)
    return _as_backend(_import_target(spec, f"backend {spec!r}"), spec)


def _find_entry_point(name: str) -> importlib.metadata.EntryPoint | None:
    matches = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP, name=name)
    return next(iter(matches), None)


def _import_target(target: str, what: str) -> Any:
    module_name, _, attribute = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:
        # The forms a name can take help only when the name itself did not resolve; a module
        # that exists but fails as it imports needs its own error.
        missing = isinstance(exc, ModuleNotFoundError) and module_name.startswith(str(exc.name))
        hint = (
            "; expected a built-in name (reference, mlx, faulty:<fault>), an entry point in "
            f"group {ENTRY_POINT_GROUP!r}, or package.module[:attribute]"
            if missing
            else ""
        )
        raise BackendLoadError(
            f"{what}: cannot import module {module_name!r} ({type(exc).__name__}: {exc}){hint}"
        ) from exc
    for part in filter(None, attribute.split(".")):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BackendLoadError(
                f"{what}: module {module_name!r} has no attribute {attribute!r}"
            ) from None
        except Exception as exc:  # a lazily created attribute (mlx's ``backend``) can fail
            raise BackendLoadError(
                f"{what}: {module_name}:{attribute} failed: {type(exc).__name__}: {exc}"
            ) from exc
    return obj


def _call_factory(factory: Any, spec: str, *args: Any) -> Any:
    try:
        return factory(*args)
    except Exception as exc:
        raise BackendLoadError(
            f"backend {spec!r}: factory {getattr(factory, '__qualname__', factory)!r} raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc


def _as_backend(obj: Any, spec: str) -> Backend:
    """A Backend from what a selection string named: a Backend, an object with the API (a module),
    or a zero-argument factory returning either."""
    if isinstance(obj, Backend):
        return obj
    if _has_api(obj):
        return _wrap(obj, spec)
    if callable(obj) and not isinstance(obj, types.ModuleType):
        return _as_backend(_call_factory(obj, spec), spec)
    missing = [name for name in API_NAMES if not hasattr(obj, name)]
    raise BackendLoadError(
        f"backend {spec!r}: {obj!r} is neither a Backend nor an object with the API "
        f"(missing {missing})"
    )


def _has_api(obj: Any) -> bool:
    return all(hasattr(obj, name) for name in ("init", "all_sum"))


def _wrap(api: Any, spec: str) -> Backend:
    hooks = {name: getattr(api, name) for name in HOOK_NAMES if callable(getattr(api, name, None))}
    set_timeout = getattr(api, "set_timeout", None)
    layout_copy = getattr(api, "layout_copy", "")
    if not isinstance(layout_copy, str):
        raise BackendLoadError(
            f"backend {spec!r}: attribute 'layout_copy' is {type(layout_copy).__name__}, "
            f"expected str"
        )
    capabilities = getattr(api, "capabilities", None)
    if capabilities is not None and not isinstance(capabilities, Capabilities):
        raise BackendLoadError(
            f"backend {spec!r}: attribute 'capabilities' is {type(capabilities).__name__}, "
            f"expected conformance.backend.Capabilities"
        )
    return Backend(
        getattr(api, "BACKEND_NAME", spec),
        api,
        version=_version_of(api),
        capabilities=capabilities,
        set_timeout=set_timeout if callable(set_timeout) else None,
        layout_copy=layout_copy,
        **hooks,
    )


def _version_of(api: Any) -> str:
    version = getattr(api, "__version__", None)
    if isinstance(version, str):
        return version
    top = (getattr(api, "__name__", "") or type(api).__module__).partition(".")[0]
    for dist in importlib.metadata.packages_distributions().get(top, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"
