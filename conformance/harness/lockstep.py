"""Hypothesis in lockstep across MPI ranks.

Every rank runs the same Hypothesis search; it stays identical only if every rank draws the same
examples and sees the same outcome for each. So:

- the ``conformance`` settings profile is derandomized (every rank draws the same sequence), has no
  deadline and no example database (timings and per-rank databases would make ranks diverge), and
  suppresses the timing-based health check;
- ``lockstep`` (placed under ``@given``) compares the drawn arguments across ranks before running
  an example, and every ``data.draw`` of ``st.data()`` inside it (a divergence fails as such on
  every rank, naming what each rank drew); then it agrees on the example's outcome before
  Hypothesis sees it: if any rank failed, every rank raises the same ``LockstepFailure`` from the
  same place, so shrinking proceeds identically everywhere. It also restarts the per-test
  watchdog for each example.

    @given(dtype=dtype_names(), shape=shapes(), seed=seeds())
    @lockstep
    def test_all_sum(backend, world, dtype, shape, seed): ...

Per-rank values come from the drawn seed and the rank (``conformance.strategies.rank_array``).
"""

from __future__ import annotations

import functools
import hashlib
import os
import traceback
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.errors import UnsatisfiedAssumption

from conformance.harness import collective, watchdog

PROFILE = "conformance"

F = TypeVar("F", bound=Callable[..., Any])


def register_profile() -> None:
    """Register the ``conformance`` Hypothesis profile (``CONFORMANCE_MAX_EXAMPLES`` sets its
    example count; otherwise Hypothesis's default)."""
    examples = os.environ.get("CONFORMANCE_MAX_EXAMPLES")
    settings.register_profile(
        PROFILE,
        derandomize=True,
        database=None,
        deadline=None,
        print_blob=False,
        suppress_health_check=[HealthCheck.too_slow],
        # explain re-runs examples with extra work; the report does not need it.
        phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
        **({"max_examples": int(examples)} if examples else {}),
    )


def load_profile() -> None:
    """Make the ``conformance`` profile the default for this process."""
    settings.load_profile(PROFILE)


class LockstepFailure(AssertionError):
    """An example failed on ``failing_ranks``; raised identically on every rank."""

    def __init__(self, message: str, failing_ranks: list[int]) -> None:
        super().__init__(message)
        self.failing_ranks = failing_ranks


class DivergentDraws(pytest.fail.Exception):  # type: ignore[misc, name-defined]
    """The ranks drew different examples: the Hypothesis search is not in step.
    ``failing_ranks`` drew differently from rank 0."""

    def __init__(self, message: str, failing_ranks: list[int]) -> None:
        super().__init__(message)
        self.failing_ranks = failing_ranks


def canonical(value: Any) -> Any:
    """A rank-independent description of a drawn value: plain data as is, arrays by content,
    anything else (fixtures such as the backend or the group) by type name only."""
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return value
    if isinstance(value, (float, complex)):
        return (type(value).__name__, repr(value))  # repr: NaN must equal NaN here
    if isinstance(value, np.ndarray):
        digest = hashlib.sha256(np.ascontiguousarray(value).tobytes()).hexdigest()[:16]
        return ("ndarray", str(value.dtype), value.shape, digest)
    if isinstance(value, np.generic):
        return ("scalar", str(value.dtype), repr(value.item()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, *(canonical(v) for v in value))
    if isinstance(value, dict):
        return ("dict", *sorted((str(k), canonical(v)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return ("set", *sorted(repr(canonical(v)) for v in value))
    return ("object", type(value).__qualname__)


def _compare(kind: str, value: Any) -> None:
    drawn = collective.exchange(kind, canonical(value))
    divergent = [rank for rank, theirs in enumerate(drawn) if theirs != drawn[0]]
    if divergent:
        shown = "".join(f"\n  rank {rank}: {drawn[rank]!r}" for rank in range(len(drawn)))
        raise DivergentDraws(
            f"divergent draws ({kind}): ranks {divergent} drew differently from rank 0 "
            f"(Hypothesis is not in step: use the '{PROFILE}' profile, draw per-rank data from "
            f"the seed and the rank, not from the rank's own randomness):{shown}",
            divergent,
        )


class _LockstepData:
    """Wraps Hypothesis's ``st.data()`` object so draws made inside the test are compared across
    ranks too."""

    def __init__(self, data: Any) -> None:
        self._data = data

    def draw(self, strategy: Any, label: Any = None) -> Any:
        value = self._data.draw(strategy, label=label)
        _compare("lockstep inner draw", value)
        return value

    def __getattr__(self, name: str) -> Any:
        return getattr(self._data, name)


def _is_data_object(value: Any) -> bool:
    return type(value).__name__ == "DataObject" and callable(getattr(value, "draw", None))


def _verdict(exc: BaseException | None) -> tuple[str, str]:
    if exc is None:
        return ("passed", "")
    if isinstance(exc, UnsatisfiedAssumption):
        return ("rejected", "")
    # The whole traceback travels, so every rank raises the same message and rank 0 can show it.
    return ("failed", "".join(traceback.format_exception(exc)).rstrip())


def lockstep(test: F) -> F:
    """Run each Hypothesis example of ``test`` in step on every rank (see module docstring)."""

    @functools.wraps(test)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        dog = watchdog.current()
        if dog is not None:
            dog.pet()
        _compare("lockstep draws", (args, kwargs))
        kwargs = {k: _LockstepData(v) if _is_data_object(v) else v for k, v in kwargs.items()}
        error: Exception | None = None
        try:
            test(*args, **kwargs)
        except Exception as exc:  # BaseExceptions (pytest outcomes) desync the helpers instead
            error = exc
        verdicts = collective.exchange("lockstep outcome", _verdict(error))
        failed = {rank: text for rank, (kind, text) in enumerate(verdicts) if kind == "failed"}
        if failed:
            detail = "".join(f"\n--- rank {rank} ---\n{text}" for rank, text in failed.items())
            # Same type, same line, no cause on every rank: Hypothesis keys distinct bugs on
            # (type, location, cause chain), and shrinking must not differ between ranks.
            raise LockstepFailure(
                f"example failed on ranks {sorted(failed)}{detail}", sorted(failed)
            )
        if any(kind == "rejected" for kind, _ in verdicts):
            raise UnsatisfiedAssumption()

    return wrapper  # type: ignore[return-value]
