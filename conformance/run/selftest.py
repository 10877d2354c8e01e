"""``python -m conformance selftest``: the suite must catch every deliberately faulty backend.

Contract:

- The reference runs the whole suite through the runner (``conformance.run.runner``) at every rank
  count of ``--np``; it must pass.
- Every fault of ``conformance.adapters.faulty.FAULTS`` (or those named with ``--fault``) runs,
  at every rank count where it shows (``Fault.min_np``), as one MPI job of ``pytest -x`` over the
  spec modules the fault declares, through the runner's job machinery (its job-level watchdog
  bounds a job whose plugin watchdog failed). A fault is *caught* at a rank count when some test
  failed, errored or hung there (a job that died mid-test counts too); it is caught when caught
  at every rank count where it shows.
- Prints a table: fault, verdict per rank count, caught (yes/no/n/a), the tests that caught it,
  time; writes it (``selftest.md``) and the details (``selftest.json``) to ``--report-dir``.
- Exit status 0 only when the reference passed and every selected fault was caught (a fault
  that shows at none of the chosen rank counts is ``n/a`` and does not fail the run); 1
  otherwise; 2 for usage errors and a missing MPI.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import io
import json
import os
import resource
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from conformance.adapters import faulty
from conformance.run import hostfile, runner
from conformance.run import launcher as launcher_mod

DEFAULT_NPS = (2, 3)
#: Per-test deadline of the selftest's jobs: short, since one fault hangs on purpose.
DEFAULT_TIMEOUT = 20.0
#: Outcomes that mean the suite noticed the fault.
CATCHING = ("failed", "error", "hung", "crashed")
# Exit statuses of a job that could not run tests at all (usage error, ranks out of step).
_UNUSABLE = (2, 4)

CAUGHT, MISSED, NOT_SHOWN, PROBLEM = "caught", "missed", "n/a", "problem"


@dataclasses.dataclass
class Attempt:
    """One fault at one rank count."""

    np: int
    status: str  # CAUGHT, MISSED, NOT_SHOWN or PROBLEM
    tests: list[str] = dataclasses.field(default_factory=list)
    duration: float = 0.0
    detail: str = ""
    ran: int = 0  # tests with a record


@dataclasses.dataclass
class FaultResult:
    """Every attempt of one fault, and the verdict."""

    name: str
    fault: str
    rule: str
    attempts: dict[int, Attempt] = dataclasses.field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """``yes`` when caught wherever it shows, ``n/a`` when it showed nowhere, else ``no``."""
        shown = [a for a in self.attempts.values() if a.status != NOT_SHOWN]
        if not shown:
            return "n/a"
        return "yes" if all(a.status == CAUGHT for a in shown) else "no"

    @property
    def duration(self) -> float:
        return sum(a.duration for a in self.attempts.values())


@dataclasses.dataclass
class ReferenceResult:
    """The reference's run of the whole suite."""

    status: int | None  # the runner's exit status; None when not run
    duration: float = 0.0
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == 0


def short_id(nodeid: str) -> str:
    """``conformance/specs/test_x.py::t[p]`` -> ``test_x.py::t[p]``."""
    return nodeid.rsplit("/", 1)[-1] if "::" in nodeid else nodeid


def judge(
    records: Sequence[dict[str, Any]], returncode: int | None, killed: bool
) -> tuple[str, list[str], str]:
    """Status, catching tests and a detail line for one job's records.

    A test that failed, errored or hung catches the fault, unless the backend could not even be
    loaded (a bug of the faulty backend, not a catch). A job that ended early without a record
    catches it too (the suite's run died of the fault), except when it could not run tests at all.
    """
    load_errors = [
        r for r in records if "BackendLoadError" in f"{r.get('message', '')}{r.get('longrepr', '')}"
    ]
    if load_errors:
        return PROBLEM, [], f"the backend did not load: {load_errors[0].get('message', '')[:200]}"
    caught = [r for r in records if r.get("outcome") in CATCHING]
    if caught:
        tests = [short_id(r["nodeid"]) for r in caught]
        first = caught[0]
        message = (first.get("message") or "").strip().splitlines()
        detail = f"{first.get('outcome')}: {message[0][:200] if message else ''}"
        return CAUGHT, tests, detail
    if killed:
        return CAUGHT, ["(job ended by the watchdog)"], "no test finished before the job watchdog"
    if returncode in (0, 1, 5):
        return MISSED, [], f"{len(records)} tests ran, none failed"
    if returncode in _UNUSABLE and not records:
        return PROBLEM, [], f"the job could not run tests (status {returncode})"
    return CAUGHT, [f"(job ended with status {returncode})"], "the MPI job died"


