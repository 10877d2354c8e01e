"""Running all_sum / all_max / all_min / all_gather / sum_scatter and what each must return.

The per-op spec modules (test_all_sum.py, ...) share these so that every op is checked the same
way: inputs from ``data.contribution``, expected results computed locally from every rank's
contribution, comparisons from ``tolerance``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from conformance.harness.collective import expect_unsupported
from conformance.specs import data
from conformance.specs.calls import (
    attempt,
    call,
    call_everywhere,
    describe_error,
    differing,
    settle,
)
from conformance.specs.tolerance import mismatch, same_bytes, sum_tolerance

REDUCTIONS = ("all_sum", "all_max", "all_min")


def expected(op: str, blocks: Sequence[np.ndarray], rank: int) -> np.ndarray:
    """What ``op`` must return on ``rank`` when rank r passes ``blocks[r]``."""
    if op == "all_sum":
        return data.expected_sum(blocks)
    if op == "all_max":
        return data.expected_extreme(blocks, larger=True)
    if op == "all_min":
        return data.expected_extreme(blocks, larger=False)
    if op == "all_gather":
        return data.expected_gather(blocks)
    if op == "sum_scatter":
        return data.expected_scatter(blocks, rank)
    raise ValueError(op)


def tolerance(op: str, blocks: Sequence[np.ndarray], rank: int) -> np.ndarray | None:
    """Per-element float tolerance (sums only; max, min and gather are exact)."""
    if op == "all_sum":
        return sum_tolerance(blocks)
    if op == "sum_scatter":
        bound = sum_tolerance(blocks)
        if bound is None or len(blocks) == 1:  # a group of one returns its input: exact
            return None
        rows = blocks[0].shape[0] // len(blocks)
        return bound[rank * rows : (rank + 1) * rows]
    return None


def verdict(
    op: str, got: object, blocks: Sequence[np.ndarray], rank: int, what: str = "result"
) -> str | None:
    """Why ``got`` is not what ``op`` must return on ``rank`` (``mismatch`` within ``tolerance``),
    or None. A result bit for bit the expected one passes at once: the tolerance (a dozen array
    passes) is computed only when some element differs."""
    want = expected(op, blocks, rank)
    if isinstance(got, np.ndarray) and same_bytes(got, want):
        return None
    return mismatch(got, want, tolerance(op, blocks, rank), what)


def run(backend: Any, op: str, x: Any, group: Any, *, convert: bool = True) -> np.ndarray:
    """``op(x, group=group)`` on every rank, forced and back in numpy (collective-safe).

    ``x`` is a numpy array (handed to the backend through ``asarray``) unless ``convert`` is
    False, when it goes in as is (Python scalars, layouts, unsupported dtypes).
    """

    return call(f"{op} of {_name(x)}", _runner(backend, op, x, group, convert))


def _runner(backend: Any, op: str, x: Any, group: Any, convert: bool = True) -> Any:
    def go() -> np.ndarray:
        arg = backend.asarray(x) if convert else x
        out = getattr(backend, op)(arg, group=group)
        backend.evaluate(out)
        return backend.to_numpy(out)

    return go


def identity_alone(
    backend: Any,
    op: str,
    group: Any,
    rank: int,
    dtypes: Sequence[str],
    shapes: Sequence[tuple[int, ...]],
) -> list[str | None]:
    """The findings of ``op`` on ``group``, the size-1 group of this rank, returning its input
    (``data.contribution``) unchanged for each dtype and shape.

    No other rank is in the group, so no call can leave another rank blocked, and the calls go
    without an exchange each: an exception is a finding (settled with the others at the end of
    the test), and the first one ends the calls here (a group that wrongly spans other ranks then
    costs one deadline at most, not one per call).
    """
    problems: list[str | None] = []
    for dtype in dtypes:
        for shape in shapes:
            x = data.contribution(rank, shape, dtype)
            got, error = attempt(_runner(backend, op, x, group))
            if error is not None:
                return [*problems, f"{op} of {_name(x)} raised {describe_error(error)}"]
            problems.append(mismatch(got, x, None, dtype))
    return problems


def _name(x: Any) -> str:
    return data.describe(x) if isinstance(x, np.ndarray) else repr(x)


def check(
    backend: Any,
    control: Any,
    op: str,
    group: Any,
    cases: Sequence[tuple[str, Sequence[np.ndarray]]],
    *,
    same_everywhere: bool = True,
) -> None:
    """Run ``op`` on each case (label, every rank's input) and settle all findings at once.

    ``same_everywhere`` also requires bit-identical results on every rank (reductions,
    all_gather); the world's control plane compares them, so it needs ``group`` to span it.
    """
    rank = group.rank()
    problems: list[str | None] = []
    for label, blocks in cases:
        if same_everywhere:
            go = _runner(backend, op, blocks[rank], group)
            got, digests = call_everywhere(control, f"{op} of {label}", go)
            problems.append(differing(digests, f"{op} {label}"))
        else:
            got = run(backend, op, blocks[rank], group)
        problems.append(verdict(op, got, blocks, rank, f"{op} {label}"))
    settle(problems, op)


def supported_dtypes(
    backend: Any, capabilities: Any, op: str, group: Any, dtypes: Sequence[str] = data.DTYPE_NAMES
) -> list[str]:
    """The dtypes of ``dtypes`` the backend declares supported for ``op``. Each one it declares
    unsupported is not dropped silently: it must raise as the manifest names (on every rank,
    fast), checked here first."""
    kept = []
    for dtype in dtypes:
        if capabilities.supports(op, dtype):
            kept.append(dtype)
        else:
            x = data.contribution(group.rank(), (2 * group.size(),), dtype)
            unsupported_raises(backend, op, x, group)
    return kept


def unsupported_raises(backend: Any, op: str, x: np.ndarray, group: Any) -> None:
    """A backend that declares ``op`` on ``x``'s dtype unsupported must raise on every rank, fast
    (a TimeoutError does not count)."""

    def go() -> Any:
        return getattr(backend, op)(backend.asarray(x), group=group)

    checked = expect_unsupported(backend, op, go, for_dtype=data.dtype_name(x.dtype))
    if not checked:
        settle([f"{op} on {data.describe(x)} is supported; unsupported_raises misused"])
