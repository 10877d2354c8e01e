"""The report: a JSON-ready dict, its terminal table, and its file.

Everything renders from the report dict alone, so a saved JSON file can be re-tabled or plotted
later (``bench plot``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from conformance.bench.units import format_size

SCHEMA = "conformance-bench/1"

_UNITS = {
    "collective": "time per op",
    "latency": "latency = half round trip (osu_latency)",
    "bandwidth": "time per message in a window (osu_bw)",
}


def make_report(meta: Mapping[str, Any], results: list[Mapping[str, Any]]) -> dict[str, Any]:
    """The report dict: ``{"schema", "meta", "results"}`` (results as ``CaseResult.as_dict``)."""
    return {"schema": SCHEMA, "meta": dict(meta), "results": list(results)}


def write_json(report: Mapping[str, Any], path: str | Path) -> None:
    """Write ``report`` to ``path`` as indented JSON (non-finite floats as null)."""
    Path(path).write_text(json.dumps(_finite(report), indent=1) + "\n")


def read_json(path: str | Path) -> dict[str, Any]:
    """A report written by :func:`write_json`; ValueError if it is not one."""
    report = json.loads(Path(path).read_text())
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise ValueError(f"{path}: not a {SCHEMA} report")
    return report


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _num(value: float | None, width: int) -> str:
    if value is None:
        return "-".rjust(width)
    if value == 0 or 0.01 <= abs(value) < 10_000:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return text.rjust(width)


def _pct(value: float | None) -> str:
    return "    -" if value is None else f"{100 * value:4.0f}%"


def render_table(report: Mapping[str, Any]) -> str:
    """One block per (op, mode): size, iterations, the backend's median time (microseconds),
    spread (interquartile range / median), algbw and busbw (GB/s); the same for the baseline;
    and the paired throughput ratio backend vs baseline (median [p25, p75])."""
    meta = report["meta"]
    lines = [
        f"backend {meta.get('backend')} {meta.get('backend_version', '')} vs raw mpi4py "
        f"baseline: {meta.get('np')} ranks, {meta.get('dtype')}, "
        f"{meta.get('reps')} interleaved repetitions per size; source {meta.get('source')}, "
        f"host {meta.get('host')} ({meta.get('cpus')} cpus), load average "
        f"{meta.get('loadavg_start')} -> {meta.get('loadavg')}",
        "ratio = backend throughput / baseline throughput, paired per repetition "
        "(1.00 = as fast as raw MPI); busy = other runnable tasks on the machine while "
        "measuring (median); rss = peak resident set per rank, backend/baseline, each as if "
        "run alone",
    ]
    blocks: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for result in report["results"]:
        blocks.setdefault((result["op"], result["mode"]), []).append(result)
    header = (
        f"{'size':>6} {'iters':>6} | {'time(us)':>10} {'spread':>6} {'algbw':>7} {'busbw':>7} "
        f"| {'base(us)':>10} {'spread':>6} {'busbw':>7} | {'ratio':>6} {'[p25, p75]':>13} "
        f"{'busy':>4} | {'rss MiB':>9}"
    )
    for (op, mode), rows in blocks.items():
        lines += ["", f"{op} ({_UNITS.get(mode, mode)}; GB/s)", header, "-" * len(header)]
        for row in rows:
            lines.append(_row(row))
            if row.get("check"):
                lines.append(f"{'':>14}! wrong result: {row['check']}")
            if row["backend"].get("error"):
                lines.append(f"{'':>14}! backend failed: {row['backend']['error']}")
    return "\n".join(lines)


def _row(row: Mapping[str, Any]) -> str:
    back, base, ratio = row["backend"], row.get("baseline"), row.get("ratio")

    def side(s: Mapping[str, Any] | None) -> tuple[float | None, float | None]:
        if not s or not s.get("time"):
            return None, None
        return s["time"]["median"] * 1e6, s["time"]["spread"]

    t, spread = side(back)
    bt, bspread = side(base)
    if ratio:
        ratio_text = f"{ratio['median']:6.2f} [{ratio['p25']:5.2f}, {ratio['p75']:5.2f}]"
    else:
        ratio_text = f"{'-':>6} {'':>13}"
    busy = row.get("busy")
    busy_text = f"{busy['median']:4.0f}" if busy else f"{'-':>4}"
    return (
        f"{format_size(row['nbytes']):>6} {row['iters']:>6} | {_num(t, 10)} {_pct(spread)} "
        f"{_num(back.get('algbw_GBps'), 7)} {_num(back.get('busbw_GBps'), 7)} | "
        f"{_num(bt, 10)} {_pct(bspread)} {_num(base.get('busbw_GBps') if base else None, 7)} | "
        f"{ratio_text} {busy_text} | {_rss(row):>9}"
    )


def _rss(row: Mapping[str, Any]) -> str:
    """Peak resident set per rank, backend/baseline, in MiB (``-`` where not measured)."""
    peaks = row.get("peak_rss") or {}

    def mib(side: str) -> str:
        value = peaks.get(side)
        return "-" if value is None else f"{value / 2**20:.0f}"

    return f"{mib('backend')}/{mib('baseline')}"


def render_markdown(report: Mapping[str, Any]) -> str:
    """The report as Markdown: one table per (op, mode) with the backend's and the baseline's
    median time (microseconds) and busbw (GB/s), the paired ratio and the machine's load."""
    meta = report["meta"]
    lines = [
        f"`{meta.get('command')}` — {meta.get('backend')} {meta.get('backend_version', '')}, "
        f"{meta.get('np')} ranks, {meta.get('dtype')}, {meta.get('reps')} repetitions, "
        f"started {meta.get('started')}, source {meta.get('source')}, "
        f"{meta.get('cpus')} cpus, load average {meta.get('loadavg_start')} at the start, "
        f"{meta.get('loadavg')} at the end",
    ]
    blocks: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for result in report["results"]:
        blocks.setdefault((result["op"], result["mode"]), []).append(result)
    for (op, mode), rows in blocks.items():
        lines += [
            "",
            f"**{op}** ({_UNITS.get(mode, mode)})",
            "",
            "| size | time (us) | spread | busbw (GB/s) | mpi4py time (us) | mpi4py busbw | "
            "ratio [p25, p75] | busy | peak RSS MiB (backend/mpi4py) |",
            "|---:|---:|---:|---:|---:|---:|---|---:|---:|",
        ]
        for row in rows:
            lines.append(_markdown_row(row))
    return "\n".join(lines)


def _markdown_row(row: Mapping[str, Any]) -> str:
    def side(s: Mapping[str, Any] | None) -> list[str]:
        if not s or not s.get("time"):
            error = (s or {}).get("error")
            return [f"failed: {error}" if error else "-", "-", "-"]
        t = s["time"]
        return [
            _num(t["median"] * 1e6, 0).strip(),
            _pct(t["spread"]).strip(),
            _num(s["busbw_GBps"], 0).strip(),
        ]

    back = side(row["backend"])
    base = side(row.get("baseline"))
    ratio = row.get("ratio")
    ratio_text = f"{ratio['median']:.2f} [{ratio['p25']:.2f}, {ratio['p75']:.2f}]" if ratio else "-"
    busy = row.get("busy")
    busy_text = f"{busy['median']:.0f}" if busy else "-"
    if row.get("check"):
        ratio_text += f" (wrong result: {row['check']})"
    cells = [format_size(row["nbytes"]), *back, base[0], base[2], ratio_text, busy_text, _rss(row)]
    return "| " + " | ".join(cells) + " |"
