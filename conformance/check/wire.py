"""The side channel's framing: one JSON object per line over TCP (loopback, or the job's own
hosts). Small and dependency-free; a check is one request line and one answer line."""

from __future__ import annotations

import json
import socket
import threading
from typing import Any


class Connection:
    """A socket that sends and receives whole JSON messages; ``send`` is thread-safe."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = sock
        self._reader = sock.makefile("rb")
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

    def receive(self) -> dict[str, Any] | None:
        """The next message, or None once the peer has closed the connection."""
        try:
            line = self._reader.readline()
        except OSError:
            return None
        if not line:
            return None
        return json.loads(line)

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
