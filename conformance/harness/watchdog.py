"""A per-test deadline that ends a hung MPI job cleanly instead of letting it block CI.

Each rank runs a watchdog thread. ``arm(label)`` starts the deadline for one test (or one
control-plane step outside tests), ``pet()`` restarts it (lockstep Hypothesis does so per example),
``disarm()`` stops it. When a deadline passes, on every rank independently (the ranks arm within
milliseconds of one another, right after agreeing on the previous test):

1. the rank writes the Python stacks of all its threads to its log and to
   ``<stack_dir>/rank<N>.stack``;
2. rank 0 waits up to ``grace`` seconds for the other ranks' stack files, hands all stacks to
   ``on_hang`` (which records the test as hung and tells the user), then writes
   ``<stack_dir>/done``;
3. rank 0 ends the job with ``end_job(EXIT_HUNG)`` (status 3; the plugin passes MPI_Abort, the
   one way that makes ``mpiexec`` itself exit 3 and also ends ranks stuck in native code). The
   other ranks wait for that; should it never come (rank 0 itself stuck without its watchdog),
   they exit with status 3 on their own.

Stacks travel through files, not MPI (MPI may be what is stuck), so ``stack_dir`` must be visible to
all ranks: true on one machine; across machines it must be on a shared file system.
"""

from __future__ import annotations

import os
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

EXIT_HUNG = 3

HangHandler = Callable[[str, dict[int, str]], None]


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
        stack_dir: Path,
        on_hang: HangHandler,
        describe_state: Callable[[], str] = lambda: "",
        log: Callable[[str], None] = lambda text: None,
        grace: float | None = None,
        end_job: Callable[[int], None] = os._exit,
        heartbeat: Path | None = None,
    ) -> None:
        self.rank = rank
        self.size = size
        self.timeout = timeout
        self.stack_dir = stack_dir
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
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="conformance-watchdog", daemon=True)
        self._thread.start()

    def arm(self, label: str, timeout: float | None = None) -> None:
        """Start the deadline for ``label`` (default length: ``self.timeout``)."""
        with self._cond:
            self._label = label
            self._deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
            self._cond.notify()
        self._beat()

    def pet(self) -> None:
        """Restart the running deadline, if any, at its full length."""
        with self._cond:
            if self._label is not None:
                self._deadline = time.monotonic() + self.timeout
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
            f"rank {self.rank}: no progress within {self.timeout:g} s in {label}"
            + (f" ({state})" if state else "")
            + "\n"
            + format_stacks(skip_thread=threading.get_ident())
        )
        self._log(f"=== watchdog: deadline passed ===\n{text}")
        self.stack_dir.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.stack_dir / f"rank{self.rank}.stack", text)
        if self.rank == 0:
            stacks = self._collect_stacks()
            try:
                self._on_hang(label, stacks)
            finally:
                _write_atomic(self.stack_dir / "done", label)
                _flush_stdio()
                self._end_job(EXIT_HUNG)
        else:
            self._wait_for(self.stack_dir / "done", self.grace + 10)
            # Rank 0's end_job normally ends this process; leave it the time to do so.
            time.sleep(self.grace)
            _flush_stdio()
            os._exit(EXIT_HUNG)

    def _collect_stacks(self) -> dict[int, str]:
        stacks: dict[int, str] = {}
        deadline = time.monotonic() + self.grace
        while True:
            for rank in range(self.size):
                path = self.stack_dir / f"rank{rank}.stack"
                if rank not in stacks and path.exists():
                    stacks[rank] = path.read_text(errors="replace")
            if len(stacks) == self.size or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        for rank in range(self.size):
            stacks.setdefault(
                rank,
                f"rank {rank}: no stack within {self.grace:g} s (its watchdog could not run: "
                "the process may hold the GIL in native code, or may be gone)",
            )
        return stacks

    @staticmethod
    def _wait_for(path: Path, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)


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
