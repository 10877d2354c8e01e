"""Spec of ``all_sum(x, *, group=None, stream=None)``: element-wise sum over the group.

SEMANTICS.md, "Reductions", "Size-1 groups" and "dtypes"; manifest entry ``[ops.all_sum]``.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformance.harness.collective import collective_raises
from conformance.specs import data, reductions
from conformance.specs.calls import call, differs_between_ranks, local, settle
from conformance.specs.groups import singleton_group
from conformance.specs.tolerance import mismatch

OP = "all_sum"
pytestmark = pytest.mark.core


def _require(capabilities, dtype=None):
    """Unsupported is not skipped: the caller then asserts the op raises on every rank."""
    return capabilities.supports(OP, dtype) if dtype else capabilities.supports(OP)


@pytest.mark.spec(OP, rule="values")
@pytest.mark.parametrize("dtype", data.DTYPE_NAMES)
def test_values(backend, world, control, capabilities, dtype):
    """all_sum of rank- and position-encoded data, every shape (0-d, empty, odd, 3-d).

    SEMANTICS.md, Reductions: "Floating sums: reduction order is impl-defined, so float results are
    compared with a tolerance scaled by the dtype and the number of ranks (float16 and bfloat16
    loose, float32/64 tight). Integer and bool results are exact."
    """
    size = world.size()
    if not _require(capabilities, dtype):
        reductions.unsupported_raises(
            backend, OP, data.contribution(world.rank(), (3,), dtype), world
        )
        return
    cases = [
        (f"{dtype} {shape}", data.contributions(size, shape, dtype, salt=i))
        for i, shape in enumerate(data.SHAPES)
    ]
    reductions.check(backend, control, OP, world, cases)


@pytest.mark.spec(OP, rule="shape-dtype")
def test_shape_and_dtype_preserved(backend, world, control, capabilities):
    """The result has the input's shape and dtype (no promotion), the same on every rank.

    SEMANTICS.md, Reductions: "Output shape and dtype equal the input's. No promotion. Every rank
    gets the same result."
    """
    problems = []
    for dtype in data.DTYPE_NAMES:
        if not _require(capabilities, dtype):
            continue
        x = data.contribution(world.rank(), (4, 3), dtype)
        got = reductions.run(backend, OP, x, world)
        if (got.dtype, got.shape) != (x.dtype, x.shape):
            problems.append(f"{data.describe(x)} in, {data.describe(got)} out")
        problems.append(differs_between_ranks(control, got, f"all_sum of {dtype}"))
    settle(problems)


@pytest.mark.spec(OP, rule="int-wrap")
def test_integer_overflow_wraps(backend, world, control, capabilities):
    """Sums past an integer dtype's range wrap modulo 2**bits, exactly (72 elements, 67 of them
    overflowing at any N > 1).

    SEMANTICS.md, Reductions: "Integers wrap around on overflow (int8 127+127 = -2)."
    """
    size, rank = world.size(), world.rank()
    cases = []
    for dtype in data.INTEGER_NAMES:
        if not _require(capabilities, dtype):
            continue
        info = np.iinfo(data.np_dtype(dtype))

        def block(r, info=info, dtype=dtype):
            # extremes plus rank-dependent values near them, so every rank's share matters; then
            # 67 values that overflow at any N > 1 (near max, and near min or past 2**(bits-1)):
            # more than a vector register of int8 and a tail, since Open MPI's vectorised ops
            # only take over from 8 elements and a saturating add shows only there.
            top, bottom = int(info.max), int(info.min)
            values = [top, bottom, top - r, bottom + r, r + 1]
            low = bottom if bottom < 0 else top // 2 + 1
            values += [
                top - (p + r) % 5 if p % 2 == 0 else low + (3 * p + r) % 5 for p in range(67)
            ]
            return np.array(values, dtype=data.np_dtype(dtype))

        cases.append((f"{dtype} extremes", [block(r) for r in range(size)]))
    reductions.check(backend, control, OP, world, cases)
    del rank


@pytest.mark.spec(OP, rule="float16-overflow")
def test_float16_overflow_is_inf(backend, world, control, capabilities):
    """float16 sums past 65504 give +-inf (not a wrapped or clamped value).

    SEMANTICS.md, Reductions: "float16 overflow gives inf."
    """
    if not _require(capabilities, "float16"):
        pytest.skip("float16 all_sum declared unsupported (test_values checks it raises)")
    size = world.size()
    blocks = [np.array([60000 + 8 * r, -60000 - 8 * r, r], np.float16) for r in range(size)]
    got = reductions.run(backend, OP, blocks[world.rank()], world)
    want = data.expected_sum(blocks)
    problem = mismatch(got, want, reductions.tolerance(OP, blocks, world.rank()))

    def signs_of_infinity():
        # mismatch already compares inf exactly; this names the rule when it is broken.
        if size == 1 or (np.isposinf(got[0]) and np.isneginf(got[1])):
            return None
        return f"expected [inf, -inf, ...], got {got!r}"

    settle([problem, local(signs_of_infinity)])


@pytest.mark.spec(OP, rule="bool")
def test_bool_is_logical_or(backend, world, control, capabilities):
    """all_sum of bool arrays is element-wise OR, and stays bool: only the bytes 0 and 1.

    SEMANTICS.md, Reductions: "bool: all_sum is logical OR, all_max is OR, all_min is AND."
    "Integer and bool results are exact": compared byte by byte, so a sum of the bool bytes as
    uint8 (True + True = the byte 2, which numpy reads as True) fails.
    """
    if not _require(capabilities, "bool"):
        pytest.skip("bool all_sum declared unsupported (test_values checks it raises)")
    size = world.size()
    # position p holds bit r of p on rank r: every combination of contributions appears
    width = 2 ** min(size, 12)
    blocks = [((np.arange(width) >> (r % 12)) & 1).astype(bool) for r in range(size)]
    got = reductions.run(backend, OP, blocks[world.rank()], world)
    want = np.logical_or.reduce(np.stack(blocks), axis=0)
    settle([mismatch(got, want), differs_between_ranks(control, got)])


@pytest.mark.spec(OP, rule="empty-0d")
def test_empty_and_0d(backend, world, control, capabilities):
    """0-d and empty inputs (shape (), (0,), (3, 0), (0, 3)) work for every dtype.

    SEMANTICS.md, Reductions: "Empty arrays (shape (0,), (3,0)) and 0-d arrays work."
    """
    size = world.size()
    cases = [
        (f"{dtype} {shape}", data.contributions(size, shape, dtype))
        for dtype in data.DTYPE_NAMES
        if _require(capabilities, dtype)
        for shape in ((), (0,), (3, 0), (0, 3))
    ]
    reductions.check(backend, control, OP, world, cases)


@pytest.mark.spec(OP, rule="singleton-identity")
def test_size_one_group_returns_input(backend, world, control, capabilities):
    """On a group of size 1 the input comes back unchanged, 0-d staying 0-d.

    SEMANTICS.md, Size-1 groups: "`all_sum`, `all_max`, `all_min`, `all_gather`, `sum_scatter`
    return the input unchanged (same shape, dtype, values; a 0-d input stays 0-d)".
    """
    group = singleton_group(world, capabilities)
    dtypes = [dtype for dtype in data.DTYPE_NAMES if _require(capabilities, dtype)]
    shapes = ((), (5,), (2, 3))
    settle(reductions.identity_alone(backend, OP, group, world.rank(), dtypes, shapes))


@pytest.mark.spec(OP, rule="inputs")
def test_python_scalars_and_layouts(backend, world, control, capabilities):
    """Python scalars convert as in MLX; non-contiguous numpy inputs reduce like contiguous ones.

    SEMANTICS.md, dtypes: "Inputs may be numpy arrays (any layout) or Python scalars (bool ->
    bool, int -> int32, float -> float32, complex -> complex64, as in MLX)."
    """
    size, rank = world.size(), world.rank()
    scalars = {
        "bool": [r % 2 == 1 for r in range(size)],
        "int32": [3 * r - 7 for r in range(size)],
        "float32": [0.25 * r + 1.5 for r in range(size)],
        "complex64": [complex(r, -2 * r + 1) for r in range(size)],
    }
    problems = []
    for dtype, values in scalars.items():
        got = reductions.run(backend, OP, values[rank], world, convert=False)
        blocks = [np.asarray(v, data.np_dtype(dtype)) for v in values]
        problems.append(mismatch(got, data.expected_sum(blocks), None, f"Python {dtype} scalar"))
    base = [data.contribution(r, (6, 8), "int32") for r in range(size)]
    layouts = {
        "strided": lambda a: a[::2, 1::3],
        "transposed": lambda a: a.T,
        "fortran": np.asfortranarray,
        "reversed": lambda a: a[::-1, ::-1],
    }
    for name, view in layouts.items():
        got = reductions.run(backend, OP, view(base[rank]), world)
        want = data.expected_sum([np.ascontiguousarray(view(b)) for b in base])
        problems.append(mismatch(got, want, None, f"{name} layout"))
    settle(problems)


@pytest.mark.spec(OP, rule="unsupported-dtype")
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda: np.arange(3, dtype=np.complex128) * 1j, id="complex128"),
        pytest.param(lambda: np.array([1, 2], dtype=object), id="object"),
        pytest.param(lambda: np.array(["a", "b"]), id="str"),
        pytest.param(lambda: np.arange(3, dtype=np.longdouble), id="longdouble"),
    ],
)
def test_unsupported_dtype_raises(backend, world, make):
    """Inputs of a dtype outside the 14 raise a clear error naming the supported list.

    SEMANTICS.md, dtypes: "Anything else (float128, complex128, object, strings) raises a clear
    error naming the supported list."
    """
    x = make()
    if x.dtype == np.float64:
        pytest.skip("longdouble is float64 on this platform, a supported dtype")
    with collective_raises((TypeError, ValueError), match=r"(?s)(?=.*float32)(?=.*complex64)"):
        backend.evaluate(backend.all_sum(x, group=world))


@pytest.mark.spec(OP, rule="keyword-only")
def test_default_group_is_world(backend, world, control, capabilities):
    """Without ``group`` the global group is used: the same sum as ``group=world``.

    SEMANTICS.md, Signatures: "`group=None` means the global group (`init()`)."
    """
    size, rank = world.size(), world.rank()
    blocks = data.contributions(size, (5,), "int64")

    def default_group():
        out = backend.all_sum(backend.asarray(blocks[rank]))
        backend.evaluate(out)
        return backend.to_numpy(out)

    got = call("all_sum without group", default_group)
    settle([mismatch(got, data.expected_sum(blocks), None, "all_sum(x)")])
