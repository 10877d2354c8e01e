"""Rank-dependent behaviours the harness must turn into one collective outcome.

Run under ``mpiexec -n N`` (N >= 2) with ``--backend fake_adapter``; the harness tests check the
results file. Tests named ``test_in_step_*`` pass only if the job is still in step.
"""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from mpi4py import MPI

from conformance.harness.collective import collective_assert, collective_raises, expect_unsupported
from conformance.strategies import dtype_names, lockstep, seeds, shapes, world_arrays

pytestmark = pytest.mark.core

RANK = MPI.COMM_WORLD.Get_rank()


def test_fails_on_last_rank(world):
    assert world.rank() != world.size() - 1, "the last rank fails"


def test_raises_on_rank_1(world):
    if world.rank() == 1:
        raise RuntimeError("boom on rank 1")


def test_collective_assert_names_ranks(world):
    collective_assert(world.rank() % 2 == 0, f"rank {world.rank()} is odd")


def test_collective_raises_not_raised_on_rank_0(world):
    with collective_raises(ValueError, match="bad"):
        if world.rank() != 0:
            raise ValueError("bad value")


def test_collective_raises_everywhere(world):
    info = collective_raises(ValueError, int, "not a number", match="invalid literal")
    assert isinstance(info.value, ValueError)


def test_skip_on_rank_1_only(world):
    if world.rank() == 1:
        pytest.skip("only rank 1 skips")


def test_skip_everywhere(world):
    pytest.skip("every rank skips")


@pytest.fixture
def broken_on_rank_1(world):
    if world.rank() == 1:
        raise RuntimeError("fixture fails on rank 1")


def test_setup_error_on_rank_1(world, broken_on_rank_1):
    collective_assert(True)  # rank 0 alone here would desynchronise the job


def test_helper_on_rank_0_only(world):
    if world.rank() == 0:
        collective_assert(True, "only rank 0 calls this")


def test_in_step_after_desync(backend, world):
    x = np.arange(4, dtype=np.int32) * (world.rank() + 1)
    got = backend.to_numpy(backend.all_sum(backend.asarray(x), group=world))
    n = world.size()
    collective_assert(np.array_equal(got, np.arange(4) * n * (n + 1) // 2), f"got {got}")


@given(value=st.just(RANK))
@lockstep
def test_divergent_draws(world, value):
    pass


@given(data=st.data())
@lockstep
def test_divergent_inner_draw(world, data):
    data.draw(st.integers(0, 10))
    data.draw(st.just(RANK))


@given(seed=seeds())
@lockstep
def test_lockstep_fails_on_rank_1(world, seed):
    assert not (world.rank() == 1 and seed % 7 == 3), f"seed {seed} fails on rank 1"


@given(dtype=dtype_names(include=["int32", "float32", "uint8"]), shape=shapes(), seed=seeds())
@lockstep
def test_in_step_lockstep_all_sum(backend, world, dtype, shape, seed):
    mine = world_arrays(seed, world.size(), shape, dtype)[world.rank()]
    got = backend.to_numpy(backend.all_sum(backend.asarray(mine), group=world))
    want = np.sum(world_arrays(seed, world.size(), shape, dtype), axis=0, dtype=mine.dtype)
    collective_assert(np.array_equal(got, want), f"{dtype} {shape}: got {got}, want {want}")


def test_unsupported_op_raises(backend, world):
    x = np.zeros(world.size() * 2, dtype=np.float32)
    assert expect_unsupported(backend, "sum_scatter", backend.sum_scatter, x, group=world)


def test_unsupported_op_does_not_raise(backend, world):
    expect_unsupported(backend, "split", world.split, 0)


def test_unsupported_dtype_is_declared(capabilities):
    assert not capabilities.supports("all_sum", "complex64")
    assert capabilities.supports("all_sum", "float32")


def test_in_step_at_the_end(world):
    collective_assert(world.size() >= 2)


@pytest.mark.mpi(min_size=64)
def test_needs_64_ranks(world):
    raise AssertionError("must be skipped")


@pytest.mark.xfail(reason="known to fail on rank 0", strict=True)
def test_xfail_on_rank_0(world):
    assert world.rank() != 0
