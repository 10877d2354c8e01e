"""Properties of the collectives, checked with Hypothesis in lockstep on every rank.

Every rank draws the same dtype, shape and seed (``conformance.strategies`` + ``lockstep``); each
rank's input comes from the seed and its rank, so every rank also knows every other rank's input.
The properties relate the backend's own results to each other (not only to numpy): all_sum is the
sum of all_gather's blocks, sum_scatter is the rank's slice of all_sum, all_max/all_min bound every
contribution and are attained, and every rank gets the identical result.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import given, settings

from conformance.specs import data, reductions
from conformance.specs.calls import call_everywhere, differing, settle
from conformance.specs.tolerance import mismatch, sum_tolerance
from conformance.strategies import dtype_names, lockstep, rank_array, seeds, shapes

pytestmark = pytest.mark.core

# Each example costs several control-plane exchanges on every rank; on two oversubscribed cores
# 25 examples of each property took a minute at 4 ranks. CONFORMANCE_MAX_EXAMPLES raises it.
EXAMPLES = settings(max_examples=int(os.environ.get("CONFORMANCE_MAX_EXAMPLES", "10")))


def _blocks_of(gathered: np.ndarray, size: int, shape: tuple[int, ...]) -> list[np.ndarray]:
    if size == 1:
        return [gathered]
    return list(gathered.reshape((size, *shape)))


@pytest.mark.spec("all_sum", rule="values")
@EXAMPLES
@given(dtype=dtype_names(), shape=shapes(max_dims=2), seed=seeds())
@lockstep
def test_all_sum_is_sum_of_gathered_blocks(backend, world, control, dtype, shape, seed):
    """all_sum(x) equals the element-wise sum of all_gather(x)'s N blocks.

    SEMANTICS.md, Reductions: "Floating sums: reduction order is impl-defined, so float results
    are compared with a tolerance scaled by the dtype and the number of ranks ... Integer and bool
    results are exact." and all_gather: "blocks in rank order". Manifest: all_sum / values.
    """
    size, rank = world.size(), world.rank()
    x = rank_array(seed, rank, shape, dtype, world_size=size)
    gathered, _ = call_everywhere(
        control, "all_gather", reductions._runner(backend, "all_gather", x, world)
    )
    total, digests = call_everywhere(
        control, "all_sum", reductions._runner(backend, "all_sum", x, world)
    )
    problems = [differing(digests, "all_sum")]
    want_shape = shape if size == 1 else ((size,) if shape == () else (size * shape[0], *shape[1:]))
    if gathered.shape != want_shape:
        problems.append(f"all_gather returned shape {gathered.shape}, expected {want_shape}")
    else:
        blocks = _blocks_of(gathered, size, shape)
        problems.append(mismatch(total, data.expected_sum(blocks), sum_tolerance(blocks)))
    settle(problems)


@pytest.mark.spec("sum_scatter", rule="slice-of-sum")
@EXAMPLES
@given(dtype=dtype_names(), seed=seeds(), rows=shapes(max_dims=1))
@lockstep
def test_sum_scatter_is_slice_of_all_sum(backend, world, control, capabilities, dtype, seed, rows):
    """sum_scatter(x) on rank r equals rows [r*c, (r+1)*c) of all_sum(x), c = rows // N.

    SEMANTICS.md, sum_scatter: "Output = `all_sum(x)[r*c:(r+1)*c]` with `c = shape[0] // N` on
    rank r." Manifest: sum_scatter / slice-of-sum.
    """
    if world.size() > 1 and not capabilities.supports("sum_scatter"):
        pytest.skip("sum_scatter declared unsupported")
    size, rank = world.size(), world.rank()
    shape = (size * (1 + (rows[0] if rows else 0)), 2)
    x = rank_array(seed, rank, shape, dtype, world_size=size)
    total, _ = call_everywhere(control, "all_sum", reductions._runner(backend, "all_sum", x, world))
    part, _ = call_everywhere(
        control, "sum_scatter", reductions._runner(backend, "sum_scatter", x, world)
    )
    c = shape[0] // size
    blocks = [rank_array(seed, r, shape, dtype, world_size=size) for r in range(size)]
    bound = sum_tolerance(blocks)
    bound = None if bound is None else 2 * bound[rank * c : (rank + 1) * c]
    settle([mismatch(part, total[rank * c : (rank + 1) * c], bound, "sum_scatter vs all_sum")])


@pytest.mark.spec("all_max", rule="values")
@EXAMPLES
@given(dtype=dtype_names(exclude=["complex64"]), shape=shapes(max_dims=2), seed=seeds())
@lockstep
def test_max_and_min_bound_every_contribution(backend, world, control, dtype, shape, seed):
    """all_max is >= and all_min is <= every rank's input, each attained by some rank.

    SEMANTICS.md, Reductions: "Integer and bool results are exact." (max/min pick one of the
    inputs), "Every rank gets the same result." Manifest: all_max / values.
    """
    size, rank = world.size(), world.rank()
    x = rank_array(seed, rank, shape, dtype, world_size=size)
    hi, hi_digests = call_everywhere(
        control, "all_max", reductions._runner(backend, "all_max", x, world)
    )
    lo, lo_digests = call_everywhere(
        control, "all_min", reductions._runner(backend, "all_min", x, world)
    )
    blocks = [rank_array(seed, r, shape, dtype, world_size=size) for r in range(size)]
    problems = [differing(hi_digests, "all_max"), differing(lo_digests, "all_min")]
    for name, got, larger in (("all_max", hi, True), ("all_min", lo, False)):
        if got.shape != x.shape or got.dtype != x.dtype:
            problems.append(f"{name} returned {data.describe(got)} for {data.describe(x)}")
            continue
        g = got.astype(np.float64)
        stack = np.stack([b.astype(np.float64) for b in blocks])
        bounded = (g >= stack).all() if larger else (g <= stack).all()
        attained = (stack == g).any(axis=0).all()
        if not (bounded and attained):
            problems.append(f"{name} {got!r} not the {'max' if larger else 'min'} of {blocks!r}")
    settle(problems)


@pytest.mark.spec("all_gather", rule="rank-order")
@EXAMPLES
@given(dtype=dtype_names(), shape=shapes(min_dims=1, max_dims=3), seed=seeds())
@lockstep
def test_gather_identical_everywhere_in_rank_order(backend, world, control, dtype, shape, seed):
    """all_gather gives every rank the same array, whose block r is rank r's input.

    SEMANTICS.md, all_gather: "blocks in rank order; ... Every rank gets the same result."
    Manifest: all_gather / rank-order.
    """
    size, rank = world.size(), world.rank()
    x = rank_array(seed, rank, shape, dtype, world_size=size)
    got, digests = call_everywhere(
        control, "all_gather", reductions._runner(backend, "all_gather", x, world)
    )
    blocks = [rank_array(seed, r, shape, dtype, world_size=size) for r in range(size)]
    settle([differing(digests, "all_gather"), mismatch(got, data.expected_gather(blocks))])
