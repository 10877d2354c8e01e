"""Robust spec: ranks that disagree about a call all get the same clear error, and nobody hangs.

SEMANTICS.md, "Cross-rank agreement (robust)" and the robust recv rule of "send / recv /
recv_like"; manifest entries ``[ops.agreement]`` and ``[ops.recv]`` (mismatch). MLX checks none
of this (garbage, lost connections, killed jobs or hangs [observed]); a backend may fail these and
the report shows them apart from core. Each test works on a fresh subgroup when the backend can
split, so a backend that fails one cannot poison the world group for the tests after it.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from conformance.specs import data, exchanges, reductions
from conformance.specs.calls import attempt, call, describe_error, settle
from conformance.specs.groups import require_size
from conformance.specs.tolerance import mismatch

pytestmark = pytest.mark.robust

COLLECTIVES = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter")

# "within the deadline": with a backend deadline, a rank left waiting fails with TimeoutError
# (a finding) well before the harness's watchdog would end the whole job.
DEADLINE = 15.0


@pytest.fixture(autouse=True)
def _bounded_waits(backend, capabilities):
    if not capabilities.timeouts:
        yield
        return
    previous = backend.set_timeout(DEADLINE)
    try:
        yield
    finally:
        backend.set_timeout(previous)


def _fresh(world, capabilities):
    """A new group of every rank (a split), or the world when the backend cannot split."""
    if not capabilities.split:
        return world
    return call("world.split(0)", world.split, 0)


def _supported(capabilities, op):
    if not capabilities.supports(op):
        pytest.skip(f"{op} declared unsupported")


def _same_error_everywhere(control, error, exc_type, what):
    """Findings: ``error`` must be ``exc_type`` on this rank with the same text on every rank."""
    text = f"{type(error).__name__}: {error}" if error is not None else "returned normally"
    texts = control.allgather(control.next_label("agreement-error"), text)
    problems = []
    if not isinstance(error, exc_type):
        problems.append(f"{what}: expected {exc_type.__name__}, {text}")
    if len(set(texts)) > 1:
        problems.append(f"{what}: ranks raised different errors: {texts}")
    return problems


def _still_works(backend, group):
    """Findings from one correct all_sum on ``group`` after a failed call."""
    size = group.size()
    blocks = [data.contribution(r, (4,), "int32", salt=99) for r in range(size)]
    got, error = attempt(reductions._runner(backend, "all_sum", blocks[group.rank()], group))
    if error:
        return [f"group unusable after the error: all_sum raised {describe_error(error)}"]
    return [mismatch(got, data.expected_sum(blocks), None, "all_sum after the error")]


def _run_raw(backend, op, x, group):
    out = getattr(backend, op)(backend.asarray(x), group=group)
    backend.evaluate(out)
    return out


@pytest.mark.spec("agreement", rule="shape-mismatch")
@pytest.mark.parametrize("op", COLLECTIVES)
def test_shape_mismatch_raises_everywhere(backend, world, control, capabilities, op):
    """Ranks passing different shapes all raise the same ValueError naming the ranks.

    SEMANTICS.md, Cross-rank agreement: "every rank learns of a disagreement ... and all raise the
    same ValueError naming the ranks and what each passed. No rank is left blocked."
    """
    require_size(world, 2)
    _supported(capabilities, op)
    group = _fresh(world, capabilities)
    size, rank = group.size(), group.rank()
    # Every shape is valid for the op on its own (axis 0 a multiple of N for sum_scatter).
    x = data.contribution(rank, (size * (1 + rank % 2), 3), "float32")
    _, error = attempt(_run_raw, backend, op, x, group)
    problems = _same_error_everywhere(control, error, ValueError, op)
    if error is not None and not re.search(r"\brank", str(error)):
        problems.append(f"{op}: message does not name the ranks: {error}")
    problems += _still_works(backend, group)
    settle(problems)


@pytest.mark.spec("agreement", rule="dtype-mismatch")
@pytest.mark.parametrize("op", COLLECTIVES)
def test_dtype_mismatch_raises_everywhere(backend, world, control, capabilities, op):
    """Ranks passing different dtypes (same shape) all raise the same ValueError.

    SEMANTICS.md, Cross-rank agreement: "All ranks of a group must call the same collective with
    the same shape and dtype ... all raise the same ValueError naming the ranks and what each
    passed."
    """
    require_size(world, 2)
    _supported(capabilities, op)
    group = _fresh(world, capabilities)
    size, rank = group.size(), group.rank()
    dtype = "float32" if rank % 2 == 0 else "int32"  # same itemsize: only the dtype differs
    x = data.contribution(rank, (size * 2,), dtype)
    _, error = attempt(_run_raw, backend, op, x, group)
    problems = _same_error_everywhere(control, error, ValueError, op)
    if error is not None and not ("float32" in str(error) and "int32" in str(error)):
        problems.append(f"{op}: message does not name both dtypes: {error}")
    problems += _still_works(backend, group)
    settle(problems)


@pytest.mark.spec("agreement", rule="op-mismatch")
def test_different_collectives_raise_everywhere(backend, world, control, capabilities):
    """Rank 0 calling all_sum while the others call all_max is the same error on every rank.

    SEMANTICS.md, Cross-rank agreement: "All ranks of a group must call the same collective with
    the same shape and dtype ... all raise the same ValueError naming the ranks and what each
    passed."
    """
    require_size(world, 2)
    group = _fresh(world, capabilities)
    op = "all_sum" if group.rank() == 0 else "all_max"
    x = data.contribution(group.rank(), (3,), "int64")
    _, error = attempt(_run_raw, backend, op, x, group)
    problems = _same_error_everywhere(control, error, ValueError, "all_sum/all_max")
    if error is not None and not ("all_sum" in str(error) and "all_max" in str(error)):
        problems.append(f"message does not name both calls: {error}")
    problems += _still_works(backend, group)
    settle(problems)


@pytest.mark.spec("agreement", rule="rank-local-error")
@pytest.mark.parametrize("case", ["sum_scatter-shape", "split-colour", "unsupported-dtype"])
def test_rank_local_argument_error_fails_everywhere(backend, world, control, capabilities, case):
    """An invalid argument on rank 0 only fails the collective on every rank (nobody waits),
    and the group still works afterwards.

    SEMANTICS.md, Cross-rank agreement: "A rank-local argument error in a collective (bad shape
    for sum_scatter on one rank only, a negative split color) therefore fails on every rank,
    never hangs the others."
    """
    require_size(world, 2)
    group = _fresh(world, capabilities)
    size, rank = group.size(), group.rank()
    expected_type: type[Exception] = ValueError
    if case == "sum_scatter-shape":
        _supported(capabilities, "sum_scatter")
        rows = size + 1 if rank == 0 else size
        x = data.contribution(rank, (rows, 2), "float32")
        _, error = attempt(_run_raw, backend, "sum_scatter", x, group)
    elif case == "split-colour":
        if not capabilities.split:
            pytest.skip("backend declares split unsupported")
        _, error = attempt(group.split, -1 if rank == 0 else 0)
    else:
        expected_type = TypeError
        x = np.arange(3, dtype=np.complex128) if rank == 0 else np.arange(3, dtype=np.complex64)

        def run():
            backend.evaluate(backend.all_sum(x, group=group))

        _, error = attempt(run)
        # A TypeError or a ValueError is clear enough; what matters is every rank raising.
        if isinstance(error, ValueError):
            expected_type = ValueError
    problems = []
    kinds = control.allgather(control.next_label("rank-local"), type(error).__name__)
    if not isinstance(error, expected_type):
        problems.append(f"{case}: expected {expected_type.__name__}, got {error!r}")
    if len(set(kinds)) > 1:
        problems.append(f"{case}: ranks raised different error types: {kinds}")
    problems += _still_works(backend, group)
    settle(problems)


@pytest.mark.spec("agreement", rule="usable-after")
def test_group_usable_after_disagreement(backend, world, control, capabilities):
    """After a shape disagreement raised everywhere, the same group runs a correct all_sum.

    SEMANTICS.md, Cross-rank agreement: "The reference checks before moving data: every rank
    learns of a disagreement ... No rank is left blocked."
    """
    require_size(world, 2)
    group = _fresh(world, capabilities)
    x = data.contribution(group.rank(), (group.rank() + 1,), "float64")
    _, error = attempt(_run_raw, backend, "all_sum", x, group)
    problems = _same_error_everywhere(control, error, ValueError, "all_sum")
    problems += _still_works(backend, group)
    settle(problems)


@pytest.mark.spec("recv", rule="mismatch")
@pytest.mark.parametrize("wrong", ["larger-shape", "smaller-shape", "dtype"])
def test_recv_mismatch_raises_and_pair_recovers(backend, world, capabilities, wrong):
    """A recv asking for another shape or dtype than was sent raises ValueError naming both sides,
    and the next message between the pair arrives intact.

    SEMANTICS.md, send / recv / recv_like (robust): "a recv whose shape or dtype disagrees with
    what was sent raises ValueError on the receiving rank naming both sides ... and the pair can
    go on communicating afterwards." Pairs (2k, 2k+1) exchange in the ring direction both
    topologies allow.
    """
    require_size(world, 2)
    rank, size = world.rank(), world.size()
    partner = rank + 1 if rank % 2 == 0 else rank - 1
    sent_shape, sent_dtype = (10,), "float32"
    asked_shape, asked_dtype = {
        "larger-shape": ((12,), "float32"),
        "smaller-shape": ((5,), "float32"),
        "dtype": ((10,), "int32"),
    }[wrong]
    problems: list[str | None] = []
    if partner < size:
        first = data.contribution(min(rank, partner), sent_shape, sent_dtype, salt=1)
        second = data.contribution(min(rank, partner), (6,), "int16", salt=2)
        if rank % 2 == 0:
            for message in (first, second):
                _, error = attempt(exchanges.send, backend, message, partner, world)
                problems.append(error and f"send raised {describe_error(error)}")
        else:
            _, error = attempt(exchanges.recv, backend, asked_shape, asked_dtype, partner, world)
            text = str(error)
            if not isinstance(error, ValueError):
                problems.append(
                    f"recv of {asked_dtype} {asked_shape}: expected ValueError, "
                    f"got {describe_error(error) if error else 'no error'}"
                )
            elif not (str(sent_shape) in text and str(asked_shape) in text):
                problems.append(f"recv mismatch message does not name both shapes: {text}")
            elif not (sent_dtype in text and asked_dtype in text):
                problems.append(f"recv mismatch message does not name both dtypes: {text}")
            got, error = attempt(exchanges.recv, backend, (6,), "int16", partner, world)
            problems.append(
                f"next recv raised {describe_error(error)}"
                if error
                else mismatch(got, second, None, "next message after the mismatch")
            )
    settle(problems)
