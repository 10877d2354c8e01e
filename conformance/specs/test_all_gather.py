"""Spec of ``all_gather(x, *, group=None, stream=None)``: every rank's array, in rank order.

SEMANTICS.md, "all_gather" and "Size-1 groups"; manifest entry ``[ops.all_gather]``.
"""

from __future__ import annotations

import pytest

from conformance.specs import data, reductions
from conformance.specs.calls import settle
from conformance.specs.groups import singleton_group

OP = "all_gather"
pytestmark = pytest.mark.core


@pytest.mark.spec(OP, rule="rank-order")
@pytest.mark.parametrize("dtype", data.DTYPE_NAMES)
def test_blocks_in_rank_order(backend, world, control, capabilities, dtype):
    """Axis 0 grows N-fold and block r is rank r's input, identical on every rank.

    SEMANTICS.md, all_gather: "N > 1: output shape is the input shape with axis 0 multiplied by
    N, blocks in rank order; ... Every rank gets the same result."
    """
    size = world.size()
    if not capabilities.supports(OP, dtype):
        x = data.contribution(world.rank(), (3,), dtype)
        reductions.unsupported_raises(backend, OP, x, world)
        return
    cases = [
        (f"{dtype} {shape}", data.contributions(size, shape, dtype, salt=i))
        for i, shape in enumerate(data.SHAPES)
        if shape and 0 not in shape
    ]
    reductions.check(backend, control, OP, world, cases)


@pytest.mark.spec(OP, rule="0d")
def test_0d_inputs_give_shape_n(backend, world, control, capabilities):
    """0-d inputs are gathered into a vector of N elements (at N = 1: stays 0-d).

    SEMANTICS.md, all_gather: "a 0-d input gives shape (N,)"; Size-1 groups: "a 0-d input stays
    0-d, even for all_gather and sum_scatter".
    """
    size = world.size()
    cases = [
        (f"{dtype} ()", data.contributions(size, (), dtype))
        for dtype in reductions.supported_dtypes(backend, capabilities, OP, world)
    ]
    reductions.check(backend, control, OP, world, cases)


@pytest.mark.spec(OP, rule="empty")
def test_empty_inputs(backend, world, control, capabilities):
    """Empty inputs gather to empty outputs of the right shape: (0,), (3N, 0), (0, 3).

    SEMANTICS.md, Reductions: "Empty arrays (shape (0,), (3,0)) and 0-d arrays work." with
    all_gather's shape rule "axis 0 multiplied by N".
    """
    size = world.size()
    cases = [
        (f"{dtype} {shape}", data.contributions(size, shape, dtype))
        for dtype in reductions.supported_dtypes(backend, capabilities, OP, world)
        for shape in ((0,), (3, 0), (0, 3))
    ]
    reductions.check(backend, control, OP, world, cases)


@pytest.mark.spec(OP, rule="singleton-identity")
def test_size_one_group_returns_input(backend, world, capabilities):
    """On a group of size 1 the input comes back unchanged, 0-d staying 0-d.

    SEMANTICS.md, Size-1 groups: "returns the input unchanged (same shape, dtype, values; a 0-d
    input stays 0-d, even for all_gather and sum_scatter)".
    """
    group = singleton_group(world, capabilities)
    dtypes = reductions.supported_dtypes(backend, capabilities, OP, group)
    shapes = ((), (5,), (2, 3))
    settle(reductions.identity_alone(backend, OP, group, world.rank(), dtypes, shapes))
