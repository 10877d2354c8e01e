"""The 14 dtypes of the API and how each one travels over MPI.

SEMANTICS.md, "dtypes (core)": bool, int8, int16, int32, int64, uint8, uint16, uint32, uint64,
float16, bfloat16, float32, float64, complex64. bfloat16 is ``ml_dtypes.bfloat16``. Anything else
raises a TypeError naming the supported list. Python scalars convert as in MLX:
bool -> bool, int -> int32, float -> float32, complex -> complex64.
"""

from __future__ import annotations

from typing import Any

import ml_dtypes
import numpy as np

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

NUMPY_DTYPES: dict[str, np.dtype] = {
    name: np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
    for name in DTYPE_NAMES
}

SUPPORTED_DTYPES: tuple[np.dtype, ...] = tuple(NUMPY_DTYPES.values())

# A stable small integer per dtype: it goes into message headers, so it must not depend on
# anything that differs between processes.
DTYPE_CODES: dict[np.dtype, int] = {dt: code for code, dt in enumerate(SUPPORTED_DTYPES)}
# The classes of the dtype objects themselves (np.dtype subclasses such as Float32DType).
_DTYPE_CLASSES = frozenset(type(dt) for dt in SUPPORTED_DTYPES)

FLOATING = frozenset(NUMPY_DTYPES[n] for n in ("float16", "bfloat16", "float32", "float64"))
COMPLEX = frozenset({NUMPY_DTYPES["complex64"]})
BOOL = NUMPY_DTYPES["bool"]

_SCALAR_DTYPES: tuple[tuple[type, np.dtype], ...] = (
    # bool before int: bool is a subclass of int.
    (bool, NUMPY_DTYPES["bool"]),
    (int, NUMPY_DTYPES["int32"]),
    (float, NUMPY_DTYPES["float32"]),
    (complex, NUMPY_DTYPES["complex64"]),
)

_SUPPORTED_LIST = ", ".join(DTYPE_NAMES)


def dtype_name(dtype: np.dtype) -> str:
    """The API name of a supported numpy dtype ('bfloat16', 'float32', ...)."""
    return "bfloat16" if dtype == NUMPY_DTYPES["bfloat16"] else dtype.name


def unsupported_dtype_error(what: str, dtype: Any) -> TypeError:
    return TypeError(f"{what} has unsupported dtype {dtype}; supported: {_SUPPORTED_LIST}")


def as_dtype(dtype: Any) -> np.dtype:
    """Normalise the ``dtype`` argument of ``recv``: a name, a numpy dtype or a scalar type.

    Raises TypeError for anything that is not one of the 14 supported dtypes.
    """
    if type(dtype) in _DTYPE_CLASSES and dtype in DTYPE_CODES:  # the hot path: recv_like
        return dtype
    if isinstance(dtype, str) and dtype in NUMPY_DTYPES:
        return NUMPY_DTYPES[dtype]
    for python_type, scalar_dtype in _SCALAR_DTYPES:
        # Python's own types mean what they mean for scalars (int -> int32), not numpy's int64.
        if dtype is python_type:
            return scalar_dtype
    try:
        normalised = np.dtype(dtype)
    except TypeError:
        raise unsupported_dtype_error("recv's dtype argument", repr(dtype)) from None
    if dtype is None or normalised not in DTYPE_CODES:
        raise unsupported_dtype_error("recv's dtype argument", repr(dtype))
    return normalised


def as_array(x: Any, op: str) -> np.ndarray:
    """Turn an API input into a C-contiguous numpy array of a supported dtype.

    Contiguous arrays pass through without a copy (the transport reads their buffer directly);
    other layouts are copied once. Python scalars follow MLX's conversion rules.
    """
    if isinstance(x, np.ndarray):
        array = x
    elif isinstance(x, np.generic):
        array = np.asarray(x)
    else:
        array = _scalar_to_array(x, op)
    if array.dtype not in DTYPE_CODES:
        native = array.dtype.newbyteorder("=")
        if native not in DTYPE_CODES:
            raise unsupported_dtype_error(f"{op}: the input", array.dtype)
        # A supported dtype in the other byte order: the wire and the result are native.
        array = array.astype(native)
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array


def _scalar_to_array(x: Any, op: str) -> np.ndarray:
    for python_type, dtype in _SCALAR_DTYPES:
        if isinstance(x, python_type):
            try:
                return np.asarray(x, dtype=dtype)
            except OverflowError:
                raise ValueError(
                    f"{op}: the Python int {x} does not fit in int32, MLX's dtype for Python ints"
                ) from None
    raise TypeError(f"{op}: expected a numpy array or a Python scalar, got {type(x).__name__}")


def as_shape(shape: Any, op: str) -> tuple[int, ...]:
    """Validate the ``shape`` argument of ``recv``: a sequence of non-negative ints."""
    if type(shape) is tuple and all(type(dim) is int and dim >= 0 for dim in shape):
        return shape  # the hot path: recv_like passes an array's shape
    if isinstance(shape, (str, bytes)) or not hasattr(shape, "__iter__"):
        raise TypeError(f"{op}: shape must be a sequence of ints, got {type(shape).__name__}")
    dims = tuple(shape)
    for dim in dims:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"{op}: shape must be a sequence of ints, got {shape!r}")
        if dim < 0:
            raise ValueError(f"{op}: shape must not have negative dimensions, got {shape!r}")
    return tuple(int(d) for d in dims)


def describe(dtype: np.dtype, shape: tuple[int, ...]) -> str:
    """How error messages name an array: ``float32 (5,)``."""
    return f"{dtype_name(dtype)} {tuple(shape)}"
