"""A per-test deadline that ends a hung MPI job cleanly instead of letting it block CI.

Each rank runs a watchdog thread. ``arm(label)`` starts the deadline for one test (or one
control-plane step outside tests), ``pet()`` restarts it (lockstep Hypothesis does so per example),
``disarm()`` stops it. When a deadline passes, on every rank independently (the ranks arm within
milliseconds of one another, right after agreeing on the previous test):

1. the rank writes the Python stacks of all its threads to its log, and posts them with its log
   (``share_log()``) to rank 0 through the ``mailbox``; ranks other than 0 also write their
   stacks to stderr, so the launcher's output has them even if the mailbox cannot deliver;
2. rank 0 waits up to ``grace`` seconds for the other ranks' posts, hands each rank's log to
   ``receive_log``, all stacks to ``on_hang`` (which records the test as hung and tells the
   user), then announces the end through the mailbox;
3. rank 0 ends the job with ``end_job(EXIT_HUNG)`` (status 3; the plugin passes MPI_Abort, the
   one way that makes ``mpiexec`` itself exit 3 and also ends ranks stuck in native code). The
   other ranks wait for that; should it never come (rank 0 itself stuck without its watchdog),
   they exit with status 3 on their own.

Mailboxes: :class:`CommMailbox` sends over a communicator of its own (point-to-point messages
polled from the watchdog thread, so a data plane or control plane that is stuck does not block
them, and ranks on other hosts need no shared file system); :class:`FileMailbox` uses a directory
all ranks see (one host; the default when no mailbox is given). A rank whose post does not arrive
within ``grace`` is reported as such; its stack is still in its log and in the launcher's output.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import pytest

EXIT_HUNG = 3
#: The per-test deadline (seconds) when none is given: the plugin's, the runner's, selftest's.
DEFAULT_TIMEOUT = 60.0
#: pytest exit statuses of a session that ran to its end (tests passed, failed, or none collected).
COMPLETED_STATUSES = frozenset(
    {pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED, pytest.ExitCode.NO_TESTS_COLLECTED}
)

HangHandler = Callable[[str, dict[int, str]], None]

_POLL = 0.05


class Mailbox(Protocol):
    """How stacks and logs reach rank 0 when a deadline passes (see the module docstring)."""

    def post(self, rank: int, stack: str, log: str) -> None:
        """Send this rank's stack and log towards rank 0 (rank 0 keeps its own)."""

    def collect(self, size: int, grace: float) -> dict[int, tuple[str, str]]:
        """Rank 0: the (stack, log) of every other rank that arrive within ``grace`` seconds."""

    def announce_done(self, size: int, label: str) -> None:
        """Rank 0: tell the other ranks the hang is recorded."""

    def wait_done(self, seconds: float) -> None:
        """Ranks other than 0: wait up to ``seconds`` for rank 0's announcement."""


