"""Properties of the collectives, checked with Hypothesis in lockstep on every rank.

Every rank draws the same dtype, shape and seed (``conformance.strategies`` + ``lockstep``); each
rank's input comes from the seed and its rank, so every rank also knows every other rank's input.
Floats are drawn both as short multiples of 1/2 and with every significand bit random (``full``).
Every expected value comes from numpy on those inputs (``data.expected_*``), never from the
backend's other ops (a backend wrong in two ops the same way would pass a relation between them):
all_sum is the sum of the inputs, sum_scatter the rank's slice of it, all_max/all_min the
element-wise extremes, all_gather the inputs in rank order, and every rank gets the identical
result.
"""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conformance.specs import data, reductions
from conformance.specs.calls import call_everywhere, differing, settle
from conformance.strategies import dtype_names, lockstep, seeds, shapes, world_arrays

pytestmark = pytest.mark.core

# Each example costs several control-plane exchanges on every rank; on two oversubscribed cores
# 25 examples of each property took a minute at 4 ranks. CONFORMANCE_MAX_EXAMPLES raises it.
EXAMPLES = settings(max_examples=int(os.environ.get("CONFORMANCE_MAX_EXAMPLES", "10")))


def _checked(control, backend, op, x, world, blocks, what):
    """``op`` on every rank, compared with numpy's result on ``blocks``; the findings."""
    got, digests = call_everywhere(control, op, reductions._runner(backend, op, x, world))
    rank = world.rank()
    what = f"{what} of {data.describe(x)}"  # findings name the drawn dtype and shape
    found = [reductions.verdict(op, got, blocks, rank, what)]
    if op != "sum_scatter":
        found.append(differing(digests, what))
    return found


@pytest.mark.spec("all_sum", rule="values")
@EXAMPLES
@given(dtype=dtype_names(), shape=shapes(max_dims=2), seed=seeds(), full=st.booleans())
@lockstep
def test_all_sum_is_numpy_sum(backend, world, control, dtype, shape, seed, full):
    """all_sum(x) equals numpy's element-wise sum of every rank's input, the same everywhere.

    SEMANTICS.md, Reductions: "Floating sums: reduction order is impl-defined, so float results
    are compared with a tolerance scaled by the dtype and the number of ranks ... Integer and bool
    results are exact."
    """
    size, rank = world.size(), world.rank()
    blocks = world_arrays(seed, size, shape, dtype, full_precision=full)
    settle(_checked(control, backend, "all_sum", blocks[rank], world, blocks, "all_sum"))


@pytest.mark.spec("sum_scatter", rule="slice-of-sum")
@EXAMPLES
@given(dtype=dtype_names(), seed=seeds(), rows=shapes(max_dims=1), full=st.booleans())
@lockstep
def test_sum_scatter_is_slice_of_numpy_sum(
    backend, world, control, capabilities, dtype, seed, rows, full
):
    """sum_scatter(x) on rank r equals rows [r*c, (r+1)*c) of numpy's sum, c = rows // N.

    SEMANTICS.md, sum_scatter: "Output = `all_sum(x)[r*c:(r+1)*c]` with `c = shape[0] // N` on
    rank r."
    """
    if world.size() > 1 and not capabilities.supports("sum_scatter"):
        pytest.skip("sum_scatter declared unsupported")
    size, rank = world.size(), world.rank()
    shape = (size * (1 + (rows[0] if rows else 0)), 2)
    blocks = world_arrays(seed, size, shape, dtype, full_precision=full)
    settle(_checked(control, backend, "sum_scatter", blocks[rank], world, blocks, "sum_scatter"))


@pytest.mark.spec("all_max", rule="values")
@EXAMPLES
@given(dtype=dtype_names(), shape=shapes(max_dims=2), seed=seeds(), full=st.booleans())
@lockstep
def test_max_and_min_are_numpy_extremes(backend, world, control, dtype, shape, seed, full):
    """all_max and all_min equal numpy's element-wise maximum and minimum of every rank's input
    (complex64 lexicographic), exactly, the same everywhere.

    SEMANTICS.md, Reductions: "Integer and bool results are exact." (max/min pick one of the
    inputs), "Every rank gets the same result."
    """
    size, rank = world.size(), world.rank()
    blocks = world_arrays(seed, size, shape, dtype, full_precision=full)
    problems = []
    for op in ("all_max", "all_min"):
        problems += _checked(control, backend, op, blocks[rank], world, blocks, op)
    settle(problems)


@pytest.mark.spec("all_gather", rule="rank-order")
@EXAMPLES
@given(dtype=dtype_names(), shape=shapes(min_dims=1, max_dims=3), seed=seeds(), full=st.booleans())
@lockstep
def test_gather_identical_everywhere_in_rank_order(
    backend, world, control, dtype, shape, seed, full
):
    """all_gather gives every rank the same array, whose block r is rank r's input.

    SEMANTICS.md, all_gather: "blocks in rank order; ... Every rank gets the same result."
    """
    size, rank = world.size(), world.rank()
    blocks = world_arrays(seed, size, shape, dtype, full_precision=full)
    settle(_checked(control, backend, "all_gather", blocks[rank], world, blocks, "all_gather"))
