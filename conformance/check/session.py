"""This rank's side of the check: connect to the coordinator (rank 0 starts it), check each call
before it runs, keep the flight recorder and the totals, and say goodbye at exit.

A failed check raises :class:`CheckError` in the thread that made the call, with the same text
on every rank. A rank that is not in a check when the job fails (it runs its own code, or is
blocked inside the backend, where no Python exception can reach it) prints the text at once,
writes its flight recorder, and ends with status 1 if it has not reached a check within one
timeout.
"""

from __future__ import annotations

import atexit
import collections
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any

from conformance.check import recorder as recorder_mod
from conformance.check.recorder import Recorder
from conformance.check.settings import ENV_ACTIVE_PID, Settings
from conformance.check.wire import Closed, Connection

EXIT_FAILED = 1


class CheckError(RuntimeError):
    """The ranks' calls do not agree, or one of them can never complete."""


class Session:
    """One rank's membership in the check of a job."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rank = settings.rank
        self.recorder = Recorder(settings.rank, settings.size, settings.depth, settings.record_dir)
        self.coordinator: subprocess.Popen | None = None
        self.counts: collections.Counter[str] = collections.Counter()
        self.check_seconds = 0.0
        self.first_problem: str | None = None
        self.failure: str | None = None
        self._io = threading.Lock()  # held by the thread reading the link
        self._next_id = 0
        self._early: dict[int, dict[str, Any]] = {}
        self._final: dict[str, Any] | None = None
        self._closed = False
        if settings.rank == 0:
            self.coordinator = self._start_coordinator()
        self.link = self._connect()
        self._post = self.link.send
        self._post({"t": "hello", "rank": self.rank, "pid": os.getpid()})
        threading.Thread(target=self._watch, daemon=True, name="check-watch").start()
        self.recorder.install_signals()
        atexit.register(self.close)

    def _start_coordinator(self) -> subprocess.Popen:
        """Rank 0 starts the coordinator's process and waits until it listens."""
        s = self.settings
        # The child inherits the launcher's rank variables: this marks it as not a rank.
        os.environ[ENV_ACTIVE_PID] = str(os.getpid())
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "conformance.check.coordinator",
                s.host,
                str(s.port),
                str(s.size),
                str(s.timeout),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise CheckError(
                f"the check's coordinator could not listen on {s.host}:{s.port} "
                "(set CONFORMANCE_CHECK_ADDR to a free host:port of rank 0's host)"
            )
        return proc

    def _connect(self) -> Connection:
        """Rank 0 may still be starting: retry for one timeout, then fail naming the address."""
        s = self.settings
        deadline = time.monotonic() + max(s.timeout, 5.0)
        while True:
            try:
                return Connection(socket.create_connection((s.host, s.port), timeout=s.timeout))
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise CheckError(
                        f"rank {self.rank} could not reach the check's coordinator at "
                        f"{s.host}:{s.port} (rank 0 hosts it; set CONFORMANCE_CHECK_ADDR): {exc}"
                    ) from None
                time.sleep(0.05)

    # -- checks -----------------------------------------------------------------------------

    def check(self, fp: dict[str, Any], stack: list[tuple[str, int, str]]) -> dict[str, Any]:
        """Check one call with the other ranks; its flight record (for split with the new group's
        ``members``), or CheckError."""
        record = self.recorder.begin(fp, stack)
        start = time.perf_counter()
        reply = None
        with self._io:
            request = self._next_id
            self._next_id += 1
            if self.failure is None:
                self._post({"t": "check", "id": request, "fp": fp})
            while self.failure is None:
                message = self._receive(block=True)
                if message is not None and message.get("id") == request:
                    reply = message
                    break
            reply = reply or self._early.pop(request, None)
        self.check_seconds += time.perf_counter() - start
        self.counts[fp["op"]] += 1
        if reply is None or reply["t"] == "fail":
            record["state"] = "failed"
            raise CheckError(self._failure_text())
        record["state"] = "agreed"
        record["waited"] = time.perf_counter() - start
        if "members" in reply:
            record["members"] = reply["members"]
        return record

    def _failure_text(self) -> str:
        return f"conformance check (rank {self.rank}): {self.failure}"

    def _receive(self, block: bool) -> dict[str, Any] | None:
        """Read one message (the caller holds ``_io``) and act on failures and the verdict."""
        try:
            message = self.link.receive(block)
        except Closed:
            if not self._closed:
                self._on_failure("the coordinator (rank 0) is gone: rank 0 has ended")
            else:
                self._final = self._final or {"t": "final", "problem": None, "stats": {}}
            return None
        if message is None:
            return None
        if message["t"] == "fail":
            self._on_failure(message["text"])
        elif message["t"] == "final":
            self._final = message
        return message

    def _watch(self) -> None:
        """Between checks, a failure must still reach this rank: read what arrives while no
        check is reading (a check holds ``_io`` and reads its own answer)."""
        while self.failure is None and not self._closed:
            if not self.link.readable(0.2):
                continue
            if self._io.acquire(blocking=False):
                try:
                    if self.failure is None and not self._closed:
                        message = self._receive(block=False)
                        if message is not None and "id" in message:
                            # An answer is only ever read here for a check that ended on a
                            # failure; keep it for completeness.
                            self._early[message["id"]] = message
                finally:
                    self._io.release()
            else:
                time.sleep(0.02)  # a check is reading; let it

    def _on_failure(self, text: str) -> None:
        if self.failure is not None:
            return
        self.failure = text
        self.first_problem = self.first_problem or text
        path = self.recorder.dump(recorder_mod.CHECK_FAILED)
        print(self._failure_text(), file=sys.stderr, flush=True)
        if path:
            print(
                f"conformance check (rank {self.rank}): flight recorder written to {path}",
                file=sys.stderr,
                flush=True,
            )
        # A rank blocked inside the backend (or busy in its own code) would never see the error:
        # give it one timeout to reach a check and raise, then end it.
        timer = threading.Timer(self.settings.timeout, self._end_blocked)
        timer.daemon = True
        timer.start()

    def _end_blocked(self) -> None:
        if self._closed:
            return
        print(
            f"conformance check (rank {self.rank}): still not at a check "
            f"{self.settings.timeout:g} s after the failure (blocked in the backend or in its "
            "own code); ending this rank",
            file=sys.stderr,
            flush=True,
        )
        os._exit(EXIT_FAILED)

    # -- exit -------------------------------------------------------------------------------

    def close(self) -> None:
        """Say goodbye with this rank's totals, wait for the job's verdict, print it."""
        if self._closed:
            return
        self._closed = True
        stats = {
            "counts": dict(self.counts),
            "seconds": self.check_seconds,
            "problem": self.first_problem,
        }
        # The verdict comes once every rank has left: like MPI_Finalize, the end of the program
        # waits for the slowest rank (a rank that hangs is the check's to report, not this one's).
        with self._io:
            self._post({"t": "bye", "stats": stats})
            while self._final is None:
                if self.link.readable(0.1):
                    self._receive(block=False)
        final = self._final
        problem = final.get("problem")
        if problem and problem != self.failure:
            self.failure = problem
            self.recorder.dump(recorder_mod.PROBLEM_AT_EXIT)
            print(self._failure_text(), file=sys.stderr, flush=True)
        if self.rank == 0:
            from conformance.check.summary import summary_text

            print(
                summary_text(final["stats"], self.settings.size, problem),
                file=sys.stderr,
                flush=True,
            )
        if problem:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_FAILED)
