"""The coordinator: the one place that sees every rank's fingerprints.

Rank 0 starts it as a process of its own (``python -m conformance.check.coordinator HOST PORT
SIZE TIMEOUT``) so that it never waits for the program's interpreter lock: a program that polls
in Python while it waits for its peers (the reference does) would otherwise delay every other
rank's check by up to the interpreter's switch interval (5 ms). It ends once every rank has said
goodbye or disconnected, or when rank 0 is gone.

Rules it applies, each ending the job with one text sent to every rank:
- a collective (or split) call number ``seq`` on a group completes once every member has sent its
  fingerprint; the fingerprints must agree (:func:`fingerprint.agree`), else *disagreement*;
- a recv waits for the send with the same (group, source, destination, message number); their
  shape and dtype must agree. A send never waits: the backend may buffer it, so waiting could
  report a program that works;
- a rank that finished (said goodbye) or disconnected without doing so cannot arrive any more:
  a call waiting for it fails at once;
- when every rank still running waits in a check that cannot complete, nothing can move: a
  *deadlock*, reported at once;
- a check waiting longer than the timeout: a *stall*, naming who has not arrived and what each of
  them did last;
- at the end, a send no recv matched is reported to every rank.
"""

from __future__ import annotations

import os
import selectors
import socket
import sys
import threading
import time
from typing import Any

from conformance.check import fingerprint
from conformance.check.wire import Closed, Connection

RUNNING, DONE, GONE = "running", "finished", "disconnected"


