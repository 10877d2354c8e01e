"""Spec of long call sequences, resources: memory and file descriptors do not grow with calls.

SEMANTICS.md, "Sizes, groups and call sequences" ("Results do not depend on earlier calls:
thousands of calls in a row on one group ..."); manifest rule ``repeated`` of ``sequences``. A
backend that keeps every result alive (a cache with no bound, a reference cycle through a
completion callback) or opens a descriptor per call works for a while and then runs the process
out of memory or descriptors: a long training job dies hours in.

Opt-in (``CONFORMANCE_TIERS=soak``): each op runs ``BATCHES`` batches of ``BATCH`` calls on
``ELEMENTS`` float32 elements; after each batch every rank samples its resident memory
(``/proc/self/statm``) and its open descriptors (``/proc/self/fd``), after a garbage collection.
The first batch is warm-up (pools and caches fill). A leak is growth that *keeps rising*: more
than ``LEAK_BYTES_PER_CALL`` bytes (or ``LEAK_FDS_PER_CALL`` descriptors) per call both over all
measured batches and over their second half, so a cache that fills once and stays is not one.
The finding starts with ``leak:`` and names the op, the rank and the rate.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conformance.specs import data, exchanges
from conformance.specs.calls import attempt, describe_error, settle
from conformance.specs.declared import collective_dtypes, p2p_dtypes

pytestmark = [pytest.mark.core, pytest.mark.soak]

OP = "sequences"
COLLECTIVES = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter")
#: Elements per call (float32: 64 KiB, so one result kept per call is 64 KiB of growth per call).
ELEMENTS = 16 * 1024
BATCH = 50
BATCHES = 7
#: Sustained growth past this many resident bytes per call is a leak (a result kept alive per
#: call of this size grows 64 KiB per call; allocator noise stays far below 2 KiB per call).
LEAK_BYTES_PER_CALL = 2048
#: Sustained growth past one descriptor per this many calls is a leak.
LEAK_FDS_PER_CALL = 1 / 200

_STATM = Path("/proc/self/statm")
_FDS = Path("/proc/self/fd")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resources() -> tuple[int, int]:
    """(resident bytes, open descriptors) of this process, after a garbage collection."""
    gc.collect()
    resident = int(_STATM.read_text().split()[1]) * _PAGE
    return resident, len(os.listdir(_FDS))


def leak_finding(op: str, rank: int, samples: list[tuple[int, int]], calls: int) -> str | None:
    """``leak: ...`` when resident memory or descriptors rose past the thresholds per call, over
    all ``samples`` (one per ``calls`` calls, after warm-up) and over their second half."""
    half = len(samples) // 2
    found = []
    for index, name, unit, limit in (
        (0, "resident memory", "bytes", LEAK_BYTES_PER_CALL),
        (1, "open descriptors", "descriptors", LEAK_FDS_PER_CALL),
    ):
        whole = (samples[-1][index] - samples[0][index]) / (calls * (len(samples) - 1))
        late = (samples[-1][index] - samples[half][index]) / (calls * (len(samples) - 1 - half))
        if whole > limit and late > limit:
            total = samples[-1][index] - samples[0][index]
            found.append(
                f"{name} grew {whole:.4g} {unit} per call ({total} {unit} over "
                f"{calls * (len(samples) - 1)} calls, still {late:.4g} per call in the second "
                f"half; limit {limit:.4g})"
            )
    if not found:
        return None
    return f"leak: {op} float32 ({ELEMENTS},) on rank {rank}: " + "; ".join(found)


def _collective(backend: Any, op: str, world: Any) -> Callable[[int], None]:
    rows = ELEMENTS - ELEMENTS % world.size() if op == "sum_scatter" else ELEMENTS

    def one(salt: int) -> None:
        x = data.contribution(world.rank(), (rows,), "float32", salt)
        out = getattr(backend, op)(backend.asarray(x), group=world)
        backend.evaluate(out)
        backend.to_numpy(out)  # the result is dropped here: nothing of it should stay

    return one


def _ring(backend: Any, world: Any) -> Callable[[int], None]:
    rank, size = world.rank(), world.size()
    src = (rank - 1) % size

    def one(salt: int) -> None:
        mine = data.contribution(rank, (ELEMENTS,), "float32", salt)
        theirs = data.contribution(src, (ELEMENTS,), "float32", salt)
        exchanges.ring_exchange(backend, world, mine, theirs, use_recv_like=salt % 2 == 1)

    return one


def _ops(backend: Any, world: Any, capabilities: Any) -> list[tuple[str, Callable[[int], None]]]:
    ops = [
        (op, _collective(backend, op, world))
        for op in COLLECTIVES
        if collective_dtypes(backend, capabilities, op, world, ["float32"])
    ]
    if world.size() > 1 and p2p_dtypes(backend, capabilities, world, ["float32"]):
        ops.append(("send/recv ring", _ring(backend, world)))
    return ops


@pytest.mark.spec(OP, rule="repeated")
def test_memory_and_descriptors_do_not_grow_with_calls(backend, world, control, capabilities):
    """Every op, ``BATCHES`` x ``BATCH`` calls of 64 KiB: no sustained growth of resident memory
    or open descriptors per call (see the module docstring for the thresholds).

    SEMANTICS.md, Sizes, groups and call sequences: "Results do not depend on earlier calls:
    thousands of calls in a row on one group".
    """
    if not (_STATM.exists() and _FDS.exists()):
        pytest.skip("needs /proc/self/statm and /proc/self/fd (Linux) to sample resources")
    problems: list[str | None] = []
    for op, one in _ops(backend, world, capabilities):
        samples: list[tuple[int, int]] = []
        for batch in range(BATCHES):
            error = None
            for i in range(BATCH):
                _, error = attempt(one, batch * BATCH + i)
                if error is not None:
                    break
            # Every rank learns whether one failed, so all stop together (collective-safe).
            errors = control.allgather(control.next_label("resources-batch"), error is not None)
            if any(errors):
                problems.append(error and f"{op} raised {describe_error(error)}")
                problems.append(f"{op}: a call failed on ranks {np.flatnonzero(errors).tolist()}")
                break
            if batch:  # batch 0 is warm-up
                samples.append(resources())
        else:
            problems.append(leak_finding(op, world.rank(), samples, BATCH))
    settle(problems, "resources")
