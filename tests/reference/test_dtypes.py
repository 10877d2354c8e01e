"""The 14 dtypes, their header codes, and how API inputs become arrays (reference.dtypes)."""

from __future__ import annotations

import os
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from reference import dtypes

NAMES = [
    "bool",
    "int8",
    "int16",
    "int32",
    "int64",
    "uint8",
    "uint16",
    "uint32",
    "uint64",
    "float16",
    "bfloat16",
    "float32",
    "float64",
    "complex64",
]

UNSUPPORTED = [np.longdouble, np.complex128, object, str, "U3", "S2", "float8", None]


def test_the_fourteen_dtypes_in_order():
    """DTYPE_NAMES and SUPPORTED_DTYPES list the 14 dtypes of the API, bfloat16 as ml_dtypes'."""
    assert list(dtypes.DTYPE_NAMES) == NAMES
    expected = [np.dtype(ml_dtypes.bfloat16) if n == "bfloat16" else np.dtype(n) for n in NAMES]
    assert list(dtypes.SUPPORTED_DTYPES) == expected
    assert [dtypes.dtype_name(dt) for dt in expected] == NAMES


def test_codes_are_the_positions_in_the_list():
    """Header codes are 0..13 in list order, so they cannot differ between processes."""
    assert {dtypes.dtype_name(dt): code for dt, code in dtypes.DTYPE_CODES.items()} == {
        name: i for i, name in enumerate(NAMES)
    }


def test_codes_and_shape_hashes_do_not_depend_on_the_hash_seed():
    """Processes with different hash seeds agree on codes and shape hashes (both go in headers)."""
    script = (
        "from reference.dtypes import DTYPE_CODES, dtype_name;"
        "print(sorted((dtype_name(d), c) for d, c in DTYPE_CODES.items()),"
        " hash((3, 5, 7)), hash(()))"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {k: v for k, v in os.environ.items() if not k.startswith(("PMI", "MPI", "HYDRA"))}
        env["PYTHONHASHSEED"] = seed
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        outputs.add(done.stdout)
    assert len(outputs) == 1
    assert str(hash((3, 5, 7))) in outputs.pop()


@pytest.mark.parametrize("name", NAMES)
def test_as_dtype_accepts_names_dtypes_and_scalar_types(name):
    """A name, a numpy dtype and the numpy scalar type all give the same supported dtype."""
    expected = np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)
    assert dtypes.as_dtype(name) == expected
    assert dtypes.as_dtype(expected) == expected
    assert dtypes.as_dtype(expected.type) == expected


def test_as_dtype_python_bool_and_bfloat16_type():
    """Python's bool means the bool dtype; ml_dtypes.bfloat16 (the type) means bfloat16."""
    assert dtypes.as_dtype(bool) == np.dtype(np.bool_)
    assert dtypes.as_dtype(ml_dtypes.bfloat16) == np.dtype(ml_dtypes.bfloat16)


def test_as_dtype_python_number_types_follow_the_scalar_rule():
    """int, float and complex mean what they mean for Python scalars (int32, float32,
    complex64), so recv((), int, src) matches send(3, dst); not numpy's 64-bit defaults."""
    assert dtypes.as_dtype(int) == np.dtype(np.int32)
    assert dtypes.as_dtype(float) == np.dtype(np.float32)
    assert dtypes.as_dtype(complex) == np.dtype(np.complex64)
    assert dtypes.as_dtype(int) == dtypes.as_array(3, "send").dtype


def test_non_native_byte_order_is_converted():
    """A supported dtype in the other byte order is accepted and converted to native order."""
    swapped = np.arange(3, dtype=np.dtype(np.int32).newbyteorder())
    converted = dtypes.as_array(swapped, "all_sum")
    assert converted.dtype == np.dtype(np.int32) and converted.tolist() == [0, 1, 2]


@pytest.mark.parametrize("bad", UNSUPPORTED, ids=repr)
def test_as_dtype_rejects_others_naming_the_supported_list(bad):
    """float128, complex128, object, strings, unknown names: TypeError listing all 14 names."""
    with pytest.raises(TypeError) as caught:
        dtypes.as_dtype(bad)
    message = str(caught.value)
    for name in NAMES:
        assert name in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, np.bool_),
        (False, np.bool_),
        (3, np.int32),
        (-(2**31), np.int32),
        (2**31 - 1, np.int32),
        (2.5, np.float32),
        (1 + 2j, np.complex64),
    ],
    ids=repr,
)
def test_as_array_python_scalars_follow_mlx(value, expected):
    """bool -> bool, int -> int32, float -> float32, complex -> complex64, as 0-d arrays."""
    array = dtypes.as_array(value, "all_sum")
    assert isinstance(array, np.ndarray)
    assert array.shape == ()
    assert array.dtype == np.dtype(expected)
    assert array.item() == value


