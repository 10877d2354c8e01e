"""Spec of ``sum_scatter(x, *, group=None, stream=None)``: rank r's slice of the sum.

SEMANTICS.md, "sum_scatter" and "Size-1 groups"; manifest entry ``[ops.sum_scatter]``. Only some
MLX backends implement it; a backend that declares it unsupported must raise on every rank.
"""

from __future__ import annotations

import pytest

from conformance.harness.collective import collective_raises
from conformance.specs import data, reductions
from conformance.specs.calls import settle
from conformance.specs.declared import collective_dtypes
from conformance.specs.groups import require_size, singleton_group

OP = "sum_scatter"
pytestmark = pytest.mark.core

_UNSUPPORTED = "sum_scatter declared unsupported (test_unsupported_raises_everywhere checks it)"


def _require_supported(world, capabilities):
    if world.size() > 1 and not capabilities.supports(OP):
        pytest.skip(_UNSUPPORTED)


@pytest.mark.spec(OP, rule="slice-of-sum")
@pytest.mark.parametrize("dtype", data.DTYPE_NAMES)
def test_slice_of_sum(backend, world, capabilities, dtype):
    """Rank r gets rows [r*c, (r+1)*c) of the element-wise sum, c = rows // N.

    SEMANTICS.md, sum_scatter: "Output = `all_sum(x)[r*c:(r+1)*c]` with `c = shape[0] // N` on
    rank r."
    """
    _require_supported(world, capabilities)
    size = world.size()
    if not capabilities.supports(OP, dtype):
        x = data.contribution(world.rank(), (size,), dtype)
        reductions.unsupported_raises(backend, OP, x, world)
        return
    shapes = [(size,), (2 * size,), (3 * size, 5), (size, 2, 3), (0,), (2 * size, 0)]
    cases = [
        (f"{dtype} {shape}", data.contributions(size, shape, dtype, salt=i))
        for i, shape in enumerate(shapes)
    ]
    reductions.check(backend, None, OP, world, cases, same_everywhere=False)


@pytest.mark.spec(OP, rule="divisibility")
def test_indivisible_axis0_raises(backend, world, capabilities):
    """An axis 0 not divisible by N, or a 0-d input, is a ValueError at call time.

    SEMANTICS.md, sum_scatter: "N > 1: input must have ndim >= 1 and shape[0] divisible by N,
    else ValueError raised at call time".
    """
    require_size(world, 2)
    _require_supported(world, capabilities)
    size, rank = world.size(), world.rank()
    for shape in ((size + 1, 3), (2 * size - 1,), ()):
        x = data.contribution(rank, shape, "float32")
        with collective_raises(ValueError, match=r"(?i)shape"):
            backend.evaluate(backend.sum_scatter(backend.asarray(x), group=world))


@pytest.mark.spec(OP, rule="singleton-identity")
def test_size_one_group_returns_input(backend, world, capabilities):
    """On a group of size 1 the input comes back unchanged, 0-d and odd sizes included.

    SEMANTICS.md, Size-1 groups: "returns the input unchanged (same shape, dtype, values; a 0-d
    input stays 0-d, even for all_gather and sum_scatter)".
    """
    group = singleton_group(world, capabilities)
    # A dtype declared unsupported is checked to raise as declared, not skipped.
    dtypes = collective_dtypes(backend, capabilities, OP, group, data.DTYPE_NAMES)
    shapes = ((), (5,), (3, 2))
    settle(reductions.identity_alone(backend, OP, group, world.rank(), dtypes, shapes))


@pytest.mark.spec(OP, rule="unsupported-raises")
def test_unsupported_raises_everywhere(backend, world, capabilities):
    """A backend without sum_scatter raises on every rank instead of hanging or returning data.

    SEMANTICS.md, sum_scatter: "a backend may declare it unsupported, and then it must raise, on
    every rank, without hanging."
    """
    if capabilities.supports(OP):
        pytest.skip("backend declares sum_scatter supported (the other specs check it)")
    require_size(world, 2)
    for dtype in ("float32", "int32"):
        x = data.contribution(world.rank(), (2 * world.size(),), dtype)
        reductions.unsupported_raises(backend, OP, x, world)
