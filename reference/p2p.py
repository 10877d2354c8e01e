"""Point-to-point: send, recv and recv_like.

SEMANTICS.md, "send / recv / recv_like". Every message starts with a header (dtype, shape, byte
count, the pair's message number); payloads up to ``INLINE_BYTES`` ride in the header message.
A larger payload moves only once the receiver has posted its receive for it and said so with an
*offer*: the message number and the byte count that receive takes.

A recv that expects a large message makes its offer before the header arrives: it knows the
number of the next message from its source and the size it asked for, so it posts the receive
straight into the result's buffer and sends the offer at once, and a sender that arrives second
finds it waiting: the payload then follows the header with no round trip between them
(measured at 2 ranks against answering the header with a "clear to send": half a ping-pong of
64 KiB 31 -> 25 us, 1 MiB 150 -> 132 us; raw MPI 11 and 114 us, docs/benchmarks.md).
When the header does not match the offer (another byte count, or an inline message), the
receiver cancels that receive (no payload can have matched it: the sender only sends to an
offer of its own byte count) and, for a large message, posts one of the header's size and offers
again. So:

- the header lets the receiver check what it is given: a recv whose shape or dtype disagrees with
  what was sent raises ValueError naming both sides, after draining the payload, and the pair can
  go on communicating;
- a send that times out waiting for an offer has handed nothing but the header to MPI: the caller
  owns ``x`` again and may change it; the late receiver then times out on that message (its
  payload never comes), and its offer, stale, is recognised by its number and dropped.
- a recv that times out before the header arrived cancels its receive and withdraws its offer
  (an offer of -1 bytes), and its next attempt at that message waits for the header before
  offering. A sender reads every offer already queued before it trusts one; only a sender that
  reads an offer in the instant before its withdrawal arrives sends to a receive that is gone, and
  its payload then waits for the receiver's next attempt (or, at its deadline, retires the group).
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
The sender reads offers with a persistent receive per destination, the same way.
"""

from __future__ import annotations

import math
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
TAG_OFFER = 22
# Payload tags carry the message number, so a payload can only ever match its own header's
# receive. MPI guarantees tags up to 32767.
_PAYLOAD_TAGS = range(1024, 32767)
# Up to here a payload rides in the header message (copied; one message, no handshake).
INLINE_BYTES = 16384

# dtype code, ndim, nbytes, message number; then ndim dims; then the payload when inline
_FIXED = struct.Struct("<4q")
# message number, byte count of the posted receive (WITHDRAWN: the receive is gone)
_OFFER = struct.Struct("<2q")
WITHDRAWN = -1
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
        header = comm.Isend([_header(array, number), _byte()], dst, TAG_HEADER)
        # Ready before the offer comes: the payload leaves as soon as it does.
        payload, tag = [array.reshape(-1).view(np.uint8), _byte()], _payload_tag(number)
        _await_offer(group, dst, number, array, header)
        requests = [comm.Isend(payload, dst, tag), header]
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
        # The receiver had offered a receive; MPI may still read x: keep it alive with the
        # request, and retire the group.
        group._orphans.append((requests, array))
        return group._break(
            f"{what} stalled for {seconds:g} s after rank {dst} had posted its receive"
        )

    deadline.wait_all(requests, stalled, cancel=False)
    return _read_only(array)


def _await_offer(group: Group, dst: int, number: int, array: np.ndarray, header: Any) -> None:
    """Wait until rank ``dst`` offers a receive of message ``number`` at ``array``'s size.

    Offers of earlier numbers are stale (their messages are settled) and dropped; an offer of
    another size, or a withdrawal, is superseded by the receiver's next offer. An offer is
    trusted only once no other offer is queued behind it (it may have been withdrawn).
    """
    offers, box = group._offers.get(dst) or _open_offers(group, dst)
    nbytes = array.nbytes
    probe = group._comm.Iprobe
    accepted = False

    def never_received(seconds: float) -> TimeoutError:
        group._orphans.append(header)  # an eager send: done, or MPI keeps its copy
        return TimeoutError(
            f"send of {describe(array.dtype, array.shape)} to rank {dst} of {group._label} timed "
            f"out after {seconds:g} s: rank {dst} never posted a matching recv (nothing but the "
            "header was handed to MPI; x may be reused)"
        )

    while not accepted or probe(dst, TAG_OFFER):
        offers.Start()
        if not offers.Test():
            deadline.wait_or_cancel(offers, never_received)
        offered, offered_bytes = _OFFER.unpack_from(box)
        if offered == number:
            accepted = offered_bytes == nbytes


def _open_offers(group: Group, dst: int) -> tuple[Any, np.ndarray]:
    """The persistent receive of ``dst``'s offers and the buffer it fills."""
    box = np.zeros(_OFFER.size, np.uint8)
    offers = group._comm.Recv_init([box, _byte()], dst, TAG_OFFER)
    group._offers[dst] = (offers, box)
    return offers, box


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
    shape, dtype = as_shape(shape, "recv"), as_dtype(dtype)
    return _recv(shape, dtype, math.prod(shape) * dtype.itemsize, src, group)


