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
import sys
import threading
import time
from typing import Any

from conformance.check import recorder as recorder_mod
from conformance.check.coordinator import Coordinator
from conformance.check.recorder import Recorder
from conformance.check.settings import Settings
from conformance.check.wire import Connection

EXIT_FAILED = 1
SWITCH_INTERVAL = 5e-5  # seconds


class CheckError(RuntimeError):
    """The ranks' calls do not agree, or one of them can never complete."""


class Session:
    """One rank's membership in the check of a job."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rank = settings.rank
        self.recorder = Recorder(settings.rank, settings.size, settings.depth, settings.record_dir)
        self.coordinator: Coordinator | None = None
        self.counts: collections.Counter[str] = collections.Counter()
        self.check_seconds = 0.0
        self.first_problem: str | None = None
        self.failure: str | None = None
        self._cond = threading.Condition()
        self._replies: dict[int, dict[str, Any]] = {}
        self._next_id = 0
        self._final: dict[str, Any] | None = None
        self._closed = False
        if settings.rank == 0:
            # The coordinator's threads share rank 0's interpreter with a program that may hold
            # the GIL while it polls (the reference waits on MPI in Python): at the default
            # 5 ms switch interval every other rank's check would wait for it that long.
            sys.setswitchinterval(SWITCH_INTERVAL)
            self.coordinator = Coordinator(settings.size, settings.timeout)
            self.coordinator.serve(settings.host, settings.port)
        self.conn = self._connect()
        self.conn.send({"t": "hello", "rank": self.rank, "pid": os.getpid()})
        threading.Thread(target=self._read, daemon=True, name="check-reader").start()
        self.recorder.install_signals()
        atexit.register(self.close)

    def _connect(self) -> Connection:
        """Rank 0 may still be starting: retry for one timeout, then fail naming the address."""
        s = self.settings
        deadline = time.monotonic() + max(s.timeout, 5.0)
        while True:
            try:
                sock = socket.create_connection((s.host, s.port), timeout=s.timeout)
                sock.settimeout(None)  # the reader waits as long as the program runs
                return Connection(sock)
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
        with self._cond:
            request = self._next_id
            self._next_id += 1
        if self.failure is None:
            self.conn.send({"t": "check", "id": request, "fp": fp})
        with self._cond:
            while request not in self._replies and self.failure is None:
                self._cond.wait()
            reply = self._replies.pop(request, None)
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

    def _read(self) -> None:
        """Answers go to the waiting check; a failure also reaches a rank that is not in one."""
        while True:
            message = self.conn.receive()
            if message is None:
                if not self._closed and self.failure is None:
                    self._on_failure("the coordinator (rank 0) is gone: rank 0 has ended")
                with self._cond:
                    self._cond.notify_all()
                return
            kind = message["t"]
            if kind == "fail":
                self._on_failure(message["text"])
            elif kind == "final":
                with self._cond:
                    self._final = message
                    self._cond.notify_all()
            if "id" in message:
                with self._cond:
                    self._replies[message["id"]] = message
                    self._cond.notify_all()

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
        with self._cond:
            self._cond.notify_all()
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
        self.conn.send({"t": "bye", "stats": stats})
        deadline = time.monotonic() + self.settings.timeout + 5.0
        with self._cond:
            while self._final is None and time.monotonic() < deadline:
                self._cond.wait(timeout=0.1)
        final = self._final
        if final is None:
            print(
                f"conformance check (rank {self.rank}): no verdict from the coordinator",
                file=sys.stderr,
                flush=True,
            )
            return
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
            self._wait_for_others()
        if problem:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(EXIT_FAILED)

    def _wait_for_others(self) -> None:
        """Rank 0 hosts the coordinator: its last answers are out once it lets go of its lock."""
        if self.coordinator is not None:
            with self.coordinator.lock:
                pass
