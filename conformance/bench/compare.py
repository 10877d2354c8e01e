"""``bench compare``: two saved reports case by case, and whether each case can be compared.

A paired ratio cancels load that comes and goes within one run, not a machine whose raw MPI moved
between runs: on the 2-core VM of docs/benchmarks.md raw mpi4py's own time for one call moved up
to 2.7x between runs of the same command, and the reference's ratio at that size with it. So a
case is *comparable* only when the raw mpi4py baselines of the two runs agree within the
tolerance; the others are listed, flagged, and left out of the summary's verdict.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from conformance.bench.units import format_size

DEFAULT_TOLERANCE = 0.15

Key = tuple[str, str, int]


def _cases(report: Mapping[str, Any]) -> dict[Key, tuple[float, float]]:
    """(op, mode, bytes) -> (median paired ratio, raw baseline's median time in seconds), for
    the cases that have both."""
    cases = {}
    for row in report["results"]:
        ratio = row.get("ratio") or {}
        baseline = (row.get("baseline") or {}).get("time") or {}
        if ratio.get("median") and baseline.get("median"):
            cases[(row["op"], row["mode"], row["nbytes"])] = (ratio["median"], baseline["median"])
    return cases


def compare(
    before: Mapping[str, Any], after: Mapping[str, Any], tolerance: float = DEFAULT_TOLERANCE
) -> list[dict[str, Any]]:
    """One row per case in both reports, in ``after``'s order: both ratios, both raw times, how
    the raw time changed (``raw_moved``: after / before - 1, negative when it fell) and whether
    it moved within ``tolerance`` either way (``comparable``: larger / smaller - 1 at most
    ``tolerance``, so a halving and a doubling are equally far)."""
    if not tolerance >= 0:
        raise ValueError(f"the tolerance must be a non-negative fraction, got {tolerance!r}")
    old = _cases(before)
    rows = []
    for key, (ratio, raw) in _cases(after).items():
        if key not in old:
            continue
        old_ratio, old_raw = old[key]
        apart = max(raw, old_raw) / min(raw, old_raw) - 1
        rows.append(
            {
                "op": key[0],
                "mode": key[1],
                "nbytes": key[2],
                "ratio_before": old_ratio,
                "ratio_after": ratio,
                "raw_before": old_raw,
                "raw_after": raw,
                "raw_moved": raw / old_raw - 1,
                "comparable": apart <= tolerance,
            }
        )
    return rows


def render_comparison(rows: list[dict[str, Any]], tolerance: float) -> str:
    """The rows as a table, then a line counting what is comparable. Changes carry their sign:
    ``change`` is the ratio's, ``moved`` the raw time's (after / before - 1)."""
    lines = [
        f"{'op':<12} {'mode':<10} {'size':>6} | {'ratio':>6} -> {'ratio':<6} {'change':>7} | "
        f"{'raw before':>10} {'raw after':>10} {'moved':>6}",
        "-" * 88,
    ]
    for row in rows:
        change = row["ratio_after"] / row["ratio_before"] - 1
        flag = "" if row["comparable"] else "  not comparable: raw MPI moved"
        lines.append(
            f"{row['op']:<12} {row['mode']:<10} {format_size(row['nbytes']):>6} | "
            f"{row['ratio_before']:6.2f} -> {row['ratio_after']:<6.2f} {change:+7.0%} | "
            f"{_us(row['raw_before']):>10} {_us(row['raw_after']):>10} "
            f"{row['raw_moved']:+6.0%}{flag}"
        )
    apart = sum(not row["comparable"] for row in rows)
    lines.append(
        f"{len(rows)} cases in both reports; {len(rows) - apart} comparable, {apart} not (raw "
        f"mpi4py's time moved more than {tolerance:.0%} between the runs: compare those again "
        "from runs made back to back)"
    )
    return "\n".join(lines)


def _us(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.3g} us"
    return f"{seconds * 1e3:.3g} ms"
