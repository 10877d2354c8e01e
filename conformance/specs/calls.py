"""Calling the backend so that every rank leaves a spec test together.

Under MPI a spec test fails safely only if no rank is left blocked: when one rank raises while
its peers go on to the next collective, the peers wait for a rank that never comes. So the specs
call the API through ``call`` (an exception on any rank becomes a failure on every rank, right
there), collect their findings as messages instead of asserting mid-way, and settle them at the
end with ``settle`` (one collective check). ``collective_assert`` / ``collective_raises`` are the
harness's; this module only shapes how the specs use them.
"""

from __future__ import annotations

import hashlib
import traceback
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from conformance.harness.collective import collective_assert
from conformance.records import format_findings


def attempt(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, Exception | None]:
    """``fn(*args, **kwargs)`` as ``(value, None)``, or ``(None, error)`` if it raised."""
    try:
        return fn(*args, **kwargs), None
    except Exception as error:
        return None, error


def describe_error(error: BaseException) -> str:
    last = traceback.extract_tb(error.__traceback__)[-1:] if error.__traceback__ else []
    where = f" at {last[0].filename}:{last[0].lineno}" if last else ""
    return f"{type(error).__name__}: {error}{where}"


def call(what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn`` on every rank; if it raises on any rank, the test fails on every rank here."""
    __tracebackhide__ = True  # pytest reports the failure at the test's line, not here
    value, error = attempt(fn, *args, **kwargs)
    collective_assert(error is None, f"{what} raised {describe_error(error) if error else ''}")
    return value


def settle(problems: Iterable[str | None], what: str = "") -> None:
    """One collective check of everything a test found: passes only if no rank found anything.

    The failure's first line names the first finding; then every finding follows on its own
    tagged line (``records.format_findings``), so a known deviation can excuse the findings it
    names (a dtype, an op) and not the others of the same test. A finding names its case.
    """
    __tracebackhide__ = True  # pytest reports the failure at the test's line, not here
    found = [p for p in problems if p]
    prefix = f"{what}: " if what else ""
    more = f" (and {len(found) - 1} more findings)" if len(found) > 1 else ""
    text = f"{prefix}{found[0]}{more}{format_findings(found)}" if found else ""
    collective_assert(not found, text)


def local(check: Callable[[], str | None]) -> str | None:
    """Run a rank-local check; an exception in it becomes a finding, not an early exit."""
    value, error = attempt(check)
    if error is not None:
        return f"check raised {describe_error(error)}"
    return value


def digest(a: Any) -> str:
    """A fingerprint of an array's dtype, shape and bytes, to compare results across ranks."""
    if not isinstance(a, np.ndarray):
        return f"<{type(a).__name__}>"
    body = np.ascontiguousarray(a).reshape(-1).view(np.uint8)  # hashed in place, not copied
    return f"{a.dtype.str}{a.shape}:{hashlib.sha1(body).hexdigest()}"


def differs_between_ranks(control: Any, a: Any, what: str = "result") -> str | None:
    """A finding if ``a`` (an array) is not bit-identical on every rank of the control plane.

    Collective over the control plane (every rank must call it, in the same order as the other
    helpers), labelled like the harness's own helper exchanges so a desync is reported as such.
    """
    digests = control.allgather(control.next_label("same-on-every-rank"), digest(a))
    if len(set(digests)) == 1:
        return None
    groups: dict[str, list[int]] = {}
    for rank, d in enumerate(digests):
        groups.setdefault(d, []).append(rank)
    return f"{what} differs between ranks: " + " vs ".join(str(r) for r in groups.values())


def call_everywhere(control: Any, what: str, fn: Callable[[], Any]) -> tuple[Any, list[str]]:
    """``fn()`` on every rank, then one control exchange: the result and every rank's digest.

    If ``fn`` raised on any rank, every rank fails here (so none goes on to the next collective
    alone). Cheaper than ``call`` followed by ``differs_between_ranks``: one exchange, not two.
    """
    __tracebackhide__ = True  # pytest reports the failure at the test's line, not here
    value, error = attempt(fn)
    mine = (describe_error(error) if error else None, None if error else digest(value))
    everyone = control.allgather(control.next_label("call-everywhere"), mine)
    failed = {rank: text for rank, (text, _) in enumerate(everyone) if text}
    if failed:
        detail = "; ".join(f"rank {r}: {t}" for r, t in failed.items())
        raise AssertionError(f"{what} raised on rank(s) {sorted(failed)}: {detail}")
    return value, [d for _, d in everyone]


def differing(digests: list[str], what: str = "result") -> str | None:
    """A finding if the per-rank digests from ``call_everywhere`` are not all equal."""
    if len(set(digests)) == 1:
        return None
    groups: dict[str, list[int]] = {}
    for rank, d in enumerate(digests):
        groups.setdefault(d, []).append(rank)
    return f"{what} differs between ranks: " + " vs ".join(str(r) for r in groups.values())
