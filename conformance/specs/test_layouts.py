"""Spec of input layouts: every op that takes an array, given views of every kind.

SEMANTICS.md, "Inputs: layouts and ownership"; manifest entry ``[ops.layouts]``. Views reach the
backend through ``Backend.asarray``: the numpy hook keeps their layout (strides, read-only flag,
address modulo 64); an adapter that has to copy says so in ``Backend.layout_copy``, and
``test_asarray_keeps_views`` skips with that sentence as its reason, so the report shows that the
other tests here then check the adapter's copy rather than the backend.

Every layout is tried small (the reference's inline path, <= 512 bytes) and large (> 16 KiB, past
its inline limits for collectives and for send/recv alike), with dtypes of every item size. An op
or dtype the backend declares unsupported (complex64 of all_max, say) is checked to raise as the
manifest names, once per test, and left out of the layouts (``declared``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from conformance.specs import data, reductions
from conformance.specs.calls import attempt, call, describe_error, local, settle
from conformance.specs.declared import collective_dtypes, p2p_dtypes
from conformance.specs.groups import require_size
from conformance.specs.tolerance import mismatch

pytestmark = [pytest.mark.core, pytest.mark.layouts]

COLLECTIVES = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter")
P2P = ("send", "recv_like")
LARGE_COLUMNS = 1200  # rows of 1200 float64 or complex64: 19 KiB per rank at one rank
# Small cases rotate through these; large cases use 8-byte items, where misalignment shows most.
SMALL_DTYPES = ("float64", "int16", "bfloat16", "complex64", "bool", "uint64", "float16", "int32")
LARGE_DTYPES = ("float64", "complex64")

Fill = Callable[[tuple[int, ...]], np.ndarray]


def _c_order(fill: Fill, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    base = fill(shape)
    return base, base


def _fortran(fill: Fill, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    base = np.asfortranarray(fill(shape))
    return base, base


def _transposed(fill: Fill, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    base = fill(shape[::-1])
    return base, base.T


def _strided(fill: Fill, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    base = fill((2 * shape[0], 3 * shape[1]))
    return base, base[::2, ::3]


def _reversed(fill: Fill, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    base = fill(shape)
    return base, base[::-1, ::-1]


def _unaligned(fill: Fill, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    values = fill(shape)
    raw = np.full(values.nbytes + 1, 0xA5, np.uint8)
    view = np.ndarray(shape, values.dtype, buffer=raw, offset=1)
    view[...] = values
    return raw, view


def _read_only(fill: Fill, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    base = fill(shape)
    base.flags.writeable = False
    return base, base


def _broadcast(fill: Fill, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    base = fill((1, shape[1]))
    return base, np.broadcast_to(base, shape)


def _zero_d(fill: Fill, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    base = fill((5,))
    return base, base[3, ...]


def _empty_rows(fill: Fill, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    base = fill(shape)
    return base, base[::2][:0]


def _empty_columns(fill: Fill, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    base = fill(shape)
    return base, base[:, 1:1]


# name -> (values -> (the memory the view lives in, the view)); the view has the given shape
# except for the 0-d and empty layouts.
LAYOUTS: dict[str, Callable[[Fill, tuple[int, int]], tuple[np.ndarray, np.ndarray]]] = {
    "C order": _c_order,
    "Fortran order": _fortran,
    "transposed": _transposed,
    "strided [::2, ::3]": _strided,
    "reversed [::-1, ::-1]": _reversed,
    "unaligned (byte offset 1)": _unaligned,
    "read-only": _read_only,
    "broadcast (stride 0)": _broadcast,
    "0-d view": _zero_d,
    "empty (0, n) view": _empty_rows,
    "empty (n, 0) view": _empty_columns,
}


def _cases(size: int, op: str) -> list[tuple[str, str, tuple[int, int], int]]:
    """(layout, dtype, shape, salt) for every layout, small and large."""
    found = []
    for i, layout in enumerate(LAYOUTS):
        if layout == "0-d view" and op == "sum_scatter" and size > 1:
            continue  # a 0-d input is an error for sum_scatter (test_sum_scatter checks it)
        small = SMALL_DTYPES[i % len(SMALL_DTYPES)]
        found.append((layout, small, (2 * size, 3), i))
        if layout not in ("0-d view", "empty (0, n) view", "empty (n, 0) view"):
            large = LARGE_DTYPES[i % len(LARGE_DTYPES)]
            found.append((layout, large, (2 * size, LARGE_COLUMNS), 100 + i))
    return found


def _view(layout: str, rank: int, dtype: str, shape: tuple[int, int], salt: int):
    def fill(s: tuple[int, ...]) -> np.ndarray:
        return data.contribution(rank, s, dtype, salt)

    return LAYOUTS[layout](fill, shape)


def _contiguous(a: np.ndarray) -> np.ndarray:
    # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
    return np.array(a, order="C", copy=True)


def _forced(backend: Any, out: Any) -> np.ndarray:
    backend.evaluate(out)
    return backend.to_numpy(out)


def _label(layout: str, view: np.ndarray) -> str:
    return f"{layout} {data.describe(view)}"


def dtypes_for(backend: Any, world: Any, capabilities: Any, op: str, names) -> list[str]:
    """The dtypes of ``names`` the backend declares ``op`` supports (send with recv, recv_like
    with send); each other one, or ``op`` itself, is checked to raise as the manifest names."""
    names = list(dict.fromkeys(names))
    if op in P2P:
        ops = ("send", "recv") if op == "send" else ("send", "recv_like")
        return p2p_dtypes(backend, capabilities, world, names, ops)
    return collective_dtypes(backend, capabilities, op, world, names)


def _collective_findings(backend: Any, world: Any, op: str, cases: list) -> list[str | None]:
    size, rank = world.size(), world.rank()
    problems: list[str | None] = []
    for layout, dtype, shape, salt in cases:
        views = [_view(layout, r, dtype, shape, salt)[1] for r in range(size)]
        label = _label(layout, views[rank])

        def go(view: np.ndarray = views[rank]) -> np.ndarray:
            return _forced(backend, getattr(backend, op)(backend.asarray(view), group=world))

        got = call(f"{op} of {label}", go)
        contiguous = [_contiguous(v) for v in views]
        want = reductions.expected(op, contiguous, rank)
        tolerance = reductions.tolerance(op, contiguous, rank)
        problems.append(mismatch(got, want, tolerance, f"{op} of {label}"))
    return problems


def _ring(backend: Any, world: Any, send_x: Any, receive: Callable[[int], Any]) -> tuple:
    """Send ``send_x`` (a backend array) to rank + 1 and ``receive(src)`` from rank - 1, even
    ranks sending first; returns (send's result, the received array, findings)."""
    rank, size = world.rank(), world.size()
    dst, src = (rank + 1) % size, (rank - 1) % size
    problems: list[str | None] = []
    results: dict[str, Any] = {}

    def do_send() -> None:
        out, error = attempt(lambda: _forced(backend, backend.send(send_x, dst, group=world)))
        results["sent"] = out
        problems.append(error and f"send to {dst} raised {describe_error(error)}")

    def do_recv() -> None:
        out, error = attempt(lambda: _forced(backend, receive(src)))
        results["got"] = out
        problems.append(error and f"receive from {src} raised {describe_error(error)}")

    for step in (do_send, do_recv) if rank % 2 == 0 else (do_recv, do_send):
        step()
    return results.get("sent"), results.get("got"), problems


def _p2p_findings(backend: Any, world: Any, op: str, cases: list) -> list[str | None]:
    """send: the sent array is the view. recv_like: the template is the view, the message
    contiguous. Either way rank r + 1 must receive rank r's values."""
    size, rank = world.size(), world.rank()
    problems: list[str | None] = []
    for layout, dtype, shape, salt in cases:
        views = [_view(layout, r, dtype, shape, salt)[1] for r in range(size)]
        mine, theirs = views[rank], _contiguous(views[(rank - 1) % size])
        label = _label(layout, mine)
        if op == "send":
            outgoing = mine

            def receive(src: int, like: np.ndarray = theirs) -> Any:
                name = data.dtype_name(like.dtype)
                return backend.recv(like.shape, backend.dtype(name), src, group=world)
        else:
            outgoing = _contiguous(mine)

            def receive(src: int, template: np.ndarray = mine) -> Any:
                return backend.recv_like(backend.asarray(template), src, group=world)

        sent, got, found = _ring(backend, world, backend.asarray(outgoing), receive)
        problems += found
        if sent is not None:
            problems.append(mismatch(sent, _contiguous(mine), None, f"send({label})"))
        if got is not None:
            problems.append(mismatch(got, theirs, None, f"{op} with {label}: received"))
    return problems


@pytest.mark.spec("layouts", rule="any-layout")
@pytest.mark.parametrize("op", COLLECTIVES + P2P)
def test_layouts_give_the_contiguous_result(backend, world, capabilities, op):
    """C and Fortran order, strided, reversed, unaligned, read-only, broadcast, 0-d and empty
    views give what their C-contiguous copies give, small and past 16 KiB.

    SEMANTICS.md, Inputs: layouts and ownership: "Every op that takes an array accepts numpy
    arrays in any layout: C or Fortran order, strided and negative-stride views, broadcast views,
    views at any byte offset (unaligned), read-only arrays, 0-d and empty arrays. The result
    equals the result for the C-contiguous copy of the input."
    """
    if op in P2P:
        require_size(world, 2)
    cases = _cases(world.size(), op)
    dtypes = dtypes_for(backend, world, capabilities, op, [c[1] for c in cases])
    findings = _p2p_findings if op in P2P else _collective_findings
    settle(findings(backend, world, op, [c for c in cases if c[1] in dtypes]), op)


def _snapshot(arg: Any) -> tuple[bytes, bytes] | None:
    """The bytes of a numpy argument and of the whole buffer it views, to compare after a call."""
    if not isinstance(arg, np.ndarray):
        return None
    owner = arg.base if isinstance(arg.base, np.ndarray) else arg
    return arg.tobytes(), _contiguous(owner).tobytes()


def _unchanged(backend: Any, arg: Any, before: tuple[bytes, bytes] | None, pristine: np.ndarray):
    def check() -> str | None:
        if before is None:  # not numpy (an adapter's own arrays): compare its values
            now = backend.to_numpy(arg)
            same = now.tobytes() == pristine.tobytes()
            return None if same else "the input's values changed"
        after = _snapshot(arg)
        if after[0] != before[0]:
            return "the input's values changed"
        if after[1] != before[1]:
            return "memory around the input view changed"
        return None

    return local(check)


@pytest.mark.spec("layouts", rule="inputs-unchanged")
@pytest.mark.parametrize("op", COLLECTIVES + P2P)
def test_inputs_unchanged(backend, world, capabilities, op):
    """After the call every input, and the memory around a view, holds what it held before.

    SEMANTICS.md, Inputs: layouts and ownership: "An op never changes its inputs: after the call
    every input array, and `recv_like`'s template, holds what it held before, and so does the
    memory around a view."
    """
    if op in P2P:
        require_size(world, 2)
    size, rank = world.size(), world.rank()
    cases = (("int32", (2 * size, 3)), ("float64", (2 * size, LARGE_COLUMNS)))
    dtypes = dtypes_for(backend, world, capabilities, op, [c[0] for c in cases])
    problems: list[str | None] = []
    for layout in ("C order", "strided [::2, ::3]", "unaligned (byte offset 1)"):
        for dtype, shape in (c for c in cases if c[0] in dtypes):
            view = _view(layout, rank, dtype, shape, 7)[1]
            arg = backend.asarray(view)
            before = _snapshot(arg)
            label = f"{op} of {_label(layout, view)}"
            if op == "send":
                outgoing = arg

                def receive(src: int, like: np.ndarray = view) -> Any:
                    return backend.recv(
                        like.shape, backend.dtype(data.dtype_name(like.dtype)), src, group=world
                    )
            elif op == "recv_like":
                outgoing = backend.asarray(_contiguous(view))

                def receive(src: int, template: Any = arg) -> Any:
                    return backend.recv_like(template, src, group=world)

            if op in P2P:
                problems += _ring(backend, world, outgoing, receive)[2]
            else:
                call(label, lambda a=arg: _forced(backend, getattr(backend, op)(a, group=world)))
            finding = _unchanged(backend, arg, before, view)
            problems.append(finding and f"{label}: {finding}")
    settle(problems, op)


@pytest.mark.spec("layouts", rule="any-layout")
def test_asarray_keeps_views(backend, world):
    """The adapter hook hands numpy layouts to the API unchanged, unless it declares a copy.

    SEMANTICS.md, Inputs: layouts and ownership: "Every op that takes an array accepts numpy
    arrays in any layout". Checks the hook the other layout specs go through: ``asarray(view)``
    has the view's shape, dtype, strides, read-only flag and address modulo 64. An adapter that
    declares ``layout_copy`` is skipped with its declaration as the reason.
    """
    if backend.layout_copy:
        pytest.skip(f"{backend.name}'s asarray copies inputs: {backend.layout_copy}")
    problems: list[str | None] = []
    for layout in LAYOUTS:
        view = _view(layout, world.rank(), "float64", (4, 3), 0)[1]

        def check(view: np.ndarray = view, layout: str = layout) -> str | None:
            arg = backend.asarray(view)
            if not isinstance(arg, np.ndarray):
                return f"{layout}: asarray gave {type(arg).__name__}; declare layout_copy"
            kept = (
                arg.shape == view.shape
                and arg.dtype == view.dtype
                and arg.strides == view.strides
                and arg.flags.writeable == view.flags.writeable
                and (arg.ctypes.data - view.ctypes.data) % 64 == 0
                and arg.tobytes() == view.tobytes()
            )
            return None if kept else f"{layout}: asarray changed the layout or values"

        problems.append(local(check))
    settle(problems)
