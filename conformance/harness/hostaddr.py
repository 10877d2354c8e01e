"""The address each rank's host is reached at, for backends that open their own TCP connections.

Contract:

- :func:`listen_addresses` (collective over an mpi4py communicator) returns one IPv4 address per
  rank: ``127.0.0.1`` for every rank when all ranks run on one host (so a job on one machine
  never listens beyond loopback), otherwise each rank's :func:`own_address`.
- :func:`own_address` is ``$CONFORMANCE_HOST_ADDRESS`` when set, else the first non-loopback
  IPv4 address the host's name resolves to. When ranks span hosts and a rank's address is a
  loopback one, :class:`AddressError` names the host and says how to set the address; every
  rank raises it, so none is left waiting.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Any

ENV_ADDRESS = "CONFORMANCE_HOST_ADDRESS"
LOOPBACK = "127.0.0.1"


class AddressError(RuntimeError):
    """A rank's host has no address its peers on other hosts can reach."""


def host_name() -> str:
    """This host's name, as the ranks' placement sees it."""
    return socket.gethostname()


def own_address() -> str:
    """The address peers on other hosts reach this host at (see the module docstring)."""
    chosen = os.environ.get(ENV_ADDRESS)
    if chosen:
        return chosen
    try:
        infos = socket.getaddrinfo(host_name(), None, socket.AF_INET, socket.SOCK_STREAM)
    except OSError:
        return LOOPBACK
    found = [str(info[4][0]) for info in infos]
    routable = [a for a in found if not _is_loopback(a)]
    return (routable or found or [LOOPBACK])[0]


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:  # a name set by hand: the user vouches for it
        return False


def listen_addresses(comm: Any) -> list[str]:
    """Every rank's listening address, in rank order; collective over ``comm``."""
    mine = (host_name(), own_address())
    everyone = comm.allgather(mine)
    if len({name for name, _ in everyone}) == 1:
        return [LOOPBACK] * len(everyone)
    bad = [
        f"rank {rank} on {name} ({address})"
        for rank, (name, address) in enumerate(everyone)
        if _is_loopback(address)
    ]
    if bad:
        raise AddressError(
            "the ranks run on several hosts, but these have only a loopback address to offer: "
            + ", ".join(bad)
            + f". Make the host name resolve to the host's network address, or set {ENV_ADDRESS} "
            "on each host."
        )
    return [address for _, address in everyone]
