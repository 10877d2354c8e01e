"""Random call programs: their inputs, and the standalone script a failing program becomes.

``test_programs.py`` runs Hypothesis-drawn programs (collectives on the world and on split
groups, send/recv rings and pipelines, any dtype, sizes up to past 4 MiB) in lockstep over the
ranks. A failing program shrinks to a minimal one, which ``script`` prints as a Python file that
replays it with plain API calls (``import reference as dist``, or any module with the same API)
under ``mpiexec``, without the suite: the inputs come from ``program_input`` below, whose source
the script carries, and the script checks each result against numpy.

``program_input`` uses numpy and ml_dtypes only (its source is copied into the scripts).
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np

# What each op's inputs hold: every bit of the dtype used. Sums: floats with random significands
# over 16 binades (random bit patterns would overflow differently in different orders);
# max/min: random bits without NaN (NaN's result is impl-defined); gather and p2p: random bits.
KINDS = {
    "all_sum": "significands",
    "sum_scatter": "significands",
    "all_max": "bits-no-nan",
    "all_min": "bits-no-nan",
    "all_gather": "bits",
    "send": "bits",
}


def program_input(kind: str, seed: int, world_rank: int, shape: tuple, dtype: Any) -> np.ndarray:
    """World rank ``world_rank``'s input of ``kind`` for a step drawn with ``seed``."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape, dtype=np.int64))
    rng = np.random.default_rng([seed, world_rank])
    floating = dtype.kind in "fc" or dtype.name == "bfloat16"
    if kind == "significands" and floating:
        part = np.dtype(np.float32) if dtype.kind == "c" else dtype
        bits = {2: 10 if part.name == "float16" else 7, 4: 23, 8: 52}[part.itemsize]
        parts = []
        for _ in range(2 if dtype.kind == "c" else 1):
            significand = 1 + rng.integers(0, 2**bits, size=count) / 2.0**bits
            sign = rng.choice(np.array([-1.0, 1.0]), size=count)
            parts.append(sign * np.ldexp(significand, rng.integers(-8, 8, size=count)))
        values = parts[0] + 1j * parts[1] if dtype.kind == "c" else parts[0]
        return values.astype(dtype).reshape(shape)
    if dtype == np.bool_:
        return (rng.integers(0, 2, size=count) == 1).reshape(shape)
    raw = rng.integers(0, 256, size=count * dtype.itemsize, dtype=np.uint8)
    out = raw.view(dtype).reshape(shape).copy()
    if kind == "bits-no-nan" and floating:
        nan = np.isnan(out.real) | np.isnan(out.imag) if dtype.kind == "c" else np.isnan(out)
        out[nan] = 0
    return out