def run_fault_job(
    launcher: launcher_mod.Launcher,
    fault: faulty.Fault,
    np: int,
    opts: SelftestOptions,
) -> Attempt:
    """Run ``fault``'s spec modules on ``np`` ranks, stopping at the first failure."""
    if not fault.active_at(np):
        return Attempt(np, NOT_SHOWN, detail=f"shows only with {fault.min_np}+ ranks")
    specs = Path(runner.default_paths()[0])
    base = opts.report_dir / fault.name / f"np{np}"
    base.mkdir(parents=True, exist_ok=True)
    results = base / "results.jsonl"
    if results.exists():
        results.unlink()
    run_opts = runner.RunOptions(
        backend=f"faulty:{fault.name}",
        nps=[np],
        timeout=opts.timeout,
        max_examples=opts.max_examples,
        paths=[str(specs / module) for module in fault.specs],
        report_dir=base,
        mpiexec=opts.mpiexec,
        hostfile=opts.hostfile,
        margin=opts.job_margin,
        quiet=True,
    )
    stop = ["-x"] if opts.maxfail == 1 else ([f"--maxfail={opts.maxfail}"] if opts.maxfail else [])
    job = runner.run_job(launcher, run_opts, np, stop, results, base / "logs", base / "job.out")
    records = runner.read_results(results)
    status, tests, detail = judge(records, job.returncode, job.killed)
    if status == PROBLEM:
        detail += f"; see {base / 'job.out'}"
    return Attempt(np, status, tests, job.duration, detail, len(records))


def run_reference(opts: SelftestOptions) -> ReferenceResult:
    """The whole suite against the reference, through the runner (its output kept in a file)."""
    run_opts = runner.RunOptions(
        backend="reference",
        nps=list(opts.nps),
        timeout=max(opts.timeout, runner.DEFAULT_TIMEOUT),
        max_examples=opts.max_examples,
        report_dir=opts.report_dir / "reference",
        mpiexec=opts.mpiexec,
        hostfile=opts.hostfile,
        quiet=False,
    )
    run_opts.report_dir.mkdir(parents=True, exist_ok=True)
    log = run_opts.report_dir / "run.out"
    start = time.monotonic()
    buffer = io.StringIO()
    status = runner.run(run_opts, stream=buffer)
    log.write_text(buffer.getvalue(), encoding="utf-8")
    lines = [line for line in buffer.getvalue().splitlines() if line.strip()]
    detail = lines[-2] if len(lines) >= 2 else ""
    return ReferenceResult(status, time.monotonic() - start, f"{detail} (see {log})")


# -- output ------------------------------------------------------------------------------------


def format_table(results: Iterable[FaultResult], nps: Sequence[int]) -> str:
    """A plain-text table: fault, status per rank count, caught, catching tests, time."""
    header = ["fault", *(f"np={n}" for n in nps), "caught", "time", "caught by"]
    rows = []
    for result in results:
        tests: list[str] = []
        for n in nps:
            attempt = result.attempts.get(n)
            if attempt is None:
                continue
            tests += [t for t in attempt.tests if t not in tests]
            if attempt.status in (MISSED, PROBLEM):
                tests.append(f"[np={n}: {attempt.detail}]")
        cells = [result.name]
        cells += [result.attempts[n].status if n in result.attempts else "-" for n in nps]
        cells += [result.verdict, f"{result.duration:.1f}s", "; ".join(tests) or "-"]
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for cells in [header, *rows]:
        fixed = "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=True))
        lines.append(f"{fixed}  {cells[-1]}".rstrip())
    return "\n".join(lines)


