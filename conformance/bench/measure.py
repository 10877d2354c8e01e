"""The timing loop: warm-up, calibration, then backend and baseline samples interleaved.

Every sample is barrier-separated: all ranks pass a barrier on the control communicator, then
each times ``iters`` iterations of one side. The two sides alternate within each repetition
(and swap order every repetition), so both see the same machine load and a ratio taken per
repetition is meaningful on a busy machine. ``iters`` is chosen once per case so that one sample
lasts about ``sample_time`` seconds, and is the same for both sides and on every rank.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from conformance.bench.formulas import algbw, busbw
from conformance.bench.machine import Footprint, others_runnable
from conformance.bench.ops import Case
from conformance.bench.stats import Summary, paired_ratios, summarize


@dataclass(frozen=True)
class Settings:
    """How long and how often to measure."""

    warmup: int = 5
    reps: int = 11
    sample_time: float = 0.02
    max_iters: int = 10_000


@dataclass
class SideResult:
    """One side (backend or baseline) of one case: time per op (seconds) and bandwidths at the
    median time, or the error that made it unmeasurable."""

    time: Summary | None = None
    algbw: float | None = None
    busbw: float | None = None
    samples: list[float] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "time": None if self.time is None else self.time.as_dict(),
            "algbw_GBps": self.algbw,
            "busbw_GBps": self.busbw,
            "samples": self.samples,
            "error": self.error,
        }


@dataclass
class CaseResult:
    """What one case measured: both sides and their paired ratio (baseline time / backend time,
    so 1.0 means the backend reaches the baseline's throughput)."""

    op: str
    mode: str
    size: int
    nbytes: int
    in_count: int
    out_count: int
    iters: int
    ops_per_iter: int
    window: int | None
    backend: SideResult
    baseline: SideResult | None
    ratio: Summary | None = None
    check: str | None = None
    # Other runnable tasks on the machine, sampled by rank 0 before each repetition.
    busy: Summary | None = None
    # Peak resident set per rank (bytes, the largest rank's) of each side as if run alone.
    peak_rss: dict[str, int | None] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "mode": self.mode,
            "size": self.size,
            "nbytes": self.nbytes,
            "in_count": self.in_count,
            "out_count": self.out_count,
            "iters": self.iters,
            "ops_per_iter": self.ops_per_iter,
            "window": self.window,
            "backend": self.backend.as_dict(),
            "baseline": None if self.baseline is None else self.baseline.as_dict(),
            "ratio": None if self.ratio is None else self.ratio.as_dict(),
            "check": self.check,
            "busy": None if self.busy is None else self.busy.as_dict(),
            "peak_rss": self.peak_rss,
        }


def _first_error(ctl: Any, error: str | None) -> str | None:
    """The error of the lowest rank that had one, on every rank (None if no rank had one)."""
    errors = ctl.allgather(error)
    for rank, text in enumerate(errors):
        if text is not None:
            return f"rank {rank}: {text}"
    return None


def _timed(
    ctl: Any,
    run: Any,
    iters: int,
    profiler: Any = None,
    memory: tuple[Footprint, str] | None = None,
) -> float:
    ctl.Barrier()
    if profiler is not None:
        profiler.enable()
    start = time.perf_counter()
    if memory is None:
        run(iters)
    else:
        memory[0].run(memory[1], lambda: run(iters))
    elapsed = time.perf_counter() - start
    if profiler is not None:
        profiler.disable()
    return elapsed


def _peak_rss(ctl: Any, footprint: Footprint, sides: list[str]) -> dict[str, int | None]:
    """Each side's peak resident set, the largest over the ranks (None where not measured)."""
    mine = [footprint.peak(side) for side in sides]
    everyone = ctl.allgather(mine)
    peaks: dict[str, int | None] = {}
    for index, side in enumerate(sides):
        values = [ranks[index] for ranks in everyone if ranks[index] is not None]
        peaks[side] = max(values) if values else None
    return peaks


