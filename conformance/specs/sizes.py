"""Element counts around the sizes where collective implementations change behaviour.

Real backends switch algorithm, chunk, pipeline or change protocol at size thresholds (ring vs
tree, reduce-scatter + all_gather above some size, eager vs rendezvous p2p, 32-bit byte counts),
and the bugs live at and just past those thresholds: a last partial chunk left out, a count not
divisible by the number of ranks, blocks reordered above a threshold. So the sweep takes every
power of two from 1 Ki to 16 Mi elements with its neighbours (2^k - 1, 2^k, 2^k + 1), primes,
and the counts around the group size (1, N - 1, N, N + 1).

Results are compared chunk by chunk (``CHUNK`` elements at a time, so memory stays bounded
at 16 Mi elements and more) and a failure names the first wrong element's index, its value and
the expected one, and the count. Inputs use every bit of the dtype (``FAMILIES``: full-mantissa
floats for sums, random bit patterns for the others), and any slice of any rank's input can be
built alone (``rank_input``, which keeps recent ones, so the collectives of one count that share
a family build them once). A result every rank returned bit for bit the same (their digests
agree) is checked in shares (``check_swept``): each rank checks its slice of it from the same
slice of every rank's input, so a rank builds its own input and a slice of the others', not
every rank's whole input, and every element is still checked.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from conformance.specs import data, reductions
from conformance.specs.tolerance import mismatch, wrong

KI = 1024
MI = 1024 * KI

# Primes between the thresholds: counts that no chunk or block size divides.
PRIMES: tuple[int, ...] = (2, 3, 5, 7, 13, 61, 251, 1021, 4099, 65521, 262147, 1048573, 16777213)

# Default run: 2^k - 1, 2^k and 2^k + 1 up to 16 Ki, then both neighbours of every power of two
# up to 256 Ki (the partial last chunk and the count one short), 1 Mi + 1 and 4 Mi + 3 (16 MiB a
# rank in float32: past the eager/rendezvous and chunking thresholds of common transports, at a
# few seconds per rank count). The soak tier adds the rest up to 16 Mi + 5 elements (64 MiB).
DEFAULT_FULL_MAX = 16 * KI + 1
DEFAULT_NEIGHBOURS_MAX = 256 * KI + 1
DEFAULT_LARGE_COUNTS: tuple[int, ...] = (MI + 1, 4 * MI + 3)
SOAK_MAX_COUNT = 16 * MI + 1
SOAK_LARGE_COUNTS: tuple[int, ...] = (4 * MI + 3, 16 * MI + 5)
# The 14 dtypes at a few large sizes (the dtype x size matrix is sparse; float32 has the sweep).
# Default run: one count just past each byte threshold, 64 KiB (where result pools and eager
# paths start) and 1 MiB (rendezvous and chunking): ``threshold // itemsize`` plus an odd few
# elements, so the byte count is not a multiple of twice the itemsize (nor of 4 for 1- and 2-byte
# dtypes, nor of 16 for 8-byte ones): a transport that moves whole words or vectors has a tail.
DTYPE_BYTE_THRESHOLDS: tuple[tuple[int, int], ...] = ((64 * KI, 1), (MI, 3))
DTYPE_COUNTS_SOAK: tuple[int, ...] = (MI - 1, 4 * MI + 1, 16 * MI + 1)
# Just past 4 MiB: each dtype for the ops of one entry (by the dtype's place in DTYPE_NAMES), so
# every dtype crosses it in one collective and, one dtype in two, in send/recv.
DTYPE_FAR_BYTES = 4 * MI
DTYPE_FAR_OPS: tuple[tuple[str, ...], ...] = (
    ("all_sum", "send"),
    ("all_max",),
    ("all_min", "send"),
    ("all_gather",),
    ("sum_scatter", "send"),
)
# Counts the default sweep calls twice in a row (fresh inputs the second time) while the first
# result is held: the same shape, dtype and group as a later call, where a result pool that hands
# out a held buffer shows. Past the 64 KiB and 1 MiB thresholds, in float32 (4 Mi + 3 only once:
# it is the sweep's costliest count).
REPEATED_COUNTS: frozenset[int] = frozenset({16 * KI + 1, 256 * KI - 1, MI + 1})

# Compare this many elements at a time: bounded memory for the float64 copies a comparison makes.
CHUNK = MI
# Bytes of inputs (this rank's, and its shares of the others') kept between tests: more than one
# family of the default float32 sweep at any rank count.
CACHE_BYTES = 96 * MI


def threshold_counts(low: int, high: int) -> list[int]:
    """2^k - 1, 2^k and 2^k + 1 for every power of two 2^k in [low, high]."""
    out: list[int] = []
    k = max(0, math.ceil(math.log2(max(low, 1))))
    while 2**k <= high:
        out += [2**k - 1, 2**k, 2**k + 1]
        k += 1
    return out


def sweep_counts(group_size: int, max_count: int, low: int = KI) -> list[int]:
    """The sweep up to ``max_count``: 1, N - 1, N, N + 1, 2N + 1, 3N - 1, primes, and
    2^k - 1, 2^k, 2^k + 1 from ``low``."""
    n = group_size
    small = [1, n - 1, n, n + 1, 2 * n + 1, 3 * n - 1]
    counts = {c for c in (*small, *PRIMES, *threshold_counts(low, max_count)) if c >= 1}
    return sorted(c for c in counts if c <= max_count)


def default_counts(group_size: int) -> list[int]:
    """The default run's slice: every threshold region up to 256 Ki plus the large counts."""
    neighbours = threshold_counts(DEFAULT_FULL_MAX, DEFAULT_NEIGHBOURS_MAX)
    neighbours = [c for c in neighbours if c & (c - 1)]  # 2^k - 1 and 2^k + 1
    counts = sweep_counts(group_size, DEFAULT_FULL_MAX) + neighbours + list(DEFAULT_LARGE_COUNTS)
    return sorted(set(counts))