_HEADER = '''"""A call program that failed the conformance suite on {backend} at {np_} ranks:
{failure}

Run: mpiexec -n {np_} python {name}
Every rank makes the calls below in order; each result is checked against numpy (bit for bit,
sums within a float tolerance) and kept: a result or input that a later call changes fails too.
"""
from typing import Any

import ml_dtypes
import numpy as np

{import_line}

world = dist.init()
rank, size = world.rank(), world.size()
assert size == {np_}, "run with mpiexec -n {np_}"
STEPS = {steps}
held = []


{source}


def check(label, got, want, exact):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (label, got.shape, want.shape)
    if exact or want.dtype.kind not in "fc" and want.dtype.name != "bfloat16":
        word = np.dtype(f"u{{want.dtype.itemsize}}")
        bad = np.flatnonzero(got.reshape(-1).view(word) != want.reshape(-1).view(word))
    else:
        g, w = (a.reshape(-1).astype(np.complex128) for a in (got, want))
        eps = {{2: 2.0**-8, 4: 2.0**-23, 8: 2.0**-52}}[np.dtype(want.dtype).itemsize]
        eps = 2.0**-10 if want.dtype.name == "float16" else eps
        if want.dtype.kind == "c":
            eps = 2.0**-23
        bound = size * eps * MAGNITUDE[label] + np.abs(w) * eps
        both_nan = np.isnan(g) & np.isnan(w)
        bad = np.flatnonzero(~((np.abs(g - w) <= bound) | (g == w) | both_nan))
    assert not len(bad), f"{{label}}: element {{bad[0]}} is {{got.reshape(-1)[bad[0]]!r}}"


def inputs(kind, seed, ranks, shape, dtype):
    return [program_input(kind, seed, r, tuple(shape), dtype) for r in ranks]


MAGNITUDE = {{}}
groups = {{"world": (world, list(range(size)))}}
for i, step in enumerate(STEPS):
    label = f"step {{i}}: {{step}}"
    if step["do"] == "split":
        parent, members = groups[step["parent"]]
        mine = members.index(rank)
        colour, key = step["colours"][mine], step["keys"][mine]
        same = [m for j, m in enumerate(members) if step["colours"][j] == colour]
        order = sorted(same, key=lambda m: (step["keys"][members.index(m)], members.index(m)))
        groups[step["name"]] = (parent.split(colour, key), order)
        continue
    group, members = groups[step["group"]]
    me, n = members.index(rank), len(members)
    dtype = np.dtype(ml_dtypes.bfloat16) if step["dtype"] == "bfloat16" else np.dtype(step["dtype"])
    op = step["do"]
    if op in ("ring", "pipeline"):
        kind = "bits"
    else:
        kind = {kinds}[op]
    xs = inputs(kind, step["seed"], members, step["shape"], dtype)
    x = xs[me].copy()
    if op == "ring" and n > 1:
        dst, src = members[(me + 1) % n], (me - 1) % n
        rdst, rsrc = (me + 1) % n, src
        first, second = ("send", "recv") if me % 2 == 0 else ("recv", "send")
        for what in (first, second):
            if what == "send":
                dist.send(x, rdst, group=group)
            elif step["like"]:
                got = dist.recv_like(xs[rsrc][::-1].copy(), rsrc, group=group)
            else:
                got = dist.recv(x.shape, dtype, rsrc, group=group)
        check(label, got, xs[rsrc], True)
        held.append((label, got, xs[rsrc].copy()))
    elif op == "pipeline" and n > 1:
        got = x if me == 0 else (
            dist.recv_like(x, me - 1, group=group) if step["like"]
            else dist.recv(x.shape, dtype, me - 1, group=group)
        )
        if me + 1 < n:
            dist.send(got, me + 1, group=group)
        check(label, got, xs[0], True)
        held.append((label, got, xs[0].copy()))
    elif op in ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter"):
        got = getattr(dist, op)(x, group=group)
        wide = [a.astype(np.complex128 if dtype.kind == "c" else np.float64)
                if dtype.kind in "fc" or dtype.name == "bfloat16" else a for a in xs]
        if n == 1:
            want = xs[0]
        elif op == "all_gather":
            want = np.stack(xs) if xs[0].ndim == 0 else np.concatenate(xs)
        elif op in ("all_max", "all_min") and dtype.kind == "c":
            best = xs[0].copy()
            for b in xs[1:]:
                key = (b.real > best.real) | ((b.real == best.real) & (b.imag > best.imag))
                if op == "all_min":
                    key = (b.real < best.real) | ((b.real == best.real) & (b.imag < best.imag))
                best = np.where(key, b, best)
            want = best
        elif op == "all_max":
            want = np.max(np.stack(wide), axis=0).astype(dtype)
        elif op == "all_min":
            want = np.min(np.stack(wide), axis=0).astype(dtype)
        elif dtype == np.bool_:
            want = np.logical_or.reduce(np.stack(xs))
        else:
            total = wide[0].copy()
            for b in wide[1:]:
                total = total + b
            want = total.astype(dtype)
            mag = sum(np.abs(np.asarray(w).astype(np.complex128)) for w in wide)
            if op == "sum_scatter":
                rows = want.shape[0] // n
                want, mag = want[me * rows:(me + 1) * rows], mag[me * rows:(me + 1) * rows]
            MAGNITUDE[label] = np.asarray(mag).reshape(-1)
        check(label, got, want, op not in ("all_sum", "sum_scatter") or n == 1)
        held.append((label, got, np.array(got, copy=True)))
    held.append((label + " input", x, xs[me].copy()))
    for was, array, copy in held:
        a, b = np.asarray(array), copy
        word = np.dtype(f"u{{b.dtype.itemsize}}")
        same = np.array_equal(a.reshape(-1).view(word), b.reshape(-1).view(word))
        assert same, f"{{was}}: changed after {{label}}"
print(f"rank {{rank}}: all {{len(STEPS)}} steps passed")
'''


def script(steps: list[dict[str, Any]], np_: int, backend: str, failure: str, name: str) -> str:
    """The standalone script that replays ``steps`` (the recorded program) at ``np_`` ranks."""
    return _HEADER.format(
        backend=backend,
        np_=np_,
        failure="\n".join(failure.splitlines()[:6]),
        name=name,
        steps="[\n" + "".join(f"    {step!r},\n" for step in steps) + "]",
        source=inspect.getsource(program_input),
        kinds=repr(KINDS),
        import_line=_import_line(backend),
    )


def _import_line(backend: str) -> str:
    """How the script gets the backend: the reference module, a faulty backend's API."""
    if backend.startswith("faulty:"):
        fault = backend.split(":", 1)[1]
        return (
            "from conformance.adapters.faulty import make_backend  # the faulty backend\n\n"
            f"dist = make_backend({fault!r}).api"
        )
    return "import reference as dist  # the backend under test: any module with the same API"
