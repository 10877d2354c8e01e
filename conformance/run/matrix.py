"""``python -m conformance matrix``: the suite against several MLX releases, one merged report.

Each release gets its own virtual environment under a cache directory (never the repository),
reused when present: ``<cache>/mlx-<version>`` holds only ``mlx`` and ``mlx-cpu`` of that release;
a ``.pth`` file adds the site-packages of ``<cache>/base``, one shared environment holding this
project (editable, so the suite is the checkout's) and its test dependencies but no MLX. So a
release costs one ~30 MB install, and the suite, MPI and pytest are the same in every row.

For each release the runner (``python -m conformance run --backend mlx``) runs in that release's
environment with the options given, writing its reports under ``<report-dir>/mlx-<version>``.
The merged report (``<report-dir>/matrix.md`` and ``matrix.json``) has:

- one row per release, columns = levels (verdict and counts) then areas (passed/total and the
  other classes, as in the runner's report);
- a release that could not be installed, imported or run is a row saying why;
- from one release to the next: the tests whose raw outcome changed (e.g. ``wrong -> passed``),
  with the rank counts, so a fix or a regression names the tests that show it.

Raw outcomes (not the deviation-adjusted classes) are compared, since the deviations file
describes one release.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conformance.harness.levels import LEVELS
from conformance.run import reports

#: The CPU wheel of MLX on Linux; its releases are the ones the matrix can install.
CPU_PACKAGE = "mlx-cpu"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / (
    "mlx-distributed-conformance/matrix"
)
#: What the shared base environment gets (the project itself is added editable).
BASE_REQUIREMENTS = ("mpi4py>=4.0", "mpich>=4.2", "pytest>=8.0", "pytest-mpi>=0.6", "hypothesis")
_VERSION = re.compile(r"^\d+(\.\d+)*$")
_READY = ".conformance-ready"
_PIP = (sys.executable, "-m", "pip")


class MatrixError(ValueError):
    """Bad ``--mlx`` selection or an unusable cache."""


def version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split("."))


def available_releases(pip: Sequence[str] = (sys.executable, "-m", "pip")) -> list[str]:
    """Every release of ``mlx-cpu`` the package index offers, oldest first (``pip index``)."""
    proc = subprocess.run(
        [*pip, "index", "versions", CPU_PACKAGE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.strip().startswith("Available versions:"):
            found = [v.strip() for v in line.split(":", 1)[1].split(",")]
            return sorted((v for v in found if _VERSION.match(v)), key=version_key)
    raise MatrixError(
        f"could not list the releases of {CPU_PACKAGE} (pip index versions {CPU_PACKAGE}): "
        + (proc.stderr.strip().splitlines() or ["no output"])[-1]
    )


def select_releases(spec: str, available: Sequence[str] | None = None) -> list[str]:
    """Releases named by ``spec``: ``all``, a comma list, or a range ``A..B`` (inclusive, of the
    available releases); several may be combined with commas. Sorted oldest first."""
    chosen: set[str] = set()
    for part in (p.strip() for p in spec.split(",")):
        if not part:
            continue
        if part == "all" or ".." in part:
            if available is None:
                available = available_releases()
            if part == "all":
                chosen.update(available)
                continue
            low, high = (s.strip() for s in part.split("..", 1))
            for end in (low, high):
                if end and not _VERSION.match(end):
                    raise MatrixError(f"--mlx: {end!r} in range {part!r} is not a version")
            lo = version_key(low) if low else (0,)
            hi = version_key(high) if high else (10**9,)
            chosen.update(v for v in available if lo <= version_key(v) <= hi)
            continue
        if not _VERSION.match(part):
            raise MatrixError(
                f"--mlx: {part!r} is not a version (expected e.g. 0.30.1, a range 0.29.0..0.31.2, "
                "or all)"
            )
        chosen.add(part)
    if not chosen:
        raise MatrixError(f"--mlx {spec!r} selects no release")
    return sorted(chosen, key=version_key)


def _pip(python: Path, *args: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    # This interpreter's pip installs into the environment of ``python`` (pip --python): the
    # environments are made without pip, which saves ensurepip's minute per environment.
    return subprocess.run(
        [*_PIP, "--python", str(python), "install", "-q", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _last_error(proc: subprocess.CompletedProcess[str]) -> str:
    lines = [
        ln for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip() and "WARNING" not in ln
    ]
    return lines[-1].strip() if lines else f"exit status {proc.returncode}"


def _python_of(env: Path) -> Path:
    return env / "bin" / "python"


def _site_packages(python: Path) -> str:
    out = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        timeout=600,
        check=True,
    )
    return out.stdout.strip()


def _make_venv(env: Path) -> None:
    """A new environment at ``env`` (without pip: see :func:`_pip`)."""
    subprocess.run(
        [sys.executable, "-m", "venv", "--clear", "--without-pip", str(env)],
        check=True,
        capture_output=True,
        timeout=600,
    )


def project_root() -> Path:
    """The checkout holding the ``conformance`` package (installed editable in the base)."""
    return Path(__file__).resolve().parent.parent.parent


def ensure_base(cache: Path) -> Path:
    """The shared environment (this project editable + test dependencies, no MLX); reused when
    it was made from this checkout. Raises MatrixError when pip fails."""
    env = cache / "base"
    ready = env / _READY
    root = str(project_root())
    if ready.exists() and ready.read_text("utf-8").strip() == root:
        return env
    _make_venv(env)
    proc = _pip(_python_of(env), "-e", root, *BASE_REQUIREMENTS)
    if proc.returncode:
        raise MatrixError(f"could not make the base environment in {env}: {_last_error(proc)}")
    ready.write_text(root + "\n", "utf-8")
    return env


def ensure_release(cache: Path, base: Path, version: str) -> tuple[Path | None, str]:
    """(the release's interpreter, "") or (None, why it cannot be used). Reused when present."""
    env = cache / f"mlx-{version}"
    python = _python_of(env)
    try:
        if not (env / _READY).exists():
            _make_venv(env)
            pth = Path(_site_packages(python)) / "_conformance_base.pth"
            # A line starting with "import" is executed: addsitedir also reads the base's own
            # .pth files (the editable install of the project).
            pth.write_text(
                f"import site; site.addsitedir({_site_packages(_python_of(base))!r})\n", "utf-8"
            )
            proc = _pip(python, "--no-deps", f"mlx=={version}", f"{CPU_PACKAGE}=={version}")
            if proc.returncode:
                return None, f"pip could not install mlx=={version}: {_last_error(proc)}"
            (env / _READY).write_text(version + "\n", "utf-8")
        _link_mpi(base, env)
        check = subprocess.run(
            [str(python), "-c", "import mlx.core as mx; print(mx.__version__)"],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (subprocess.SubprocessError, OSError) as exc:
        return None, f"could not prepare its environment: {exc}"
    if check.returncode:
        return None, f"import mlx.core failed: {_last_error(check)}"
    return python, ""


def _link_mpi(base: Path, env: Path) -> None:
    """Make the base's MPI library (the mpich wheel's ``lib/libmpi*``) visible in ``env/lib``:
    mpi4py looks for it under ``sys.prefix``, which is the release's environment."""
    for item in (base / "lib").iterdir():
        target = env / "lib" / item.name
        if item.name.startswith("python") or target.exists() or target.is_symlink():
            continue
        target.symlink_to(item)


@dataclass
class Row:
    """One release's outcome: its report, or why there is none."""

    version: str
    report: dict[str, Any] | None = None
    problem: str = ""
    seconds: float = 0.0
    exit_status: int | None = None
    notes: list[str] = field(default_factory=list)


def run_release(
    python: Path, base: Path, version: str, run_args: Sequence[str], out: Path, timeout: float
) -> Row:
    """Run the suite against one release; the row holds its ``report.json``."""
    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # The launcher (the mpich wheel's mpiexec) lives in the base environment.
    env["PATH"] = f"{base / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    argv = [
        str(python),
        "-m",
        "conformance",
        "run",
        "--backend",
        "mlx",
        "--report-dir",
        str(out),
        "-q",
        *run_args,
    ]
    started = time.monotonic()
    row = Row(version)
    try:
        proc = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
        row.exit_status = proc.returncode
        (out / "runner-output.txt").write_text(proc.stdout + proc.stderr, "utf-8")
    except subprocess.TimeoutExpired:
        row.problem = f"the run did not finish within {timeout:g} s"
    row.seconds = time.monotonic() - started
    report = out / "report.json"
    if report.exists():
        row.report = json.loads(report.read_text("utf-8"))
        if row.exit_status == 2:
            row.problem = "usage error: " + _tail_line(out / "runner-output.txt")
    elif not row.problem:
        row.problem = "no report: " + _tail_line(out / "runner-output.txt")
    return row


def _tail_line(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text("utf-8").splitlines() if ln.strip()]
    except OSError:
        return "no output"
    errors = [ln for ln in lines if ln.startswith("error")]
    return (errors or lines or ["no output"])[-1].strip()


# ---- the merged report ------------------------------------------------------------------------


def _records(row: Row) -> list[dict[str, Any]]:
    return list(row.report.get("records", [])) if row.report else []


def _areas(rows: Sequence[Row]) -> list[str]:
    return sorted({r.get("area") or "?" for row in rows for r in _records(row)})


def _level_cell(row: Row, level: str) -> str:
    info = (row.report or {}).get("levels", {}).get(level.replace("_", "-"))
    if not info or info["verdict"] == "NOT RUN":
        return "not run"
    counts = Counter(info["counts"])
    return f"{info['verdict']} {reports._cell(counts)}"


def _absent(row: Row) -> str:
    """The API names the release's adapter declared absent (at any rank count)."""
    from conformance.backend import API_NAMES

    caps = (row.report or {}).get("capabilities", {})
    absent = {n for c in caps.values() for n in API_NAMES if c and n not in c.get("ops", API_NAMES)}
    return ", ".join(sorted(absent)) or "-"


def _area_cell(row: Row, area: str) -> str:
    counts = Counter(reports.classify(r) for r in _records(row) if (r.get("area") or "?") == area)
    return reports._cell(counts)


def _outcomes(row: Row) -> dict[tuple[str, int], str]:
    return {(r["nodeid"], int(r["np"])): str(r.get("outcome")) for r in _records(row)}


def changes(older: Row, newer: Row) -> dict[str, list[tuple[str, list[int]]]]:
    """Transition ``"old -> new"`` -> [(test id, rank counts)] for tests whose raw outcome
    differs between two releases that both have a report."""
    before, after = _outcomes(older), _outcomes(newer)
    moved: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for key in sorted(set(before) & set(after)):
        if before[key] != after[key]:
            moved[f"{before[key]} -> {after[key]}"][key[0]].append(key[1])
    return {t: sorted(tests.items()) for t, tests in sorted(moved.items())}


def _short(nodeid: str) -> str:
    return nodeid.split("conformance/specs/", 1)[-1]


def markdown(rows: Sequence[Row], command: str, run_args: Sequence[str]) -> str:
    """The merged report: releases x (levels, areas), then the changes release to release."""
    levels = [lv.replace("_", "-") for lv in LEVELS]
    areas = _areas(rows)
    lines = [
        "# MLX releases against the conformance suite",
        "",
        f"- command: `{command}`",
        f"- each release: `python -m conformance run --backend mlx "
        f"{' '.join(shlex.quote(a) for a in run_args)}` in its own environment",
        "",
        reports.LEGEND,
        "Level cells: the run's verdict for the level with the deviations file of the checkout "
        "(written for the newest release), then its counts.",
        "",
        "## Levels",
        "",
        "| release | " + " | ".join(levels) + " | absent from the API | time |",
        "|---|" + "---|" * (len(levels) + 2),
    ]
    for row in rows:
        if row.report is None:
            lines.append(f"| {row.version} | {row.problem} |" + " |" * (len(levels) + 1))
            continue
        cells = [_level_cell(row, lv) for lv in levels]
        note = f" ({row.problem})" if row.problem else ""
        lines.append(
            f"| {row.version} | "
            + " | ".join(cells)
            + f" | {_absent(row)} | {row.seconds:.0f} s{note} |"
        )
    lines += ["", "## Areas", "", "| release | " + " | ".join(areas) + " |"]
    lines.append("|---|" + "---|" * len(areas))
    for row in rows:
        if row.report is None:
            lines.append(f"| {row.version} | not run |" + " |" * (len(areas) - 1))
            continue
        lines.append(f"| {row.version} | " + " | ".join(_area_cell(row, a) for a in areas) + " |")
    lines += ["", "## What changed from one release to the next", ""]
    reported = [row for row in rows if row.report is not None]
    if len(reported) < 2:
        lines.append("Fewer than two releases have a report: nothing to compare.")
    for older, newer in itertools.pairwise(reported):
        moved = changes(older, newer)
        lines.append(f"### {older.version} -> {newer.version}")
        lines.append("")
        if not moved:
            lines += ["No test changed its outcome.", ""]
            continue
        for transition, tests in moved.items():
            lines.append(f"- **{transition}** ({len(tests)} tests)")
            lines += [f"  - `{_short(t)}` (np={','.join(map(str, nps))})" for t, nps in tests[:25]]
            if len(tests) > 25:
                lines.append(f"  - ... and {len(tests) - 25} more (matrix.json has them all)")
        lines.append("")
    return "\n".join(lines) + "\n"


def json_matrix(rows: Sequence[Row], command: str) -> dict[str, Any]:
    reported = [row for row in rows if row.report is not None]
    return {
        "command": command,
        "releases": [
            {
                "version": row.version,
                "problem": row.problem,
                "seconds": round(row.seconds, 1),
                "exit_status": row.exit_status,
                "verdict": (row.report or {}).get("verdict"),
                "levels": (row.report or {}).get("levels"),
            }
            for row in rows
        ],
        "changes": [
            {"from": a.version, "to": b.version, "changes": changes(a, b)}
            for a, b in itertools.pairwise(reported)
        ],
    }


# ---- command line -----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conformance matrix",
        description="Run the suite against several MLX releases (one virtual environment each, "
        "cached) and merge the reports into one table with what changed release to release.",
    )
    parser.add_argument(
        "--mlx",
        required=True,
        help="releases: all (every mlx-cpu release on the package index), a comma list "
        "(0.26.5,0.30.1), a range (0.29.0..0.31.2), or a mix",
    )
    parser.add_argument("--np", default="2", help="rank counts for every release (default 2)")
    parser.add_argument("--timeout", default="20", help="per-test deadline in seconds (default 20)")
    parser.add_argument("-m", dest="markers", default=None, help="pytest -m expression")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=Path(os.environ.get("CONFORMANCE_MATRIX_CACHE", DEFAULT_CACHE)),
        help="where the environments live "
        f"(default $CONFORMANCE_MATRIX_CACHE, else {DEFAULT_CACHE})",
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path("conformance-matrix"),
        help="where each release's reports and matrix.md/matrix.json go "
        "(default ./conformance-matrix)",
    )
    parser.add_argument(
        "--release-timeout",
        type=float,
        default=1800.0,
        help="seconds one release's run may take before it is stopped (default 1800)",
    )
    parser.add_argument(
        "--reuse-reports",
        action="store_true",
        help="take a release's report from --report-dir when one is there instead of running "
        "it again (e.g. to merge releases run in several invocations)",
    )
    parser.add_argument(
        "--prepare-only",
        action="store_true",
        help="make the environments and stop (no runs)",
    )
    return parser


