"""Holding results and inputs across later calls: what the caller owns must stay as it was.

SEMANTICS.md, "Inputs: layouts and ownership": an op never changes its inputs, and a returned
array is never changed by a later call, whatever the backend pools or caches. A backend that
recycles result buffers (the reference does, by reference count) or reduces in place breaks this
only when the caller still holds the array while later calls run, so the specs keep every result
and every input of a sequence alive in a ``Holdings`` and re-check them: after each later call
those of the byte sizes it used (what a pool keyed by size would hand out), and all of them at the
end of the sequence.

A held array is fingerprinted when it is taken, once it has been checked: a private copy of its
bytes while the copies of one ``Holdings`` stay within ``COPY_BYTES`` (copying and comparing run
at memory speed, ten times faster than hashing), a SHA-1 of them beyond (the soak tier's
gigabytes); either way every bit counts. A re-check compares the bytes (or the hash) again, and
only when they changed runs the array's own check (which names the first wrong element against
values computed from the inputs). Re-checks never raise: they return findings, so every rank
reaches the settle after them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

from conformance.specs.calls import local
from conformance.specs.sizes import same_bits
from conformance.specs.tolerance import same_bytes

# Why a held array is wrong now (naming the first wrong element), or None.
Check = Callable[[], str | None]

# Bytes of private copies one ``Holdings`` keeps; the arrays held past it are hashed instead.
COPY_BYTES = 512 * 1024 * 1024


def fingerprint(a: np.ndarray) -> str:
    """A hash of ``a``'s dtype, shape and bytes (every bit counts: NaN payloads, -0.0)."""
    h = hashlib.sha1(f"{a.dtype.str}{a.shape}".encode())
    h.update(np.ascontiguousarray(a).view(np.uint8).data)
    return h.hexdigest()


@dataclass
class _Held:
    label: str
    array: np.ndarray
    # What the array held when it was taken: a private copy, or ``fingerprint``'s hash.
    pristine: np.ndarray | str
    check: Check
    reported: bool = False

    def changed(self) -> bool:
        if isinstance(self.pristine, str):
            return fingerprint(self.array) != self.pristine
        return not same_bytes(self.array, self.pristine)


class Holdings:
    """Results and inputs the caller keeps while later calls run, each with its own check."""

    def __init__(self) -> None:
        self._held: list[_Held] = []
        self._copied = 0  # bytes of the private copies kept

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, label: str, array: object, check: Check, like: np.ndarray | None = None) -> None:
        """Keep ``array`` (already checked correct, or its finding already reported) and
        fingerprint it now; ``check`` says what is wrong with it later. Non-arrays are ignored
        (their finding was reported when they were returned). ``like``: a read-only array that
        should hold the same bytes (what the check compares it with, e.g. the pristine input);
        when it does, it is the reference, instead of a copy."""
        if not isinstance(array, np.ndarray):
            return
        pristine: np.ndarray | str
        if like is not None and not like.flags.writeable and same_bytes(array, like):
            pristine = like
        elif self._copied + array.nbytes <= COPY_BYTES:
            self._copied += array.nbytes
            pristine = np.array(array, order="C", copy=True)
        else:
            pristine = fingerprint(array)
        self._held.append(_Held(label, array, pristine, check))

    def recheck(self, after: str, nbytes: Iterable[int] | None = None) -> list[str | None]:
        """Findings for every held array that changed since it was taken (each reported once),
        ``after`` naming the call that just ran. With ``nbytes``, only the arrays of those byte
        sizes (the ones a pool or cache would hand out again for the call that just ran: a cheap
        check after each call, where re-hashing everything held would grow with the square of
        the calls); without, all of them."""
        sizes = None if nbytes is None else set(nbytes)
        problems: list[str | None] = []
        for held in self._held:
            if held.reported or (sizes is not None and held.array.nbytes not in sizes):
                continue
            if not held.changed():
                continue
            held.reported = True
            found = local(held.check)
            problems.append(
                f"{held.label}, held by the caller, changed after {after}: "
                + (found or "its bytes differ from when it was returned")
            )
        return problems


def input_check(array: np.ndarray, pristine: np.ndarray, label: str) -> Check:
    """A check that the input ``array`` still holds ``pristine``'s bits (what it held before the
    call), naming the first changed element."""
    return lambda: same_bits(array.reshape(-1), pristine.reshape(-1), f"{label}: the input")
