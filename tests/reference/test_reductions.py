"""The reduction rule, locally and as MPI ops (reference.reductions).

Expected values are computed independently: integer sums in Python's unbounded ints then wrapped
to the dtype's width, float sums in float64 on values where float64 is exact, complex max/min by
sorting (real, imag) keys.
"""

from __future__ import annotations

import warnings

import ml_dtypes
import numpy as np
import pytest
from mpi4py import MPI
from transport_helpers import DTYPES, encode

from reference import reductions
from reference.dtypes import NUMPY_DTYPES

KINDS = ("sum", "max", "min")
INTEGERS = [n for n in DTYPES if n.startswith(("int", "uint"))]
FLOATS = ["float16", "bfloat16", "float32", "float64"]


def wrap(value: int, name: str) -> int:
    """``value`` wrapped to the width of integer dtype ``name`` (two's complement)."""
    info = np.iinfo(np.dtype(name))
    span = info.max - info.min + 1
    return (value - info.min) % span + info.min


def expected_reduce(kind: str, blocks: list[np.ndarray]) -> np.ndarray:
    """The contract's rule, element by element in Python, over blocks of one dtype and shape."""
    dtype = blocks[0].dtype
    name = "bfloat16" if dtype == np.dtype(ml_dtypes.bfloat16) else dtype.name
    flat = [b.reshape(-1) for b in blocks]
    out = []
    for i in range(flat[0].size):
        values = [f[i] for f in flat]
        if name == "bool":
            bits = [bool(v) for v in values]
            out.append(all(bits) if kind == "min" else any(bits))
        elif name in INTEGERS:
            ints = [int(v) for v in values]
            out.append(
                wrap(sum(ints), name) if kind == "sum" else (max if kind == "max" else min)(ints)
            )
        elif name == "complex64":
            pairs = [(float(v.real), float(v.imag)) for v in values]
            if kind == "sum":
                out.append(complex(sum(p[0] for p in pairs), sum(p[1] for p in pairs)))
            elif any(np.isnan(p[0]) or np.isnan(p[1]) for p in pairs):
                out.append(complex("nan+nanj"))
            else:
                best = (max if kind == "max" else min)(pairs)
                out.append(complex(*best))
        else:
            floats = [float(v) for v in values]
            if kind == "sum":
                out.append(sum(floats))
            elif any(np.isnan(floats)):
                out.append(float("nan"))
            else:
                out.append((max if kind == "max" else min)(floats))
    with np.errstate(over="ignore"):
        return (
            np.array(out, dtype=np.float64 if name in FLOATS else None)
            .astype(dtype)
            .reshape(blocks[0].shape)
        )


def same(actual: np.ndarray, expected: np.ndarray) -> bool:
    """Equal dtype, shape and values, NaN equal to NaN (complex: NaN anywhere counts as NaN)."""
    if actual.dtype != expected.dtype or actual.shape != expected.shape:
        return False
    if actual.dtype.kind == "c":
        a_nan = np.isnan(actual.real) | np.isnan(actual.imag)
        e_nan = np.isnan(expected.real) | np.isnan(expected.imag)
        return bool(
            np.array_equal(a_nan, e_nan) and np.array_equal(actual[~a_nan], expected[~e_nan])
        )
    return bool(
        np.array_equal(
            actual, expected, equal_nan=actual.dtype.kind != "b" and actual.dtype.kind not in "iu"
        )
    )


def blocks_for(name: str, ranks: int, shape=(24,)) -> list[np.ndarray]:
    return [encode(r, shape, NUMPY_DTYPES[name], salt=r * 5) for r in range(ranks)]


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("ranks", [2, 3, 5])
def test_local_reduce_follows_the_rule(name, kind, ranks):
    """local_reduce over a stack equals the element-wise rule, in the input dtype."""
    blocks = blocks_for(name, ranks)
    result = reductions.local_reduce(kind, np.stack(blocks))
    assert same(result, expected_reduce(kind, blocks))


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_combine_follows_the_rule(name, kind):
    """combine(a, b) equals the element-wise rule, in a's dtype (no promotion)."""
    a, b = blocks_for(name, 2, shape=(4, 6))
    assert same(reductions.combine(kind, a, b), expected_reduce(kind, [a, b]))


@pytest.mark.parametrize("name", DTYPES)
def test_local_reduce_of_zero_d_blocks_is_a_zero_d_array(name):
    """A stack of 0-d arrays reduces to a 0-d ndarray (not a numpy scalar) of the same dtype."""
    stack = np.stack([encode(r, (), NUMPY_DTYPES[name]) for r in range(3)])
    for kind in KINDS:
        result = reductions.local_reduce(kind, stack)
        assert type(result) is np.ndarray and result.shape == ()
        assert result.dtype == NUMPY_DTYPES[name]