@pytest.mark.parametrize("value", [2**31, -(2**31) - 1, 2**63])
def test_as_array_int_outside_int32_is_a_value_error(value):
    """A Python int that does not fit in int32 is a ValueError naming the value."""
    with pytest.raises(ValueError, match=str(value)):
        dtypes.as_array(value, "all_sum")


@pytest.mark.parametrize(
    "bad",
    ["text", b"bytes", [1, 2], None, object()],
    ids=["str", "bytes", "list", "None", "object"],
)
def test_as_array_rejects_non_arrays(bad):
    """Anything but a numpy array, numpy scalar or Python number is a TypeError."""
    with pytest.raises(TypeError, match="all_gather"):
        dtypes.as_array(bad, "all_gather")


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros(3, np.complex128),
        np.zeros(3, np.longdouble),
        np.zeros(3, object),
        np.array(["a"]),
        np.complex128(1),
    ],
    ids=lambda a: str(a.dtype),
)
def test_as_array_rejects_unsupported_dtypes_naming_the_list(bad):
    """Arrays or numpy scalars of other dtypes are a TypeError naming the supported dtypes."""
    with pytest.raises(TypeError) as caught:
        dtypes.as_array(bad, "all_sum")
    assert all(name in str(caught.value) for name in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_as_array_contiguous_input_is_not_copied(name):
    """A C-contiguous array is used as it is (same object), so the transport reads it in place."""
    x = np.arange(12).astype(dtypes.NUMPY_DTYPES[name]).reshape(3, 4)
    assert dtypes.as_array(x, "send") is x


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("layout", ["strided", "fortran", "transposed", "reversed"])
def test_as_array_other_layouts_are_copied_to_c_order(name, layout):
    """Strided, Fortran-ordered, transposed and reversed views become a C-contiguous copy."""
    base = (np.arange(48) % 5).astype(dtypes.NUMPY_DTYPES[name]).reshape(6, 8)
    x = {
        "strided": base[::2, 1::3],
        "fortran": np.asfortranarray(base),
        "transposed": base.T,
        "reversed": base[::-1],
    }[layout]
    before = base.copy()
    array = dtypes.as_array(x, "all_sum")
    assert array.flags.c_contiguous
    assert not np.shares_memory(array, base)
    assert array.dtype == x.dtype and array.shape == x.shape
    assert np.array_equal(array, x)
    assert np.array_equal(base, before)


def test_as_array_numpy_scalars_keep_their_dtype():
    """A numpy scalar becomes a 0-d array of its own dtype (no Python-scalar conversion)."""
    for value in (np.float16(1.5), np.int64(2**40), np.uint8(200), ml_dtypes.bfloat16(2.0)):
        array = dtypes.as_array(value, "all_sum")
        assert array.shape == () and array.dtype == np.asarray(value).dtype
        assert array.item() == np.asarray(value).item()


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((), ()), ([], ()), ((2, 3), (2, 3)), ([0, 4], (0, 4)), ((np.int64(5),), (5,))],
    ids=repr,
)
def test_as_shape_accepts_sequences_of_non_negative_ints(shape, expected):
    """Tuples, lists and numpy ints give a tuple of Python ints."""
    result = dtypes.as_shape(shape, "recv")
    assert result == expected
    assert all(type(d) is int for d in result)


@pytest.mark.parametrize("bad", [5, "23", b"\x01", (2.0,), (True,), ("2",), None], ids=repr)
def test_as_shape_rejects_non_sequences_and_non_ints(bad):
    """An int, a string, floats, bools or None as a shape: TypeError."""
    with pytest.raises(TypeError, match="recv"):
        dtypes.as_shape(bad, "recv")


def test_as_shape_rejects_negative_dimensions():
    """A negative dimension is a ValueError."""
    with pytest.raises(ValueError, match="negative"):
        dtypes.as_shape((2, -1), "recv")


def test_describe_names_dtype_and_shape():
    """Error messages show an array as '<dtype name> <shape tuple>'."""
    assert dtypes.describe(np.dtype(ml_dtypes.bfloat16), (5,)) == "bfloat16 (5,)"
    assert dtypes.describe(np.dtype(np.float32), ()) == "float32 ()"
