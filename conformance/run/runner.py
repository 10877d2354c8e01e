"""``python -m conformance run``: one MPI job per rank count, resumed past hangs and crashes.

Contract:

- For each rank count N of ``--np`` the spec tests run as ``mpiexec -n N python -m pytest`` with
  the plugin writing one record per finished test to ``<report-dir>/np<N>/results.jsonl``
  (docs/contracts.md, "Plugin <-> runner"). The terminal shows rank count, tests done of total
  and failures so far.
- The rank counts run side by side within ``--max-ranks`` ranks in flight; the timed tests
  (deadlines, killed and stalled peers) run after all the others, beside each other only
  (``conformance.run.schedule``), so the load of other jobs cannot make a backend look late.
- A job that ends before every test has a record is relaunched over the tests still without one,
  named by node id (it imports and collects only their modules). The plugin's watchdog records
  a hung test itself (exit status 3); for any other early end (a crash, a kill, the job-level
  watchdog) the runner records the test that was running (the first collected test without a
  record) as ``crashed``, or ``hung`` if the job-level watchdog ended it, with the tail of what
  the job and each rank printed.
- Tests that kill a rank (``conformance.harness.survivors``) run each in a job of its own whose
  launcher keeps the survivors alive (:meth:`Launcher.keeps_survivors`), with
  ``CONFORMANCE_SURVIVORS=1``; the other jobs leave them out. Where the launcher cannot keep
  survivors, they run in the ordinary jobs and skip, saying why.
- Collection also writes each test's level, tier and area (``--conformance-collection``); every
  record, the runner's ``crashed`` and ``hung`` ones included, carries them.
- The job-level watchdog ends a job (its whole process tree) when it shows no sign of progress
  (a results line, a change to its output or to a file in its log dir) for the per-test deadline
  plus a margin (plus a start-up allowance before the first test). It is the last resort for
  hangs the plugin's own watchdog cannot end (a rank stuck holding the GIL).
- Records of every rank count are merged, known deviations applied, and the Markdown, JSON and
  JUnit reports written (``conformance.run.reports``). Exit status 0 only when no test failed, hung,
  crashed or errored without a matching deviation, and every job could run.
"""

from __future__ import annotations

import argparse
import dataclasses
import enum
import functools
import itertools
import json
import os
import shlex
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TextIO

from pytest import ExitCode

import conformance
from conformance import records as records_mod
from conformance.harness import isolation
from conformance.harness import survivors as survivors_mod
from conformance.harness.isolation import EXIT_ISOLATED
from conformance.harness.watchdog import COMPLETED_STATUSES, DEFAULT_TIMEOUT, EXIT_HUNG
from conformance.run import deviations as deviations_mod
from conformance.run import hostfile, jobtime, reports, schedule, usage
from conformance.run import launcher as launcher_mod

#: pytest exit statuses of a session that could not run tests (interrupted; usage error, which
#: the plugin also uses for ranks that collected different tests).
_NOT_RUN = (ExitCode.INTERRUPTED, ExitCode.USAGE_ERROR)
#: Outcomes that make the run fail unless a deviation expects them.
BAD_OUTCOMES = deviations_mod.FAILING_OUTCOMES
#: Record fields every record takes from collection when its writer could not tell them.
ATTRIBUTED = ("level", "tier", "area")
TAIL_LINES = 40


@dataclasses.dataclass
class RunOptions:
    """Everything that defines a run (the parsed command line)."""

    backend: str = "reference"
    nps: list[int] = dataclasses.field(default_factory=lambda: [1, 2, 3, 4])
    timeout: float = DEFAULT_TIMEOUT
    max_examples: int | None = None
    seed: int | None = None
    keyword: str | None = None
    markers: str | None = None
    paths: list[str] = dataclasses.field(default_factory=list)
    report_dir: Path = Path("conformance-reports")
    mpiexec: str | None = None
    deviations: Path | None = None
    pytest_args: list[str] = dataclasses.field(default_factory=list)
    rootdir: Path | None = None
    startup_allowance: float = 120.0
    margin: float | None = None
    quiet: bool = False
    isolate: str = "auto"
    hostfile: Path | None = None
    #: PYTHONPATH of the jobs (``usage.caller_pythonpath``); None: the caller's environment.
    pythonpath: str | None = None
    #: Deadline of the tests a deviations entry expects to hang (``expected_hang_args``). Such a
    #: test that no longer hangs must finish within it: the reference runs each of MLX's
    #: (agreement mismatches, 500 all_sums in a row) in at most 2.1 s at 4 ranks on 2 loaded cores.
    hang_deadline: float = 5.0
    #: Ranks in flight at once across rank counts (``schedule.RankBudget``; 1: one job at a time).
    max_ranks: int = dataclasses.field(
        default_factory=lambda: schedule.default_budget(launcher_mod.cpu_count())
    )

    @property
    def root(self) -> Path:
        """The pytest rootdir of every job (node ids are relative to it): ``--rootdir``, else
        the suite's root, unless test paths outside it were given (``job_root``)."""
        return self.rootdir if self.rootdir is not None else job_root(self.paths)

    @property
    def job_margin(self) -> float:
        """Slack past the per-test deadline before the job-level watchdog acts."""
        return self.margin if self.margin is not None else 30.0 + 0.5 * self.timeout


@dataclasses.dataclass
class JobOutcome:
    """What one attempt of one rank count left behind."""

    returncode: int | None
    killed: bool
    output_path: Path
    log_dir: Path
    duration: float
    #: Wall-clock time (``time.time()``) the job ended.
    ended_at: float = 0.0
    #: Wall-clock time it was launched, and the size of the results file then (where its lines
    #: start): what ``jobtime.measure`` splits the job's time by.
    launched_at: float = 0.0
    results_offset: int = 0


