"""Assertions that hold or fail on every rank together.

A plain ``assert`` that fails on one rank fails the test everywhere anyway (outcomes are agreed
after each test), but it lets that rank stop early while the others go on into the next data-plane
operation and block. These helpers agree first, over the control plane, then fail on every rank
with a message naming the ranks concerned:

    collective_assert(np.array_equal(got, want), f"got {got}, want {want}")
    with collective_raises(ValueError, match="Invalid destination"):
        backend.send(x, size, group=world)
    if expect_unsupported(backend, "sum_scatter", backend.sum_scatter, x):
        return  # it raised, on every rank, the error the manifest names for the feature

Every rank must call the same helpers in the same order; a rank that reaches a different exchange
gets ``CollectiveDesync`` (a pytest failure, so ``except Exception`` does not swallow it).
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest

from conformance.backend import Backend, Capabilities
from conformance.harness import control

ExcTypes = type[BaseException] | tuple[type[BaseException], ...]


class CollectiveDesync(pytest.fail.Exception):  # type: ignore[misc, name-defined]
    """The ranks called different collective helpers (or the same ones in another order);
    ``failing_ranks`` are the ranks that were elsewhere."""

    def __init__(self, message: str, failing_ranks: list[int] | None = None) -> None:
        super().__init__(message)
        if failing_ranks:
            self.failing_ranks = failing_ranks


class CollectiveFailure(AssertionError):
    """A collective check failed on at least one rank; raised on every rank."""

    def __init__(self, message: str, failing_ranks: list[int]) -> None:
        super().__init__(message)
        self.failing_ranks = failing_ranks


def exchange(kind: str, value: Any) -> list[Any]:
    """Every rank's ``value`` for the next helper exchange of the current test.

    Raises CollectiveDesync when the ranks are at different exchanges, and from then on for the
    rest of the test without communicating (the other ranks have moved on)."""
    plane = control.current()
    if plane.desynced:
        raise CollectiveDesync(
            f"{kind}: an earlier collective helper of this test desynchronised the ranks"
        )
    label = plane.next_label(kind)
    try:
        return plane.allgather(label, value)
    except control.Desync as exc:
        plane.desynced = True
        elsewhere = [rank for rank, other in enumerate(exc.labels) if other != label]
        raise CollectiveDesync(
            f"{kind} (collective helper #{label[2]}) was not reached by ranks {elsewhere}: "
            f"{exc}. Every rank must call the same collective helpers in the same order.",
            elsewhere,
        ) from None


def collective_assert(condition: object, message: str = "") -> None:
    """Fail on every rank unless ``condition`` is true on every rank; the error names the ranks
    where it was false and each one's message."""
    __tracebackhide__ = True  # a failure points at the test line, not here
    results = exchange("collective_assert", (bool(condition), str(message)))
    failing = [rank for rank, (ok, _) in enumerate(results) if not ok]
    if not failing:
        return
    details = _per_rank({rank: results[rank][1] for rank in failing})
    raise CollectiveFailure(
        f"collective assertion failed on ranks {failing} of {len(results)}{details}", failing
    )


def _per_rank(messages: dict[int, str]) -> str:
    distinct = set(messages.values()) - {""}
    if not distinct:
        return ""
    if len(messages) == 1:
        rank, text = next(iter(messages.items()))
        return f": rank {rank}: {text}"
    if len(distinct) == 1:
        return f": {distinct.pop()}"
    return "".join(f"\n  rank {rank}: {text}" for rank, text in messages.items() if text)


@dataclass
class RaisesInfo:
    """What the body raised on this rank (``value`` is None until the block exits)."""

    value: BaseException | None = None

    @property
    def type(self) -> type[BaseException] | None:
        return type(self.value) if self.value is not None else None


def _type_names(expected: ExcTypes) -> str:
    types = expected if isinstance(expected, tuple) else (expected,)
    return " or ".join(t.__name__ for t in types)


def _verdict(
    exc: BaseException | None, expected: ExcTypes, match: str | None, reject: ExcTypes
) -> str:
    """'' when ``exc`` is what the caller expects, else what happened instead."""
    if exc is None:
        return "returned normally"
    described = f"raised {type(exc).__name__}: {exc}"
    if reject and isinstance(exc, reject):
        return described
    if not isinstance(exc, expected):
        return described
    if match is not None and not re.search(match, str(exc)):
        return f"{described} (message does not match {match!r})"
    return ""


