"""The pytest plugin (entry point ``pytest11``) that runs the spec against any backend under MPI.

Options: ``--backend`` (else ``CONFORMANCE_BACKEND``, else ``reference``), ``--conformance-timeout``
(per-test deadline, default 60 s, else ``CONFORMANCE_TIMEOUT``), ``--conformance-results FILE``,
``--conformance-log-dir DIR``, ``--conformance-seed N``, ``--conformance-expect-hang NODEID``
(repeatable) with ``--conformance-hang-deadline SECONDS``: those tests run under that shorter
deadline (the runner names the tests a known deviation expects to hang; one that no longer
hangs still passes, one that does is recorded ``hung`` within seconds).

Fixtures: ``backend``, ``world``, ``capabilities``, ``control`` (session scope) and
``conformance_seed`` (per test, equal on every rank).

Under ``mpiexec -n N python -m pytest --with-mpi`` every rank runs the same tests in the same order;
after each phase of each test the ranks agree on its outcome over the control plane, only rank 0
writes to the terminal, the results file and JUnit XML, and a watchdog ends a hung job (status 3).
Plain ``pytest`` is a world of one rank: pytest-mpi's ``mpi`` marker is honoured there too
(``min_size`` above 1 skips), so ``--with-mpi`` is implied.
"""

from __future__ import annotations

import hashlib
import importlib.abc
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import pytest

from conformance.backend import Backend, load_backend
from conformance.harness import (
    collective,
    isolation,
    levels,
    outcomes,
    runinfo,
    survivors,
    tiers,
)
from conformance.harness import control as control_plane
from conformance.harness.ranklog import RankLog, gather_logs, keep_peer_log, redirect_terminal
from conformance.harness.watchdog import (
    COMPLETED_STATUSES,
    DEFAULT_TIMEOUT,
    EXIT_HUNG,
    CommMailbox,
    FileMailbox,
    Mailbox,
    Watchdog,
)
from conformance.harness.watchdog import set_current as set_current_watchdog
from conformance.records import Outcome, ResultsFile, make_record

DEFAULT_BACKEND = "reference"
# Collection imports every test module (and maybe heavy packages) on a loaded machine: it gets
# this many per-test deadlines.
COLLECTION_DEADLINES = 2