class Coordinator:
    """Matches the fingerprints of a job of ``size`` ranks; serve() runs it on a listener."""

    def __init__(self, size: int, timeout: float) -> None:
        self.size = size
        self.timeout = timeout
        self.lock = threading.Lock()
        self.conns: dict[int, Connection] = {}
        self.state: dict[int, str] = {}
        self.last: dict[int, dict[str, Any]] = {}
        self.last_time: dict[int, float] = {}
        self.waiting: dict[
            int, tuple[Any, int, float]
        ] = {}  # rank -> (entry key, request id, since)
        self.groups: dict[str, list[int]] = {"world": list(range(size))}
        self.calls: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
        self.sends: dict[tuple[str, int, int, int], dict[str, Any]] = {}
        self.recvs: dict[tuple[str, int, int, int], dict[str, Any]] = {}
        self.failure: str | None = None
        self.stats: dict[int, dict[str, Any]] = {}
        self.finals_sent = False
        self.listener: socket.socket | None = None

    # -- serving ----------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> None:
        """Listen on host:port; :meth:`run` then handles every rank in one thread."""
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(max(self.size, 8))
        self.listener = listener

    def run(self, keep_going: Any) -> None:
        """Handle connections and messages in this thread (no hand-over between threads on the
        way of a check), and stalls every tick, while ``keep_going()`` and the job lasts."""
        assert self.listener is not None
        selector = selectors.DefaultSelector()
        selector.register(self.listener, selectors.EVENT_READ, None)
        ranks: dict[Connection, int | None] = {}
        tick = min(0.1, self.timeout / 10)
        while keep_going() and not self.finals_sent:
            for key, _ in selector.select(tick):
                if key.data is None:
                    sock, _ = self.listener.accept()
                    conn = Connection(sock)
                    ranks[conn] = None
                    selector.register(sock, selectors.EVENT_READ, conn)
                    continue
                conn = key.data
                while True:  # every whole message already read
                    try:
                        message = conn.receive(block=False)
                    except Closed:
                        message = None
                        selector.unregister(conn.sock)
                        if ranks[conn] is not None:
                            self.handle(ranks[conn], None)
                        break
                    if message is None:
                        break
                    if ranks[conn] is None:
                        ranks[conn] = int(message["rank"])
                        self.attach(ranks[conn], conn)
                    else:
                        self.handle(ranks[conn], message)
                    if not conn.buffered():
                        break
            self._stalls()

    def attach(self, rank: int, conn: Any) -> None:
        """Register ``rank``'s connection (anything with ``send(message)``)."""
        with self.lock:
            self.conns[rank] = conn
            self.state[rank] = RUNNING
            if self.failure:
                conn.send({"t": "fail", "text": self.failure})

    def handle(self, rank: int, message: dict[str, Any] | None) -> None:
        """One message from ``rank``; None when its connection ended."""
        with self.lock:
            if message is None:
                self._left(rank, GONE)
                return
            kind = message["t"]
            if kind == "check":
                self._check(rank, message["id"], message["fp"])
            elif kind == "bye":
                self.stats[rank] = message.get("stats", {})
                self._left(rank, DONE)

    def _stalls(self) -> None:
        """A check waiting past the timeout ends the job with the stall's diagnosis."""
        with self.lock:
            if not self.failure:
                now = time.monotonic()
                late = [(r, w) for r, w in self.waiting.items() if now - w[2] > self.timeout]
                if late:
                    rank, (key, _, since) = min(late, key=lambda item: item[1][2])
                    self._fail(self._stall_text(rank, key, now - since))

    # -- rules ------------------------------------------------------------------------------

    def _check(self, rank: int, request: int, fp: dict[str, Any]) -> None:
        self.last[rank] = fp
        self.last_time[rank] = time.monotonic()
        conn = self.conns[rank]
        if self.failure:
            conn.send({"t": "fail", "id": request, "text": self.failure})
            return
        members = self.groups.get(fp["group"])
        if fp["group"] == f"single{rank}":  # the backend gave this rank a group of its own
            members = [rank]
        if members is None or rank not in members:
            self._fail(
                f"rank {rank} called {fingerprint.text(fp)} on a group it is not a member of "
                f"(known groups: {', '.join(sorted(self.groups))})"
            )
            return
        if fp["op"] == "send":
            key = (fp["group"], rank, fp["peer"], fp["n"])
            self.sends[key] = fp
            waiting_recv = self.recvs.get(key)
            if waiting_recv is not None:
                self._match_pair(key, fp, waiting_recv)
            if not self.failure:
                conn.send({"t": "ok", "id": request})
        elif fp["op"] in ("recv", "recv_like"):
            key = (fp["group"], fp["peer"], rank, fp["n"])
            self.recvs[key] = fp
            self.waiting[rank] = (key, request, time.monotonic())
            if key in self.sends:
                self._match_pair(key, self.sends[key], fp)
        else:
            key = (fp["group"], fp["seq"])
            arrived = self.calls.setdefault(key, {})
            arrived[rank] = fp
            self.waiting[rank] = (key, request, time.monotonic())
            if len(arrived) == len(members):
                self._complete(key, members, arrived)
        if not self.failure:
            self._look_for_deadlock()

    def _complete(self, key: tuple[str, int], members: list[int], fps: dict[int, Any]) -> None:
        if not fingerprint.agree(fps):
            lines = [f"  rank {r}: {fingerprint.text(fps[r])}" for r in members]
            self._fail(
                f"ranks disagree at call #{key[1]} on group {key[0]} (every rank must make "
                "the same call with the same shape and dtype):\n" + "\n".join(lines)
            )
            return
        del self.calls[key]
        reply: dict[str, Any] = {"t": "ok"}
        for rank in members:
            fp = fps[rank]
            if fp["op"] == "split":
                reply["members"] = self._split(key, members, fps, fp["color"])
            _, request, _ = self.waiting.pop(rank)
            self.conns[rank].send({**reply, "id": request})

    def _split(self, key: tuple[str, int], members: list[int], fps: dict[int, Any], color: int):
        """The world ranks of ``color``'s new group in new-rank order (key, then parent rank)."""
        same = [r for r in members if fps[r]["color"] == color]
        order = sorted(
            same,
            key=lambda r: (
                fps[r]["key"] if fps[r]["key"] >= 0 else members.index(r),
                members.index(r),
            ),
        )
        self.groups[f"{key[0]}/split{key[1]}:{color}"] = order
        return order

    def _match_pair(self, key: tuple[str, int, int, int], sent: Any, wanted: Any) -> None:
        group, src, dst, number = key
        if not fingerprint.pair_agrees(sent, wanted):
            self._fail(
                f"send and recv disagree on message #{number} from rank {src} to rank {dst} "
                f"on group {group}:\n  rank {src}: {fingerprint.text(sent)}\n"
                f"  rank {dst}: {fingerprint.text(wanted)}"
            )
            return
        del self.sends[key]
        del self.recvs[key]
        _, request, _ = self.waiting.pop(dst)
        self.conns[dst].send({"t": "ok", "id": request})

    def _left(self, rank: int, how: str) -> None:
        if self.state.get(rank) in (DONE, GONE):
            return
        self.state[rank] = how
        self.waiting.pop(rank, None)
        if not self.failure:
            self._look_for_deadlock()
        if all(self.state.get(r) in (DONE, GONE) for r in range(self.size)):
            self._finish()

    def _needed(self, key: Any) -> list[int]:
        """The ranks a waiting check still waits for."""
        if len(key) == 4:  # a recv waits for its sender
            return [key[1]]
        arrived = self.calls.get(key, {})
        return [r for r in self.groups[key[0]] if r not in arrived]

    def _look_for_deadlock(self) -> None:
        """A waiting check that needs a rank that has left, or every running rank waiting."""
        for rank, (key, _, _) in self.waiting.items():
            if any(self.state.get(r) in (DONE, GONE) for r in self._needed(key)):
                self._fail(self._stall_text(rank, key, None))
                return
        # Only once every rank has connected: a rank still starting up may yet make the call.
        live = [r for r in range(self.size) if self.state.get(r) == RUNNING]
        started = len(self.state) == self.size
        if started and live and all(r in self.waiting for r in live):
            rank = min(self.waiting)
            self._fail(
                "deadlock: every running rank waits in a call that cannot complete:\n"
                + self._stall_text(rank, self.waiting[rank][0], None)
            )

    def _stall_text(self, rank: int, key: Any, waited: float | None) -> str:
        fp = self.last[rank]
        missing = self._needed(key)
        how = f"has waited {waited:.1f} s" if waited is not None else "cannot complete"
        lines = [f"{fingerprint.text(fp)} (rank {rank}) {how}: ranks {missing} have not arrived"]
        now = time.monotonic()
        for r in range(self.size):
            if r in self.waiting:
                lines.append(f"  rank {r}: waits in {fingerprint.text(self.last[r])}")
            elif r in self.last:
                state = self.state.get(r, "never connected")
                where = "is running its own code or inside the backend"
                if state in (DONE, GONE):
                    where = "has finished the program" if state == DONE else "has exited"
                lines.append(
                    f"  rank {r}: {where}; its last call was {fingerprint.text(self.last[r])}, "
                    f"{now - self.last_time[r]:.1f} s ago"
                )
            else:
                state = self.state.get(r, "has not connected")
                lines.append(f"  rank {r}: made no call yet ({state})")
        return "\n".join(lines) + self._unmatched_text()

    def _unmatched_text(self) -> str:
        if not self.sends:
            return ""
        lines = [
            f"  rank {src} -> rank {dst}: {fingerprint.text(fp)} has no matching recv"
            for (_, src, dst, _), fp in self.sends.items()
        ]
        return "\nsends not received:\n" + "\n".join(lines)

    def _fail(self, text: str) -> None:
        """End the job: every rank gets ``text`` (a waiting one as the answer to its check)."""
        self.failure = text
        for rank, conn in self.conns.items():
            if self.state.get(rank) == RUNNING:
                conn.send({"t": "fail", "text": text})
        self.waiting.clear()

    def _finish(self) -> None:
        """Every rank has left: report sends nobody received, and send each rank the totals."""
        if self.finals_sent:
            return
        self.finals_sent = True
        problem = self.failure
        if problem is None and self.sends:
            problem = (
                "the program ended with messages nobody received:"
                + self._unmatched_text()[len("\nsends not received:") :]
            )
        for rank, conn in self.conns.items():
            if self.state.get(rank) == DONE:
                conn.send({"t": "final", "problem": problem, "stats": self.stats})


def main(argv: list[str] | None = None) -> int:
    """Serve one job: HOST PORT SIZE TIMEOUT; exit when it is over or rank 0 (the parent) is."""
    host, port, size, timeout = (sys.argv[1:] if argv is None else argv)[:4]
    coordinator = Coordinator(int(size), float(timeout))
    coordinator.serve(host, int(port))
    parent = os.getppid()
    print("ready", flush=True)  # rank 0 waits for this line before it connects
    coordinator.run(lambda: os.getppid() == parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