class FileMailbox:
    """Posts as files ``rank<N>.stack`` / ``rank<N>.log`` in a directory every rank sees."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def post(self, rank: int, stack: str, log: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.directory / f"rank{rank}.log", log)
        _write_atomic(self.directory / f"rank{rank}.stack", stack)

    def collect(self, size: int, grace: float) -> dict[int, tuple[str, str]]:
        got: dict[int, tuple[str, str]] = {}
        deadline = time.monotonic() + grace
        while len(got) < size - 1 and time.monotonic() <= deadline:
            for rank in range(1, size):
                stack = self.directory / f"rank{rank}.stack"
                if rank not in got and stack.exists():
                    log = self.directory / f"rank{rank}.log"
                    text = log.read_text(errors="replace") if log.exists() else ""
                    got[rank] = (stack.read_text(errors="replace"), text)
            time.sleep(_POLL)
        return got

    def announce_done(self, size: int, label: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.directory / "done", label)

    def wait_done(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not (self.directory / "done").exists() and time.monotonic() < deadline:
            time.sleep(_POLL)


class CommMailbox:
    """Posts as MPI messages on a communicator used for nothing else (mpi4py, pickled objects)."""

    _STACK, _DONE = 1, 2

    def __init__(self, comm: Any) -> None:
        self.comm = comm
        self._sent: list[Any] = []

    @classmethod
    def from_world(cls) -> CommMailbox:
        """A mailbox on a fresh duplicate of COMM_WORLD (collective: every rank calls it)."""
        from mpi4py import MPI

        return cls(MPI.COMM_WORLD.Dup())

    def post(self, rank: int, stack: str, log: str) -> None:
        if rank != 0:
            self._sent.append(self.comm.isend((stack, log), dest=0, tag=self._STACK))

    def collect(self, size: int, grace: float) -> dict[int, tuple[str, str]]:
        got: dict[int, tuple[str, str]] = {}
        deadline = time.monotonic() + grace
        while len(got) < size - 1 and time.monotonic() <= deadline:
            for rank in range(1, size):
                if rank not in got and self.comm.iprobe(source=rank, tag=self._STACK):
                    got[rank] = self.comm.recv(source=rank, tag=self._STACK)
            time.sleep(_POLL)
        return got

    def announce_done(self, size: int, label: str) -> None:
        for rank in range(1, size):
            self._sent.append(self.comm.isend(label, dest=rank, tag=self._DONE))

    def wait_done(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.comm.iprobe(source=0, tag=self._DONE):
                return
            time.sleep(_POLL)

    def close(self) -> None:
        """Free the communicator (at the end of a session that did not hang)."""
        from mpi4py import MPI

        if not MPI.Is_finalized():
            self.comm.Free()


def format_stacks(skip_thread: int | None = None) -> str:
    """The current Python stack of every thread of this process (except ``skip_thread``)."""
    names = {thread.ident: thread.name for thread in threading.enumerate()}
    parts = []
    for ident, frame in sys._current_frames().items():
        if ident == skip_thread:
            continue
        stack = "".join(traceback.format_stack(frame))
        parts.append(f'Thread "{names.get(ident, "?")}" ({ident}):\n{stack}')
    return "\n".join(parts)


class Watchdog:
    """One rank's watchdog thread; see the module docstring for what happens at the deadline."""

    def __init__(
        self,
        *,
        rank: int,
        size: int,
        timeout: float,
        on_hang: HangHandler,
        stack_dir: Path | None = None,
        mailbox: Mailbox | None = None,
        share_log: Callable[[], str] = lambda: "",
        receive_log: Callable[[int, str], None] = lambda rank, text: None,
        describe_state: Callable[[], str] = lambda: "",
        log: Callable[[str], None] = lambda text: None,
        grace: float | None = None,
        end_job: Callable[[int], None] = os._exit,
        heartbeat: Path | None = None,
    ) -> None:
        self.rank = rank
        self.size = size
        self.timeout = timeout
        if mailbox is None:
            if stack_dir is None:
                raise ValueError("Watchdog needs a mailbox or a stack_dir")
            mailbox = FileMailbox(stack_dir)
        self.mailbox = mailbox
        self._share_log = share_log
        self._receive_log = receive_log
        self.grace = grace if grace is not None else min(30.0, max(5.0, timeout / 2))
        self._on_hang = on_hang
        self._describe_state = describe_state
        self._log = log
        self._end_job = end_job
        self._heartbeat = heartbeat
        self._last_beat = 0.0
        self._cond = threading.Condition()
        self._label: str | None = None
        self._deadline = 0.0
        self._length = timeout  # of the running deadline: what pet() restarts
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="conformance-watchdog", daemon=True)
        self._thread.start()

    def arm(self, label: str, timeout: float | None = None) -> None:
        """Start the deadline for ``label`` (default length: ``self.timeout``)."""
        with self._cond:
            self._label = label
            self._length = timeout if timeout is not None else self.timeout
            self._deadline = time.monotonic() + self._length
            self._cond.notify()
        self._beat()

    def pet(self) -> None:
        """Restart the running deadline, if any, at its full length (the one it was armed with)."""
        with self._cond:
            if self._label is not None:
                self._deadline = time.monotonic() + self._length
                self._cond.notify()
        self._beat()

    def _beat(self) -> None:
        """Show progress to whoever watches the job from outside (the runner's job-level
        watchdog): rewrite the heartbeat file, at most once a second."""
        now = time.monotonic()
        if self._heartbeat is None or now - self._last_beat < 1.0:
            return
        self._last_beat = now
        try:
            self._heartbeat.write_text(f"{time.time():.3f} {self._label or ''}\n")
        except OSError:  # a missing heartbeat only makes an outside watchdog less patient
            pass

    def disarm(self) -> None:
        """Stop the running deadline."""
        with self._cond:
            self._label = None
            self._cond.notify()

    def stop(self) -> None:
        """End the watchdog thread."""
        with self._cond:
            self._stopped = True
            self._label = None
            self._cond.notify()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        with self._cond:
            while not self._stopped:
                if self._label is None:
                    self._cond.wait()
                    continue
                remaining = self._deadline - time.monotonic()
                if remaining > 0:
                    self._cond.wait(remaining)
                    continue
                label = self._label
                break
            else:
                return
        self._expire(label)

    def _expire(self, label: str) -> None:
        state = self._describe_state()
        text = (
            f"rank {self.rank}: no progress within {self._length:g} s in {label}"
            + (f" ({state})" if state else "")
            + "\n"
            + format_stacks(skip_thread=threading.get_ident())
        )
        self._log(f"=== watchdog: deadline passed ===\n{text}")
        if self.rank != 0:
            _write_stderr(f"conformance watchdog, rank {self.rank}: {text}")
        try:
            self.mailbox.post(self.rank, text, self._share_log())
        except Exception as exc:  # the launcher's output and the log still have the stacks
            self._log(f"watchdog: could not post the stacks to rank 0: {exc!r}")
        if self.rank == 0:
            stacks = self._collect_stacks(text)
            try:
                self._on_hang(label, stacks)
            finally:
                self._announce(label)
                _flush_stdio()
                self._end_job(EXIT_HUNG)
        else:
            try:
                self.mailbox.wait_done(self.grace + 10)
            except Exception:  # fall through to the timed exit below
                pass
            # Rank 0's end_job normally ends this process; leave it the time to do so.
            time.sleep(self.grace)
            _flush_stdio()
            os._exit(EXIT_HUNG)

    def _collect_stacks(self, own: str) -> dict[int, str]:
        stacks = {0: own}
        try:
            posts = self.mailbox.collect(self.size, self.grace)
        except Exception as exc:
            self._log(f"watchdog: collecting the other ranks' stacks failed: {exc!r}")
            posts = {}
        for rank, (stack, log) in sorted(posts.items()):
            stacks[rank] = stack
            try:
                self._receive_log(rank, log)
            except OSError as exc:
                self._log(f"watchdog: could not keep rank {rank}'s log: {exc!r}")
        for rank in range(self.size):
            stacks.setdefault(
                rank,
                f"rank {rank}: no stack within {self.grace:g} s (its watchdog could not run: "
                "the process may hold the GIL in native code, or may be gone; the launcher's "
                "output has whatever it wrote)",
            )
        return stacks

    def _announce(self, label: str) -> None:
        try:
            self.mailbox.announce_done(self.size, label)
        except Exception as exc:  # the ranks time out on their own
            self._log(f"watchdog: could not announce the end: {exc!r}")


def _write_stderr(text: str) -> None:
    try:
        sys.stderr.write(text.rstrip() + "\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def _flush_stdio() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or redirected streams are not worth a failure
            pass


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


_current: Watchdog | None = None


def current() -> Watchdog | None:
    """The running session's watchdog, if any."""
    return _current


def set_current(dog: Watchdog | None) -> Watchdog | None:
    """Install ``dog`` as the current watchdog; returns the previous one."""
    global _current
    previous, _current = _current, dog
    return previous