HARNESS = pytest.StashKey["Harness"]()
VERDICTS = pytest.StashKey[dict[str, outcomes.Verdict]]()
LEVEL_PROBLEM = pytest.StashKey[str]()
USER_WITH_MPI = pytest.StashKey[bool]()


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("conformance", "MLX distributed conformance suite")
    group.addoption(
        "--backend",
        dest="conformance_backend",
        default=None,
        help="backend under test: reference, mlx, faulty:<fault>, an entry point in group "
        "conformance.backends, or package.module[:attribute] "
        "(default: $CONFORMANCE_BACKEND, else reference)",
    )
    group.addoption(
        "--conformance-timeout",
        type=float,
        default=None,
        help="per-test deadline in seconds before the job is ended as hung "
        f"(default: $CONFORMANCE_TIMEOUT, else {DEFAULT_TIMEOUT:g})",
    )
    group.addoption(
        "--conformance-results",
        default=None,
        metavar="FILE",
        help="append one JSON line per test to FILE (written by rank 0 only)",
    )
    group.addoption(
        "--conformance-log-dir",
        default=None,
        metavar="DIR",
        help="directory of the per-rank logs rank<N>.log (default: a new temporary directory)",
    )
    group.addoption(
        "--conformance-seed",
        type=int,
        default=None,
        help="session seed from which per-test seeds derive (default: $CONFORMANCE_SEED, else 0)",
    )
    group.addoption(
        "--conformance-expect-hang",
        action="append",
        default=[],
        metavar="NODEID",
        help="a test expected to hang (a known deviation): it runs under "
        "--conformance-hang-deadline instead of the per-test deadline (repeatable)",
    )
    group.addoption(
        "--conformance-hang-deadline",
        type=float,
        default=None,
        help="deadline in seconds of the tests named by --conformance-expect-hang",
    )
    group.addoption(
        "--conformance-collection",
        default=None,
        metavar="FILE",
        help="write one JSON line per collected test to FILE (rank 0): node id, level, tier, "
        "area, rule and whether it kills a rank (the runner reads it)",
    )
    group.addoption(
        "--conformance-isolate",
        default="never",
        choices=isolation.MODES,
        help="end the job after a test it cannot be trusted past (exit status "
        f"{isolation.EXIT_ISOLATED}); the runner resumes in a fresh job (default: never)",
    )


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    levels.register_markers(config)
    config.addinivalue_line("markers", isolation.MARKER_HELP)
    config.addinivalue_line("markers", survivors.MARKER_HELP)
    # One process is an MPI world of size 1: run pytest-mpi as if --with-mpi were given, so the
    # mpi marker's min_size decides, under mpiexec or not.
    if hasattr(config.option, "with_mpi"):
        config.stash[USER_WITH_MPI] = bool(config.option.with_mpi)
        config.option.with_mpi = True
    # A session inside a running one (pytester's in-process runs) is a world of one: each rank
    # runs it on its own, and a collective Dup there would pair with unrelated outer exchanges.
    nested = control_plane.active() is not None
    plane = control_plane.ControlPlane(None) if nested else control_plane.ControlPlane.from_world()
    if plane.rank != 0 and hasattr(config.option, "xmlpath"):
        config.option.xmlpath = None  # JUnit XML from rank 0 only
    harness = Harness(config, plane, nested=nested)
    config.stash[HARNESS] = harness
    config.pluginmanager.register(harness, "conformance-harness")
    _load_hypothesis_profile(config)
    # Configured: the session header's started_at (imports up to here count as the job's start).
    harness.started_at = time.time()


def _load_hypothesis_profile(config: pytest.Config) -> None:
    """Put the lockstep profile in force before anything uses Hypothesis: now if Hypothesis is
    imported already (or a profile was named on the command line), else right after its first
    import. Importing it costs about 0.5 s a rank, which a job whose tests never use it (a kill
    test's job, most resumed jobs) does not pay."""
    if "hypothesis" in sys.modules or getattr(config.option, "hypothesis_profile", None):
        _lockstep_profile(config)
    elif importlib.util.find_spec("hypothesis") is not None:
        hook = _AfterImport("hypothesis", lambda: _lockstep_profile(config))
        sys.meta_path.insert(0, hook)
        config.add_cleanup(hook.remove)


def _lockstep_profile(config: pytest.Config) -> None:
    from conformance.harness import lockstep

    lockstep.register_profile()
    if not getattr(config.option, "hypothesis_profile", None):
        lockstep.load_profile()


def _drop_unused_hypothesis_plugin(config: pytest.Config) -> None:
    """Unregister Hypothesis' pytest plugin when no collected test imported Hypothesis: its
    terminal summary would import it (about 0.5 s a rank) only to find nothing to report."""
    plugin = config.pluginmanager.get_plugin("hypothesispytest")
    if "hypothesis" not in sys.modules and plugin is not None:
        config.pluginmanager.unregister(plugin)


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then`` once the module ``name`` has been executed, at its first import (whoever
    imports it), before the importer gets it: settings made at a test module's import time
    already inherit the profile ``then`` loads."""

    def __init__(self, name: str, then: Callable[[], None]) -> None:
        self.name, self.then = name, then

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> Any:
        if fullname != self.name:
            return None
        self.remove()
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _ThenLoader(spec.loader, self.then)
        return spec


class _ThenLoader(importlib.abc.Loader):
    """``loader`` (often shared between modules, like pytest's assertion rewriter) that calls
    ``then`` after executing this one module; anything else is the wrapped loader's."""

    def __init__(self, loader: Any, then: Callable[[], None]) -> None:
        self.loader, self.then = loader, then

    def create_module(self, spec: Any) -> Any:
        return self.loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        self.loader.exec_module(module)
        self.then()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.loader, name)