def _combine(ctl: Any, local: list[float], timing_rank: int | None) -> list[float]:
    """Per-sample elapsed times as the case defines them: the slowest rank's, or one rank's."""
    from mpi4py import MPI

    mine = np.asarray(local, dtype=np.float64)
    if timing_rank is None:
        out = np.empty_like(mine)
        ctl.Allreduce(mine, out, op=MPI.MAX)
        return out.tolist()
    ctl.Bcast(mine, root=timing_rank)
    return mine.tolist()


def _side(case: Case, elapsed: list[float], iters: int) -> SideResult:
    per_op = [t / (iters * case.ops_per_iter) for t in elapsed]
    summary = summarize(per_op)
    return SideResult(
        time=summary,
        algbw=algbw(case.shape.nbytes, summary.median),
        busbw=busbw(case.op, case.shape.n, case.shape.nbytes, summary.median),
        samples=per_op,
    )


def measure(case: Case, ctl: Any, settings: Settings, profiler: Any = None) -> CaseResult:
    """Measure one case on every rank of ``ctl`` (collective: every rank must call it).

    A backend error on any rank (an op the backend does not support, a wrong result) is
    recorded and the baseline is still measured. ``profiler`` (a cProfile.Profile) is enabled
    around the backend's timed samples only.
    """
    error = None
    footprint = Footprint()
    try:
        footprint.run("backend", lambda: case.run_backend(1))
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    backend_error = _first_error(ctl, error)
    backend_ok = backend_error is None

    # Warm-up doubles as calibration: the slowest rank's time per iteration sets ``iters``.
    per_iter = 0.0
    warmup = max(1, settings.warmup)
    if backend_ok:
        elapsed = _timed(ctl, case.run_backend, warmup, memory=(footprint, "backend"))
        per_iter = max(per_iter, elapsed / warmup)
    if case.has_baseline:
        elapsed = _timed(ctl, case.run_baseline, warmup, memory=(footprint, "baseline"))
        per_iter = max(per_iter, elapsed / warmup)
    per_iter = ctl.allreduce(per_iter, op=_max())
    if per_iter > 0:
        iters = math.ceil(settings.sample_time / per_iter)
    else:
        iters = settings.max_iters
    iters = max(1, min(settings.max_iters, iters))

    check = None
    if backend_ok:
        try:
            local = case.check()
        except Exception as exc:
            local = f"{type(exc).__name__}: {exc}"
        check = _first_error(ctl, local)

    sides = []
    if case.has_baseline:
        sides.append(("baseline", case.run_baseline))
    if backend_ok:
        sides.append(("backend", case.run_backend))
    local: dict[str, list[float]] = {name: [] for name, _ in sides}
    busy: list[int] = []
    rank = ctl.Get_rank()
    for rep in range(settings.reps):
        if rank == 0:
            others = others_runnable(ctl.Get_size())
            if others is not None:
                busy.append(others)
        ordered = sides if rep % 2 == 0 else sides[::-1]
        for name, run in ordered:
            prof = profiler if name == "backend" else None
            local[name].append(_timed(ctl, run, iters, prof, (footprint, name)))

    elapsed = {name: _combine(ctl, times, case.timing_rank) for name, times in local.items()}
    backend = (
        _side(case, elapsed["backend"], iters) if backend_ok else SideResult(error=backend_error)
    )
    baseline = _side(case, elapsed["baseline"], iters) if case.has_baseline else None
    ratio = None
    if backend_ok and baseline is not None:
        ratio = summarize(paired_ratios(baseline.samples, backend.samples))
    return CaseResult(
        op=case.op,
        mode=case.mode,
        size=case.size,
        nbytes=case.shape.nbytes,
        in_count=case.shape.in_count,
        out_count=case.shape.out_count,
        iters=iters,
        ops_per_iter=case.ops_per_iter,
        window=case.window,
        backend=backend,
        baseline=baseline,
        ratio=ratio,
        check=check,
        busy=summarize(busy) if busy else None,
        peak_rss=_peak_rss(ctl, footprint, ["backend", "baseline"]),
    )


def _max() -> Any:
    from mpi4py import MPI

    return MPI.MAX
