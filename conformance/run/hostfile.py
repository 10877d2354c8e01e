"""Host files: which hosts a job's ranks run on, in the format of the MPI that launches them.

Contract:

- MPICH (Hydra) reads one host per line, ``host`` or ``host:N`` (N slots, default 1); Open MPI
  reads ``host`` or ``host slots=N`` (further ``key=value`` fields allowed). ``#`` starts a
  comment in both. :func:`load` reads a file in the format of the given MPI flavor and raises
  :class:`HostfileError` naming the file, the line and what is wrong (including a file written
  for the other MPI).
- :func:`launcher_args` are the ``mpiexec`` arguments that pass the file on: ``-f FILE`` for
  MPICH, ``--hostfile FILE`` for Open MPI. The file itself is handed to the launcher unchanged.
X
  the first host, then the next host's, cycling through the file again when ranks outnumber slots.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path

MPICH = "mpich"
OPENMPI = "openmpi"

_MPICH_LINE = re.compile(r"^(?P<host>[^\s:]+)(?::(?P<slots>\d+))?(?::\S+)?$")
_OPENMPI_LINE = re.compile(r"^(?P<host>\S+)(?P<fields>(?:\s+\w+=\S+)*)$")


class HostfileError(ValueError):
    """A host file that cannot be used; the message names the file, the line and the fix."""


@dataclass(frozen=True)
class Host:
    """One line of a host file."""

    name: str
    slots: int


def load(path: str | Path, flavor: str) -> list[Host]:
    """The hosts of ``path`` in the format of ``flavor`` (``mpich`` or ``openmpi``)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise HostfileError(f"cannot read host file {path}: {exc.strerror or exc}") from exc
    hosts = parse(text, flavor, source=str(path))
    if not hosts:
        raise HostfileError(f"host file {path} names no host")
    return hosts


def parse(text: str, flavor: str, source: str = "<host file>") -> list[Host]:
    """Hosts of host-file ``text``; see the module docstring for the formats."""
    hosts = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if line:
            hosts.append(_parse_line(line, flavor, f"{source}, line {number}"))
    return hosts


def _parse_line(line: str, flavor: str, where: str) -> Host:
    if flavor == OPENMPI:
        match = _OPENMPI_LINE.match(line)
        if match is None or ":" in match.group("host"):
            raise HostfileError(
                f"{where}: {line!r} is not an Open MPI host line; write 'HOST' or 'HOST slots=N'"
            )
        fields = dict(f.split("=", 1) for f in match.group("fields").split())
        return Host(match.group("host"), _slots(fields.get("slots", "1"), line, where))
    match = _MPICH_LINE.match(line)
    if match is None:
        hint = " (that is Open MPI's format)" if "slots=" in line else ""
        raise HostfileError(
            f"{where}: {line!r} is not an MPICH host line{hint}; write 'HOST' or 'HOST:N'"
        )
    return Host(match.group("host"), _slots(match.group("slots") or "1", line, where))


def _slots(text: str, line: str, where: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise HostfileError(f"{where}: {line!r}: the slot count must be a positive integer")
    return int(text)


def launcher_args(path: str | Path, flavor: str) -> list[str]:
    """``mpiexec`` arguments that make the launcher use host file ``path``."""
    return ["--hostfile", str(path)] if flavor == OPENMPI else ["-f", str(path)]


def placement(hosts: list[Host], np: int) -> list[str]:
    """Host name of each of ``np`` ranks under Hydra's default (by-slot, cycling) mapping."""
    slots = [host.name for host in hosts for _ in range(host.slots)]
    return [slots[rank % len(slots)] for rank in range(np)]


HELP = (
    "host file placing the ranks on several hosts, passed to mpiexec (MPICH: 'HOST[:N]' lines, "
    "Open MPI: 'HOST slots=N'); rank 0 runs on the first host, which should be this one"
)


def add_option(parser: argparse.ArgumentParser) -> None:
    """The ``--hostfile FILE`` option every command that launches jobs takes."""
    parser.add_argument("--hostfile", type=Path, default=None, metavar="FILE", help=HELP)
