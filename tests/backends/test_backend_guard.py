"""A test-runner control-flow exception raised inside a backend call is an error naming the call,
never a skip, an expected failure or an ended session."""

from __future__ import annotations

import inspect
import types
import unittest

import numpy as np
import pytest
from hypothesis import assume

import reference
from conformance.backend import Backend, BackendControlFlowError


def _backend(**overrides) -> Backend:
    api = types.SimpleNamespace(**{name: getattr(reference, name) for name in ("init", "Group")})
    api.all_sum = overrides.get("all_sum", reference.all_sum)
    return Backend("guarded", api, to_numpy=overrides.get("to_numpy"))


@pytest.mark.parametrize(
    "escape",
    [
        lambda: pytest.skip("too large"),
        lambda: pytest.xfail("known"),
        lambda: pytest.fail("nope"),
        lambda: pytest.exit("bye"),
        lambda: assume(False),
        lambda: (_ for _ in ()).throw(unittest.SkipTest("unittest style")),
    ],
    ids=["skip", "xfail", "fail", "exit", "assume", "unittest"],
)
def test_a_skip_inside_an_op_is_an_error_naming_the_call(escape) -> None:
    def all_sum(x, *, group=None, stream=None):
        escape()

    backend = _backend(all_sum=all_sum)
    with pytest.raises(BackendControlFlowError, match="the backend call all_sum raised"):
        backend.all_sum(np.ones(3))


def test_a_skip_inside_an_adapter_hook_is_an_error_naming_the_hook() -> None:
    def to_numpy(x):
        pytest.skip("cannot convert")

    with pytest.raises(BackendControlFlowError, match="the backend call to_numpy raised Skipped"):
        _backend(to_numpy=to_numpy).to_numpy(np.ones(3))


def test_ordinary_errors_and_results_pass_through_unchanged() -> None:
    def all_sum(x, *, group=None, stream=None):
        raise TypeError("unsupported dtype")

    with pytest.raises(TypeError, match="unsupported dtype"):
        _backend(all_sum=all_sum).all_sum(np.ones(3))
    backend = _backend()
    assert backend.all_sum(np.arange(3.0)).tolist() == [0.0, 1.0, 2.0]
    # The guard keeps what the spec reads of the API: its signature, and Group as a class.
    assert inspect.signature(backend.all_sum) == inspect.signature(reference.all_sum)
    assert backend.Group is reference.Group
