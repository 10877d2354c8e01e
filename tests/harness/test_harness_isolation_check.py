"""The isolation check (``harness.isolation.check_group``) a backend without cross-rank agreement
checks gets after each robust test: clean on a working group, a finding for stray bytes on any
link or a wrong collective, and the deadline that bounds it."""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import numpy as np
import pytest

from conformance.backend import Capabilities, load_backend
from conformance.harness import isolation


class _Item:
    def iter_markers(self, name: str | None = None) -> list[str]:
        return []


@pytest.mark.parametrize(
    ("outcome", "checks", "decision"),
    [
        ("passed", True, isolation.KEEP),
        ("wrong", True, isolation.END),
        ("passed", False, isolation.CHECK),  # no cross-rank checks: stray bytes possible
        ("wrong", False, isolation.CHECK),
        ("error", False, isolation.CHECK),
        ("skipped", False, isolation.KEEP),  # no data moved
    ],
)
def test_robust_tests_of_a_backend_without_agreement_checks_are_checked(
    outcome: str, checks: bool, decision: str
) -> None:
    assert isolation.after_test("auto", "robust", outcome, _Item(), checks) == decision
    assert isolation.after_test("auto", "core", outcome, _Item(), checks) == isolation.KEEP
    assert isolation.after_test("always", "robust", outcome, _Item(), checks) == isolation.END


class _Ring:
    """Message links between ``size`` ranks run as threads; ``stray`` preloads links
    ``(src, dst)`` with messages nobody receives (what a recv smaller than its message leaves)."""

    def __init__(self, size: int, stray: tuple[tuple[int, int], ...] = ()) -> None:
        self.size = size
        self.links = {(s, d): queue.Queue() for s in range(size) for d in range(size) if s != d}
        for link in stray:
            self.links[link].put(np.arange(3, dtype=np.int64))
        self.barrier = threading.Barrier(size)
        self.posted: dict[int, np.ndarray] = {}


class _Group:
    def __init__(self, rank: int, size: int) -> None:
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


class _RankBackend:
    """One rank's view of :class:`_Ring` with the API ``check_group`` uses."""

    capabilities = Capabilities(p2p_topology="neighbours", split=False, agreement_checks=False)

    def __init__(self, ring: _Ring, rank: int, sum_offset: int = 0) -> None:
        self.ring, self.rank, self.sum_offset = ring, rank, sum_offset

    def asarray(self, x: Any) -> np.ndarray:
        return np.array(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.array(x)

    def evaluate(self, *xs: Any) -> None:
        pass

    def dtype(self, name: str) -> np.dtype:
        return np.dtype(name)

    def _everyone(self, x: np.ndarray) -> list[np.ndarray]:
        self.ring.posted[self.rank] = x
        self.ring.barrier.wait(5)
        out = [self.ring.posted[r] for r in range(self.ring.size)]
        self.ring.barrier.wait(5)
        return out

    def all_sum(self, x: np.ndarray, group: Any = None) -> np.ndarray:
        return np.sum(self._everyone(x), axis=0) + self.sum_offset

    def all_gather(self, x: np.ndarray, group: Any = None) -> np.ndarray:
        return np.concatenate(self._everyone(x))

    def send(self, x: np.ndarray, dst: int, group: Any = None) -> np.ndarray:
        self.ring.links[(self.rank, dst)].put(np.array(x))
        return x

    def recv(self, shape: tuple[int, ...], dtype: Any, src: int, group: Any = None) -> np.ndarray:
        return self.ring.links[(src, self.rank)].get(timeout=5)


def _check_everywhere(ring: _Ring, **kwargs: int) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}

    def rank_main(rank: int) -> None:
        backend = _RankBackend(ring, rank, **(kwargs if rank == 0 else {}))
        found[rank] = isolation.check_group(backend, _Group(rank, ring.size), token=12345)

    threads = [threading.Thread(target=rank_main, args=(r,)) for r in range(ring.size)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    return found


@pytest.mark.parametrize("size", [2, 3, 4])
def test_a_clean_group_has_no_findings(size: int) -> None:
    assert _check_everywhere(_Ring(size)) == {rank: [] for rank in range(size)}


@pytest.mark.parametrize(
    ("size", "link"),
    [(2, (0, 1)), (2, (1, 0)), (3, (2, 0)), (4, (1, 2)), (4, (2, 1))],
)
def test_stray_bytes_on_any_link_are_found_by_the_receiver(
    size: int, link: tuple[int, int]
) -> None:
    found = _check_everywhere(_Ring(size, stray=(link,)))
    src, dst = link
    assert f"recv from {src} returned other values than were sent" in found[dst]


def test_a_wrong_collective_is_a_finding() -> None:
    found = _check_everywhere(_Ring(2), sum_offset=1)
    assert found[0] == ["all_sum returned other values than were sent"]


def test_the_reference_at_one_rank_is_clean() -> None:
    backend = load_backend("reference")
    assert isolation.check_group(backend, backend.init(), isolation.check_token("t")) == []


def test_the_deadline_calls_its_expiry_only_when_passed() -> None:
    expired = threading.Event()
    with isolation.deadline(5.0, expired.set):
        pass
    assert not expired.is_set()
    with isolation.deadline(0.05, expired.set):
        time.sleep(0.3)
    assert expired.is_set()
