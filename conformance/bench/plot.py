"""PNG plot against size, one row per op, one line per backend: bus bandwidth, median time, and
the paired throughput ratio to the raw mpi4py baseline (median, bars from p25 to p75).

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


def _ratios(report: Mapping[str, Any], key: tuple[str, str]) -> tuple[list, list, list, list]:
    sizes, medians, low, high = [], [], [], []
    for row in report["results"]:
        ratio = row.get("ratio")
        if (row["op"], row["mode"]) != key or not ratio:
            continue
        sizes.append(row["nbytes"])
        medians.append(ratio["median"])
        low.append(max(0.0, ratio["median"] - ratio["p25"]))
        high.append(max(0.0, ratio["p75"] - ratio["median"]))
    return sizes, medians, low, high


def legends(reports: Sequence[Mapping[str, Any]], names: Sequence[str] | None = None) -> list[str]:
    """One distinct legend per report: ``backend (N ranks)``, plus the report's name (its file,
    else its position) wherever two reports would otherwise share a legend."""
    base = [f"{r['meta'].get('backend')} ({r['meta'].get('np')} ranks)" for r in reports]
    tags = list(names) if names is not None else [f"run {i + 1}" for i in range(len(reports))]
    if len(set(tags)) < len(tags):
        tags = [f"{tag} #{i + 1}" for i, tag in enumerate(tags)]
    return [
        f"{label}, {tag}" if base.count(label) > 1 else label
        for label, tag in zip(base, tags, strict=True)
    ]


def plot_reports(
    reports: Sequence[Mapping[str, Any]], path: str | Path, names: Sequence[str] | None = None
) -> None:
    """Write a PNG to ``path`` from one or more reports. Each report's lines carry a distinct
    legend (:func:`legends`; ``names`` are e.g. the files the reports came from). ImportError
    names the extra to install when matplotlib is missing."""
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
    labels = legends(reports, names)
    fig, axes = plt.subplots(len(keys), 3, figsize=(16, 3.2 * len(keys)), squeeze=False)
    for (op, mode), (ax_bw, ax_t, ax_r) in zip(keys, axes, strict=True):
        for report, label in zip(reports, labels, strict=True):
            for side, style, name in (("backend", "-o", label), ("baseline", "--x", "mpi4py")):
                sizes, bw, times = _series(report, (op, mode), side)
                if not sizes:
                    continue
                if side == "baseline" and len(reports) > 1:
                    name = f"mpi4py (job of {label})"
                ax_bw.plot(sizes, bw, style, label=name, markersize=3)
                ax_t.plot(sizes, times, style, label=name, markersize=3)
            sizes, medians, low, high = _ratios(report, (op, mode))
            if sizes:
                ax_r.errorbar(
                    sizes, medians, yerr=[low, high], fmt="-o", markersize=3, capsize=2, label=label
                )
        title = f"{op}{_TITLES.get(mode, mode)}"
        ax_bw.set_title(f"{title}: bus bandwidth")
        ax_bw.set_ylabel("GB/s")
        ax_t.set_title(f"{title}: median time per op")
        ax_t.set_ylabel("microseconds")
        ax_t.set_yscale("log")
        ax_r.set_title(f"{title}: throughput / mpi4py's")
        ax_r.axhline(1.0, color="grey", linewidth=0.8)
        ax_r.set_ylim(bottom=0)
        for ax in (ax_bw, ax_t, ax_r):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("size (bytes)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
