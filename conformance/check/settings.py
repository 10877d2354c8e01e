"""Where a checked rank finds itself: its rank, the job's size, the coordinator's address, and the
check's settings, read once from the environment (one copy of each name and default).

Rank and size come from the launcher: ``MLX_RANK`` with ``MLX_HOSTFILE`` (``mlx.launch``, ring
backend: a JSON list with one list of ``ip:port`` per rank), ``PMI_RANK``/``PMI_SIZE`` (MPICH's
hydra) or ``OMPI_COMM_WORLD_RANK``/``OMPI_COMM_WORLD_SIZE`` (Open MPI). The coordinator runs in
rank 0 and listens on ``CONFORMANCE_CHECK_ADDR`` (``host:port``); without it, on the first host of
the ring's host file (or 127.0.0.1) at ``CONFORMANCE_CHECK_PORT`` (default 29417).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

ENV_ENABLE = "CONFORMANCE_CHECK"
ENV_ADDR = "CONFORMANCE_CHECK_ADDR"
ENV_PORT = "CONFORMANCE_CHECK_PORT"
ENV_TIMEOUT = "CONFORMANCE_CHECK_TIMEOUT"
ENV_DIR = "CONFORMANCE_CHECK_DIR"
ENV_DEPTH = "CONFORMANCE_CHECK_RECORD"
# Set by an activated rank to its own pid, so that child processes (which inherit the launcher's
# rank variables) do not join the job as a second copy of the same rank.
ENV_ACTIVE_PID = "CONFORMANCE_CHECK_ACTIVE_PID"

DEFAULT_PORT = 29417
DEFAULT_TIMEOUT = 10.0
DEFAULT_DIR = "conformance-check"
DEFAULT_DEPTH = 64


class SettingsError(ValueError):
    """An environment variable of the check holds a value it cannot use; the message names it."""


@dataclass(frozen=True)
class Settings:
    """Everything a checked rank needs to join the check."""

    rank: int
    size: int
    host: str  # the coordinator's host (rank 0's)
    port: int
    timeout: float  # seconds a check may wait for the other ranks before the job is diagnosed
    record_dir: str  # where the flight recorder writes rank-<r>.json
    depth: int  # calls kept per rank by the flight recorder
    launcher: str  # "mlx.launch", "mpiexec" or "none"


def launcher_rank() -> tuple[int, int, str, str | None] | None:
    """(rank, size, launcher, rank 0's host or None) from the launcher's variables, or None when
    this process was not started as a rank of a job."""
    env = os.environ
    if "MLX_RANK" in env:
        rank = _int("MLX_RANK", env["MLX_RANK"])
        hosts = _ring_hosts(env.get("MLX_HOSTFILE", ""))
        if not hosts:
            return rank, 1, "mlx.launch", None
        first = hosts[0][0] if hosts[0] else "127.0.0.1"
        return rank, len(hosts), "mlx.launch", first.rsplit(":", 1)[0]
    for rank_var, size_var in (
        ("PMI_RANK", "PMI_SIZE"),
        ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"),
    ):
        if rank_var in env and size_var in env:
            return _int(rank_var, env[rank_var]), _int(size_var, env[size_var]), "mpiexec", None
    return None


def _ring_hosts(path: str) -> list[list[str]]:
    """The ring's host file: a JSON list, one list of ``ip:port`` per rank ([] when absent)."""
    if not path or not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as handle:
        text = handle.read().strip()
    return json.loads(text) if text else []


def _int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r} is not an integer") from None


def _positive(name: str, default: float) -> float:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r} is not a number of seconds") from None
    if not value > 0:
        raise SettingsError(f"{name}={text!r} must be positive")
    return value


def read() -> Settings:
    """This process's settings; rank 0 of size 1 when no launcher started it."""
    found = launcher_rank()
    rank, size, launcher, first_host = found if found else (0, 1, "none", None)
    addr = os.environ.get(ENV_ADDR, "")
    if addr:
        host, sep, port_text = addr.rpartition(":")
        if not sep or not host:
            raise SettingsError(f"{ENV_ADDR}={addr!r} is not host:port")
        port = _int(ENV_ADDR, port_text)
    else:
        host = first_host or "127.0.0.1"
        port = _int(ENV_PORT, os.environ.get(ENV_PORT, str(DEFAULT_PORT)))
    return Settings(
        rank=rank,
        size=size,
        host=host,
        port=port,
        timeout=_positive(ENV_TIMEOUT, DEFAULT_TIMEOUT),
        record_dir=os.environ.get(ENV_DIR) or DEFAULT_DIR,
        depth=int(_positive(ENV_DEPTH, DEFAULT_DEPTH)),
        launcher=launcher,
    )