def parse_nps(text: str) -> list[int]:
    """``"1,2,3,4"`` or ``"1-4"`` or a mix -> sorted distinct positive rank counts
    (``usage.rank_counts``; its UsageError is a ValueError)."""
    return usage.rank_counts(text)


def package_root() -> Path:
    """The directory holding the ``conformance`` package: the pytest rootdir of every job, so
    node ids read ``conformance/specs/test_<area>.py::...`` wherever the suite is installed."""
    return Path(conformance.__file__).resolve().parent.parent


def job_root(paths: Sequence[str]) -> Path:
    """The suite's root when every path in ``paths`` is in it (relative paths are: the jobs
    resolve them there), else the deepest directory holding the suite and every path, so that
    tests outside the suite keep ids naming their file (pytest gives a file outside its rootdir
    the id ``::test``) and their own conftest.py files."""
    root = package_root()
    files = [Path(p.partition("::")[0]) for p in paths]
    outside = [f for f in files if f.is_absolute() and not f.is_relative_to(root)]
    if not outside:
        return root
    dirs = [str(f if f.is_dir() else f.parent) for f in outside]
    return Path(os.path.commonpath([str(root), *dirs] if len(outside) < len(files) else dirs))


def default_paths() -> list[str]:
    return [str(Path(conformance.__file__).resolve().parent / "specs")]


# -- building commands -----------------------------------------------------------------------


def pytest_args(opts: RunOptions, paths: Sequence[str] | None = None) -> list[str]:
    """pytest arguments shared by collection, jobs and reproduction commands."""
    args = ["--backend", opts.backend, "--conformance-timeout", f"{opts.timeout:g}"]
    if opts.seed is not None:
        args += ["--conformance-seed", str(opts.seed)]
    if opts.keyword:
        args += ["-k", opts.keyword]
    if opts.markers:
        args += ["-m", opts.markers]
    args += list(opts.pytest_args)
    args += list(paths if paths is not None else (opts.paths or default_paths()))
    return args


def job_environment(opts: RunOptions) -> dict[str, str]:
    """Settings the jobs get beyond the launcher's (Hypothesis examples)."""
    env: dict[str, str] = {}
    if opts.max_examples is not None:
        env["CONFORMANCE_MAX_EXAMPLES"] = str(opts.max_examples)
    return env


def caller_environment(opts: RunOptions) -> dict[str, str]:
    """Settings that make the caller's modules importable in jobs that run from the suite's root
    (a backend ``package.module`` next to the caller). Not part of reproduce commands, which run
    where the caller is."""
    return {"PYTHONPATH": opts.pythonpath} if opts.pythonpath is not None else {}


def forward_caller_environment(
    launcher: launcher_mod.Launcher, opts: RunOptions, cmd: list[str]
) -> list[str]:
    """``cmd`` passing ``caller_environment`` to the ranks on every host: Hydra (MPICH) hands
    its whole environment to remote hosts, Open MPI only the variables named by ``-x``."""
    if launcher.flavor != launcher_mod.OPENMPI or not launcher.hostfile:
        return cmd
    forwarded = [arg for name in caller_environment(opts) for arg in ("-x", name)]
    return [cmd[0], *forwarded, *cmd[1:]]


def reproduce_command(
    opts: RunOptions,
    launcher: launcher_mod.Launcher | None,
    np: int,
    nodeid: str,
    survivors: bool = False,
) -> str:
    """Shell command that reruns one test alone on ``np`` ranks, from any directory (with the
    suite installed in the environment it names): ``reproduce_target`` names the test without the
    job's rootdir."""
    # -k/-m could deselect the single test being reproduced; drop them.
    cleaned: list[str] = []
    skip = False
    for arg in pytest_args(opts, paths=[]):
        if skip:
            skip = False
            continue
        if arg in ("-k", "-m"):
            skip = True
            continue
        cleaned.append(arg)
    env = dict(job_environment(opts))
    prefix = ""
    launch: list[str]
    if launcher is not None:
        prefix = launcher.env_prefix(np)
        if survivors:
            # A kill test skips unless its job keeps the survivors alive: reproduce that job.
            env[survivors_mod.ENV] = "1"
            launch = launcher.survivor_command(np, [])
        else:
            launch = launcher.command(np, [])
        launch[0] = _shortest("mpiexec", launcher.path)
    else:
        launch = ["mpiexec", "-n", str(np)]
    python = _shortest("python", sys.executable)
    cmd = [*launch, python, "-m", "pytest", *cleaned, *reproduce_target(opts.root, nodeid)]
    env_text = " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(env.items()))
    return " ".join([p for p in (prefix, env_text) if p] + [shlex.quote(c) for c in cmd])


def reproduce_target(root: Path, nodeid: str) -> list[str]:
    """pytest arguments naming test ``nodeid`` (relative to the jobs' rootdir ``root``) that
    work from any directory: a test of the installed suite by module (``--pyargs
    conformance.specs.test_x::test``), any other by its file's absolute path."""
    file_part, sep, rest = nodeid.partition("::")
    path = (root / file_part).resolve()
    package = Path(conformance.__file__).resolve().parent
    if path.suffix == ".py" and path.is_relative_to(package):
        module = ".".join(path.relative_to(package_root()).with_suffix("").parts)
        return ["--pyargs", module + sep + rest]
    return [str(path) + sep + rest]


def _shortest(name: str, path: str) -> str:
    """``name`` when PATH resolves it to ``path`` (the environment is active), else ``path``."""
    found = shutil.which(name)
    # No realpath: a virtualenv's python is a symlink to the base interpreter, but only the
    # virtualenv's path has the suite installed.
    if found is not None and os.path.abspath(found) == os.path.abspath(path):
        return name
    return path


# -- collection ------------------------------------------------------------------------------


