"""Spec of the API's names and signatures, checked against manifest.toml.

SEMANTICS.md, "Names" and "Signatures"; manifest entries' ``signature`` and ``keyword-only``
rules. Signatures come from ``inspect`` or, for compiled functions, the docstring
(``signatures.py``); keyword-only arguments are also checked by calling with them positionally.
"""

from __future__ import annotations

import numpy as np
import pytest

from conformance.harness.collective import collective_raises
from conformance.specs import data, manifest, signatures
from conformance.specs.calls import settle

pytestmark = pytest.mark.core

MANIFEST = manifest.load()
FUNCTIONS = [op for op, e in MANIFEST["ops"].items() if e["kind"] == "function"]
METHODS = [op for op, e in MANIFEST["ops"].items() if e["kind"] == "method"]
COLLECTIVES = ("all_sum", "all_max", "all_min", "all_gather", "sum_scatter")


def _params(ops):
    return [pytest.param(op, marks=pytest.mark.spec(op, rule="signature"), id=op) for op in ops]


def _signature_problem(obj, op):
    got = signatures.parameters(obj)
    if got is None:
        return None  # neither inspect nor a docstring tells; the keyword-only calls still check
    problem = signatures.difference(got, MANIFEST["ops"][op])
    return f"{op} {problem}" if problem else None


@pytest.mark.parametrize("op", _params(FUNCTIONS))
def test_function_signature(backend, capabilities, op):
    """The function exists and its parameters (names, kinds, defaults) match the manifest.

    SEMANTICS.md, Names (the eleven names of the API) and Signatures (see the manifest
    entry's ``signature`` rule for the exact line).
    """
    if op not in capabilities.ops:
        pytest.skip(f"backend declares {op} absent")
    obj = getattr(backend, op, None)
    if obj is None:
        settle([f"backend has no {op}"])
        return
    settle([None if callable(obj) else f"{op} is not callable", _signature_problem(obj, op)])


@pytest.mark.parametrize("op", _params(METHODS))
def test_group_method_signature(world, op):
    """rank, size and split are methods of the group with the manifest's parameters.

    SEMANTICS.md, Signatures: "Group.rank() -> int", and likewise size and split ...
    "`rank`/`size`/`split` are methods."
    """
    method = getattr(world, op.split(".")[1], None)
    if method is None or not callable(method):
        settle([f"group has no method {op}"])
        return
    settle([_signature_problem(method, op)])


def _positional_calls(backend, world, x):
    """Each data op with ``group`` passed positionally where only keywords are allowed."""
    int32 = backend.dtype("int32")
    return {
        **{op: (lambda op=op: getattr(backend, op)(x, world)) for op in COLLECTIVES},
        "send": lambda: backend.send(x, 0, world),
        "recv": lambda: backend.recv((2,), int32, 0, world),
        "recv_like": lambda: backend.recv_like(x, 0, world),
    }


_KEYWORD_OPS = (*COLLECTIVES, "send", "recv", "recv_like")


@pytest.mark.parametrize(
    "op", [pytest.param(op, marks=pytest.mark.spec(op, rule="keyword-only")) for op in _KEYWORD_OPS]
)
def test_group_is_keyword_only(backend, capabilities, world, op):
    """Passing ``group`` positionally is a TypeError (raised before any communication).

    SEMANTICS.md, Signatures: "`group` and `stream` are keyword-only (positional use:
    TypeError)."
    """
    if op not in capabilities.ops:
        pytest.skip(f"backend declares {op} absent")
    x = backend.asarray(data.contribution(world.rank(), (2,), "int32"))
    call = _positional_calls(backend, world, x)[op]
    with collective_raises(TypeError):
        backend.evaluate(call())


@pytest.mark.spec("all_sum", rule="keyword-only")
def test_stream_is_keyword_only(backend, world):
    """Passing ``stream`` positionally (after ``group``) is a TypeError too.

    SEMANTICS.md, Signatures: "`group` and `stream` are keyword-only (positional use:
    TypeError)."
    """
    x = backend.asarray(np.arange(2, dtype=np.int32))
    with collective_raises(TypeError):
        backend.evaluate(backend.all_sum(x, None, None))