@contextmanager
def _raises(expected: ExcTypes, match: str | None, reject: ExcTypes) -> Iterator[RaisesInfo]:
    __tracebackhide__ = True
    info = RaisesInfo()
    try:
        yield info
    except Exception as exc:
        info.value = exc
    # BaseExceptions (pytest outcomes, CollectiveDesync, KeyboardInterrupt) propagate without an
    # exchange: the other ranks learn of them as a desync.
    verdict = _verdict(info.value, expected, match, reject)
    verdicts = exchange("collective_raises", verdict)
    failing = [rank for rank, text in enumerate(verdicts) if text]
    if failing:
        wanted = _type_names(expected) + (f" matching {match!r}" if match else "")
        details = "".join(f"\n  rank {rank}: {verdicts[rank]}" for rank in failing)
        raise CollectiveFailure(
            f"expected {wanted} on every rank; not so on ranks {failing} of {len(verdicts)}"
            f"{details}",
            failing,
        ) from (info.value if info.value is not None and verdict else None)


def collective_raises(
    expected: ExcTypes,
    fn: Callable[..., Any] | None = None,
    *args: Any,
    match: str | None = None,
    **kwargs: Any,
) -> Any:
    """Require every rank to raise ``expected`` (a type or tuple of types) whose message matches
    the regular expression ``match``; otherwise fail on every rank, naming each rank that returned
    normally or raised something else.

    Context manager (``with collective_raises(ValueError): ...``, yields a RaisesInfo) or call form
    (``collective_raises(ValueError, fn, *args, match=..., **kwargs)``, returns the RaisesInfo).
    Hangs are bounded by the harness's per-test watchdog."""
    __tracebackhide__ = True
    if fn is None:
        if args or kwargs:
            raise TypeError("collective_raises: arguments given without a function to call")
        return _raises(expected, match, ())
    with _raises(expected, match, ()) as info:
        fn(*args, **kwargs)
    return info


def expect_unsupported(
    backend: Backend | Capabilities,
    op: str,
    fn: Callable[..., Any],
    *args: Any,
    for_dtype: str | None = None,
    **kwargs: Any,
) -> bool:
    """Check a declared-unsupported feature instead of skipping it.

    If ``backend``'s capabilities support ``op`` (on ``for_dtype``, when given), do nothing and
    return False: the caller goes on to test the feature. Otherwise require ``fn(*args, **kwargs)``
    to raise, on every rank, the error the manifest names for that feature (type and message
    pattern: ``conformance.specs.manifest.unsupported_error``; a TimeoutError never counts, an
    unsupported feature must fail fast), note the check for the test's record and return True.
    With a Backend, ``fn``'s result is evaluated, so a lazy backend's error surfaces inside the
    check."""
    capabilities = backend.capabilities if isinstance(backend, Backend) else backend
    if capabilities.supports(op, for_dtype):
        return False

    def call() -> None:
        result = fn(*args, **kwargs)
        if isinstance(backend, Backend) and result is not None:
            backend.evaluate(result)

    # A whole op declared unsupported is checked as that op, whatever dtype the caller passed.
    dtype = for_dtype if capabilities.supports(op) else None
    feature = f"{op}[{dtype}]" if dtype else op
    raises_as_declared(feature, call, op=op, dtype=dtype)
    return True


def raises_as_declared(
    feature: str, fn: Callable[[], Any], *, op: str | None = None, dtype: str | None = None
) -> None:
    """Require ``fn()`` to raise, on every rank, the error the manifest names for the
    declared-unsupported ``feature`` (``op``/``dtype`` select the manifest entry; default: the
    feature id itself), and note ``feature`` as checked for the test's record."""
    from conformance.specs.manifest import unsupported_error

    names, match = unsupported_error(op or feature, dtype)
    expected = tuple(_exception_type(name) for name in names)
    with _raises(expected, match or None, (TimeoutError,)):
        fn()
    _DECLARED_CHECKS.append(feature)


def _exception_type(name: str) -> type[BaseException]:
    found = getattr(builtins, name, None)
    if not (isinstance(found, type) and issubclass(found, BaseException)):
        raise ValueError(f"manifest names {name!r}, which is not a built-in exception type")
    return found


# Declared-unsupported features the current test checked (the plugin resets it per test).
_DECLARED_CHECKS: list[str] = []


def begin_test() -> None:
    """Forget the previous test's declared-unsupported checks."""
    _DECLARED_CHECKS.clear()


def declared_checks() -> list[str]:
    """The declared-unsupported features the current test checked, in order, once each."""
    return list(dict.fromkeys(_DECLARED_CHECKS))
