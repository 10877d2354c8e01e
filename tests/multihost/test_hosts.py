"""Units of the several-hosts support: host files, listening addresses, logs kept by rank 0.

The jobs across namespace hosts are in ci/netns-hosts.sh (CI step "multihost"), not here: they
need root and network namespaces.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from conformance.adapters import mlx as mlx_adapter
from conformance.harness import hostaddr
from conformance.harness.ranklog import keep_peer_log
from conformance.harness.watchdog import FileMailbox, Watchdog
from conformance.run import hostfile, preflight
from conformance.run.launcher import MPICH, OPENMPI, Launcher


class PeersComm:
    """An mpi4py-like communicator whose other ranks answer from canned (host, address) pairs
    and ports."""

    def __init__(self, rank: int, peers: list[tuple[str, str]]) -> None:
        self.rank, self.peers = rank, peers

    def Get_rank(self) -> int:
        return self.rank

    def Get_size(self) -> int:
        return len(self.peers)

    def allgather(self, value: Any) -> list[Any]:
        if isinstance(value, int):
            return [value if r == self.rank else 41000 + r for r in range(len(self.peers))]
        return [value if r == self.rank else peer for r, peer in enumerate(self.peers)]


def test_mpich_hostfile_slots_comments_and_placement() -> None:
    hosts = hostfile.parse("# cluster\nnode0:2\n\nnode1  # one slot\n", MPICH)
    assert hosts == [hostfile.Host("node0", 2), hostfile.Host("node1", 1)]
    assert hostfile.placement(hosts, 5) == ["node0", "node0", "node1", "node0", "node0"]


def test_openmpi_hostfile() -> None:
    hosts = hostfile.parse("node0 slots=2 max_slots=4\nnode1\n", OPENMPI)
    assert hosts == [hostfile.Host("node0", 2), hostfile.Host("node1", 1)]


@pytest.mark.parametrize(
    ("text", "flavor", "says"),
    [
        ("node0 slots=2\n", MPICH, "Open MPI's format"),
        ("node0:2\n", OPENMPI, "not an Open MPI host line"),
        ("node0:0\n", MPICH, "positive integer"),
    ],
)
def test_bad_hostfile_lines_name_the_line(text: str, flavor: str, says: str) -> None:
    with pytest.raises(hostfile.HostfileError, match="line 1") as info:
        hostfile.parse(text, flavor, source="hosts.txt")
    assert says in str(info.value) and "hosts.txt" in str(info.value)


def test_launcher_passes_the_hostfile(tmp_path: Path) -> None:
    path = tmp_path / "hosts"
    path.write_text("a:2\nb:2\n")
    mpich = Launcher("/bin/mpiexec", MPICH).with_hostfile(path)
    assert mpich.command(4, ["x"])[1:5] == ["-f", str(path.resolve()), "-n", "4"]
    path.write_text("a slots=2\n")
    ompi = Launcher("/bin/mpiexec", OPENMPI).with_hostfile(path)
    assert ["--hostfile", str(path.resolve())] == ompi.command(2, ["x"])[-5:-3]
    with pytest.raises(hostfile.HostfileError, match="cannot read"):
        Launcher("/bin/mpiexec", MPICH).with_hostfile(tmp_path / "missing")


def test_one_host_listens_on_loopback_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hostaddr.ENV_ADDRESS, "10.1.2.3")
    monkeypatch.setattr(hostaddr, "host_name", lambda: "one")
    comm = PeersComm(0, [("one", "10.1.2.3"), ("one", "10.1.2.3")])
    assert hostaddr.listen_addresses(comm) == ["127.0.0.1", "127.0.0.1"]


def test_several_hosts_listen_on_their_addresses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hostaddr.ENV_ADDRESS, "10.0.0.2")
    monkeypatch.setattr(hostaddr, "host_name", lambda: "h1")
    comm = PeersComm(1, [("h0", "10.0.0.1"), ("h1", "10.0.0.2")])
    assert hostaddr.listen_addresses(comm) == ["10.0.0.1", "10.0.0.2"]


def test_loopback_across_hosts_is_refused_naming_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(hostaddr.ENV_ADDRESS, "10.0.0.1")
    comm = PeersComm(0, [("h0", "10.0.0.1"), ("h1", "127.0.1.1")])
    with pytest.raises(hostaddr.AddressError, match=r"rank 1 on h1 \(127\.0\.1\.1\)"):
        hostaddr.listen_addresses(comm)


def test_mlx_ring_hostfile_uses_each_hosts_address(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (mlx_adapter.ENV_RANK, mlx_adapter.ENV_HOSTFILE):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    # Rank 0 is this process: its address must be one it can bind, so loopback stands in.
    monkeypatch.setenv(hostaddr.ENV_ADDRESS, "127.0.0.1")
    monkeypatch.setattr(hostaddr, "_is_loopback", lambda address: False)
    comm = PeersComm(0, [("h0", "127.0.0.1"), ("h1", "10.0.0.2")])
    path = mlx_adapter.configure_ring(comm)
    assert path is not None
    with open(path, encoding="utf-8") as fh:
        ring = json.load(fh)
    assert ring[0][0].startswith("127.0.0.1:") and ring[1] == ["10.0.0.2:41001"]


def test_rank0_keeps_a_peer_log_it_cannot_see(tmp_path: Path) -> None:
    assert keep_peer_log(tmp_path, 3, "remote log\n")
    assert (tmp_path / "rank3.log").read_text() == "remote log\n"
    (tmp_path / "rank1.log").write_text("same host, longer log\n")
    assert not keep_peer_log(tmp_path, 1, "same host\n")


def test_hang_stacks_and_logs_travel_through_the_mailbox(tmp_path: Path) -> None:
    box = FileMailbox(tmp_path / "box")
    box.post(1, "rank 1 stack", "rank 1 log")  # what the other rank's watchdog does
    hung: list[tuple[str, dict[int, str]]] = []
    kept: dict[int, str] = {}
    ended: list[int] = []
    dog = Watchdog(
        rank=0,
        size=3,
        timeout=0.2,
        on_hang=lambda label, stacks: hung.append((label, stacks)),
        mailbox=box,
        receive_log=kept.__setitem__,
        grace=0.5,
        end_job=ended.append,
    )
    try:
        dog.arm("label")
        deadline = time.monotonic() + 10
        while not ended and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        dog.stop()
    ((_label, stacks),) = hung
    assert stacks[1] == "rank 1 stack" and "no stack within" in stacks[2]
    assert "test_hang_stacks_and_logs_travel" in stacks[0]
    assert kept == {1: "rank 1 log"}


def test_preflight_names_the_pairs_that_cannot_connect(capsys: pytest.CaptureFixture[str]) -> None:
    peers = [("h0", "10.0.0.1", 5000), ("h1", "10.0.0.2", 5001)]
    failures: list[dict[int, str]] = [{1: "TimeoutError: timed out"}, {0: ""}]
    assert preflight._report(peers, failures) == 1
    out = capsys.readouterr().out
    assert "rank 0   h0  listens on 10.0.0.1:5000   reached by every peer" in out
    assert "rank 1   h1  listens on 10.0.0.2:5001   NOT reached by rank 0: TimeoutError" in out
    assert "preflight: FAILED" in out


def test_preflight_job_on_this_host(capsys: pytest.CaptureFixture[str]) -> None:
    assert preflight.main(["--np", "2", "--timeout", "120"]) == 0
    out = capsys.readouterr().out
    assert out.count("listens on 127.0.0.1:") == 2 and "preflight: ok" in out
