"""Spec of ``all_max`` and ``all_min(x, *, group=None, stream=None)``: the element-wise maximum
and minimum over the group.

SEMANTICS.md, "Reductions" and "Size-1 groups"; manifest entries ``[ops.all_max]`` and
``[ops.all_min]``. The two ops share every rule, so each test runs for both (parameter ``op``) and
each parameter cites its own op's rule; the checks live in ``extremes.py``.
"""

from __future__ import annotations

import pytest

from conformance.specs import data, extremes, reductions

OPS = ("all_max", "all_min")


def both_ops(rule: str) -> pytest.MarkDecorator:
    """Parametrise a test by op, each parameter citing ``rule`` of its own op."""
    return pytest.mark.parametrize(
        "op", [pytest.param(op, marks=pytest.mark.spec(op, rule=rule)) for op in OPS]
    )


@pytest.mark.core
@pytest.mark.parametrize("dtype", data.DTYPE_NAMES)
@both_ops("values")
def test_values(backend, world, control, capabilities, op, dtype):
    """all_max / all_min of rank- and position-encoded data, every shape, are exact for every
    dtype.

    SEMANTICS.md, Reductions: "Integer and bool results are exact." (maximum and minimum involve
    no rounding, so floats are exact too.)
    """
    extremes.values(backend, world, control, capabilities, op, dtype)


@pytest.mark.core
@both_ops("shape-dtype")
def test_shape_and_dtype_preserved(backend, world, control, capabilities, op):
    """The result has the input's shape and dtype (no promotion), the same on every rank.

    SEMANTICS.md, Reductions: "Output shape and dtype equal the input's. No promotion. Every rank
    gets the same result."
    """
    extremes.shape_dtype(backend, world, control, capabilities, op)


@pytest.mark.core
@both_ops("bool")
def test_bool_max_is_or_min_is_and(backend, world, control, capabilities, op):
    """all_max of bool arrays is element-wise OR, all_min is AND, over every combination of
    contributions.

    SEMANTICS.md, Reductions: "bool: all_sum is logical OR, all_max is OR, all_min is AND."
    [MLX's mpi backend aborts the job on bool reductions.]
    """
    if not reductions.supported_dtypes(backend, capabilities, op, world, ["bool"]):
        return  # declared unsupported: it raised as the manifest names
    extremes.bool_pattern(backend, world, control, op)


@pytest.mark.core
@both_ops("complex-lexicographic")
def test_complex_lexicographic(backend, world, control, capabilities, op):
    """complex64 values compare by real part, then imaginary part (not by magnitude).

    SEMANTICS.md, Reductions: "complex64 max/min compare lexicographically: real part first,
    then imaginary part."
    """
    if not reductions.supported_dtypes(backend, capabilities, op, world, ["complex64"]):
        return  # declared unsupported: it raised as the manifest names
    extremes.complex_lexicographic(backend, world, control, op)


@pytest.mark.impl_defined
@both_ops("nan")
def test_nan_within_bounds(backend, world, capabilities, op):
    """NaN handling is impl-defined; only the bounds are checked.

    SEMANTICS.md, Reductions: "impl-defined: NaN in all_max/all_min (ring and mpi disagree
    [observed]). The reference propagates NaN." Bounds checked: NaN on every rank gives NaN; NaN
    on one rank gives NaN or a value within the other ranks' range; positions without NaN are
    exact. (test_values.py::test_nan_placement checks the tighter bounds, rank by rank.)
    """
    extremes.nan_bounds(backend, world, capabilities, op)


@pytest.mark.core
@both_ops("empty-0d")
def test_empty_and_0d(backend, world, control, capabilities, op):
    """0-d and empty inputs (shape (), (0,), (3, 0), (0, 3)) work for every dtype.

    SEMANTICS.md, Reductions: "Empty arrays (shape (0,), (3,0)) and 0-d arrays work."
    """
    extremes.empty_0d(backend, world, control, capabilities, op)


@pytest.mark.core
@both_ops("singleton-identity")
def test_size_one_group_returns_input(backend, world, capabilities, op):
    """On a group of size 1 the input comes back unchanged, 0-d staying 0-d.

    SEMANTICS.md, Size-1 groups: "`all_sum`, `all_max`, `all_min`, `all_gather`,
    `sum_scatter` return the input unchanged (same shape, dtype, values; a 0-d input stays 0-d)".
    """
    extremes.singleton_identity(backend, world, capabilities, op)
