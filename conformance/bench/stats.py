"""Summaries of repeated timings: median and spread, robust to a busy machine."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class Summary:
    """Median, quartiles and extremes of a sample (same unit as the sample)."""

    median: float
    p25: float
    p75: float
    min: float
    max: float
    count: int

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median (0.05 = quartiles 5% apart)."""
        if self.median == 0:
            return 0.0
        return (self.p75 - self.p25) / abs(self.median)

    def as_dict(self) -> dict[str, float]:
        """Plain dict for JSON, with ``spread`` included."""
        return {**asdict(self), "spread": self.spread}


def summarize(samples: Sequence[float]) -> Summary:
    """Summary of a non-empty sample; ValueError when it is empty."""
    if len(samples) == 0:
        raise ValueError("cannot summarize an empty sample")
    values = np.asarray(samples, dtype=np.float64)
    p25, median, p75 = np.percentile(values, [25, 50, 75])
    return Summary(
        float(median), float(p25), float(p75), float(values.min()), float(values.max()), len(values)
    )


def paired_ratios(baseline: Sequence[float], backend: Sequence[float]) -> list[float]:
    """Per-repetition throughput ratios baseline_time / backend_time (1.0 = as fast as baseline).

    Pairs are measured back to back, so machine load that varies over the run cancels out of
    each ratio where it would not cancel out of a ratio of medians.
    """
    if len(baseline) != len(backend):
        raise ValueError(f"unpaired samples: {len(baseline)} baseline vs {len(backend)} backend")
    return [b / t if t > 0 else float("inf") for b, t in zip(baseline, backend, strict=True)]
