"""Reading another process's memory directly: Linux cross-memory attach (``process_vm_readv``).

The shared-memory plane (reference.shm) uses it to copy a peer's private input or result straight
into this rank's array, once, instead of through the segment (copy in, then copy out): what
MPICH does on one node for large messages. It needs Linux, a C library that has the call, and
permission to read the peer (same user; no Yama ptrace restriction or seccomp filter forbidding
it), so a group only uses it after every rank has proved it can read every peer
(``Segment.create``); otherwise the segment copies.

Reading never writes the peer: a late reader can only ever get wrong bytes for itself, which is
why the plane checks, after every read, that no peer gave up meanwhile.
"""

from __future__ import annotations

import ctypes
import os
import sys

import numpy as np


class _Iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("length", ctypes.c_size_t)]


def _bind():
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).process_vm_readv
    except (OSError, AttributeError):
        return None
    call.restype = ctypes.c_ssize_t
    call.argtypes = [
        ctypes.c_int,
        ctypes.POINTER(_Iovec),
        ctypes.c_ulong,
        ctypes.POINTER(_Iovec),
        ctypes.c_ulong,
        ctypes.c_ulong,
    ]
    return call


_process_vm_readv = _bind()


class ReadFailed(OSError):
    """The kernel refused or cut short a read of a peer's memory."""


def available() -> bool:
    """Whether this platform has the call at all (permission is another matter: ``read``)."""
    return _process_vm_readv is not None


def address(array: np.ndarray) -> int:
    """Where ``array``'s first byte is in this process (what a peer passes to ``read``)."""
    return array.__array_interface__["data"][0]


def read(pid: int, remote: int, into: np.ndarray) -> None:
    """Copy ``into.nbytes`` bytes from address ``remote`` of process ``pid`` into ``into``.

    ``into`` is C-contiguous and writable. Raises ReadFailed naming the process and the errno
    when the kernel refuses (no permission, an address no longer mapped) or reads nothing.
    """
    wanted = into.nbytes
    if wanted == 0:
        return
    if _process_vm_readv is None:
        raise ReadFailed(f"process_vm_readv is not available on {sys.platform}")
    local = _Iovec(address(into), wanted)
    peer = _Iovec(remote, wanted)
    done = 0
    while True:
        got = _process_vm_readv(pid, ctypes.byref(local), 1, ctypes.byref(peer), 1, 0)
        if got <= 0:
            errno = ctypes.get_errno() if got < 0 else 0
            reason = os.strerror(errno) if errno else "nothing was read"
            raise ReadFailed(
                errno,
                f"reading {wanted - done} bytes at {remote + done:#x} of process {pid}: {reason}",
            )
        done += got
        if done == wanted:
            return
        # The kernel moves at most about 2 GiB a call: go on from where it stopped.
        local = _Iovec(local.base + got, wanted - done)
        peer = _Iovec(peer.base + got, wanted - done)
