"""``python -m conformance selftest``: the suite must catch every deliberately faulty backend.

Contract:

- The reference runs the whole suite through the runner (``conformance.run.runner``) at every rank
  count of ``--np``; it must pass.
- Every fault of ``conformance.adapters.faulty.FAULTS`` (or those named with ``--fault``) runs,
  at every rank count where it shows (``Fault.min_np``), as an MPI job of ``pytest -x`` over the
  spec modules the fault declares, through the runner's job machinery (its job-level watchdog
  bounds a job whose plugin watchdog failed). A job stopped by a test that does not count (an
  error outside the call, a hang with a record) is resumed past it, a few times at most.
- Verdict of one rank count (``judge``):

  * ``caught``: some test *failed in its call phase* (outcome ``failed``, schema 1, or any
    call-phase failure outcome of ``conformance.records``: ``wrong``, and ``error`` when the
    record says it came from the call). For a fault that ``hangs``, the failure must also show
    the backend's TimeoutError: the fault jobs run with the backend's deadline (the reference's
    ``REFERENCE_TIMEOUT``) at half the harness's per-test deadline, 10 s at most, so a hang the
    backend can end reaches the spec as a TimeoutError where a result was due.
  * ``inconclusive``: no such failure, but the job crashed, was killed, or a test hung (a
    watchdog ``hung`` or runner ``crashed`` record): the fault broke the run, the spec did not
    notice it.
  * ``missed``: every test ran to its end (errors in setup or teardown do not count).
  * ``problem``: the backend did not load or the job could not run tests.

  A fault is caught (``yes``) when caught at every rank count where it shows; ``no`` when missed
  at one; ``problem`` / ``inconclusive`` otherwise; ``n/a`` when it shows at none.
- Fault jobs run ``--jobs`` at once (default: 2 on 2 to 5 cores, one per 2 cores above): most
  of a fault job is waiting (a job starting, a backend deadline running out), so two share a
  2-core machine.
- Prints a table: fault, verdict per rank count, caught, its wall time (first job's start to last
  job's end) and its jobs' time added up, the tests that caught it; writes it
  (``selftest.md``) and the details (``selftest.json``) to ``--report-dir``.
- Exit status 0 only when the reference passed (or was skipped) and every selected fault is
  ``yes`` or ``n/a``; 1 otherwise (so the ``none`` control, reported missed, fails the run); 2 for
  usage errors and a missing MPI.
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
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from conformance import records as records_mod
from conformance.adapters import faulty
from conformance.harness import tiers
from conformance.run import hostfile, runner, usage
from conformance.run import launcher as launcher_mod

DEFAULT_NPS = (2, 3)
#: Per-test deadline of the fault jobs: the runner's (the harness's), as in a run, since the size
#: sweep has long tests.
DEFAULT_TIMEOUT = runner.DEFAULT_TIMEOUT
#: The backend's own deadline in fault jobs, as a fraction of the per-test deadline: shorter, so
#: that a hang the backend ends reaches the test as a TimeoutError before the watchdog acts.
BACKEND_DEADLINE_SHARE = 0.5
#: ... and at most this many seconds: every hang fault costs it once per rank count, and no call
#: of the spec comes near it (the longest, 16 MiB all_sum at 4 ranks on 2 busy cores, takes well
#: under a second).
BACKEND_DEADLINE_MAX = 10.0
#: Outcomes that are a failure of the call phase whatever the record says of the phase.
CALL_FAILURES = frozenset({"failed", "wrong"})
#: Outcomes that may come from the call or from setup/teardown: caught only when the record
#: names the call as the failing phase (a ``hung`` record does only when the spec itself watched
#: the call block: the survivors of a kill test; the watchdog's hung records name no phase).
MAYBE_CALL_FAILURES = frozenset({"error", "hung"})
#: Outcomes that mean the run broke without a spec noticing.
BROKEN_RUN = frozenset({"hung", "crashed"})
#: Record fields that may name the failing phase (whichever the records format uses).
PHASE_FIELDS = ("phase", "when", "failed_phase")
#: Text that shows a backend TimeoutError in a failure.
TIMEOUT_EVIDENCE = ("TimeoutError", "timed out")
#: Spec modules whose tests kill a rank (``conformance.harness.survivors``).
KILL_SPECS = frozenset({"test_faults.py"})
#: Jobs per fault and rank count at most (the first and resumptions past tests that do not count).
MAX_JOBS = 3
# Exit statuses of a job that could not run tests at all (usage error, ranks out of step).
_UNUSABLE = (2, 4)

CAUGHT, MISSED, INCONCLUSIVE = "caught", "missed", "inconclusive"
NOT_SHOWN, PROBLEM = "n/a", "problem"


@dataclasses.dataclass
class Attempt:
    """One fault at one rank count."""

    np: int
    status: str  # CAUGHT, MISSED, INCONCLUSIVE, NOT_SHOWN or PROBLEM
    tests: list[str] = dataclasses.field(default_factory=list)
    duration: float = 0.0
    detail: str = ""
    ran: int = 0  # tests with a record
    jobs: int = 0
    #: When its first job started and its last ended (seconds since the selftest started).
    started: float = 0.0
    ended: float = 0.0


@dataclasses.dataclass
class FaultResult:
    """Every attempt of one fault, and the verdict."""

    name: str
    fault: str
    rule: str
    attempts: dict[int, Attempt] = dataclasses.field(default_factory=dict)

    @property
    def verdict(self) -> str:
        """``yes`` when caught wherever it shows, ``n/a`` when it showed nowhere, ``no`` when
        missed somewhere, else ``problem`` or ``inconclusive``."""
        shown = {a.status for a in self.attempts.values() if a.status != NOT_SHOWN}
        if not shown:
            return "n/a"
        for status, verdict in ((MISSED, "no"), (PROBLEM, "problem"), (INCONCLUSIVE, INCONCLUSIVE)):
            if status in shown:
                return verdict
        return "yes"

    @property
    def duration(self) -> float:
        """Seconds its jobs ran, added up over its rank counts."""
        return sum(a.duration for a in self.attempts.values())

    @property
    def wall(self) -> float:
        """Seconds from its first job's start to its last job's end (jobs of other faults and
        of its other rank counts may have run at the same time)."""
        ran = [a for a in self.attempts.values() if a.ended > 0]
        return max(a.ended for a in ran) - min(a.started for a in ran) if ran else 0.0


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


def _text(record: Mapping[str, Any]) -> str:
    return f"{record.get('message') or ''}\n{record.get('longrepr') or ''}"


def _phase(record: Mapping[str, Any]) -> str | None:
    for name in PHASE_FIELDS:
        if record.get(name):
            return str(record[name])
    return None


def failed_in_call(record: Mapping[str, Any]) -> bool:
    """Whether ``record`` is a test that failed in its call phase."""
    outcome = str(record.get("outcome"))
    if outcome in CALL_FAILURES:
        return True
    return outcome in MAYBE_CALL_FAILURES and _phase(record) == "call"


def shows_timeout(record: Mapping[str, Any]) -> bool:
    """Whether the failure shows the backend's TimeoutError (a hang its deadline ended)."""
    text = _text(record)
    return any(evidence in text for evidence in TIMEOUT_EVIDENCE)