def soak_bands() -> dict[str, list[int]]:
    """The soak tier's counts (what the default slice leaves out, up to ``SOAK_MAX_COUNT``) by
    threshold region (``"256Ki"``: counts from 256 Ki up to 512 Ki), so that each region is one
    test within the per-test deadline. None of them depends on the group size."""
    done = set(default_counts(1))
    swept = sweep_counts(1, SOAK_MAX_COUNT, low=DEFAULT_FULL_MAX) + list(SOAK_LARGE_COUNTS)
    swept = [c for c in swept if c > DEFAULT_FULL_MAX]
    bands: dict[str, list[int]] = {}
    for count in sorted(set(swept) - done):
        bands.setdefault(_region(count), []).append(count)
    return bands


def _region(count: int) -> str:
    power = 2 ** (count.bit_length() - 1)
    return f"{power // MI}Mi" if power >= MI else f"{power // KI}Ki"


def dtype_counts(dtype: str, op: str = "") -> list[int]:
    """The default run's counts for ``dtype``: just past 64 KiB and 1 MiB per rank, and, for
    one op per dtype (``DTYPE_FAR_OPS``: a sparse dtype x op design, every dtype once), just
    past 4 MiB (a transport's path for large messages may start anywhere past 1 MiB)."""
    itemsize = data.np_dtype(dtype).itemsize
    counts = [threshold // itemsize + extra for threshold, extra in DTYPE_BYTE_THRESHOLDS]
    far = DTYPE_FAR_OPS[data.DTYPE_NAMES.index(dtype) % len(DTYPE_FAR_OPS)]
    if op in far:
        counts.append(DTYPE_FAR_BYTES // itemsize + 5)
    return counts


# What the sweep's inputs hold, per op: every bit of the dtype used, so a backend that narrows,
# rounds or canonicalises values at some size shows there. Sums: floats with every significand
# bit random over 16 binades (``data.full_mantissa``, compared within the derived tolerance);
# max/min: random bit patterns without NaN (infinities, subnormals, -0.0: exact, NaN has its own
# impl-defined bounds); gather and send/recv: random bit patterns, NaN payloads included (bit for
# bit). Integers cover their whole range in every family.
FAMILIES = {
    "all_sum": "full-mantissa",
    "sum_scatter": "full-mantissa",
    "all_max": "bits-no-nan",
    "all_min": "bits-no-nan",
    "all_gather": "bits",
    "send": "bits",
}


def family_input(
    family: str, rank: int, count: int, dtype: str, salt: int, start: int = 0, stop: int = -1
) -> np.ndarray:
    """Elements ``[start, stop)`` (default: all ``count``) of rank ``rank``'s 1-D input of
    ``family`` (a value of ``FAMILIES``, or ``"contribution"``). An element's value depends only
    on its position, never on which slice is built, so a rank builds its share of another rank's
    input without the whole of it."""
    stop = count if stop < 0 else stop
    name = data.np_dtype(dtype)
    if family == "contribution":
        return data.contribution(rank, (stop - start,), dtype, salt, start=start)
    raw = _stream(_STREAMS[family], rank, count, salt, start * name.itemsize, stop * name.itemsize)
    if dtype == "bool":  # only the bytes 0 and 1 are bool values
        raw &= np.uint8(1)
        return raw.view(name)
    if family == "full-mantissa" and dtype in _WORDS:
        return _full_mantissa_words(raw, dtype)
    out = raw.view(name)  # integers: every bit random in every family (their whole range)
    if family == "bits-no-nan" and dtype in (*data.FLOAT_NAMES, "complex64"):
        with np.errstate(invalid="ignore"):  # ml_dtypes warns on its own NaN patterns
            nan = np.isnan(out.real) | np.isnan(out.imag) if dtype == "complex64" else np.isnan(out)
        out[nan] = 0
    return out


# The random stream each family draws from (random bit patterns with or without NaN share one).
_STREAMS = {"bits": 3, "bits-no-nan": 3, "full-mantissa": 4}


def _stream(tag: int, rank: int, count: int, salt: int, first: int, last: int) -> np.ndarray:
    """Bytes ``[first, last)`` of the random byte stream of (``tag``, ``rank``, ``count``,
    ``salt``): PCG64's raw 64-bit outputs, the generator advanced past the words before
    ``first`` (so any slice costs what its own bytes cost). The slices a family takes start at
    a multiple of the itemsize (1, 2, 4 or 8 bytes), so their arrays are aligned."""
    words = first // 8, -(-last // 8)
    bits = np.random.PCG64([0x5EED, tag, salt, rank, count])
    bits.advance(words[0])
    raw = bits.random_raw(words[1] - words[0]).view(np.uint8)
    return raw[first - 8 * words[0] : last - 8 * words[0]]


# Each float dtype (complex64 as float32 pairs): (unsigned word, exponent shift, exponent bias).
_WORDS = {
    "float16": (np.uint16, 10, 15),
    "bfloat16": (np.uint16, 7, 127),
    "float32": (np.uint32, 23, 127),
    "complex64": (np.uint32, 23, 127),
    "float64": (np.uint64, 52, 1023),
}


def _full_mantissa_words(raw: np.ndarray, dtype: str) -> np.ndarray:
    """``data.full_mantissa``'s kind of values, built in place in the float's own bits from the
    random bytes ``raw`` (several times faster at millions of elements): random sign and
    significand, exponent uniform in [-8, 8)."""
    word, shift, bias = _WORDS[dtype]
    bits = raw.view(word)
    exponent = (bits >> word(shift)) & word(15)
    keep = word((1 << (8 * np.dtype(word).itemsize - 1)) | ((1 << shift) - 1))  # sign, significand
    bits &= keep
    exponent += word(bias - 8)
    exponent <<= word(shift)
    bits |= exponent
    return bits.view(data.np_dtype(dtype))


def scatter_rows(group_size: int, count: int) -> int:
    """sum_scatter's input rows for a swept ``count``: the largest multiple of N not above it,
    so the inputs are prefixes of the other collectives' (no new data to build) and the block
    each rank gets, ``count // N``, is odd for many counts (2^k - 1 and the primes at N = 2)."""
    return count - count % group_size


def share(group_size: int, rank: int, count: int) -> tuple[int, int]:
    """The elements ``[start, stop)`` of a ``count``-element result that ``rank`` checks when
    every rank's result is known to be the same: ``count // N`` each, the last rank also the
    rest. Rank r's share starts where its sum_scatter block does (``scatter_rows``)."""
    step = count // group_size
    return rank * step, count if rank == group_size - 1 else (rank + 1) * step


class _InputCache:
    """Swept inputs and slices of them, by (family, rank, count, dtype, salt, start, stop), least
    recently used out first once more than ``limit`` bytes are kept; an array of more than half
    of it is not kept. The arrays are read-only: shared by tests."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.entries: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.nbytes = 0

    def get(self, key: tuple) -> np.ndarray:
        family, rank, count, dtype, salt, start, stop = key
        whole = (family, rank, count, dtype, salt, 0, count)
        if key in self.entries:
            self.entries.move_to_end(key)
            return self.entries[key]
        if whole in self.entries:  # a slice of a whole input already built
            self.entries.move_to_end(whole)
            return self.entries[whole][start:stop]
        out = family_input(family, rank, count, dtype, salt, start, stop)
        out.flags.writeable = False
        if out.nbytes <= self.limit // 2:
            self.entries[key] = out
            self.nbytes += out.nbytes
            while self.nbytes > self.limit:
                self.nbytes -= self.entries.popitem(last=False)[1].nbytes
        return out

    def clear(self) -> None:
        self.entries.clear()
        self.nbytes = 0


_CACHE = _InputCache(CACHE_BYTES)


def rank_input(
    family: str, rank: int, count: int, dtype: str, salt: int = 0, start: int = 0, stop: int = -1
) -> np.ndarray:
    """Elements ``[start, stop)`` (default: all) of rank ``rank``'s 1-D input of ``count``
    elements (``family_input``), read-only, kept between tests while small enough."""
    return _CACHE.get((family, rank, count, dtype, salt, start, count if stop < 0 else stop))


def blocks(
    size: int, count: int, dtype: str, salt: int = 0, family: str = "contribution"
) -> tuple[np.ndarray, ...]:
    """Every rank's whole 1-D input of ``count`` elements (``rank_input``)."""
    return tuple(rank_input(family, r, count, dtype, salt) for r in range(size))


# -- comparing in chunks ------------------------------------------------------------------------
# expect(start, stop) -> (the expected elements [start, stop), their float tolerance: None (exact)
# or a function of the indexes (in [start, stop), from 0) of the elements whose bits differ from
# the expected ones, giving their tolerance: only those need one, and only when there are some)
Bound = Callable[[np.ndarray], np.ndarray | None] | None
Expect = Callable[[int, int], tuple[np.ndarray, Bound]]


def same_bits(got: np.ndarray, want: np.ndarray, label: str, offset: int = 0) -> str | None:
    """Why the 1-D ``got`` is not bit for bit ``want`` (NaN payloads and the sign of zero
    count), naming the first differing element with its bits, or None. Never raises."""
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"{label}: is {data.describe(got)}, expected {data.describe(want)}"
    word = np.dtype(f"u{want.dtype.itemsize}")
    for start in range(0, want.shape[0], CHUNK):
        stop = min(start + CHUNK, want.shape[0])
        g = np.ascontiguousarray(got[start:stop]).view(word)
        w = np.ascontiguousarray(want[start:stop]).view(word)
        if np.array_equal(g, w):
            continue
        bad = np.flatnonzero(g != w)
        i, digits = int(bad[0]), 2 * word.itemsize
        return (
            f"{label}: first wrong element at index {offset + start + i} of {want.shape[0]}:"
            f" got {_scalar(got[start + i])!r} (0x{int(g[i]):0{digits}x}), expected"
            f" {_scalar(want[start + i])!r} (0x{int(w[i]):0{digits}x})"
            f" ({len(bad)} of {stop - start} elements in [{offset + start},"
            f" {offset + stop}) differ)"
        )
    return None


def first_wrong(
    got: np.ndarray,
    expect: Expect,
    length: int,
    label: str,
    offset: int = 0,
    total: int | None = None,
) -> str | None:
    """Compare ``got`` (1-D, ``length`` elements) with what ``expect(start, stop)`` says the
    elements ``[start, stop)`` must be, chunk by chunk. Bit-identical elements pass at once; the
    others are compared within their tolerance (``tolerance.wrong``, ``mismatch``'s rule).

    A finding names the first wrong element by its index (plus ``offset``, its place in a whole
    result of ``total`` elements, by default ``length``), what it holds and what it should hold,
    and how many of its chunk are off.
    """
    total = length if total is None else total
    for start in range(0, length, CHUNK):
        stop = min(start + CHUNK, length)
        want, bound = expect(start, stop)
        part = got[start:stop]
        if part.dtype != want.dtype or part.shape != want.shape:
            return mismatch(part, want, None, label)
        differ = _differing(part, want)
        if not len(differ):
            continue
        bad = differ[wrong(part[differ], want[differ], bound(differ) if bound else None)]
        if not len(bad):
            continue
        i = int(bad[0])
        value, wanted = _scalar(part[i]), _scalar(want[i])
        return (
            f"{label}: first wrong element at index {offset + start + i} of {total}: got"
            f" {value!r}, expected {wanted!r} ({len(bad)} of {stop - start} elements off in"
            f" [{offset + start}, {offset + stop}))"
        )
    return None


def _differing(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """The indexes of the 1-D ``got``'s elements whose bits differ from ``want``'s."""
    word = np.dtype(f"u{want.dtype.itemsize}")
    g, w = np.ascontiguousarray(got).view(word), np.ascontiguousarray(want).view(word)
    if np.array_equal(g, w):
        return np.empty(0, np.intp)
    return np.flatnonzero(g != w)


def _scalar(x: object) -> object:
    return x.item() if isinstance(x, np.generic) else x


def _reduction(
    op: str, got: np.ndarray, parts: Sequence[np.ndarray], label: str, offset: int, total: int
) -> str | None:
    """Why ``got`` is not ``op`` (all_sum, all_max or all_min) of the 1-D ``parts`` (every
    rank's elements ``[offset, offset + len(got))``), naming the first wrong element."""

    def expect(a: int, b: int) -> tuple[np.ndarray, Bound]:
        chunk = [p[a:b] for p in parts]

        def bound(differ: np.ndarray) -> np.ndarray | None:
            return reductions.tolerance(op, [c[differ] for c in chunk], 0)

        return reductions.expected(op, chunk, 0), bound

    return first_wrong(got, expect, got.shape[0], label, offset, total)


def check_result(
    op: str, got: object, blocks_: Sequence[np.ndarray], rank: int, label: str
) -> str | None:
    """Why ``op``'s result ``got`` on ``rank`` is wrong for 1-D inputs ``blocks_``, or None.
    Every element is checked.

    Never raises (a malformed result is a finding), so every rank reaches the settle after it.
    """
    size, count = len(blocks_), blocks_[0].shape[0]
    found = _malformed(op, got, size, count, blocks_[0].dtype, label)
    if found or size == 1:  # a group of one returns its input: bit for bit
        return found or same_bits(got, blocks_[0], label)
    if op == "all_gather":
        for r in range(size):
            part = got[r * count : (r + 1) * count]
            found = same_bits(part, blocks_[r], f"{label} block of rank {r}", r * count)
            if found:
                return found
        return None
    if op == "sum_scatter":
        rows = count // size
        parts = [b[rank * rows : (rank + 1) * rows] for b in blocks_]
        return _reduction("all_sum", got, parts, label, 0, rows)
    return _reduction(op, got, blocks_, label, 0, count)


def check_swept(
    op: str,
    got: object,
    family: str,
    size: int,
    rank: int,
    count: int,
    dtype: str,
    salt: int,
    label: str,
    *,
    same_everywhere: bool,
) -> str | None:
    """Why ``op``'s result ``got`` on ``rank`` is wrong for the swept inputs of ``count``
    elements (``rank_input``; sum_scatter's: their first ``scatter_rows``), or None.

    With ``same_everywhere`` (every rank's result is known to be bit for bit this one: their
    digests agree), this rank checks its ``share`` of the elements (all_gather: its own block)
    and every other rank checks its own, so every element is still checked, on a rank whose
    result is this one, from only a slice of every other rank's input. sum_scatter's result is
    always one rank's share. Otherwise every element is checked here (``check_result``).
    Never raises.
    """
    rows = scatter_rows(size, count) if op == "sum_scatter" else count
    mine = rank_input(family, rank, count, dtype, salt)[:rows]
    found = _malformed(op, got, size, rows, mine.dtype, label)
    if found or size == 1:
        return found or same_bits(got, mine, label)
    if not same_everywhere and op != "sum_scatter":
        return check_result(op, got, blocks(size, count, dtype, salt, family), rank, label)
    if op == "all_gather":
        block = got[rank * count : (rank + 1) * count]
        return same_bits(block, mine, f"{label} block of rank {rank}", rank * count)
    start, stop = share(size, rank, count)
    if op == "sum_scatter":
        parts = [
            rank_input(family, r, count, dtype, salt, start, stop)[: rows // size]
            for r in range(size)
        ]
        return _reduction("all_sum", got, parts, label, 0, rows // size)
    parts = [rank_input(family, r, count, dtype, salt, start, stop) for r in range(size)]
    where = f"{label} (rank {rank}'s share of every rank's same result)"
    return _reduction(op, got[start:stop], parts, where, start, count)


def _malformed(
    op: str, got: object, size: int, count: int, dtype: np.dtype, label: str
) -> str | None:
    """A finding if ``got`` is not an array of ``op``'s result dtype and shape."""
    shape = _result_shape(op, size, count)
    if not isinstance(got, np.ndarray) or got.dtype != dtype or got.shape != shape:
        what = data.describe(got) if isinstance(got, np.ndarray) else type(got).__name__
        return f"{label}: result is {what}, expected {data.dtype_name(dtype)} {shape}"
    return None


def _result_shape(op: str, size: int, count: int) -> tuple[int, ...]:
    if size == 1:
        return (count,)
    if op == "all_gather":
        return (count * size,)
    if op == "sum_scatter":
        return (count // size,)
    return (count,)


def received(got: object, sent: np.ndarray, label: str) -> str | None:
    """Why a received array ``got`` differs from what was ``sent`` in any bit, or None."""
    if not isinstance(got, np.ndarray) or got.dtype != sent.dtype or got.shape != sent.shape:
        what = data.describe(got) if isinstance(got, np.ndarray) else type(got).__name__
        return f"{label}: received {what}, expected {data.describe(sent)}"
    return same_bits(got.reshape(-1), sent.reshape(-1), label)


def label(op: str, dtype: str, count: int, extra: str = "") -> str:
    """How findings name a case: ``all_sum float32 count=1048577 (4.0 MiB)``."""
    nbytes = count * data.np_dtype(dtype).itemsize
    return f"{op} {dtype} count={count} ({_bytes(nbytes)}){extra}"


def _bytes(n: int) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", MI), ("KiB", KI)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def total_bytes(counts: Iterable[int], dtype: str) -> int:
    """Bytes of one rank's inputs over ``counts`` (to size a sweep)."""
    return sum(counts) * data.np_dtype(dtype).itemsize
