"""PNG plot of bus bandwidth and time against size, one row per op, one line per backend.

Needs matplotlib (the ``bench`` extra). Several reports (e.g. the reference's and MLX's) go on
one figure; each report's raw mpi4py baseline is drawn dashed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

_TITLES = {"collective": "", "latency": " latency", "bandwidth": " bandwidth"}


def _series(report: Mapping[str, Any], key: tuple[str, str], side: str) -> tuple[list, list, list]:
    sizes, busbw, times = [], [], []
    for row in report["results"]:
        data = row.get(side)
        if (row["op"], row["mode"]) != key or not data or not data.get("time"):
            continue
        sizes.append(row["nbytes"])
        busbw.append(data["busbw_GBps"])
        times.append(data["time"]["median"] * 1e6)
    return sizes, busbw, times


def plot_reports(reports: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write a PNG to ``path`` from one or more reports. ImportError names the extra to install
    when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "plotting needs matplotlib: pip install 'mlx-distributed-conformance[bench]'"
        ) from exc

    keys: list[tuple[str, str]] = []
    for report in reports:
        for row in report["results"]:
            if (row["op"], row["mode"]) not in keys:
                keys.append((row["op"], row["mode"]))
    if not keys:
        raise ValueError("nothing to plot: the reports have no results")
    fig, axes = plt.subplots(len(keys), 2, figsize=(11, 3.2 * len(keys)), squeeze=False)
    for (op, mode), (ax_bw, ax_t) in zip(keys, axes, strict=True):
        for report in reports:
            meta = report["meta"]
            label = f"{meta.get('backend')} ({meta.get('np')} ranks)"
            for side, style, name in (("backend", "-o", label), ("baseline", "--x", "mpi4py")):
                sizes, bw, times = _series(report, (op, mode), side)
                if not sizes:
                    continue
                if side == "baseline" and len(reports) > 1:
                    name = f"mpi4py (job of {meta.get('backend')})"
                ax_bw.plot(sizes, bw, style, label=name, markersize=3)
                ax_t.plot(sizes, times, style, label=name, markersize=3)
        title = f"{op}{_TITLES.get(mode, mode)}"
        ax_bw.set_title(f"{title}: bus bandwidth")
        ax_bw.set_ylabel("GB/s")
        ax_t.set_title(f"{title}: median time per op")
        ax_t.set_ylabel("microseconds")
        ax_t.set_yscale("log")
        for ax in (ax_bw, ax_t):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("size (bytes)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
