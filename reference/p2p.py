"""Point-to-point: send, recv and recv_like.

SEMANTICS.md, "send / recv / recv_like". Every message starts with a header (dtype, shape, byte
count, the pair's message number); payloads up to ``INLINE_BYTES`` ride in the header message.
A larger payload moves only after the receiver has read the header, posted its receive straight
into the result's buffer and answered "clear to send" with the message number. So:

- the header lets the receiver check what it is given: a recv whose shape or dtype disagrees with
  what was sent raises ValueError naming both sides, after draining the payload, and the pair can
  go on communicating;
- a send that times out waiting for its receiver has handed nothing but the header to MPI: the
  caller owns ``x`` again and may change it; the late receiver then times out on that message
  (its payload never comes) and a stale "clear to send" is recognised by its number and dropped.
- an inline message MPI has not delivered by the deadline (MPICH waits for the receiver from
  8 KiB) raises TimeoutError too, but MPI holds a copy of it: ``x`` is free, and a late recv still
  gets the message, in order; the pair stays usable.

``send`` is eager, like MPI's standard mode: when it returns the message is delivered or on its
way and ``x`` may be reused; for large messages it waits until the matching recv is posted.
A message to oneself is queued in the group and handed to the matching recv.

The receiver takes the header with a persistent receive, one per source, into that source's inbox
(a buffer that holds any header and an inline payload), not by probing first: one MPI call fewer
on the small-message path. At the deadline that receive is cancelled; if MPI had already matched
it, the message is delivered as usual, so a recv that raises TimeoutError has consumed nothing.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

from reference import buffers, deadline
from reference.collectives import resolve_group
from reference.dtypes import (
    DTYPE_CODES,
    SUPPORTED_DTYPES,
    as_array,
    as_dtype,
    as_shape,
    describe,
)
from reference.group import Group

TAG_HEADER = 21
TAG_CLEAR_TO_SEND = 22
# Payload tags carry the message number, so a payload can only ever match its own header's
# receive. MPI guarantees tags up to 32767.
_PAYLOAD_TAGS = range(1024, 32767)
# Up to here a payload rides in the header message (copied; one message, no handshake).
INLINE_BYTES = 16384

# dtype code, ndim, nbytes, message number; then ndim dims; then the payload when inline
_FIXED = struct.Struct("<4q")
_NUMBER = struct.Struct("<q")
_MOST_DIMS = 64  # numpy's limit
_DIMS = [struct.Struct(f"<{ndim}q") for ndim in range(_MOST_DIMS + 1)]
_HEADERS = [struct.Struct(f"<{4 + ndim}q") for ndim in range(_MOST_DIMS + 1)]  # fixed + dims
# The receive buffer of a header: room for any header and an inline payload.
INBOX_BYTES = _FIXED.size + _DIMS[_MOST_DIMS].size + INLINE_BYTES

_BYTE: Any = None


def _byte() -> Any:
    global _BYTE
    if _BYTE is None:
        # Imported on first use: importing mpi4py.MPI initialises MPI.
        from mpi4py import MPI

        _BYTE = MPI.BYTE
    return _BYTE


def _check_peer(group: Group, peer: Any, op: str, role: str) -> int:
    if type(peer) is int and 0 <= peer < group._size and group._size > 1:
        return peer  # the hot path
    if group.size() == 1:
        verb = "send to" if op == "send" else "recv from"
        raise ValueError(f"Cannot {verb} a singleton group")
    if isinstance(peer, bool) or not isinstance(peer, (int, np.integer)):
        raise TypeError(f"{op}: {role} must be an int, got {type(peer).__name__}")
    if not 0 <= peer < group.size():
        raise ValueError(f"Invalid {role}={peer} for a group of size {group.size()}")
    return int(peer)


def _payload_tag(number: int) -> int:
    return _PAYLOAD_TAGS[number % len(_PAYLOAD_TAGS)]


def _header(array: np.ndarray, number: int) -> bytes:
    nbytes = array.nbytes
    shape = array.shape
    header = _HEADERS[len(shape)].pack(DTYPE_CODES[array.dtype], len(shape), nbytes, number, *shape)
    if nbytes > INLINE_BYTES:
        return header
    return header + array.tobytes()


def send(x: Any, dst: int, *, group: Group | None = None, stream: Any = None) -> np.ndarray:
    """Send ``x`` to rank ``dst`` of the group; returns an array equal to ``x`` (read-only view).

    Raises ValueError for a singleton group or a ``dst`` outside ``[0, size)``.
    """
    group = resolve_group(group, "send")
    dst = _check_peer(group, dst, "send", "destination")
    array = as_array(x, "send")
    group._check_usable("send")
    if dst == group._rank:
        group._to_self.append(array.copy())
        return _read_only(array)
    comm = group._comm
    number = group._next_message_number(dst)
    if array.nbytes > INLINE_BYTES:
        _announce(group, dst, number, array)
        payload = array.reshape(-1).view(np.uint8)
        requests = [comm.Isend([payload, _byte()], dst, _payload_tag(number))]
    else:
        requests = [comm.Isend([_header(array, number), _byte()], dst, TAG_HEADER)]
        if requests[0].Test():  # small messages leave at once (MPI's eager protocol)
            return _read_only(array)

    def stalled(pending: list[int], seconds: float) -> TimeoutError:
        what = f"send of {describe(array.dtype, array.shape)} to rank {dst} of {group._label}"
        if array.nbytes <= INLINE_BYTES:
            # MPI holds a copy of the whole message (MPICH waits for the receiver from 8 KiB):
            # x is free, the pair's order holds, and a late recv still gets the message.
            group._orphans.append(requests)
            return TimeoutError(
                f"{what} timed out after {seconds:g} s: rank {dst} did not take the message; "
                f"MPI keeps a copy of it for rank {dst}'s next recv from this rank (x may be "
                "reused)"
            )
        # The receiver had posted its receive; MPI may still read x: keep it alive with the
        # request, and retire the group.
        group._orphans.append((requests, array))
        return group._break(
            f"{what} stalled for {seconds:g} s after rank {dst} had posted its receive"
        )

    deadline.wait_all(requests, stalled)
    return _read_only(array)


def _announce(group: Group, dst: int, number: int, array: np.ndarray) -> None:
    """Send the header of a large message and wait for rank ``dst``'s clear-to-send for it.

    The answer's receive is posted before the header leaves, so the wait is one round trip.
    Answers to older, abandoned messages are recognised by their number and dropped.
    """
    from mpi4py import MPI

    comm = group._comm
    answer = bytearray(_NUMBER.size)
    header = comm.Isend([_header(array, number), MPI.BYTE], dst, TAG_HEADER)

    def never_received(pending: list[int], seconds: float) -> TimeoutError:
        return TimeoutError(
            f"send of {describe(array.dtype, array.shape)} to rank {dst} of {group._label} timed "
            f"out after {seconds:g} s: rank {dst} never posted a matching recv (nothing but the "
            "header was handed to MPI; x may be reused)"
        )

    while True:
        reply = comm.Irecv([answer, MPI.BYTE], dst, TAG_CLEAR_TO_SEND)
        deadline.wait_all([reply, header], never_received)
        if _NUMBER.unpack(answer)[0] == number:
            return


def _read_only(array: np.ndarray) -> np.ndarray:
    view = array.view()
    view.setflags(write=False)
    return view


def recv(
    shape: Any, dtype: Any, src: int, *, group: Group | None = None, stream: Any = None
) -> np.ndarray:
    """Receive an array of exactly ``shape`` and ``dtype`` from rank ``src`` of the group.

    Raises ValueError for a singleton group, a ``src`` outside ``[0, size)``, or a message whose
    dtype or shape differs from the one asked for (the message is consumed; the channel stays
    usable). Raises TimeoutError if nothing arrives before the deadline (nothing is consumed).
    """
    return _recv(as_shape(shape, "recv"), as_dtype(dtype), src, group)


def _recv(shape: tuple[int, ...], dtype: np.dtype, src: Any, group: Any) -> np.ndarray:
    """``recv`` of a valid shape and dtype."""
    group = resolve_group(group, "recv")
    src = _check_peer(group, src, "recv", "source")
    group._check_usable("recv")
    if src == group._rank:
        return _recv_from_self(group, shape, dtype)
    comm = group._comm
    arrival, inbox = group._arrivals.get(src) or _open_arrival(group, src)
    arrival.Start()
    if not arrival.Test():

        def nothing_sent(seconds: float) -> TimeoutError:
            return TimeoutError(
                f"recv of {describe(dtype, shape)} from rank {src} of {group._label} timed out "
                f"after {seconds:g} s: rank {src} sent nothing"
            )

        deadline.wait_or_cancel(arrival, nothing_sent)
    code, ndim, nbytes, number = _FIXED.unpack_from(inbox)
    sent_shape = _DIMS[ndim].unpack_from(inbox, _FIXED.size)
    sent_dtype = SUPPORTED_DTYPES[code]
    inline_at = _FIXED.size + 8 * ndim
    matches = sent_dtype == dtype and sent_shape == shape
    if matches and nbytes <= INLINE_BYTES:
        inline = np.frombuffer(inbox, dtype, nbytes // dtype.itemsize, inline_at)
        return inline.reshape(shape).copy()
    out = buffers.empty(shape, dtype) if matches else np.empty(nbytes, np.uint8)
    buffer = out.reshape(-1).view(np.uint8)
    if nbytes > INLINE_BYTES:
        requests = [
            comm.Irecv([buffer, _byte()], src, _payload_tag(number)),
            comm.Isend([_NUMBER.pack(number), _byte()], src, TAG_CLEAR_TO_SEND),
        ]

        def sender_gave_up(pending: list[int], seconds: float) -> TimeoutError:
            return TimeoutError(
                f"recv from rank {src} of {group._label}: its header arrived but its payload did "
                f"not within {seconds:g} s (the sender gave up on this message)"
            )

        deadline.wait_all(requests, sender_gave_up)
    if not matches:
        raise _mismatch(dtype, shape, src, sent_dtype, sent_shape)
    return out


def _open_arrival(group: Group, src: int) -> tuple[Any, np.ndarray]:
    """The persistent receive of headers from ``src`` and the inbox it fills: each recv starts it
    instead of posting a new receive. A cancelled receive leaves it inactive, ready for the next
    recv."""
    inbox = buffers.mapped(INBOX_BYTES)
    arrival = group._comm.Recv_init([inbox, _byte()], src, TAG_HEADER)
    group._arrivals[src] = (arrival, inbox)
    return arrival, inbox


def _mismatch(dtype, shape, src, sent_dtype, sent_shape) -> ValueError:
    return ValueError(
        f"recv expected {describe(dtype, shape)} from rank {src} but rank {src} sent "
        f"{describe(sent_dtype, sent_shape)}"
    )


def _recv_from_self(group: Group, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    if not group._to_self:
        raise ValueError(
            f"recv from rank {group.rank()} (this rank) of {group._label}: nothing was sent to "
            "self, and a rank cannot wait on itself"
        )
    sent = group._to_self.popleft()
    if sent.dtype != dtype or sent.shape != shape:
        raise _mismatch(dtype, shape, group.rank(), sent.dtype, sent.shape)
    return sent


def recv_like(x: Any, src: int, *, group: Group | None = None, stream: Any = None) -> np.ndarray:
    """``recv(x.shape, x.dtype, src)``: receive an array shaped and typed like ``x``."""
    like = as_array(x, "recv_like")
    return _recv(like.shape, like.dtype, src, group)
