"""Direct reads of a process's memory (reference.crossmemory), within this one process.

The shared-memory plane's tests (test_shm.py) read between ranks; here the call's own contract:
exact bytes, nothing read for nothing asked, a refused read named, reads the kernel cuts short
continued.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from reference import crossmemory

pytestmark = pytest.mark.skipif(
    not crossmemory.available(), reason="process_vm_readv exists on Linux only"
)


def test_reads_exactly_the_bytes_at_an_address():
    source = np.random.default_rng(7).integers(0, 256, 1 << 20, dtype=np.uint8)
    into = np.zeros(1000, np.uint8)
    crossmemory.read(os.getpid(), crossmemory.address(source) + 12345, into)
    assert into.tobytes() == source[12345:13345].tobytes()


def test_an_empty_read_reads_nothing():
    into = np.zeros(0, np.uint8)
    crossmemory.read(os.getpid(), 0, into)  # address 0 is never mapped: nothing may touch it
    assert into.size == 0


def test_a_refused_read_names_the_process_and_the_reason():
    into = np.zeros(64, np.uint8)
    with pytest.raises(crossmemory.ReadFailed, match=rf"of process {os.getpid()}: Bad address"):
        crossmemory.read(os.getpid(), 8, into)
    assert not into.any()


def test_a_read_cut_short_goes_on_where_it_stopped(monkeypatch):
    """The kernel moves at most about 2 GiB a call: the rest is read by further calls."""
    source = np.arange(10_000, dtype=np.uint8)
    real = crossmemory._process_vm_readv
    calls = []

    def at_most_3000(pid, local, nlocal, remote, nremote, flags):
        local._obj.length = min(local._obj.length, 3000)
        remote._obj.length = min(remote._obj.length, 3000)
        calls.append(local._obj.length)
        return real(pid, local, nlocal, remote, nremote, flags)

    monkeypatch.setattr(crossmemory, "_process_vm_readv", at_most_3000)
    into = np.zeros(10_000, np.uint8)
    crossmemory.read(os.getpid(), crossmemory.address(source), into)
    assert into.tobytes() == source.tobytes()
    assert calls == [3000, 3000, 3000, 1000]