def collect(opts: RunOptions, timeout: float = 300.0) -> tuple[list[str], str]:
    """Node ids of the tests to run, in run order, and pytest's output (for error messages).

    Collection runs in one plain process: the tests adapt to the world size at run time, so the
    ids do not depend on the rank count.
    """
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "--collect-only",
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(opts.root),
        # Isolation may change the run order (robust tests last); collect in the jobs' order.
        "--conformance-isolate",
        opts.isolate,
        "--conformance-collection",
        str(collection_path(opts)),
        *pytest_args(opts),
    ]
    # With the jobs' bytecode cache: this one process compiles the suite and rewrites its
    # assertions before every rank of the first jobs would, all at once.
    env = launcher_mod.cached_bytecode(
        dict(os.environ, **job_environment(opts), **caller_environment(opts))
    )
    try:
        out = subprocess.run(
            cmd,
            cwd=opts.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return [], f"collection timed out after {timeout:g} s: {exc}"
    ids: list[str] = []
    # -q prints the node ids, then a blank line, then the count and any warnings.
    for line in out.stdout.splitlines():
        if not line.strip():
            break
        if "::" in line:
            ids.append(line.strip())
    # What went wrong, without the list of every collected id.
    listed = set(ids)
    text = "\n".join(
        line for line in (out.stdout + out.stderr).splitlines() if line.strip() not in listed
    )
    if out.returncode not in (ExitCode.OK, ExitCode.NO_TESTS_COLLECTED):
        return ids, text
    return ids, "" if ids or out.returncode == ExitCode.NO_TESTS_COLLECTED else text


def collection_path(opts: RunOptions) -> Path:
    """Where collection writes each test's level, tier, area and whether it kills a rank."""
    return opts.report_dir / "collection.jsonl"


def read_collection(path: Path) -> dict[str, dict[str, Any]]:
    """The collection file's entries by node id (empty when it is missing or unreadable)."""
    found: dict[str, dict[str, Any]] = {}
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return found
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and "nodeid" in entry:
            found[str(entry["nodeid"])] = entry
    return found


# -- one job ---------------------------------------------------------------------------------


def read_results(path: Path) -> list[dict[str, Any]]:
    """Records of a results file (``conformance.records.read_records``)."""
    return [dict(r) for r in records_mod.read_records(path)]


# -- one job ---------------------------------------------------------------------------------


def job_argv(
    opts: RunOptions,
    extra_args: Sequence[str],
    results: Path,
    log_dir: Path,
    paths: Sequence[str] | None = None,
) -> list[str]:
    """The pytest command every rank of a job runs (over ``paths``, else the run's paths)."""
    return [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        # Tests' prints still reach the job's output, so a rank that dies mid-test leaves
        # what it printed (fd-level capture would take it down with the process).
        "--capture=tee-sys",
        "--rootdir",
        str(opts.root),
        "--conformance-results",
        str(results),
        "--conformance-log-dir",
        str(log_dir),
        "--conformance-isolate",
        opts.isolate,
        *extra_args,
        *pytest_args(opts, paths),
    ]


def run_job(
    launcher: launcher_mod.Launcher,
    opts: RunOptions,
    np: int,
    extra_args: Sequence[str],
    results_path: Path,
    log_dir: Path,
    output_path: Path,
    on_progress: Callable[[], None] = lambda: None,
    poll: float = 0.5,
    paths: Sequence[str] | None = None,
    survivors: bool = False,
) -> JobOutcome:
    """Run one MPI job (over ``paths``, else the run's paths) to its end or until the job-level
    watchdog ends it (an interrupt ends it and propagates). ``survivors``: a job for kill tests,
    whose ranks outlive a dead peer (:meth:`Launcher.survivor_command`,
    ``CONFORMANCE_SURVIVORS=1``)."""
    argv = job_argv(opts, extra_args, results_path, log_dir, paths)
    if survivors:
        launch = launcher.survivor_command(np, argv, label_output=True)
    else:
        launch = launcher.command(np, argv, label_output=True)
    cmd = forward_caller_environment(launcher, opts, launch)
    env = launcher.environment(np)
    env.update(job_environment(opts))
    env.update(caller_environment(opts))
    if survivors:
        env[survivors_mod.ENV] = "1"
    log_dir.mkdir(parents=True, exist_ok=True)
    offset, launched_at = jobtime.results_size(results_path), time.time()
    start = time.monotonic()
    with open(output_path, "w", encoding="utf-8") as out:
        out.write("+ " + " ".join(shlex.quote(c) for c in cmd) + "\n")
        out.flush()
        proc = launcher_mod.start_job(
            cmd,
            cwd=opts.root,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            killed = _watch(proc, opts, results_path, log_dir, output_path, on_progress, poll)
            if killed:
                out.write(f"\n[conformance runner] {killed}; ending the job\n")
                out.flush()
                launcher_mod.kill_process_group(proc)
        except BaseException:
            launcher_mod.kill_process_group(proc)
            raise
        finally:
            launcher_mod.forget_job(proc)
        on_progress()
    return JobOutcome(
        proc.returncode,
        bool(killed),
        output_path,
        log_dir,
        time.monotonic() - start,
        time.time(),
        launched_at,
        offset,
    )


def _watch(
    proc: subprocess.Popen,
    opts: RunOptions,
    results_path: Path,
    log_dir: Path,
    output_path: Path,
    on_progress: Callable[[], None],
    poll: float,
) -> str:
    """Wait for the job; '' when it ended, else why the job-level watchdog must end it."""
    seen = _line_count(results_path)
    signs = _life_signs(log_dir, output_path)
    last_progress = time.monotonic()
    allowance = opts.startup_allowance
    while proc.poll() is None:
        time.sleep(poll)
        count = _line_count(results_path)
        if count != seen:
            seen, last_progress, allowance = count, time.monotonic(), 0.0
            on_progress()
        now_signs = _life_signs(log_dir, output_path)
        if now_signs != signs:
            # Rank logs, a heartbeat file or printed output changed: the job is alive
            # (a long lockstep Hypothesis test writes no record for many deadlines).
            signs, last_progress = now_signs, time.monotonic()
        silent = time.monotonic() - last_progress
        if silent > opts.timeout + opts.job_margin + allowance:
            return f"no sign of progress for {silent:.0f} s"
    return ""


def _life_signs(log_dir: Path, output_path: Path) -> tuple[tuple[str, int, int], ...]:
    """Size and modification time of every file a job writes besides the results file."""
    signs = []
    for path in [output_path, *log_dir.rglob("*")]:
        try:
            st = path.stat()
        except OSError:
            continue
        signs.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(sorted(signs))


def _line_count(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return f.read().count(b"\n")
    except OSError:
        return 0


def tail(path: Path, lines: int = TAIL_LINES) -> str:
    """Last lines of a text file ('' when missing)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def rank_logs(log_dir: Path, lines: int = TAIL_LINES) -> dict[str, str]:
    """Tail of each ``rank<N>.log`` in ``log_dir``, keyed by rank."""
    out: dict[str, str] = {}
    for path in sorted(log_dir.glob("rank*.log")):
        rank = path.stem[len("rank") :]
        out[rank] = tail(path, lines)
    return out


# -- one rank count, with resumption ---------------------------------------------------------


class Progress:
    """Terminal progress: one line per rank count, rewritten in place on a terminal."""

    def __init__(self, stream: TextIO, quiet: bool = False) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.quiet = quiet
        self._last_line = ""
        self._shown = ""
        self._last_print = 0.0
        self._reported: set[tuple[int, str]] = set()

    def update(
        self, np: int, records: list[dict[str, Any]], collected: Sequence[str], final: bool = False
    ) -> None:
        """Show the state of rank count ``np``; print each new failure once."""
        if self.quiet:
            return
        finished = {r["nodeid"] for r in records}
        done = len(finished)
        # Tests that appeared after collection (files edited during the run) still count.
        total = len(finished.union(collected))
        bad = [r for r in records if r.get("outcome") in BAD_OUTCOMES]
        for r in bad:
            key = (np, r["nodeid"])
            if key not in self._reported:
                self._reported.add(key)
                self._emit(f"np={np} {r['outcome'].upper()} {r['nodeid']}", newline=True)
        failed = sum(r.get("outcome") in ("wrong", "error") for r in records)
        hung = sum(r.get("outcome") in ("hung", "crashed") for r in records)
        line = f"np={np} {done}/{total or '?'} tests done, {failed} failed, {hung} hung or crashed"
        now = time.monotonic()
        if self.tty:
            # Rewritten in place; the final state ends the line (even if unchanged).
            if line != self._shown or final:
                self._emit(line, newline=final)
        elif line != self._shown and (final or now - self._last_print > 15):
            self._emit(line, newline=True)
        else:
            return
        self._shown = line
        self._last_print = now

    def _emit(self, line: str, newline: bool) -> None:
        if self.tty:
            self.stream.write("\r\x1b[K" + line + ("\n" if newline else ""))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
        self._last_line = "" if newline else line

    def message(self, text: str) -> None:
        if not self.quiet:
            self._emit(text, newline=True)


class Action(enum.Enum):
    """What the runner does after a job of one rank count ended."""

    DONE = "every test has a record"
    RESUME = "start a fresh job for the remaining tests"
    BLAME = "record the running test as ended by the job's end, then resume"
    GIVE_UP = "stop this rank count: a relaunch would end the same way"


@dataclasses.dataclass(frozen=True)
class JobEnd:
    """The facts :func:`after_job` decides on."""

    status: int | None
    killed: bool = False  # the runner's job-level watchdog ended it
    new: int = 0  # tests this job recorded
    remaining: int = 0  # collected tests still without a record
    hung: bool = False  # the plugin recorded a hang in this job
    hung_outside: bool = False  # ... outside any collected test (collection)
    survivors: bool = False  # a job of its own for one kill test
    left_out: int = 0  # remaining tests this job did not include (kill tests, run apart)


_Rule = Callable[[JobEnd], bool]
#: The cases, first match wins; the reason is the problem text of GIVE_UP.
AFTER_JOB: tuple[tuple[str, _Rule, Action], ...] = (
    # The survivors of a kill test record it and leave; whatever the status (the victim's
    # signal), the next test gets a fresh job.
    ("the kill test was recorded", lambda e: e.survivors and e.new > 0, Action.RESUME),
    ("the runner ended it", lambda e: e.killed, Action.BLAME),
    ("ran to its end", lambda e: e.status in COMPLETED_STATUSES and not e.remaining, Action.DONE),
    (
        "ran its tests; kill tests left for jobs of their own",
        lambda e: e.status in COMPLETED_STATUSES and 0 < e.remaining == e.left_out,
        Action.RESUME,
    ),
    (
        "the job collected no tests",
        lambda e: e.status == ExitCode.NO_TESTS_COLLECTED and not e.new,
        Action.GIVE_UP,
    ),
    # Usage error, interruption, or ranks that collected different tests (status 4): no test is
    # to blame and a relaunch would end the same way.
    ("the job could not run tests", lambda e: e.status in _NOT_RUN and not e.new, Action.GIVE_UP),
    (
        "the job hung outside a test",
        lambda e: e.status == EXIT_HUNG and e.hung_outside,
        Action.GIVE_UP,
    ),
    ("the plugin recorded a hang", lambda e: e.status == EXIT_HUNG and e.hung, Action.RESUME),
    ("stopped for isolation", lambda e: e.status == EXIT_ISOLATED and e.new > 0, Action.RESUME),
    # Anything else ended early and the plugin could not say why (a crash, MPI_Abort -- whose
    # status may well be 0 or 1): blame the running test.
    ("ended early", lambda e: True, Action.BLAME),
)


def after_job(end: JobEnd) -> tuple[Action, str]:
    """What to do after a job ended, from the table :data:`AFTER_JOB`; nothing is left to do
    once every test has a record."""
    for reason, matches, action in AFTER_JOB:
        if matches(end):
            if action in (Action.RESUME, Action.BLAME) and not end.remaining:
                return Action.DONE, reason
            return action, reason
    raise AssertionError("the last rule matches every job")


def run_rank_counts(
    launcher: launcher_mod.Launcher,
    opts: RunOptions,
    collected: list[str],
    progress: Progress,
    known: Sequence[Any] = (),
    info: dict[str, dict[str, Any]] | None = None,
) -> dict[int, tuple[list[dict[str, Any]], list[str], list[jobtime.JobTiming]]]:
    """Run every test at every rank count of ``opts.nps``, resuming after hangs, crashes and
    isolation stops: the untimed tests, then the timed ones (``schedule.phases``), the rank counts
    of a phase at the same time within ``opts.max_ranks`` ranks in flight.

    Returns, per rank count, the records (plugin's plus the runner's ``crashed``/``hung`` ones,
    each with ``np``, and with the level, tier and area of ``info``, the collection's entries by
    node id, where a record lacks them), problems that kept tests from running at all, and where
    each job's time went. The tests a deviation in ``known`` expects to hang run under the short
    deadline ``opts.hang_deadline``. An interrupt ends the run early with what finished (the
    caller checks ``launcher.stop_signal()``).
    """
    info = info or {}
    budget = schedule.RankBudget(opts.max_ranks)
    lock = threading.Lock()
    attempts: dict[int, _Attempts] = {}
    for np in opts.nps:
        base = opts.report_dir / f"np{np}"
        base.mkdir(parents=True, exist_ok=True)
        attempts[np] = _Attempts(launcher, opts, np, collected, progress, base, info, budget, lock)
        hangs = deviations_mod.expected_hangs(known, np)
        attempts[np].extra_args = expected_hang_args(opts, hangs, collected)
    for phase in schedule.phases(collected, info):
        if launcher_mod.stop_signal() is not None:
            break
        try:
            schedule.run_all(
                {np: functools.partial(a.run_phase, phase) for np, a in attempts.items()}
            )
        except launcher_mod.Interrupted:
            break
    order = {nodeid: i for i, nodeid in enumerate(collected)}
    out = {}
    for np, job in attempts.items():
        records = job.current()
        progress.update(np, records, collected, final=True)
        for record in records:
            record["np"] = np
            record.setdefault("order", order.get(record["nodeid"], len(order)))
            for key in ATTRIBUTED:
                if record.get(key) is None and info.get(record["nodeid"], {}).get(key) is not None:
                    record[key] = info[record["nodeid"]][key]
        out[np] = (records, job.problems, job.timings)
    return out


class _Attempts:
    """The jobs of one rank count: each resumes where the previous one ended."""

    def __init__(
        self,
        launcher: launcher_mod.Launcher,
        opts: RunOptions,
        np: int,
        collected: list[str],
        progress: Progress,
        base: Path,
        info: dict[str, dict[str, Any]] | None = None,
        budget: schedule.RankBudget | None = None,
        lock: threading.Lock | None = None,
    ) -> None:
        self.launcher, self.opts, self.np, self.base = launcher, opts, np, base
        self.collected, self.progress = collected, progress
        self.info = info or {}
        self.budget = budget or schedule.RankBudget(1)
        self.lock = lock or threading.Lock()  # the terminal, shared by the rank counts' threads
        self.attempt = 0
        # Kill tests get jobs of their own where the launcher keeps survivors alive (np 1 skips
        # them in any job).
        keeps = getattr(launcher, "keeps_survivors", False) and np > 1
        self.kills = {n for n in collected if keeps and self.info.get(n, {}).get("kills")}
        self.results_path = base / "results.jsonl"
        if self.results_path.exists():
            self.results_path.unlink()  # a fresh run never inherits an old run's results
        self.runner_records: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.timings: list[jobtime.JobTiming] = []
        self.extra_args: list[str] = []  # pytest arguments of every job

    def current(self) -> list[dict[str, Any]]:
        return _dedupe([*records_mod.read_records(self.results_path), *self.runner_records])

    def run_phase(self, phase: Sequence[str]) -> None:
        """Run the tests of ``phase`` (node ids of the collection) at this rank count, each job
        resuming where the previous one ended; an interrupt ends it with a problem noted."""
        try:
            self._run_phase(phase)
        except launcher_mod.Interrupted as exc:
            self.problems.append(f"np={self.np}: interrupted ({exc}); later tests not run")

    def _run_phase(self, phase: Sequence[str]) -> None:
        outside = set(self.collected) - set(phase)
        barren = 0  # consecutive jobs that ended early without finishing a test
        for tries in itertools.count(1):
            self.attempt += 1
            attempt = self.attempt
            before = {r["nodeid"] for r in self.current()}
            todo = [nodeid for nodeid in phase if nodeid not in before]
            if not todo:
                return
            alone = todo[0] in self.kills
            if alone:
                job = self.launch_kill_test(attempt, todo[0])
                included = {todo[0]}
            else:
                job = self.launch(attempt, before, apart=self.kills | outside)
                included = set(todo) - self.kills
            signum = launcher_mod.stop_signal()
            if signum is not None:
                # The interrupt ended the job (in the main thread): nothing of it is to blame.
                raise launcher_mod.Interrupted(signum)
            records = self.current()
            new = [r for r in records if r["nodeid"] not in before]
            finished = {r["nodeid"] for r in records}
            remaining = [nodeid for nodeid in phase if nodeid not in finished]
            unfinished = [nodeid for nodeid in remaining if nodeid in included]
            hung = [r["nodeid"] for r in new if r.get("outcome") == "hung"]
            end = JobEnd(
                status=job.returncode,
                killed=job.killed,
                new=len(new),
                remaining=len(remaining),
                hung=bool(hung),
                hung_outside=bool(hung) and not set(hung) & set(self.collected),
                survivors=alone,
                left_out=len(remaining) - len(unfinished),
            )
            action, reason = after_job(end)
            if action is Action.GIVE_UP:
                self.problems.append(
                    f"np={self.np}: {reason} (status {job.returncode}); "
                    f"see {job.output_path}:\n{tail(job.output_path, 15)}"
                )
                return
            if action is Action.DONE:
                return
            barren = 0
            if action is Action.BLAME:
                running = unfinished[0] if unfinished else remaining[0]
                record = blame_record(self.opts, self.np, running, job, self.info)
                self.runner_records.append(record)
                self._show()
                expected = record["outcome"] == "passed"
                barren = 0 if new or expected else barren + 1
            if barren >= 2:
                # Two jobs in a row died before finishing anything: the job itself is broken
                # (backend fails to load, MPI cannot start); don't burn one job per test.
                self.problems.append(
                    f"np={self.np}: two consecutive jobs ended without finishing a test "
                    f"(status {job.returncode}); {len(remaining) - 1} tests not run; "
                    f"see {job.output_path}"
                )
                return
            if tries > len(phase) + 1:
                self.problems.append(f"np={self.np}: giving up after {attempt} attempts")
                return

    def _show(self) -> None:
        with self.lock:
            self.progress.update(self.np, self.current(), self.collected)

    def launch_kill_test(self, attempt: int, nodeid: str) -> JobOutcome:
        """A job of its own for the kill test ``nodeid``, keeping its survivors alive."""
        return self._job(attempt, [nodeid], survivors=True)

    def launch(
        self, attempt: int, done: set[str], apart: set[str] | frozenset[str] = frozenset()
    ) -> JobOutcome:
        """One job over the tests not in ``done`` nor ``apart`` (those that get jobs of their
        own); a resumed job gets exactly those, by node id."""
        paths: list[str] | None = None
        chosen = [nodeid for nodeid in self.collected if nodeid not in apart]
        if done or apart:
            paths = resumed_paths(self.base / f"remaining-{attempt}.txt", chosen, done)
        skipped = done.intersection(chosen)
        if skipped:
            with self.lock:
                self.progress.message(
                    f"np={self.np} resuming (attempt {attempt}), skipping {len(skipped)} done"
                )
        return self._job(attempt, paths)

    def _job(self, attempt: int, paths: list[str] | None, survivors: bool = False) -> JobOutcome:
        """Run attempt ``attempt`` over ``paths`` (None: the run's paths), its time split into
        phases (``self.timings``)."""
        with self.budget.ranks(self.np):
            job = run_job(
                self.launcher,
                self.opts,
                self.np,
                self.extra_args,
                self.results_path,
                self.base / "logs" / f"attempt{attempt}",
                self.base / f"attempt{attempt}.out",
                on_progress=self._show,
                paths=paths,
                survivors=survivors,
            )
        self.timings.append(
            jobtime.measure(
                self.np,
                attempt,
                self.results_path,
                job.results_offset,
                job.launched_at,
                job.ended_at,
            )
        )
        return job


def expected_hang_args(
    opts: RunOptions, expect_hang: Sequence[str], collected: Sequence[str]
) -> list[str]:
    """Plugin arguments that give each collected test of ``expect_hang`` (the tests a deviations
    entry expects to hang) the deadline ``opts.hang_deadline`` instead of the per-test one: a
    known hang then costs seconds, and a backend that no longer hangs still passes (and the
    entry is reported as passing unexpectedly)."""
    chosen = set(collected)
    named = [f"--conformance-expect-hang={nodeid}" for nodeid in expect_hang if nodeid in chosen]
    if not named or opts.hang_deadline >= opts.timeout:
        return []
    return [f"--conformance-hang-deadline={opts.hang_deadline:g}", *named]


def resumed_paths(argfile: Path, collected: Sequence[str], done: set[str]) -> list[str]:
    """The pytest paths of a resumed job: an argument file naming each collected test not in
    ``done``, in collection order. The job then imports and collects only the modules those
    tests are in, not the whole suite with the finished tests deselected."""
    remaining = [nodeid for nodeid in collected if nodeid not in done]
    argfile.write_text("".join(f"{nodeid}\n" for nodeid in remaining), encoding="utf-8")
    return [f"@{argfile}"]


def blame_record(
    opts: RunOptions,
    np: int,
    nodeid: str,
    job: JobOutcome,
    info: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The runner's record of the test running when ``job`` ended early (the first test of the
    job without a record: a job runs its tests in collection order): ``hung`` when the runner
    ended it, else ``crashed``; level, tier and area from ``info`` (the collection's entries)."""
    output = tail(job.output_path, 10 * TAIL_LINES)
    fields = (info or {}).get(nodeid, {})
    if job.killed:
        outcome = "hung"
        message = (
            f"no sign of progress for {opts.timeout + opts.job_margin:g} s; "
            "the runner ended the job"
        )
    else:
        outcome = "crashed"
        message = f"the MPI job ended with status {job.returncode} during this test"
    return dict(
        records_mod.make_record(
            nodeid,
            outcome,
            message=message,
            duration=None,
            level=fields.get("level"),
            tier=fields.get("tier"),
            rule=fields.get("rule"),
            area=fields.get("area") or _area_of(nodeid),
            seed=None,
            world_size=np,
            backend=opts.backend,
            output=tail(job.output_path),
            rank_output={
                str(rank): "\n".join(lines[-TAIL_LINES:])
                for rank, lines in sorted(launcher_mod.split_by_rank(output).items())
            },
            rank_logs=rank_logs(job.log_dir),
            source="runner",
            crash=crash_of(outcome, output, job.log_dir),
        )
    )


def crash_of(outcome: str, output: str, log_dir: Path) -> dict[str, int | None] | None:
    """Which rank died of which signal (``reports.crash_details``), for a crashed record."""
    if outcome != "crashed":
        return None
    logs = [tail(path, 10**6) for path in sorted(log_dir.glob("rank*.log"))]
    return reports.crash_details(output, logs)


def _dedupe(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    # The first record of a test wins: a resumed job never reruns a finished test, so a second
    # record can only come from a plugin that wrote twice.
    seen: dict[str, dict[str, Any]] = {}
    for record in records:
        if "nodeid" in record:
            seen.setdefault(record["nodeid"], record)
    return list(seen.values())


def _area_of(nodeid: str) -> str:
    module = nodeid.split("::", 1)[0].rsplit("/", 1)[-1]
    if module.startswith("test_") and module.endswith(".py"):
        return module[len("test_") : -len(".py")]
    return module


# -- the whole run ---------------------------------------------------------------------------


def run(opts: RunOptions, stream: TextIO = sys.stdout) -> int:
    """Run the suite at every rank count, write the reports, return the exit status (128 + the
    signal when SIGINT or SIGTERM cut it short: the reports then hold what finished)."""
    with launcher_mod.interruptible():
        try:
            return _run(opts, Progress(stream, quiet=opts.quiet))
        except launcher_mod.Interrupted as exc:
            print(f"\n{exc}", file=sys.stderr)
            return launcher_mod.exit_status(exc.signum)


def _run(opts: RunOptions, progress: Progress) -> int:
    try:
        launcher = launcher_mod.find_launcher(opts.mpiexec).with_hostfile(opts.hostfile)
        deviation_path = opts.deviations or deviations_mod.default_path(opts.backend)
        known = deviations_mod.load(deviation_path)
    except (
        launcher_mod.LauncherError,
        deviations_mod.DeviationError,
        hostfile.HostfileError,
    ) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in launcher.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    opts.report_dir.mkdir(parents=True, exist_ok=True)
    progress.message(
        f"conformance run: backend {opts.backend}, ranks {','.join(map(str, opts.nps))}, "
        f"launcher {launcher.path} ({launcher.flavor}), reports in {opts.report_dir}"
    )
    collected, collect_error = collect(opts)
    if not collected:
        print(f"error: no tests collected.\n{collect_error}", file=sys.stderr)
        return 2
    if collect_error:
        progress.message(f"warning: collection reported errors:\n{collect_error}")
    progress.message(f"{len(collected)} tests per rank count")
    info = read_collection(collection_path(opts))
    state = _RunState(opts, launcher, known, deviation_path, collected)
    notes = hang_notes(opts, known, collected)
    for note in notes:
        progress.message(note)
    state.notes = notes
    state.info = info
    for np, (records, issues, timings) in run_rank_counts(
        launcher, opts, collected, progress, known, info
    ).items():
        state.add(np, records, issues)
        state.timings += timings
    summary = state.summary()
    paths = reports.write_all(summary, opts.report_dir)
    # The problems are among the reasons terminal_summary gives for a failed run.
    for line in summary.warnings:
        progress.message(f"warning: {line}")
    progress.message(reports.terminal_summary(summary))
    progress.message("time: " + jobtime.terminal_line(state.timings))
    progress.message("reports: " + ", ".join(str(p) for p in paths))
    signum = launcher_mod.stop_signal()
    if signum is not None:
        return launcher_mod.exit_status(signum)
    return 0 if summary.ok else 1


def hang_notes(opts: RunOptions, known: Sequence[Any], collected: Sequence[str]) -> list[str]:
    """The report's note on the tests that ran under the short deadline of expected hangs."""
    chosen = set(collected)
    per_np = {
        np: [t for t in deviations_mod.expected_hangs(known, np) if t in chosen] for np in opts.nps
    }
    total = sum(len(ids) for ids in per_np.values())
    if not total or opts.hang_deadline >= opts.timeout:
        return []
    counts = ", ".join(f"np={np}: {len(ids)}" for np, ids in per_np.items() if ids)
    return [
        f"{total} test runs that a deviations entry expects to hang ({counts}) ran under a "
        f"deadline of {opts.hang_deadline:g} s (--hang-deadline) instead of {opts.timeout:g} s: "
        "a hang costs seconds; a test that no longer hangs passes and fails the entry (strict)"
    ]


class _RunState:
    """The records and problems of the rank counts run so far, and their summary."""

    def __init__(
        self,
        opts: RunOptions,
        launcher: launcher_mod.Launcher,
        known: Any,
        deviation_path: Path,
        collected: list[str],
    ) -> None:
        self.opts, self.launcher, self.known = opts, launcher, known
        self.deviation_path, self.collected = deviation_path, collected
        self.records: list[dict[str, Any]] = []
        self.problems: list[str] = []
        self.done: list[int] = []
        self.timings: list[jobtime.JobTiming] = []
        self.notes: list[str] = []
        #: The collection's entries by node id (``read_collection``).
        self.info: dict[str, dict[str, Any]] = {}
        self.started = time.monotonic()

    def add(self, np: int, records: list[dict[str, Any]], problems: list[str]) -> None:
        for record in records:
            kills = bool(self.info.get(record["nodeid"], {}).get("kills"))
            record["reproduce"] = reproduce_command(
                self.opts,
                self.launcher,
                np,
                record["nodeid"],
                survivors=kills and np > 1 and self.launcher.keeps_survivors,
            )
        self.records += records
        self.problems += problems
        self.done.append(np)

    def summary(self) -> reports.RunSummary:
        """Deviations applied, session headers read, problems and warnings gathered
        (``reports.summarize_run``)."""
        opts = self.opts
        return reports.summarize_run(
            backend=opts.backend,
            nps=list(opts.nps),
            results={np: opts.report_dir / f"np{np}" / "results.jsonl" for np in self.done},
            records=self.records,
            collected=self.collected,
            problems=self.problems,
            deviations=self.known,
            deviations_file=self.deviation_path,
            # Under -k/-m/paths an entry about tests that were not selected is out of scope.
            scope="selected" if opts.keyword or opts.markers else "files" if opts.paths else "all",
            duration=time.monotonic() - self.started,
            launcher=f"{Path(self.launcher.path).name} ({self.launcher.flavor}: "
            f"{self.launcher.library_version})",
            jobs=self.timings,
            notes=self.notes,
        )


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m conformance run``."""
    # Long but flat: one add_argument per option, read top to bottom like --help.
    parser = argparse.ArgumentParser(
        prog="python -m conformance run",
        description="Run the conformance suite under MPI at several rank counts and write "
        "Markdown, JSON and JUnit reports.",
    )
    parser.add_argument(
        "--backend",
        default=os.environ.get("CONFORMANCE_BACKEND", "reference"),
        help="backend under test: reference, mlx, faulty:<fault>, an entry point, or "
        "package.module[:attribute] importable from this directory or PYTHONPATH "
        "(default: $CONFORMANCE_BACKEND, else reference)",
    )
    parser.add_argument(
        "--np", default="1,2,3,4", help="rank counts, e.g. 1,2,3,4 or 1-4 (default 1,2,3,4)"
    )
    parser.add_argument(
        "--timeout",
        # Checked by usage.positive_seconds (one line naming the fix), as is $CONFORMANCE_TIMEOUT.
        default=os.environ.get("CONFORMANCE_TIMEOUT", f"{DEFAULT_TIMEOUT:g}"),
        help=f"per-test deadline in seconds (default {DEFAULT_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-examples",
        type=int,
        default=None,
        help="Hypothesis examples per property test (sets CONFORMANCE_MAX_EXAMPLES)",
    )
    parser.add_argument("--seed", type=int, default=None, help="session seed (--conformance-seed)")
    parser.add_argument("-k", dest="keyword", default=None, help="pytest -k expression")
    parser.add_argument("-m", dest="markers", default=None, help="pytest -m expression")
    parser.add_argument(
        "--report-dir",
        type=Path,
        default=Path("conformance-reports"),
        help="where reports, results and logs go (default ./conformance-reports)",
    )
    parser.add_argument(
        "--mpiexec", default=None, help="mpiexec to use (default: the one matching mpi4py)"
    )
    parser.add_argument(
        "--deviations",
        type=Path,
        default=None,
        help="known-deviations TOML (default conformance/deviations/<backend>.toml)",
    )
    parser.add_argument(
        "--hang-deadline",
        type=float,
        default=RunOptions.hang_deadline,
        help="deadline in seconds of the tests a deviations entry expects to hang "
        f"(default {RunOptions.hang_deadline:g}; at or above --timeout: no short deadline)",
    )
    parser.add_argument(
        "--job-margin",
        type=float,
        default=None,
        help="seconds past the per-test deadline before the runner ends a silent job "
        "(default 30 + timeout/2)",
    )
    parser.add_argument(
        "--rootdir",
        type=Path,
        default=None,
        help="pytest rootdir of the jobs (default: the directory holding the conformance package)",
    )
    parser.add_argument(
        "--isolate",
        choices=isolation.MODES,
        default="auto",
        help="when a test gets a fresh job: auto (after a robust test that did not pass or a "
        "test marked leaves_state; robust tests run last), always (every test), never "
        "(default auto)",
    )
    parser.add_argument(
        "--max-ranks",
        default=None,
        help="ranks in flight at once: the rank counts run side by side within it, the timed "
        "tests (deadlines, killed peers) only beside each other (default "
        f"{schedule.RANKS_PER_CORE} per core, here {RunOptions().max_ranks}; 1: one job at a time)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    hostfile.add_option(parser)
    parser.add_argument(
        "paths",
        nargs="*",
        help="test files or node ids, relative to this directory or to the suite's root "
        "(default: the installed spec)",
    )
    parser.add_argument(
        "--pytest-arg",
        dest="pytest_args",
        action="append",
        default=[],
        help="extra argument for pytest, repeatable; write --pytest-arg=-pPLUGIN for values "
        "that start with '-'",
    )
    return parser


def _absolute(path: str) -> str:
    # Jobs run in their rootdir, so a path must be absolute (keeping any ::test suffix): relative
    # to the caller's directory when it exists there, else to the suite's root (node ids as the
    # reports print them).
    file_part, sep, rest = path.partition("::")
    for base in (Path.cwd(), package_root()):
        if (base / file_part).exists():
            return str((base / file_part).resolve()) + sep + rest
    return path


def options_from(args: argparse.Namespace) -> RunOptions:
    """The run's options from the parsed command line, every value checked before any job starts
    (``conformance.run.usage``: UsageError names the value and the fix)."""
    usage.check_expression(args.keyword, "-k")
    usage.check_expression(args.markers, "-m")
    opts = RunOptions(
        backend=args.backend,
        nps=usage.rank_counts(args.np),
        timeout=usage.positive_seconds(args.timeout, "--timeout"),
        max_examples=args.max_examples,
        seed=args.seed,
        keyword=args.keyword,
        markers=args.markers,
        paths=[_absolute(p) for p in args.paths],
        rootdir=args.rootdir.resolve() if args.rootdir else None,
        report_dir=args.report_dir.resolve(),
        mpiexec=args.mpiexec,
        deviations=usage.existing_file(args.deviations, "--deviations"),
        pytest_args=args.pytest_args,
        margin=args.job_margin,
        hang_deadline=args.hang_deadline,
        quiet=args.quiet,
        **(
            {}
            if args.max_ranks is None
            else {"max_ranks": usage.positive_integer(args.max_ranks, "--max-ranks")}
        ),
        isolate=args.isolate,
        hostfile=usage.existing_file(args.hostfile, "--hostfile"),
        pythonpath=usage.caller_pythonpath(),
    )
    usage.check_backend(opts.backend)
    return opts


@usage.command
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m conformance run``."""
    return run(options_from(build_parser().parse_args(argv)))
