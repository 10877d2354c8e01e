"""Spec of ``all_min(x, *, group=None, stream=None)``: element-wise minimum over the group.

SEMANTICS.md, "Reductions" and "Size-1 groups"; manifest entry ``[ops.all_min]``. The checks are
shared with the other extreme in ``extremes.py``.
"""

from __future__ import annotations

import pytest

from conformance.specs import data, extremes, reductions

OP = "all_min"


@pytest.mark.core
@pytest.mark.spec(OP, rule="values")
@pytest.mark.parametrize("dtype", data.DTYPE_NAMES)
def test_values(backend, world, control, capabilities, dtype):
    """all_min of rank- and position-encoded data, every shape, is exact for every dtype.

    SEMANTICS.md, Reductions: "Integer and bool results are exact." (minimum involves no rounding,
    so floats are exact too.) Manifest: all_min / values.
    """
    extremes.values(backend, world, control, capabilities, OP, dtype)


@pytest.mark.core
@pytest.mark.spec(OP, rule="shape-dtype")
def test_shape_and_dtype_preserved(backend, world, control, capabilities):
    """The result has the input's shape and dtype (no promotion), the same on every rank.

    SEMANTICS.md, Reductions: "Output shape and dtype equal the input's. No promotion. Every rank
    gets the same result." Manifest: all_min / shape-dtype.
    """
    extremes.shape_dtype(backend, world, control, capabilities, OP)


@pytest.mark.core
@pytest.mark.spec(OP, rule="bool")
def test_bool_is_logical_and(backend, world, control, capabilities):
    """all_min of bool arrays is element-wise AND, over every combination of contributions.

    SEMANTICS.md, Reductions: "bool: all_sum is logical OR, all_max is OR, all_min is AND."
    [MLX's mpi backend aborts the job on bool reductions.] Manifest: all_min / bool.
    """
    if not reductions.supported_dtypes(backend, capabilities, OP, world, ["bool"]):
        return  # declared unsupported: it raised as the manifest names
    extremes.bool_pattern(backend, world, control, OP)


@pytest.mark.core
@pytest.mark.spec(OP, rule="complex-lexicographic")
def test_complex_lexicographic(backend, world, control, capabilities):
    """complex64 values compare by real part, then imaginary part (not by magnitude).

    SEMANTICS.md, Reductions: "complex64 max/min compare lexicographically: real part first,
    then imaginary part." Manifest: all_min / complex-lexicographic.
    """
    if not reductions.supported_dtypes(backend, capabilities, OP, world, ["complex64"]):
        return  # declared unsupported: it raised as the manifest names
    extremes.complex_lexicographic(backend, world, control, OP)


@pytest.mark.impl_defined
@pytest.mark.spec(OP, rule="nan")
def test_nan_within_bounds(backend, world, capabilities):
    """NaN handling is impl-defined; only the bounds are checked.

    SEMANTICS.md, Reductions: "impl-defined: NaN in all_max/all_min (ring and mpi disagree
    [observed]). The reference propagates NaN." Bounds checked: NaN on every rank gives NaN; NaN
    on one rank gives NaN or a value within the other ranks' range; positions without NaN are
    exact. Manifest: all_min / nan.
    """
    extremes.nan_bounds(backend, world, capabilities, OP)


@pytest.mark.core
@pytest.mark.spec(OP, rule="empty-0d")
def test_empty_and_0d(backend, world, control, capabilities):
    """0-d and empty inputs (shape (), (0,), (3, 0), (0, 3)) work for every dtype.

    SEMANTICS.md, Reductions: "Empty arrays (shape (0,), (3,0)) and 0-d arrays work."
    Manifest: all_min / empty-0d.
    """
    extremes.empty_0d(backend, world, control, capabilities, OP)


@pytest.mark.core
@pytest.mark.spec(OP, rule="singleton-identity")
def test_size_one_group_returns_input(backend, world, capabilities):
    """On a group of size 1 the input comes back unchanged, 0-d staying 0-d.

    SEMANTICS.md, Size-1 groups: "`all_sum`, `all_max`, `all_min`, `all_gather`,
    `sum_scatter` return the input unchanged (same shape, dtype, values; a 0-d input stays 0-d)".
    Manifest: all_min / singleton-identity.
    """
    extremes.singleton_identity(backend, world, capabilities, OP)