def markdown_table(results: Iterable[FaultResult], nps: Sequence[int]) -> str:
    """The same table in Markdown (for ``selftest.md``), with each fault's rule."""
    head = ["fault", "rule broken", *(f"np={n}" for n in nps), "caught", "time", "caught by"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        tests = sorted({t for a in r.attempts.values() for t in a.tests})
        cells = [f"`{r.name}`: {r.fault}", r.rule]
        cells += [r.attempts[n].status if n in r.attempts else "-" for n in nps]
        cells += [r.verdict, f"{r.duration:.1f}s", "<br>".join(f"`{t}`" for t in tests) or "-"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def exit_status(reference: ReferenceResult, results: Iterable[FaultResult]) -> int:
    """0 when the reference passed (or was skipped on request) and no fault was missed."""
    reference_ok = reference.ok or reference.status is None
    return 0 if reference_ok and all(r.verdict != "no" for r in results) else 1


# -- command line ------------------------------------------------------------------------------


@dataclasses.dataclass
class SelftestOptions:
    nps: list[int] = dataclasses.field(default_factory=lambda: list(DEFAULT_NPS))
    faults: list[str] = dataclasses.field(default_factory=list)
    timeout: float = DEFAULT_TIMEOUT
    jobs: int = 1
    maxfail: int = 1
    max_examples: int | None = None
    report_dir: Path = Path("conformance-reports/selftest")
    mpiexec: str | None = None
    job_margin: float | None = None
    reference: bool = True
    hostfile: Path | None = None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m conformance selftest",
        description="Run the suite against the reference (must pass) and against every "
        "deliberately faulty backend (each must be caught), and print which tests caught what.",
    )
    parser.add_argument("--np", default="2,3", help="rank counts, e.g. 2,3 or 2-4 (default 2,3)")
    parser.add_argument(
        "--fault",
        dest="faults",
        action="append",
        default=[],
        help="run only this fault (repeatable; also accepts the controls, e.g. 'none')",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"per-test deadline of the faulty jobs in seconds (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="MPI jobs at once (default: 1 per 2 cores, at least 1)",
    )
    parser.add_argument(
        "--maxfail",
        type=int,
        default=1,
        help="stop a fault's job after this many failing tests; 0 runs all (default 1)",
    )
    parser.add_argument(
        "--max-examples", type=int, default=None, help="Hypothesis examples per property test"
    )
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path("conformance-reports/selftest"),
        help="where tables, results and logs go (default ./conformance-reports/selftest)",
    )
    parser.add_argument("--mpiexec", default=None, help="mpiexec to use")
    hostfile.add_option(parser)
    parser.add_argument(
        "--job-margin",
        type=float,
        default=None,
        help="seconds past the per-test deadline before a silent job is ended",
    )
    parser.add_argument(
        "--skip-reference", action="store_true", help="do not run the suite against the reference"
    )
    parser.add_argument("--list", action="store_true", help="list the faults and exit")
    return parser


def list_faults(stream: TextIO) -> None:
    width = max(map(len, [*faulty.FAULTS, *faulty.CONTROLS]))
    for table, tag in ((faulty.FAULTS, ""), (faulty.CONTROLS, " (control)")):
        for name, fault in table.items():
            stream.write(f"{name:<{width}}  {fault.fault}{tag}\n")
            stream.write(f"{'':<{width}}  breaks: {fault.rule}; specs: {', '.join(fault.specs)}")
            stream.write(f"{'; min ranks ' + str(fault.min_np) if fault.min_np > 2 else ''}\n")


def select(names: Sequence[str]) -> list[faulty.Fault]:
    """The faults to run: all of ``FAULTS`` by default, else those named (controls allowed)."""
    if not names:
        return list(faulty.FAULTS.values())
    known = {**faulty.FAULTS, **faulty.CONTROLS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"unknown fault(s) {unknown}; known: {', '.join(known)}")
    return [known[n] for n in dict.fromkeys(names)]