def _recv(shape: tuple[int, ...], dtype: np.dtype, nbytes: int, src: Any, group: Any) -> np.ndarray:
    """``recv`` of a valid shape and dtype (``nbytes``: their size in bytes)."""
    group = resolve_group(group, "recv")
    src = _check_peer(group, src, "recv", "source")
    group._check_usable("recv")
    if src == group._rank:
        return _recv_from_self(group, shape, dtype)
    comm = group._comm
    arrival, inbox = group._arrivals.get(src) or _open_arrival(group, src)
    offered: list[Any] | None = None
    if nbytes > INLINE_BYTES:
        # The next message's number: one past the last header the inbox took (0 before any).
        number = _FIXED.unpack_from(inbox)[3] + 1
        if group._withdrawn[src] != number:
            offered = _offer(comm, src, number, nbytes, shape, dtype)
    arrival.Start()
    if not arrival.Test():

        def nothing_sent(seconds: float) -> TimeoutError:
            if offered is not None:
                _withdraw(group, src, number, offered)
            return TimeoutError(
                f"recv of {describe(dtype, shape)} from rank {src} of {group._label} timed out "
                f"after {seconds:g} s: rank {src} sent nothing"
            )

        deadline.wait_or_cancel(arrival, nothing_sent)
    code, ndim, sent_bytes, sent_number = _FIXED.unpack_from(inbox)
    sent_shape = _DIMS[ndim].unpack_from(inbox, _FIXED.size)
    sent_dtype = SUPPORTED_DTYPES[code]
    matches = sent_dtype == dtype and sent_shape == shape
    if offered is not None and (sent_bytes != nbytes or sent_number != number):
        # The sender only sends to an offer of its own message and size: nothing matched this.
        _retract(group, offered)
        offered = None
    if sent_bytes <= INLINE_BYTES:
        if not matches:
            raise _mismatch(dtype, shape, src, sent_dtype, sent_shape)
        inline_at = _FIXED.size + 8 * ndim
        inline = np.frombuffer(inbox, dtype, nbytes // dtype.itemsize, inline_at)
        return inline.reshape(shape).copy()
    if offered is None:
        # No offer of this message's size was made: make it now, into a buffer to drain if the
        # message is not what was asked for.
        if matches:
            offered = _offer(comm, src, sent_number, sent_bytes, shape, dtype)
        else:
            drain = (sent_bytes,), np.dtype(np.uint8)
            offered = _offer(comm, src, sent_number, sent_bytes, *drain)
    receive, offer, out = offered

    def sender_gave_up(pending: list[int], seconds: float) -> TimeoutError:
        # The receive is cancelled; should MPI have matched it at the last moment, it still
        # writes ``out``: keep that buffer from the result pool.
        group._orphans.append((receive, out))
        return TimeoutError(
            f"recv from rank {src} of {group._label}: its header arrived but its payload did "
            f"not within {seconds:g} s (the sender gave up on this message)"
        )

    deadline.wait_all([receive, offer], sender_gave_up)
    if not matches:
        raise _mismatch(dtype, shape, src, sent_dtype, sent_shape)
    return out


def _offer(
    comm: Any, src: int, number: int, nbytes: int, shape: tuple[int, ...], dtype: np.dtype
) -> list[Any]:
    """Offer ``src`` a receive of message ``number``'s ``nbytes`` payload, and post it into a
    new array of ``shape`` and ``dtype``: [the receive, the offer's send, the array].

    The offer leaves first (the sender is waiting for it); a payload that arrives before its
    receive is posted waits in MPI.
    """
    offer = comm.Isend([_OFFER.pack(number, nbytes), _byte()], src, TAG_OFFER)
    out = buffers.empty(shape, dtype)
    buffer = [out.reshape(-1).view(np.uint8), _byte()]
    return [comm.Irecv(buffer, src, _payload_tag(number)), offer, out]


def _retract(group: Group, offered: list[Any]) -> None:
    """Cancel an offered receive; the offer goes stale. The offer's send (eager: done, or MPI
    holds its copy) is kept, and so is the buffer should MPI have matched the receive."""
    receive, offer, _ = offered
    cancelled = deadline.cancel_receive(receive)
    group._orphans.append(offer if cancelled else offered)


def _withdraw(group: Group, src: int, number: int, offered: list[Any]) -> None:
    """Take back the offer of message ``number`` (its header never came): retract it, tell
    ``src``, and make the next attempt at that message wait for its header first."""
    _retract(group, offered)
    withdrawal = group._comm.Isend([_OFFER.pack(number, WITHDRAWN), _byte()], src, TAG_OFFER)
    group._orphans.append(withdrawal)  # eager, like the offer
    group._withdrawn[src] = number


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
    return _recv(like.shape, like.dtype, like.nbytes, src, group)
