"""nccl-tests' size and bandwidth conventions."""

import pytest

from conformance.bench.formulas import OPS, algbw, bus_factor, busbw, shape_for


@pytest.mark.parametrize("n", [1, 2, 3, 4, 8])
def test_bus_factors_are_nccl_tests(n):
    assert bus_factor("all_sum", n) == pytest.approx(2 * (n - 1) / n)
    assert bus_factor("all_max", n) == pytest.approx(2 * (n - 1) / n)
    assert bus_factor("all_gather", n) == pytest.approx((n - 1) / n)
    assert bus_factor("sum_scatter", n) == pytest.approx((n - 1) / n)
    assert bus_factor("sendrecv", n) == 1.0


def test_busbw_at_two_ranks():
    # 1 GB in 1 s: all-reduce moves 2(n-1)/n = 1x the size over the bus at n = 2.
    assert algbw(10**9, 1.0) == pytest.approx(1.0)
    assert busbw("all_sum", 2, 10**9, 1.0) == pytest.approx(1.0)
    assert busbw("all_gather", 2, 10**9, 0.5) == pytest.approx(1.0)
    assert busbw("all_sum", 4, 10**9, 1.0) == pytest.approx(1.5)
    assert busbw("sendrecv", 4, 2 * 10**9, 1.0) == pytest.approx(2.0)


def test_unknown_op_is_rejected():
    with pytest.raises(ValueError):
        bus_factor("all_prod", 2)
    with pytest.raises(ValueError):
        shape_for("all_prod", 8, 2, 4)


def test_reduction_size_is_the_buffer():
    shape = shape_for("all_sum", 1 << 20, 4, 4)
    assert (shape.in_count, shape.out_count, shape.nbytes) == (1 << 18, 1 << 18, 1 << 20)


def test_all_gather_size_is_the_output():
    shape = shape_for("all_gather", 1 << 20, 4, 4)
    assert (shape.in_count, shape.out_count, shape.nbytes) == (1 << 16, 1 << 18, 1 << 20)


def test_sum_scatter_size_is_the_input():
    shape = shape_for("sum_scatter", 1 << 20, 4, 4)
    assert (shape.in_count, shape.out_count, shape.nbytes) == (1 << 18, 1 << 16, 1 << 20)


def test_sizes_round_down_to_whole_elements_per_rank_but_never_to_zero():
    assert shape_for("all_sum", 10, 2, 4).nbytes == 8
    assert shape_for("all_sum", 2, 2, 4).in_count == 1
    gather = shape_for("all_gather", 8, 3, 4)
    assert (gather.in_count, gather.out_count, gather.nbytes) == (1, 3, 12)
    scatter = shape_for("sum_scatter", 40, 3, 4)
    assert (scatter.in_count, scatter.out_count, scatter.nbytes) == (9, 3, 36)


@pytest.mark.parametrize("op", OPS)
def test_every_op_has_a_shape_and_factor(op):
    assert shape_for(op, 64, 2, 8).nbytes == 64
    assert bus_factor(op, 2) > 0
