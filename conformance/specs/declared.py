"""Which dtypes a spec test runs an op on, and the check that the others raise as declared.

A feature the backend declares unsupported (``conformance.backend.Capabilities``) is never
dropped or skipped silently: the test that would use it first checks, once, that it raises the
error the manifest names, on every rank, fast (``conformance.harness.collective``), then runs the
features declared supported as before. Every rank holds the same capabilities, so every rank
takes the same branch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from conformance.harness.collective import expect_unsupported
from conformance.specs import data, reductions
from conformance.specs.calls import settle

P2P_OPS = ("send", "recv", "recv_like")


def collective_dtypes(
    backend: Any, capabilities: Any, op: str, group: Any, names: Sequence[str]
) -> list[str]:
    """The dtypes of ``names`` to test collective ``op`` on over ``group``.

    ``op`` declared unsupported is checked once to raise as declared and nothing is returned;
    each dtype declared unsupported is checked to raise as declared and left out
    (``reductions.supported_dtypes``). sum_scatter on a group of one is the identity whatever
    the backend declares (SEMANTICS.md, Size-1 groups), so there every dtype is tested."""
    if op == "sum_scatter" and group.size() == 1 and not capabilities.supports(op):
        return list(names)
    if not capabilities.supports(op):
        x = data.contribution(group.rank(), (2 * group.size(),), "float32")
        reductions.unsupported_raises(backend, op, x, group)
        return []
    return reductions.supported_dtypes(backend, capabilities, op, group, names)


def p2p_dtypes(
    backend: Any, capabilities: Any, group: Any, names: Sequence[str], ops: Sequence[str] = P2P_OPS
) -> list[str]:
    """The dtypes of ``names`` every op of ``ops`` (send, recv, recv_like) is declared to
    support; for each other one, the first op of ``ops`` declared unsupported on it is checked
    to raise as declared. ``group`` has at least two ranks; every rank sends to rank + 1 and
    receives from rank - 1, so a correct backend raises before any message is in flight."""
    kept = []
    for name in names:
        missing = [op for op in ops if not capabilities.supports(op, name)]
        if missing:
            _p2p_raises(backend, missing[0], name, group)
        else:
            kept.append(name)
    return kept


def _p2p_raises(backend: Any, op: str, name: str, group: Any) -> None:
    rank, size = group.rank(), group.size()
    x = data.contribution(rank, (3,), name)

    def go() -> Any:
        if op == "send":
            return backend.send(backend.asarray(x), (rank + 1) % size, group=group)
        if op == "recv":
            return backend.recv(x.shape, backend.dtype(name), (rank - 1) % size, group=group)
        return backend.recv_like(backend.asarray(x), (rank - 1) % size, group=group)

    if not expect_unsupported(backend, op, go, for_dtype=name):
        settle([f"{op} on {name} is supported; _p2p_raises misused"])
