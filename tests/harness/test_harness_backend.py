"""Backend selection by every route, the numpy wrapping, and Capabilities."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import reference
from conformance.backend import (
    API_NAMES,
    DTYPE_NAMES,
    Backend,
    BackendLoadError,
    Capabilities,
    load_backend,
    numpy_dtype,
    own_pages,
)


def test_reference_is_built_in_and_wrapped_with_numpy_hooks():
    backend = load_backend("reference")
    assert backend.name == "reference"
    assert backend.version == reference.__version__
    assert backend.api.all_sum is reference.all_sum
    a = np.arange(3, dtype=np.int16)
    converted = backend.asarray(a)
    assert converted is not a and np.array_equal(converted, a)
    assert backend.to_numpy(converted).dtype == np.int16
    assert backend.dtype("bfloat16") == numpy_dtype("bfloat16")
    assert backend.capabilities.timeouts  # reference has set_timeout
    previous = backend.set_timeout(12.5)
    try:
        assert reference.get_timeout() == 12.5
    finally:
        backend.set_timeout(previous)


@pytest.mark.parametrize(
    "make",
    [
        lambda: np.arange(3, dtype=np.int16),
        lambda: np.arange(40_000, dtype=np.float64)[::-3],  # large, strided, reversed
        lambda: np.asfortranarray(np.arange(300 * 200, dtype=np.float32).reshape(300, 200)),
        lambda: np.frombuffer(np.arange(80_001, dtype=np.uint8).tobytes(), np.uint8)[1:],
    ],
    ids=["small", "strided", "fortran", "unaligned"],
)
def test_numpy_asarray_copies_keep_the_layout_at_every_size(make):
    """The numpy hook's copy (malloc below 64 KiB, a mapping of its own above) has the input's
    values, shape, strides, read-only flag and address modulo 64, and shares no memory with it."""
    a = make()
    copy = load_backend("reference").asarray(a)
    assert copy.tobytes() == a.tobytes() and copy.shape == a.shape and copy.strides == a.strides
    assert copy.ctypes.data % 64 == a.ctypes.data % 64
    assert copy.flags.writeable == a.flags.writeable
    assert not np.shares_memory(copy, a)


def test_own_pages_start_a_page_and_are_writable():
    for nbytes in (0, 1, 4096, 5 << 20):
        raw = own_pages(nbytes)
        assert raw.dtype == np.uint8 and raw.size == nbytes and raw.flags.writeable
        assert raw.ctypes.data % 4096 == 0
        raw[:] = 7
        assert int(raw.sum()) == 7 * nbytes


def test_numpy_module_gets_full_capabilities():
    backend = load_backend("fake_numpy_api")
    caps = backend.capabilities
    assert caps.ops == frozenset(API_NAMES)
    assert all(caps.supports(op, d) for op in ("all_sum", "recv") for d in DTYPE_NAMES)
    assert caps.split and caps.sum_scatter and caps.p2p_topology == "any"
    assert not caps.timeouts  # no set_timeout in that module
    with pytest.raises(NotImplementedError, match="set_timeout"):
        backend.set_timeout(1.0)


def test_module_hooks_and_capabilities_are_used():
    import fake_adapter

    backend = load_backend("fake_adapter")
    assert (backend.name, backend.version) == ("fake-adapter", "9.9.9")
    assert backend.capabilities is fake_adapter.capabilities
    fake_adapter.hook_calls.clear()
    backend.evaluate(backend.to_numpy(backend.asarray(np.zeros(2))))
    assert fake_adapter.hook_calls == ["asarray", "to_numpy", "evaluate"]


def test_module_attribute_route():
    backend = load_backend("fake_factory:backend")
    assert (backend.name, backend.version) == ("fake-ready", "1.2.3")


def test_factory_route():
    assert load_backend("fake_factory:make").name == "fake-made"


def test_missing_module_and_attribute_are_clear():
    with pytest.raises(BackendLoadError, match="cannot import module 'no_such_backend_xyz'"):
        load_backend("no_such_backend_xyz")
    with pytest.raises(BackendLoadError, match="has no attribute 'nothing'"):
        load_backend("fake_factory:nothing")
    with pytest.raises(BackendLoadError, match="neither a Backend nor an object with the API"):
        load_backend("json")


def test_faulty_route_calls_make_backend(monkeypatch):
    made: list[str] = []

    def make_backend(fault: str) -> Backend:
        made.append(fault)
        return Backend(f"faulty:{fault}", reference)

    module = types.ModuleType("conformance.adapters.faulty")
    module.make_backend = make_backend  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "conformance.adapters.faulty", module)
    assert load_backend("faulty:drop-message").name == "faulty:drop-message"
    assert made == ["drop-message"]


def test_faulty_route_without_module_is_clear(monkeypatch):
    monkeypatch.setitem(sys.modules, "conformance.adapters.faulty", None)
    with pytest.raises(BackendLoadError, match=r"'faulty:x'.*conformance.adapters"):
        load_backend("faulty:x")


def test_mlx_route_is_lazy(monkeypatch):
    module = types.ModuleType("conformance.adapters.mlx")

    def failing_getattr(name: str):
        raise ImportError("MLX is not installed")

    module.__getattr__ = failing_getattr  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "conformance.adapters.mlx", module)
    with pytest.raises(BackendLoadError, match=r"built-in backend 'mlx'.*MLX is not installed"):
        load_backend("mlx")


def test_entry_point_route(tmp_path, monkeypatch):
    dist = tmp_path / "fake_conformance_backend-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-conformance-backend\n")
    (dist / "entry_points.txt").write_text(
        "[conformance.backends]\nmy-fake = fake_factory:make\nbroken = no_such_module_q:x\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_backend("my-fake").name == "fake-made"
    with pytest.raises(BackendLoadError, match=r"entry point 'broken'.*failed to load"):
        load_backend("broken")


def test_unknown_api_attribute_is_an_attribute_error():
    backend = load_backend("fake_adapter")
    with pytest.raises(AttributeError, match="no attribute 'bogus'"):
        _ = backend.bogus


def test_capabilities_validate_and_answer():
    with pytest.raises(ValueError, match="p2p_topology"):
        Capabilities(p2p_topology="ring")
    with pytest.raises(ValueError, match="unknown names"):
        Capabilities(ops=frozenset({"all_sum", "all_reduce"}))
    with pytest.raises(ValueError, match="unknown dtypes"):
        Capabilities(dtypes={"all_sum": frozenset({"float128"})})
    caps = Capabilities(
        sum_scatter=False, split=False, p2p_topology="neighbours", send_to_self=False
    )
    assert not caps.supports("sum_scatter") and not caps.supports("split")
    assert caps.supports("all_sum", "bfloat16")
    with pytest.raises(ValueError, match="unknown op"):
        caps.supports("all_reduce")
    assert caps.p2p_allowed(0, 1, 4) and caps.p2p_allowed(0, 3, 4)
    assert not caps.p2p_allowed(0, 2, 4) and not caps.p2p_allowed(2, 2, 4)
    assert Capabilities().p2p_allowed(0, 2, 4)


def test_declared_timeouts_need_set_timeout():
    with pytest.raises(BackendLoadError, match="timeouts=True"):
        Backend("x", reference, capabilities=Capabilities(timeouts=True))
