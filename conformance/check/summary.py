"""The summary rank 0 prints at exit: calls checked per op, time spent in checks, first problem."""

from __future__ import annotations

import collections
from typing import Any


def summary_text(stats: dict[str, dict[str, Any]], size: int, problem: str | None) -> str:
    """E.g. ``conformance check: 2 ranks, 4004 calls checked on all ranks (all_sum 4000, send 2,
    recv_like 2), 0.31 s in checks (77 us a call), no problem found``."""
    counts: collections.Counter[str] = collections.Counter()
    seconds = 0.0
    for rank_stats in stats.values():
        counts.update(rank_stats.get("counts", {}))
        seconds += float(rank_stats.get("seconds", 0.0))
    calls = sum(counts.values())
    ops = ", ".join(f"{op} {n}" for op, n in sorted(counts.items()))
    per_call = f" ({seconds / calls * 1e6:.0f} us a call)" if calls else ""
    verdict = f"first problem: {problem.splitlines()[0]}" if problem else "no problem found"
    return (
        f"conformance check: {size} rank{'s' if size != 1 else ''}, "
        f"{calls} calls checked on all ranks ({ops or 'none'}), "
        f"{seconds:.2f} s in checks{per_call}, {verdict}"
    )
