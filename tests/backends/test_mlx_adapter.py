"""The MLX adapter's own contract: array hooks, dtypes, capabilities, ring configuration.

One process, no MPI launcher needed. Tests that need MLX skip cleanly when it is not installed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from conformance.adapters import mlx as adapter
from conformance.backend import Backend, Capabilities
from conformance.specs.data import DTYPE_NAMES, contribution, np_dtype


class FakeComm:
    """Just enough of an mpi4py communicator for configure_ring, with canned peer ports."""

    def __init__(self, rank: int, size: int) -> None:
        self.rank, self.size = rank, size

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return self.size

    def allgather(self, value: Any) -> list[Any]:
        # Ports are canned per rank; host names and addresses are this rank's (one host).
        canned = (lambda r: 40000 + r) if isinstance(value, int) else (lambda r: value)
        return [canned(r) if r != self.rank else value for r in range(self.size)]


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # setenv first, so that monkeypatch restores the variables configure_ring sets (a leaked
    # MLX_RANK would make a later init in this process wait for peers that do not exist).
    for name in (adapter.ENV_RANK, adapter.ENV_HOSTFILE):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def test_configure_ring_writes_hostfile_in_rank_order(clean_env: None) -> None:
    path = adapter.configure_ring(FakeComm(rank=1, size=3))
    assert path is not None and os.environ[adapter.ENV_HOSTFILE] == path
    assert os.environ[adapter.ENV_RANK] == "1"
    with open(path, encoding="utf-8") as fh:
        hosts = json.load(fh)
    assert [len(h) for h in hosts] == [1, 1, 1]
    assert hosts[0] == ["127.0.0.1:40000"] and hosts[2] == ["127.0.0.1:40002"]
    host, port = hosts[1][0].split(":")
    assert host == "127.0.0.1" and 0 < int(port) < 65536 and int(port) not in (40000, 40002)


def test_configure_ring_leaves_singleton_alone(clean_env: None) -> None:
    assert adapter.configure_ring(FakeComm(rank=0, size=1)) is None
    assert adapter.ENV_RANK not in os.environ and adapter.ENV_HOSTFILE not in os.environ


def test_configure_ring_respects_existing_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(adapter.ENV_RANK, "2")
    monkeypatch.setenv(adapter.ENV_HOSTFILE, "/somewhere/hosts.json")
    assert adapter.configure_ring(FakeComm(rank=0, size=3)) is None
    assert os.environ[adapter.ENV_RANK] == "2"


def _ring_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Any, rank: int, ports: list[int]) -> None:
    hostfile = tmp_path / "hosts.json"
    hostfile.write_text(json.dumps([[f"127.0.0.1:{port}"] for port in ports]))
    monkeypatch.setenv(adapter.ENV_RANK, str(rank))
    monkeypatch.setenv(adapter.ENV_HOSTFILE, str(hostfile))


@pytest.mark.skipif(adapter.listening_ports() is None, reason="no /proc/net/tcp here")
def test_last_rank_waits_until_rank_0_listens(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    with socket.socket() as listener, socket.socket() as bound:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        bound.bind(("127.0.0.1", 0))  # bound, not listening: MLX would be refused there
        listening, silent = listener.getsockname()[1], bound.getsockname()[1]
        assert listening in adapter.listening_ports()
        _ring_env(monkeypatch, tmp_path, 2, [listening, 1, 2])
        assert adapter.wait_for_first_listener(seconds=2.0)
        _ring_env(monkeypatch, tmp_path, 2, [silent, 1, 2])
        started = time.monotonic()
        assert not adapter.wait_for_first_listener(seconds=0.2)
        assert time.monotonic() - started >= 0.2
        _ring_env(monkeypatch, tmp_path, 1, [silent, 1, 2])  # not the rank that connects first
        started = time.monotonic()
        assert not adapter.wait_for_first_listener(seconds=5.0)
        assert time.monotonic() - started < 1.0


def test_import_without_mlx_is_lazy_and_explains() -> None:
    # A fresh interpreter where "import mlx" fails: the module imports, ``backend`` explains.
    code = (
        "import sys; sys.modules['mlx'] = None\n"
        "import conformance.adapters.mlx as m\n"
        "try:\n    m.backend\nexcept ImportError as e:\n    print('ImportError:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert "ImportError:" in out.stdout and "pip install" in out.stdout


def test_capabilities_are_the_rings() -> None:
    assert adapter.ring_capabilities(1).sum_scatter
    caps = adapter.ring_capabilities(3)
    assert isinstance(caps, Capabilities)
    assert not caps.split and not caps.sum_scatter and not caps.send_to_self
    assert caps.p2p_topology == "neighbours" and not caps.timeouts
    assert caps.p2p_allowed(0, 3, 4) and caps.p2p_allowed(0, 1, 4)
    assert not caps.p2p_allowed(0, 2, 4) and not caps.p2p_allowed(1, 1, 4)
    for op in ("all_sum", "all_max", "all_min", "all_gather", "send", "recv", "recv_like"):
        assert all(caps.supports(op, name) for name in DTYPE_NAMES), op


@pytest.fixture(scope="module")
def ring() -> adapter.MLXRingBackend:
    pytest.importorskip("mlx.core")
    return adapter.MLXRingBackend()


def test_backend_attribute_is_a_backend_with_mlx_version(ring: adapter.MLXRingBackend) -> None:
    b = adapter.backend
    assert isinstance(b, Backend) and b.name == "mlx"
    assert b.version == ring.version == ring.mx.__version__
    assert b.all_sum is not None and b.Group is ring.mx.distributed.Group


@pytest.mark.parametrize("shape", [(), (0,), (3, 0), (5,), (2, 3, 4)], ids=str)
@pytest.mark.parametrize("name", DTYPE_NAMES)
def test_round_trip_keeps_shape_dtype_and_bits(
    ring: adapter.MLXRingBackend, name: str, shape: tuple[int, ...]
) -> None:
    a = contribution(3, shape, name)
    x = ring.asarray(a)
    assert x.dtype == ring.dtype(name) and tuple(x.shape) == shape
    back = ring.to_numpy(x)
    assert back.dtype == np_dtype(name) and back.shape == shape
    assert back.tobytes() == a.tobytes()


def test_round_trip_of_non_contiguous_and_special_values(ring: adapter.MLXRingBackend) -> None:
    a = np.arange(24, dtype=np.int32).reshape(4, 6)[::2, ::-3]
    assert np.array_equal(ring.to_numpy(ring.asarray(a)), a)
    specials = np.array([np.nan, np.inf, -np.inf, -0.0, 1e-40], dtype=np.float32)
    b = specials.astype(ml_dtypes.bfloat16)
    assert ring.to_numpy(ring.asarray(b)).tobytes() == b.tobytes()
    # MLX would narrow float64 to float32 without the explicit dtype.
    f = np.array([1.0 + 2.0**-40])
    assert ring.to_numpy(ring.asarray(f))[0] == f[0]


def test_unknown_dtype_name_is_rejected(ring: adapter.MLXRingBackend) -> None:
    with pytest.raises(KeyError, match="float128"):
        ring.dtype("float128")


def test_other_dtypes_reach_mlx_unchanged(ring: adapter.MLXRingBackend) -> None:
    # The adapter does not hide what MLX does with dtypes outside the 14.
    x = ring.asarray(np.array([1 + 2j], dtype=np.complex128))
    assert x.dtype == ring.mx.complex64


def test_eager_and_lazy_modes(ring: adapter.MLXRingBackend) -> None:
    lazy = adapter.MLXRingBackend(lazy=True)
    assert lazy.all_sum is ring.mx.distributed.all_sum
    assert ring.all_sum is not ring.mx.distributed.all_sum
    assert ring.all_sum.__name__ == "all_sum"
    # Argument errors are MLX's own (group is keyword-only).
    with pytest.raises(TypeError):
        ring.all_sum(ring.asarray(np.arange(3)), None)


def test_evaluate_ignores_non_arrays(ring: adapter.MLXRingBackend) -> None:
    x = ring.mx.arange(3) * 2
    ring.evaluate(x, None, 3, np.arange(2))
    assert ring.to_numpy(x).tolist() == [0, 2, 4]


def test_wrappers_carry_mlx_signatures(ring: adapter.MLXRingBackend) -> None:
    # The spec reads nanobind signatures from the first docstring line.
    from conformance.specs import signatures

    for op in ("init", "all_sum", "send", "recv", "recv_like"):
        want = signatures.parameters(getattr(ring.mx.distributed, op))
        assert want is not None and signatures.parameters(getattr(ring, op)) == want, op


def test_releases_without_an_op_declare_it_absent_and_raise() -> None:
    """An MLX release without sum_scatter (before 0.29.4) gets the op declared absent and a
    stand-in that raises RuntimeError naming it; the other ops stay."""

    class OldDistributed:
        def __getattr__(self, name: str) -> Any:
            if name == "sum_scatter":
                raise AttributeError(name)
            return lambda *a, **k: None

    missing = adapter.missing_ops(OldDistributed())
    assert missing == ("sum_scatter",)
    caps = adapter.ring_capabilities(1, missing)
    assert "sum_scatter" not in caps.ops and not caps.supports("sum_scatter")
    assert "sum_scatter" not in caps.dtypes and caps.supports("all_sum", "int32")
    stand_in = adapter._absent("sum_scatter", "0.26.5")
    with pytest.raises(RuntimeError, match=r"0\.26\.5.*sum_scatter"):
        stand_in(np.zeros(2))
    assert adapter.ring_capabilities(1).supports("sum_scatter")


def test_only_the_first_init_waits_for_rank_0(
    ring: adapter.MLXRingBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rank 0 stops listening once the ring is formed: a later init() waiting for it would stall.
    calls: list[float] = []
    monkeypatch.setattr(adapter, "wait_for_first_listener", lambda: calls.append(1.0) or True)
    monkeypatch.setattr(adapter, "configure_ring", lambda: None)
    ring.init()
    ring.init()
    assert calls == [1.0]
