"""A backend with its own adapter hooks and capabilities: like the reference, except that it
declares ``sum_scatter`` and ``split`` unsupported. Its sum_scatter raises (as it must); its split
still works (a declared-unsupported op that does not raise: the suite must report it)."""

from typing import Any

import numpy as np

import reference
from conformance.backend import DATA_OPS, DTYPE_NAMES, Capabilities
from reference import (  # noqa: F401
    Group,
    all_gather,
    all_max,
    all_min,
    all_sum,
    init,
    is_available,
    recv,
    recv_like,
    send,
)

__version__ = "9.9.9"
BACKEND_NAME = "fake-adapter"

capabilities = Capabilities(
    dtypes={op: frozenset(DTYPE_NAMES) - {"complex64"} for op in DATA_OPS},
    split=False,
    sum_scatter=False,
)

hook_calls: list[str] = []


def sum_scatter(x: Any, *, group: Any = None, stream: Any = None) -> Any:
    raise RuntimeError("[fake] sum_scatter not supported.")


def asarray(a: np.ndarray) -> np.ndarray:
    hook_calls.append("asarray")
    return np.array(a)


def to_numpy(x: Any) -> np.ndarray:
    hook_calls.append("to_numpy")
    return np.asarray(x)


def evaluate(*xs: Any) -> None:
    hook_calls.append("evaluate")


def dtype(name: str) -> Any:
    return reference.SUPPORTED_DTYPES[reference.DTYPE_NAMES.index(name)]