def selftest(opts: SelftestOptions, stream: TextIO = sys.stdout) -> int:
    """Run the reference and the faults; print and write the table; return the exit status."""
    try:
        faults = select(opts.faults)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        launcher = launcher_mod.find_launcher(opts.mpiexec).with_hostfile(opts.hostfile)
    except (launcher_mod.LauncherError, hostfile.HostfileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    opts.report_dir.mkdir(parents=True, exist_ok=True)
    if opts.jobs > 1:
        # Concurrent jobs share the cores even when one job alone would not oversubscribe them:
        # busy-polling ranks must yield.
        os.environ.setdefault("MPIR_CVAR_POLLS_BEFORE_YIELD", "1")
        os.environ.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
    stream.write(
        f"selftest: {len(faults)} faults at ranks {','.join(map(str, opts.nps))}, "
        f"{opts.jobs} job(s) at once, per-test deadline {opts.timeout:g} s, "
        f"reports in {opts.report_dir}\n"
    )
    stream.flush()
    started = time.monotonic()
    cpu_before = _children_cpu()
    results = {f.name: FaultResult(f.name, f.fault, f.rule) for f in faults}
    reference = ReferenceResult(None, detail="skipped (--skip-reference)")
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, opts.jobs)) as pool:
        # The reference is the longest single task: start it first so it overlaps the faults.
        ref_future = pool.submit(run_reference, opts) if opts.reference else None
        futures = {
            pool.submit(run_fault_job, launcher, fault, np, opts): (fault.name, np)
            for fault in faults
            for np in opts.nps
        }
        for future in concurrent.futures.as_completed(futures):
            name, np = futures[future]
            attempt = future.result()
            results[name].attempts[np] = attempt
            if attempt.status != NOT_SHOWN:
                stream.write(f"  {name} np={np}: {attempt.status} ({attempt.duration:.1f}s)\n")
                stream.flush()
        if ref_future is not None:
            reference = ref_future.result()
    wall = time.monotonic() - started
    cpu = _children_cpu() - cpu_before
    ordered = [results[f.name] for f in faults]
    table = format_table(ordered, opts.nps)
    ref_line = (
        "reference: skipped"
        if reference.status is None
        else f"reference: {'passed' if reference.ok else 'FAILED'} "
        f"({reference.duration:.1f}s) {reference.detail}"
    )
    missed = [r.name for r in ordered if r.verdict == "no"]
    status = exit_status(reference, ordered)
    verdict = (
        "every fault caught"
        if not missed
        else f"{len(missed)} fault(s) NOT caught: {', '.join(missed)}"
    )
    stream.write(f"\n{table}\n\n{ref_line}\n{verdict}; wall time {wall:.1f}s, CPU {cpu:.1f}s\n")
    _write_reports(opts, ordered, reference, wall, cpu, status)
    return status


def _children_cpu() -> float:
    # CPU seconds of finished child processes: a measure of cost that does not depend on how
    # busy the machine was (wall time does).
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _write_reports(
    opts: SelftestOptions,
    results: list[FaultResult],
    reference: ReferenceResult,
    wall: float,
    cpu: float,
    status: int,
) -> None:
    ref = "skipped" if reference.status is None else ("passed" if reference.ok else "FAILED")
    md = [
        "# Selftest: does the suite catch faulty backends?",
        "",
        f"Ranks {', '.join(map(str, opts.nps))}; per-test deadline {opts.timeout:g} s; "
        f"wall time {wall:.1f} s (CPU {cpu:.1f} s); exit status {status}.",
        "",
        f"Reference: {ref} {reference.detail}",
        "",
        markdown_table(results, opts.nps),
        "",
    ]
    (opts.report_dir / "selftest.md").write_text("\n".join(md), encoding="utf-8")
    data = {
        "nps": opts.nps,
        "ok": status == 0,
        "wall_time": wall,
        "cpu_time": cpu,
        "reference": dataclasses.asdict(reference),
        "faults": [
            {
                "name": r.name,
                "fault": r.fault,
                "rule": r.rule,
                "caught": r.verdict,
                "duration": r.duration,
                "attempts": [dataclasses.asdict(a) for a in r.attempts.values()],
            }
            for r in results
        ],
    }
    (opts.report_dir / "selftest.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m conformance selftest``."""
    args = build_parser().parse_args(argv)
    if args.list:
        list_faults(sys.stdout)
        return 0
    try:
        nps = runner.parse_nps(args.np)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    jobs = args.jobs if args.jobs is not None else max(1, launcher_mod.cpu_count() // 2)
    opts = SelftestOptions(
        nps=nps,
        faults=args.faults,
        timeout=args.timeout,
        jobs=jobs,
        maxfail=args.maxfail,
        max_examples=args.max_examples,
        report_dir=args.report_dir.resolve(),
        mpiexec=args.mpiexec,
        job_margin=args.job_margin,
        reference=not args.skip_reference,
        hostfile=args.hostfile,
    )
    try:
        # SIGINT/SIGTERM end every job still running, in every worker thread, and stop new ones.
        with launcher_mod.interruptible():
            return selftest(opts)
    except launcher_mod.Interrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return launcher_mod.exit_status(exc.signum)
