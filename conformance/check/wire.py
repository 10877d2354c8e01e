"""The side channel's framing: one JSON object per line over TCP (loopback, or the job's own
hosts). A check is one request and one answer; the thread that made the check reads its own
answer, so an answer costs one wake-up, not a hand-over between threads."""

from __future__ import annotations

import json
import select
import socket
import threading
from typing import Any


class Closed(EOFError):
    """The other end has gone."""


class Connection:
    """A socket carrying whole JSON messages; ``send`` is thread-safe, one thread receives."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(None)
        self.sock = sock
        self._buffer = bytearray()
        self._lock = threading.Lock()

    def send(self, message: dict[str, Any]) -> bool:
        """Send one message; False when the peer is gone."""
        data = json.dumps(message, separators=(",", ":")).encode() + b"\n"
        with self._lock:
            try:
                self.sock.sendall(data)
            except OSError:
                return False
        return True

    def readable(self, timeout: float) -> bool:
        """Whether a message (or the end) may be read without waiting, after up to ``timeout``."""
        if b"\n" in self._buffer:
            return True
        try:
            ready, _, _ = select.select([self.sock], [], [], timeout)
        except (OSError, ValueError):
            return True
        return bool(ready)

    def receive(self, block: bool = True) -> dict[str, Any] | None:
        """The next message; None when ``block`` is False and none is there; Closed at the end."""
        while b"\n" not in self._buffer:
            try:
                chunk = self.sock.recv(65536, 0 if block else socket.MSG_DONTWAIT)
            except BlockingIOError:
                return None
            except OSError:
                raise Closed from None
            if not chunk:
                raise Closed
            self._buffer += chunk
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer = bytearray(rest)
        return json.loads(line)

    def buffered(self) -> bool:
        """Whether a whole message has already been read from the socket."""
        return b"\n" in self._buffer

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