def judge(
    records: Sequence[Mapping[str, Any]],
    returncode: int | None,
    killed: bool,
    hangs: bool = False,
) -> tuple[str, list[str], str]:
    """Status, catching tests and a detail line for one fault at one rank count.

    ``records`` are every test record of its jobs; ``returncode`` and ``killed`` describe the last
    job; ``hangs`` asks for TimeoutError evidence (see the module docstring).
    """
    load_errors = [r for r in records if "BackendLoadError" in _text(r)]
    if load_errors:
        first = (load_errors[0].get("message") or "")[:200]
        return PROBLEM, [], f"the backend did not load: {first}"
    in_call = [r for r in records if failed_in_call(r)]
    caught = [r for r in in_call if shows_timeout(r)] if hangs else in_call
    if caught:
        first = caught[0]
        message = (first.get("message") or "").strip().splitlines()
        detail = f"{first.get('outcome')} in call: {message[0][:200] if message else ''}"
        return CAUGHT, [short_id(str(r["nodeid"])) for r in caught], detail
    broken = [r for r in records if r.get("outcome") in BROKEN_RUN]
    if in_call:
        head = (in_call[0].get("message") or "").strip()[:160]
        return INCONCLUSIVE, [], f"failed in call, but without the backend's TimeoutError: {head}"
    if broken:
        first = broken[0]
        what = f"{first.get('outcome')} in {short_id(str(first.get('nodeid')))}"
        return INCONCLUSIVE, [], f"{what}: the run broke, no test failed in its call"
    if killed:
        return INCONCLUSIVE, [], "the job-level watchdog ended the job before any test failed"
    if returncode in _UNUSABLE and not records:
        return PROBLEM, [], f"the job could not run tests (status {returncode})"
    if returncode not in runner.COMPLETED_STATUSES:
        return INCONCLUSIVE, [], f"the MPI job died (status {returncode}), no test failed"
    errors = [r for r in records if r.get("outcome") in MAYBE_CALL_FAILURES]
    detail = f"{len(records)} tests ran, none failed in its call"
    if errors:
        detail += f" ({len(errors)} error(s) outside the call do not count)"
    return MISSED, [], detail