def _write(out: Path, rows: Sequence[Row], command: str, run_args: Sequence[str]) -> None:
    # Written after every release, so a run cut short leaves what it covered.
    (out / "matrix.md").write_text(markdown(rows, command, run_args), "utf-8")
    (out / "matrix.json").write_text(
        json.dumps(json_matrix(rows, command), indent=1) + "\n", "utf-8"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m conformance matrix``: 0 when every release has a report, 1 when
    some could not be installed or run, 2 for usage errors."""
    args = build_parser().parse_args(argv)
    try:
        versions = select_releases(args.mlx)
    except MatrixError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    run_args = ["--np", args.np, "--timeout", args.timeout]
    if args.markers:
        run_args += ["-m", args.markers]
    if args.keyword:
        run_args += ["-k", args.keyword]
    cache = args.cache_dir.expanduser().resolve()
    cache.mkdir(parents=True, exist_ok=True)
    print(
        f"conformance matrix: {len(versions)} releases ({', '.join(versions)}); cache {cache}",
        flush=True,
    )
    base: Path | None = None  # made when the first release needs it
    out = args.report_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m conformance matrix " + " ".join(
        shlex.quote(a) for a in (sys.argv[2:] if argv is None else argv)
    )
    rows: list[Row] = []
    for version in versions:
        saved = out / f"mlx-{version}" / "report.json"
        if args.reuse_reports and saved.exists():
            report = json.loads(saved.read_text("utf-8"))
            rows.append(Row(version, report, seconds=float(report.get("duration", 0.0))))
            print(f"mlx {version}: {report.get('verdict')} (saved report)", flush=True)
            _write(out, rows, command, run_args)
            continue
        if base is None:
            try:
                base = ensure_base(cache)
            except (MatrixError, subprocess.SubprocessError, OSError) as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 1
        python, why = ensure_release(cache, base, version)
        if python is None:
            print(f"mlx {version}: {why}", flush=True)
            rows.append(Row(version, problem=why))
        elif args.prepare_only:
            print(f"mlx {version}: environment ready", flush=True)
            continue
        else:
            row = run_release(
                python, base, version, run_args, out / f"mlx-{version}", args.release_timeout
            )
            verdict = (row.report or {}).get("verdict", "no report")
            print(f"mlx {version}: {verdict} in {row.seconds:.0f} s {row.problem}", flush=True)
            rows.append(row)
        if not args.prepare_only:
            _write(out, rows, command, run_args)
    if args.prepare_only:
        return 0 if not rows else 1
    print(f"matrix: {out / 'matrix.md'}")
    return 0 if all(r.report is not None for r in rows) else 1