def pytest_unconfigure(config: pytest.Config) -> None:
    harness = config.stash.get(HARNESS, None)
    if harness is not None:
        harness.close()
        config.pluginmanager.unregister(harness)


def _hang_deadlines(config: pytest.Config, timeout: float) -> dict[str, float]:
    """Node id -> deadline of the tests expected to hang (``--conformance-expect-hang``): the
    ``--conformance-hang-deadline``, never longer than the per-test deadline."""
    names = config.getoption("conformance_expect_hang", None) or []
    deadline = config.getoption("conformance_hang_deadline", None)
    if not names:
        return {}
    if deadline is None or deadline <= 0:
        raise pytest.UsageError(
            "--conformance-expect-hang needs a positive --conformance-hang-deadline, "
            f"not {deadline}"
        )
    return dict.fromkeys(names, min(float(deadline), timeout))


def _option_or_env(config: pytest.Config, option: str, env: str, default: Any) -> Any:
    value = config.getoption(option)
    if value is not None:
        return value
    return os.environ.get(env) or default


class Harness:
    """Per-session state and the hooks that need it (registered as a plugin by pytest_configure)."""

    def __init__(
        self, config: pytest.Config, plane: control_plane.ControlPlane, *, nested: bool = False
    ) -> None:
        self.config = config
        self.nested = nested
        self.started_at = time.time()  # reset once pytest_configure is done (jobtime's "start")
        self.control = plane
        self._previous_plane = control_plane.set_current(plane)
        self.rank, self.size = plane.rank, plane.size
        self.backend_spec = str(
            _option_or_env(config, "conformance_backend", "CONFORMANCE_BACKEND", DEFAULT_BACKEND)
        )
        self.timeout = float(
            _option_or_env(config, "conformance_timeout", "CONFORMANCE_TIMEOUT", DEFAULT_TIMEOUT)
        )
        if self.timeout <= 0:
            raise pytest.UsageError(f"--conformance-timeout must be positive, not {self.timeout}")
        self.seed = int(_option_or_env(config, "conformance_seed", "CONFORMANCE_SEED", 0))
        self.hang_deadlines = _hang_deadlines(config, self.timeout)
        self.exitstatus: int | None = None
        self.isolate = str(config.getoption("conformance_isolate", "never") or "never")
        self.isolated = False
        log_dir, job_id, self._log_dir_is_temporary = plane.bcast(
            ("session", "log-dir"), self._choose_log_dir()
        )
        self.log_dir = Path(log_dir)
        self.log = RankLog(self.log_dir, self.rank)
        results = config.getoption("conformance_results")
        self.results = ResultsFile(results) if results and self.rank == 0 else None
        self._terminal_fd = os.dup(2) if self.rank == 0 else None
        self._current_item: pytest.Item | None = None
        self._backend: Backend | None = None
        self._backend_error: Exception | None = None
        self.watchdog = Watchdog(
            rank=self.rank,
            size=self.size,
            timeout=self.timeout,
            mailbox=self._mailbox(job_id),
            share_log=self.log.text,
            receive_log=lambda rank, text: keep_peer_log(self.log_dir, rank, text),
            on_hang=self._on_hang,
            describe_state=self._describe_state,
            log=self.log.write,
            end_job=_end_job if self.size > 1 else os._exit,
            heartbeat=self.log_dir / "heartbeat" if self.rank == 0 else None,
        )
        self._previous_watchdog = set_current_watchdog(self.watchdog)
        self.log.write(f"session start: pid {os.getpid()}, {runinfo.describe_world(self.size)}")

    def _choose_log_dir(self) -> tuple[str, str, bool] | None:
        """(directory, job id, whether the directory is a temporary one), decided by rank 0."""
        if self.rank != 0:
            return None
        chosen = self.config.getoption("conformance_log_dir")
        temporary = chosen is None
        if temporary:
            # A nested session (pytester) keeps its logs in its own working directory, which
            # pytest's tmp_path retention cleans up.
            where = Path.cwd() if self.nested else None
            chosen = tempfile.mkdtemp(prefix="conformance-logs-", dir=where)
        return str(Path(chosen).resolve()), uuid.uuid4().hex[:12], temporary

    def _mailbox(self, job_id: str) -> Mailbox:
        """How a hang's stacks reach rank 0: MPI messages when ranks may be on other hosts."""
        if self.size > 1:
            return CommMailbox.from_world()
        return FileMailbox(self.log_dir / f"hang-{job_id}")

    def close(self) -> None:
        self.log.write(f"session end, exit status {self.exitstatus}")
        if self.size > 1 and not self._discard_logs() and self.exitstatus in COMPLETED_STATUSES:
            # Ranks on other hosts keep their logs there; rank 0 gets a copy of each.
            self.watchdog.arm("sharing the per-rank logs")
            gather_logs(self.control, self.log)
        self.watchdog.stop()
        set_current_watchdog(self._previous_watchdog)
        if isinstance(self.watchdog.mailbox, CommMailbox):
            self.watchdog.mailbox.close()
        self.log.close()
        if self._discard_logs():
            self.control.barrier(("session", "logs closed"))
            # Every host has its own copy of the directory.
            shutil.rmtree(self.log_dir, ignore_errors=True)
        if self._terminal_fd is not None:
            os.close(self._terminal_fd)
        control_plane.set_current(self._previous_plane)
        self.control.close()

    # -- the backend -------------------------------------------------------------------------
    def backend(self) -> Backend:
        """The backend under test, loaded once; a load error is re-raised on every request."""
        if self._backend is None and self._backend_error is None:
            try:
                self._backend = load_backend(self.backend_spec)
            except Exception as exc:
                self._backend_error = exc
        if self._backend_error is not None:
            raise self._backend_error
        assert self._backend is not None
        return self._backend

    # -- terminal ----------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionstart(self, session: pytest.Session) -> None:
        if self.rank != 0:
            redirect_terminal(self.config, self.log.stream)
        if not self.config.stash.get(USER_WITH_MPI, True):
            _quiet_pytest_mpi(self.config)

    def pytest_report_header(self, config: pytest.Config) -> list[str]:
        try:
            backend = self.backend()
            described = f"{self.backend_spec} ({backend.name} {backend.version})"
            declared = runinfo.declared_line(backend)
        except Exception as exc:
            described = f"{self.backend_spec} (failed to load: {exc})"
            declared = []
        lines = runinfo.header_lines(
            backend=described,
            world_size=self.size,
            timeout=self.timeout,
            log_dir=self.log_dir,
            seed=self.seed,
        )
        return [*lines, *declared]

    def _discard_logs(self) -> bool:
        """A temporary log directory is removed after a clean run; anything else is kept."""
        return self._log_dir_is_temporary and self.exitstatus in (
            None,
            pytest.ExitCode.OK,
            pytest.ExitCode.NO_TESTS_COLLECTED,
        )

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.isolated and exitstatus in (
            pytest.ExitCode.OK,
            pytest.ExitCode.TESTS_FAILED,
            pytest.ExitCode.INTERRUPTED,
        ):
            session.exitstatus = exitstatus = isolation.EXIT_ISOLATED
        self.exitstatus = int(exitstatus)

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if not self._discard_logs():
            terminalreporter.write_line(f"conformance: per-rank logs in {self.log_dir}")

    # -- collection ----------------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True)
    def pytest_collection(self, session: pytest.Session) -> Generator[None, Any, Any]:
        self.watchdog.arm("collection", self.timeout * COLLECTION_DEADLINES)
        try:
            return (yield)
        finally:
            self.watchdog.disarm()

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        tiers.deselect_opt_in(self.config, items)
        if self.isolate == "auto":
            items[:] = isolation.run_order(items, levels.level_of)
        for item in items:
            problem = levels.level_problem(item)
            if problem:
                item.stash[LEVEL_PROBLEM] = problem

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        digest = hashlib.sha256("\n".join(i.nodeid for i in session.items).encode()).hexdigest()
        mine = (digest, len(session.items), session.testsfailed)
        everyone = self.control.allgather(("session", "collection"), mine)
        if all(other == mine for other in everyone):
            self._write_session_header()
            self._write_collection(session.items)
            _drop_unused_hypothesis_plugin(session.config)
            return
        lines = [
            f"rank {rank}: {count} tests, {errors} collection errors, digest {dig[:12]}"
            for rank, (dig, count, errors) in enumerate(everyone)
        ]
        pytest.exit(
            "conformance: the ranks collected different tests, so they cannot run in step:\n"
            + "\n".join(lines),
            returncode=pytest.ExitCode.USAGE_ERROR,
        )

    # -- running one test ----------------------------------------------------------------------
    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_protocol(
        self, item: pytest.Item, nextitem: pytest.Item | None
    ) -> Generator[None, Any, Any]:
        self.control.begin_test(item.nodeid)
        collective.begin_test()
        self._current_item = item
        item.stash[VERDICTS] = {}
        self.watchdog.arm(item.nodeid, self.hang_deadlines.get(item.nodeid))
        try:
            return (yield)
        finally:
            self.watchdog.disarm()
            self._current_item = None
            self._record(item)
            if nextitem is not None:
                self._isolate_after(item)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item: pytest.Item) -> None:
        problem = item.stash.get(LEVEL_PROBLEM, None)
        if problem:
            pytest.fail(problem, pytrace=False)

    @pytest.hookimpl(wrapper=True, tryfirst=True)
    def pytest_runtest_makereport(
        self, item: pytest.Item, call: pytest.CallInfo[None]
    ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
        report = yield
        error = call.excinfo.value if call.excinfo is not None else None
        local = outcomes.local_outcome(report, error)
        self.log.write(
            f"{item.nodeid} {call.when}: {local.outcome}"
            + (f"\n{local.longrepr}" if local.longrepr else "")
        )
        verdict = self._agree(item.nodeid, call.when, local)
        outcomes.apply(report, verdict, self.size)
        item.stash.setdefault(VERDICTS, {})[call.when] = verdict
        return report

    def _agree(self, nodeid: str, when: str, local: outcomes.RankOutcome) -> outcomes.Verdict:
        label = ("outcome", nodeid, when)
        while True:
            pairs = self.control.allgather_any(label, local)
            others = {pair[0] for pair in pairs} - {label}
            if not others:
                return outcomes.combine([pair[1] for pair in pairs])
            # Ranks still inside a collective helper of this test have just seen the desync
            # (their helper raised); they will come to this exchange next, so wait for them.
            if all(other[0] == "helper" and other[1] == nodeid for other in others):
                continue
            where = "; ".join(f"rank {r}: {pair[0]}" for r, pair in enumerate(pairs))
            pytest.exit(
                f"conformance: the ranks lost step while agreeing on {nodeid} ({where})",
                returncode=pytest.ExitCode.INTERNAL_ERROR,
            )

    def _write_collection(self, items: list[pytest.Item]) -> None:
        """The ``--conformance-collection`` file: each test's attribution, in run order."""
        path = self.config.getoption("conformance_collection")
        if not path or self.rank != 0:
            return
        lines = []
        for item in items:
            entry = {
                "nodeid": item.nodeid,
                "level": levels.level_of(item),
                "tier": levels.tier_of(item),
                "area": levels.area_of(item),
                "rule": _rule_of(item),
                "kills": item.get_closest_marker(survivors.KILLS_RANK) is not None,
                "timed": levels.is_timed(item),
            }
            lines.append(json.dumps(entry) + "\n")
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text("".join(lines), encoding="utf-8")

    def _write_session_header(self) -> None:
        if self.results is None:
            return
        try:
            backend = self.backend()
        except Exception as exc:
            header = runinfo.session_header(self.backend_spec, None, self.size, error=exc)
        else:
            header = runinfo.session_header(self.backend_spec, backend, self.size)
        header["started_at"], header["collected_at"] = self.started_at, time.time()
        self.results.write(header)

    def _record(self, item: pytest.Item) -> None:
        if self.results is None:
            return
        verdicts = item.stash.get(VERDICTS, {})
        if not verdicts:
            return
        fields = outcomes.summarize(verdicts)
        checked = collective.declared_checks()
        if checked and fields["outcome"] == Outcome.PASSED:
            fields["outcome"] = Outcome.UNSUPPORTED
        self.results.write(
            make_record(
                item.nodeid,
                fields.pop("outcome"),
                **fields,
                unsupported=checked,
                **self.item_fields(item),
            )
        )

    def item_fields(self, item: pytest.Item | None) -> dict[str, Any]:
        """The record fields of ``item`` (level, tier, rule, area) and of this session."""
        return {
            "level": levels.level_of(item) if item is not None else None,
            "tier": levels.tier_of(item) if item is not None else None,
            "rule": _rule_of(item),
            "area": levels.area_of(item) if item is not None else None,
            "seed": self.seed,
            "world_size": self.size,
            "backend": self.backend_spec,
        }

    def _isolate_after(self, item: pytest.Item) -> None:
        """Stop the session after ``item`` when its job can no longer be trusted (every rank
        decides alike: the verdicts were agreed over the control plane)."""
        if self.isolate == "never":
            return
        verdicts = item.stash.get(VERDICTS, {})
        outcome = outcomes.summarize(verdicts).get("outcome") if verdicts else None
        try:
            checks = getattr(self.backend().capabilities, "agreement_checks", True)
        except Exception:
            checks = True
        decision = isolation.after_test(self.isolate, levels.level_of(item), outcome, item, checks)
        if decision == isolation.CHECK:
            decision = self._check_group(item)
        if decision == isolation.END:
            self.isolated = True
            item.session.shouldstop = f"conformance: fresh job after {item.nodeid} (isolation)"

    def _check_group(self, item: pytest.Item) -> str:
        """Every rank checks the world group after ``item`` (:func:`isolation.check_group`):
        KEEP when every rank found it clean, else END. A check still running after
        ``isolation.CHECK_DEADLINE`` seconds ends the job with ``EXIT_ISOLATED``."""
        backend = self.backend()
        token = isolation.check_token(item.nodeid)

        def expire() -> None:
            message = (
                f"conformance: the group did not carry the isolation check after {item.nodeid} "
                f"within {isolation.CHECK_DEADLINE:g} s (a link left blocked); ending the job "
                f"with status {isolation.EXIT_ISOLATED} for a fresh one"
            )
            self.log.write(message)
            if self._terminal_fd is not None:
                os.write(self._terminal_fd, f"\n{message}\n".encode())
            (_end_job if self.size > 1 else os._exit)(isolation.EXIT_ISOLATED)

        with isolation.deadline(isolation.CHECK_DEADLINE, expire):
            findings = isolation.check_group(backend, backend.init(), token)
        everyone = self.control.allgather(("isolation-check", item.nodeid), findings)
        problems = [f"rank {r}: {f}" for r, found in enumerate(everyone) for f in found]
        if problems:
            self.log.write(f"isolation check after {item.nodeid}: " + "; ".join(problems))
            return isolation.END
        self.log.write(f"isolation check after {item.nodeid}: clean; the job goes on")
        return isolation.KEEP

    # -- hangs -----------------------------------------------------------------------------------
    def _describe_state(self) -> str:
        waiting = self.control.waiting_at
        if waiting is None:
            return "busy in test code"
        return f"{runinfo.WAITING} {' '.join(map(str, waiting))}"

    def _on_hang(self, label: str, stacks: dict[int, str]) -> None:
        """Rank 0's watchdog thread: record the hang and tell the user (the main thread is stuck,
        and the terminal may be captured, hence the saved terminal descriptor)."""
        item = self._current_item
        if item is not None and item.nodeid != label:
            item = None
        stuck = [rank for rank, text in stacks.items() if runinfo.WAITING not in text[:400]]
        deadline = self.hang_deadlines.get(label, self.timeout)
        short = (
            " (the short deadline of a test a known deviation expects to hang)"
            if label in self.hang_deadlines
            else ""
        )
        message = (
            f"conformance: {label} hung: no progress within {deadline:g} s{short}; "
            f"ranks busy outside the harness's exchanges (in test or backend code): {stuck}. "
            "Stacks of every rank are in the results file and in the "
            f"per-rank logs under {self.log_dir}. Ending the job with status {EXIT_HUNG}."
        )
        if self.results is not None:
            self.results.write(
                make_record(
                    label,
                    Outcome.HUNG,
                    failing_ranks=stuck,
                    message=message,
                    longrepr="\n\n".join(stacks[rank] for rank in sorted(stacks)),
                    duration=deadline,
                    stacks={str(rank): text for rank, text in sorted(stacks.items())},
                    **self.item_fields(item),
                )
            )
        self.log.write(message)
        if self._terminal_fd is not None:
            os.write(self._terminal_fd, f"\n{message}\n".encode())


_OUTPUT_DRAIN_SECONDS = 1.0


def _end_job(status: int) -> None:
    """End every rank of the job with ``status``: MPI_Abort makes mpiexec exit with it."""
    from mpi4py import MPI

    # The launcher forwards each rank's output asynchronously and MPI_Abort kills the job at
    # once: without a pause, the hang message just written can be lost (seen in CI).
    time.sleep(_OUTPUT_DRAIN_SECONDS)
    MPI.COMM_WORLD.Abort(status)


def _quiet_pytest_mpi(config: pytest.Config) -> None:
    """Drop pytest-mpi's "MPI Information" summary when the user did not ask for --with-mpi
    (the header already names the MPI library)."""
    for plugin in config.pluginmanager.get_plugins():
        if type(plugin).__name__ == "MPIPlugin" and hasattr(plugin, "_is_testing_mpi"):
            plugin._is_testing_mpi = False


# -- fixtures ------------------------------------------------------------------------------------
def _harness(config: pytest.Config) -> Harness:
    return config.stash[HARNESS]


@pytest.fixture(scope="session")
def backend(pytestconfig: pytest.Config) -> Backend:
    """The backend under test (``--backend`` / ``CONFORMANCE_BACKEND`` / reference)."""
    return _harness(pytestconfig).backend()


@pytest.fixture(scope="session")
def world(backend: Backend) -> Any:
    """The global group: ``backend.init()``."""
    return backend.init()


@pytest.fixture(scope="session")
def capabilities(backend: Backend) -> Any:
    """What the backend declares it supports (``conformance.backend.Capabilities``)."""
    return backend.capabilities


@pytest.fixture(scope="session", name="control")
def control_fixture(pytestconfig: pytest.Config) -> control_plane.ControlPlane:
    """The suite's control plane (its own duplicate of COMM_WORLD)."""
    return _harness(pytestconfig).control


@pytest.fixture
def conformance_seed(request: pytest.FixtureRequest) -> int:
    """A seed for this test, equal on every rank: derived from the session seed and the node id."""
    seed = _harness(request.config).seed
    digest = hashlib.sha256(f"{seed}:{request.node.nodeid}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


def _rule_of(item: pytest.Item | None) -> str | None:
    """ "op/rule-id" of the item's spec mark (the manifest holds the rule's text), or None."""
    cited = levels.spec_of(item) if item is not None else None
    return f"{cited[0]}/{cited[1]}" if cited else None