def read_records(path: Path) -> list[dict[str, Any]]:
    """The test records of a results file, through ``conformance.records`` (a missing file or a
    torn last line, from a job killed mid-write, reads as the records before it)."""
    try:
        return [dict(r) for r in records_mod.read_records(path)]
    except (OSError, ValueError):
        return [r for r in runner.read_results(path) if "nodeid" in r and "outcome" in r]


def _resumable(records: Sequence[Mapping[str, Any]], job: runner.JobOutcome) -> bool:
    """A job stopped by a test that does not count, with a record to skip it by."""
    if job.killed or not records or job.returncode in (0, 5, *_UNUSABLE):
        return False
    last = records[-1]
    return last.get("outcome") in {*MAYBE_CALL_FAILURES, "hung"} and not failed_in_call(last)


class _WithEnvironment:
    """A launcher whose jobs get extra environment variables (the backend's deadline)."""

    def __init__(self, launcher: launcher_mod.Launcher, extra: Mapping[str, str]) -> None:
        self._launcher = launcher
        self._extra = dict(extra)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._launcher, name)

    def environment(self, np: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
        env = self._launcher.environment(np, base)
        env.update(self._extra)
        return env


def fault_environment(opts: SelftestOptions, fault: faulty.Fault | None = None) -> dict[str, str]:
    """What fault jobs add to the environment: the reference's deadline below the harness's, and
    the opt-in tiers the fault's specs need (``Fault.tiers``: a leak shows only in the soak)."""
    seconds = min(opts.timeout * BACKEND_DEADLINE_SHARE, BACKEND_DEADLINE_MAX)
    env = {"REFERENCE_TIMEOUT": f"{seconds:g}"}
    if fault is not None and fault.tiers:
        env[tiers.ENV_VAR] = ",".join(fault.tiers)
    return env


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
    with_deadline = _WithEnvironment(launcher, fault_environment(opts, fault))
    # Kill tests need a job that keeps the survivors alive (they skip anywhere else).
    survivors = bool(set(fault.specs) & KILL_SPECS) and getattr(launcher, "keeps_survivors", False)
    duration = 0.0
    for jobs in range(1, MAX_JOBS + 1):
        extra = list(stop)
        done = read_records(results)
        if done:
            deselect = base / f"deselect-{jobs}.txt"
            deselect.write_text("".join(f"--deselect={r['nodeid']}\n" for r in done), "utf-8")
            extra.append(f"@{deselect}")
        out = base / ("job.out" if jobs == 1 else f"job{jobs}.out")
        job = runner.run_job(
            with_deadline,  # type: ignore[arg-type]
            run_opts,
            np,
            extra,
            results,
            base / "logs" / f"job{jobs}",
            out,
            survivors=survivors,
        )
        duration += job.duration
        found = read_records(results)
        status, tests, detail = judge(found, job.returncode, job.killed, fault.hangs)
        if status == CAUGHT or not _resumable(found, job):
            break
    if status in (PROBLEM, INCONCLUSIVE):
        detail += f"; see {out}"
    return Attempt(np, status, tests, duration, detail, len(found), jobs)


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
    header = ["fault", *(f"np={n}" for n in nps), "caught", "wall", "job time", "caught by"]
    rows = []
    for result in results:
        tests: list[str] = []
        for n in nps:
            attempt = result.attempts.get(n)
            if attempt is None:
                continue
            tests += [t for t in attempt.tests if t not in tests]
            if attempt.status in (MISSED, PROBLEM, INCONCLUSIVE):
                tests.append(f"[np={n}: {attempt.detail}]")
        cells = [result.name]
        cells += [result.attempts[n].status if n in result.attempts else "-" for n in nps]
        cells += [result.verdict, f"{result.wall:.1f}s", f"{result.duration:.1f}s"]
        cells.append("; ".join(tests) or "-")
        rows.append(cells)
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for cells in [header, *rows]:
        fixed = "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths, strict=True))
        lines.append(f"{fixed}  {cells[-1]}".rstrip())
    return "\n".join(lines)


def markdown_table(results: Iterable[FaultResult], nps: Sequence[int]) -> str:
    """The same table in Markdown (for ``selftest.md``), with each fault's rule."""
    head = ["fault", "rule broken", *(f"np={n}" for n in nps), "caught", "wall", "job time"]
    head.append("caught by")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        tests = sorted({t for a in r.attempts.values() for t in a.tests})
        cells = [f"`{r.name}`: {r.fault}", r.rule]
        cells += [r.attempts[n].status if n in r.attempts else "-" for n in nps]
        cells += [r.verdict, f"{r.wall:.1f}s", f"{r.duration:.1f}s"]
        cells.append("<br>".join(f"`{t}`" for t in tests) or "-")
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def summary_line(results: Sequence[FaultResult]) -> str:
    """One line: every fault caught, or which were missed, inconclusive or a problem."""
    parts = []
    for verdict, label in (
        ("no", "NOT caught"),
        ("inconclusive", "inconclusive"),
        ("problem", "a problem"),
    ):
        names = [r.name for r in results if r.verdict == verdict]
        if names:
            parts.append(f"{len(names)} fault(s) {label}: {', '.join(names)}")
    caught = sum(r.verdict == "yes" for r in results)
    if not parts:
        return f"every fault caught in a call phase ({caught})"
    return f"{caught} of {len(results)} caught in a call phase; " + "; ".join(parts)


def exit_status(reference: ReferenceResult, results: Iterable[FaultResult]) -> int:
    """0 when the reference passed (or was skipped on request) and every fault was caught in a
    call phase wherever it shows; 1 when one was missed, inconclusive or a problem."""
    reference_ok = reference.ok or reference.status is None
    return 0 if reference_ok and all(r.verdict in ("yes", "n/a") for r in results) else 1


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
        default=f"{DEFAULT_TIMEOUT:g}",
        help=f"per-test deadline of the faulty jobs in seconds (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="MPI jobs at once (default: 2 on 2 to 5 cores, 1 per 2 cores above, 1 on 1 core)",
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
            stream.write(f"{'; min ranks ' + str(fault.min_np) if fault.min_np > 2 else ''}")
            hang = "; a hang: caught only by a TimeoutError in a call" if fault.hangs else ""
            stream.write(f"{hang}\n")


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
            pool.submit(_timed, started, run_fault_job, launcher, fault, np, opts): (fault.name, np)
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
    status = exit_status(reference, ordered)
    verdict = summary_line(ordered)
    stream.write(f"\n{table}\n\n{ref_line}\n{verdict}; wall time {wall:.1f}s, CPU {cpu:.1f}s\n")
    _write_reports(opts, ordered, reference, wall, cpu, status)
    return status


def _timed(started: float, run: Any, *args: Any) -> Attempt:
    """``run(*args)``, its attempt stamped with when it started and ended (seconds since
    ``started``, a ``time.monotonic()``): a fault's wall time when its jobs overlap others."""
    begin = time.monotonic() - started
    attempt: Attempt = run(*args)
    attempt.started, attempt.ended = begin, time.monotonic() - started
    return attempt


def _children_cpu() -> float:
    # CPU seconds of finished child processes: a measure of cost that does not depend on how
    # busy the machine was (wall time does).
    spent = resource.getrusage(resource.RUSAGE_CHILDREN)
    return spent.ru_utime + spent.ru_stime


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
                "wall": r.wall,
                "attempts": [dataclasses.asdict(a) for a in r.attempts.values()],
            }
            for r in results
        ],
    }
    (opts.report_dir / "selftest.json").write_text(json.dumps(data, indent=2), encoding="utf-8")


def default_jobs(cores: int) -> int:
    """Fault jobs at once on ``cores`` cores: two wherever there are two cores (a fault job
    mostly waits), one per two cores on larger machines."""
    return max(min(2, cores), cores // 2)


@usage.command
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m conformance selftest``."""
    args = build_parser().parse_args(argv)
    if args.list:
        list_faults(sys.stdout)
        return 0
    # Usage errors before any job starts (conformance.run.usage).
    nps = usage.rank_counts(args.np)
    timeout = usage.positive_seconds(args.timeout, "--timeout")
    usage.existing_file(args.hostfile, "--hostfile")
    jobs = args.jobs if args.jobs is not None else default_jobs(launcher_mod.cpu_count())
    opts = SelftestOptions(
        nps=nps,
        faults=args.faults,
        timeout=timeout,
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