@pytest.mark.parametrize(
    ("name", "a", "b", "total"),
    [
        ("int8", 127, 127, -2),
        ("int8", -128, -1, 127),
        ("uint8", 200, 100, 44),
        ("int16", 32767, 1, -32768),
        ("uint16", 65535, 2, 1),
        ("int32", 2**31 - 1, 2**31 - 1, -2),
        ("uint32", 2**32 - 1, 1, 0),
        ("int64", 2**63 - 1, 1, -(2**63)),
        ("uint64", 2**64 - 1, 2**64 - 1, 2**64 - 2),
    ],
)
def test_integer_sums_wrap_around(name, a, b, total):
    """Integer sums wrap at the dtype's width, in combine, local_reduce and the MPI op."""
    dtype = NUMPY_DTYPES[name]
    x, y = np.array([a, a], dtype), np.array([b, b], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        local = reductions.local_reduce("sum", np.stack([x, y]))
        combined = reductions.combine("sum", x, y)
    inout = y.copy()
    reductions.mpi_op("sum", dtype).Reduce_local(
        [x, 2, reductions.mpi_datatype(dtype)], [inout, 2, reductions.mpi_datatype(dtype)]
    )
    for result in (local, combined, inout):
        assert result.dtype == dtype
        assert result.tolist() == [total, total]


@pytest.mark.parametrize("kind", KINDS)
def test_bool_sum_and_max_are_or_min_is_and(kind):
    """bool: sum and max are logical OR, min is logical AND, over every combination."""
    a = np.array([False, False, True, True])
    b = np.array([False, True, False, True])
    expected = a & b if kind == "min" else a | b
    assert reductions.local_reduce(kind, np.stack([a, b])).tolist() == expected.tolist()
    assert reductions.combine(kind, a, b).tolist() == expected.tolist()


@pytest.mark.parametrize("kind", ["max", "min"])
def test_complex_compares_real_part_first_then_imaginary(kind):
    """complex64 max/min are lexicographic: real part decides, ties go to the imaginary part."""
    a = np.array([1 + 5j, 2 + 0j, 1 + 2j, 1 + 3j, -1 - 1j, 3 + 3j], np.complex64)
    b = np.array([2 + 0j, 1 + 5j, 1 + 3j, 1 + 2j, -1 - 1j, 3 + 3j], np.complex64)
    pick = max if kind == "max" else min
    expected = [
        complex(*pick((p.real, p.imag), (q.real, q.imag))) for p, q in zip(a, b, strict=True)
    ]
    assert reductions.combine(kind, a, b).tolist() == expected
    assert reductions.local_reduce(kind, np.stack([a, b])).tolist() == expected
    # Three-way ties on the real part go through the fold, not the pairwise path.
    c = np.array([1 + 4j, 0j, 1 + 1j, 1 + 9j, -1 - 2j, 3 + 3j], np.complex64)
    expected3 = [
        complex(*pick((p.real, p.imag), (q.real, q.imag), (r.real, r.imag)))
        for p, q, r in zip(a, b, c, strict=True)
    ]
    for order in ([a, b, c], [c, b, a], [b, c, a]):
        assert reductions.local_reduce(kind, np.stack(order)).tolist() == expected3


@pytest.mark.parametrize("name", [*FLOATS, "complex64"])
@pytest.mark.parametrize("kind", ["max", "min"])
def test_nan_propagates_in_max_and_min(name, kind):
    """A NaN from any rank, first or last, makes the max/min NaN; local_reduce does not warn."""
    dtype = NUMPY_DTYPES[name]
    clean = np.array([1.0, 2.0, 3.0], dtype)
    nan_first = np.array([np.nan, 2.0, 3.0]).astype(dtype)
    nan_last = np.array([1.0, 2.0, np.nan]).astype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for stack in ([nan_first, clean], [clean, nan_last], [clean, clean, nan_first]):
            result = reductions.local_reduce(kind, np.stack(stack))
            isnan = np.isnan(result.real) if name == "complex64" else np.isnan(result)
            expected = np.isnan(np.stack(stack).astype(np.complex128).real).any(axis=0)
            assert isnan.tolist() == expected.tolist()
    # combine is internal: its callers silence warnings (the MPI user op), so it may warn here.
    with np.errstate(invalid="ignore"):
        for a, b in ((nan_first, clean), (clean, nan_last)):
            result = reductions.combine(kind, a, b)
            isnan = np.isnan(result.real) if name == "complex64" else np.isnan(result)
            assert isnan.tolist() == (np.isnan(a.real) | np.isnan(b.real)).tolist()


@pytest.mark.parametrize(("name", "big"), [("float16", 60000.0), ("bfloat16", 3.0e38)])
def test_half_precision_overflow_is_inf_without_warning(name, big):
    """float16/bfloat16 sums past the largest finite value give inf, silently (run under errors)."""
    dtype = NUMPY_DTYPES[name]
    x = np.array([big, -big, 1.0], dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = reductions.local_reduce("sum", np.stack([x, x, x]))
        inout = x.copy()
        datatype = reductions.mpi_datatype(dtype)
        reductions.mpi_op("sum", dtype).Reduce_local([x, 3, datatype], [inout, 3, datatype])
    for out, contributions in ((result, 3), (inout, 2)):
        assert out.dtype == dtype
        assert np.isposinf(out[0]) and np.isneginf(out[1]) and out[2] == contributions


@pytest.mark.parametrize("name", DTYPES)
def test_mpi_datatype_size_is_the_itemsize(name):
    """Each MPI datatype spans exactly one element, so counts and segmentation line up."""
    dtype = NUMPY_DTYPES[name]
    assert reductions.mpi_datatype(dtype).Get_size() == dtype.itemsize


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_mpi_op_applies_the_rule(name, kind):
    """MPI_Reduce_local with mpi_op/mpi_datatype computes ``incoming (kind) inout`` by the rule."""
    dtype = NUMPY_DTYPES[name]
    incoming = encode(1, (40,), dtype, salt=3)
    inout = encode(2, (40,), dtype, salt=11)
    if name in FLOATS or name == "complex64":
        incoming[5] = np.nan
        inout[9] = np.nan
    expected = expected_reduce(kind, [incoming, inout])
    datatype = reductions.mpi_datatype(dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        op = reductions.mpi_op(kind, dtype)
        op.Reduce_local([incoming, 40, datatype], [inout, 40, datatype])
    if kind == "sum" and name in ("float16", "bfloat16", "float32", "float64", "complex64"):
        # NaN + x is NaN whatever the order; the others are exact on this data.
        expected_nan = np.isnan(expected.real if name == "complex64" else expected)
        actual_nan = np.isnan(inout.real if name == "complex64" else inout)
        assert actual_nan.tolist() == expected_nan.tolist()
        assert np.array_equal(inout[~actual_nan], expected[~expected_nan])
    else:
        assert same(inout, expected)


@pytest.mark.parametrize("name", DTYPES)
@pytest.mark.parametrize("kind", KINDS)
def test_mpi_op_through_a_reduction_on_comm_self(name, kind):
    """A real MPI_Reduce on COMM_SELF with mpi_op leaves the single contribution unchanged."""
    dtype = NUMPY_DTYPES[name]
    x = encode(3, (17,), dtype)
    out = np.zeros_like(x)
    datatype = reductions.mpi_datatype(dtype)
    MPI.COMM_SELF.Reduce([x, 17, datatype], [out, 17, datatype], reductions.mpi_op(kind, dtype), 0)
    assert np.array_equal(out, x)


def test_mpi_ops_are_created_once():
    """mpi_op is cached: the same (kind, dtype) gives the same MPI.Op object."""
    for name in DTYPES:
        for kind in KINDS:
            dtype = NUMPY_DTYPES[name]
            assert reductions.mpi_op(kind, dtype) is reductions.mpi_op(kind, np.dtype(dtype))


@pytest.mark.parametrize("kind", ["max", "min"])
@pytest.mark.parametrize("nan", [complex(1, np.nan), complex(np.nan, 1)], ids=["imag", "real"])
def test_complex_nan_propagates_whatever_the_order(kind, nan):
    """A NaN in either part of a complex value wins max/min from either side of the comparison,
    so the result does not depend on which rank holds it (the NaN rule the reference chose)."""
    other = np.array([4.25 + 6j if kind == "max" else -3 + 0j], np.complex64)
    with_nan = np.array([nan], np.complex64)
    results = {
        "combine(nan, other)": reductions.combine(kind, with_nan, other),
        "combine(other, nan)": reductions.combine(kind, other, with_nan),
        "local_reduce([nan, other])": reductions.local_reduce(kind, np.stack([with_nan, other])),
        "local_reduce([other, nan])": reductions.local_reduce(kind, np.stack([other, with_nan])),
        "local_reduce([other, other, nan])": reductions.local_reduce(
            kind, np.stack([other, other, with_nan])
        ),
    }
    inout = other.copy()
    datatype = reductions.mpi_datatype(with_nan.dtype)
    reductions.mpi_op(kind, with_nan.dtype).Reduce_local(
        [with_nan, 1, datatype], [inout, 1, datatype]
    )
    results["mpi op, nan incoming"] = inout
    inout = with_nan.copy()
    reductions.mpi_op(kind, with_nan.dtype).Reduce_local([other, 1, datatype], [inout, 1, datatype])
    results["mpi op, nan in inout"] = inout
    lost = [where for where, r in results.items() if not (np.isnan(r.real) | np.isnan(r.imag))[0]]
    assert lost == []
