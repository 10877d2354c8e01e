"""``python -m conformance preflight [--hostfile F]``: can the ranks of a job reach each other?

Before a long run across hosts, this launches one small job (``--np``, default: every slot of the
host file) in which each rank opens a TCP listener on the address a backend would use
(:func:`conformance.harness.hostaddr.listen_addresses`), every rank connects to every other
rank's listener and checks that the right rank answers, and rank 0 prints one line per rank:
its host, the address it listens on, and which peers could not reach it. Exit status 0 when
every peer reached every other, 1 when some could not (the lines say which, and why), 2 when the
job could not start (the launcher's output is shown).
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import Any

from conformance.run import hostfile, usage
from conformance.run import launcher as launcher_mod

CONNECT_TIMEOUT = 5.0


def _serve(listener: socket.socket, rank: int) -> None:
    """Answer every connection with this rank's number until the listener is closed."""
    while True:
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        with conn:
            conn.sendall(f"{rank}\n".encode())


def _reach(address: str, port: int, expected: int, timeout: float) -> str:
    """'' when ``expected`` answers at address:port, else what went wrong."""
    try:
        with socket.create_connection((address, port), timeout=timeout) as conn:
            conn.settimeout(timeout)
            answer = conn.recv(64).decode(errors="replace").strip()
    except OSError as exc:
        return f"{type(exc).__name__}: {exc}"
    return "" if answer == str(expected) else f"rank {answer or '?'} answered instead"


def probe(timeout: float = CONNECT_TIMEOUT) -> int:
    """One rank of the preflight job; rank 0 prints the table. Collective over COMM_WORLD."""
    from mpi4py import MPI

    from conformance.harness import hostaddr

    comm = MPI.COMM_WORLD
    rank = comm.Get_rank()
    try:
        addresses = hostaddr.listen_addresses(comm)
    except hostaddr.AddressError as exc:
        if rank == 0:
            print(f"preflight: FAILED: {exc}", flush=True)
        return 1
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((addresses[rank], 0))
    listener.listen(64)
    threading.Thread(target=_serve, args=(listener, rank), daemon=True).start()
    peers = comm.allgather((hostaddr.host_name(), addresses[rank], listener.getsockname()[1]))
    mine = {
        other: _reach(address, port, other, timeout)
        for other, (_, address, port) in enumerate(peers)
        if other != rank
    }
    failures: list[dict[int, str]] = comm.allgather(mine)
    comm.Barrier()
    listener.close()
    return _report(peers, failures) if rank == 0 else int(_broken(failures))


def _broken(failures: list[dict[int, str]]) -> bool:
    return any(error for row in failures for error in row.values())


def _report(peers: list[tuple[str, str, int]], failures: list[dict[int, str]]) -> int:
    width = max(len(host) for host, _, _ in peers)
    print(f"preflight: {len(peers)} ranks on {len({h for h, _, _ in peers})} host(s)")
    for rank, (host, address, port) in enumerate(peers):
        missed = {src: row[rank] for src, row in enumerate(failures) if row.get(rank)}
        status = (
            "reached by every peer"
            if not missed
            else "NOT reached by " + "; ".join(f"rank {s}: {why}" for s, why in missed.items())
        )
        print(f"  rank {rank:<3} {host:<{width}}  listens on {address}:{port:<5}  {status}")
    if _broken(failures):
        print(
            "preflight: FAILED: some ranks cannot reach each other. Check that each host's name "
            "resolves to an address the others can route to (or set CONFORMANCE_HOST_ADDRESS "
            "per host) and that no firewall blocks TCP between the hosts."
        )
        return 1
    print("preflight: ok")
    return 0


@usage.command
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m conformance preflight``."""
    parser = argparse.ArgumentParser(
        prog="python -m conformance preflight",
        description="Check that the ranks of a job (on the hosts of --hostfile) reach each other "
        "over TCP at the addresses backends will listen on.",
    )
    hostfile.add_option(parser)
    parser.add_argument("--np", default=None, help="ranks (default: every slot)")
    parser.add_argument("--mpiexec", default=None, help="mpiexec to use")
    parser.add_argument("--timeout", default="120", help="bound on the whole job in seconds")
    parser.add_argument("--probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe:
        return probe()
    # Usage errors before the job starts (conformance.run.usage).
    ranks = usage.rank_count(args.np) if args.np is not None else None
    timeout = usage.positive_seconds(args.timeout, "--timeout")
    usage.existing_file(args.hostfile, "--hostfile")
    try:
        launcher = launcher_mod.find_launcher(args.mpiexec).with_hostfile(args.hostfile)
        hosts = hostfile.load(args.hostfile, launcher.flavor) if args.hostfile else []
    except (launcher_mod.LauncherError, hostfile.HostfileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    np = ranks or sum(host.slots for host in hosts) or 2
    cmd = launcher.command(np, [sys.executable, "-m", "conformance.run.preflight", "--probe"])
    return _launch(cmd, launcher.environment(np), timeout)


def _launch(cmd: list[str], env: dict[str, Any], timeout: float) -> int:
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except (subprocess.TimeoutExpired, KeyboardInterrupt):
        launcher_mod.kill_process_group(proc)
        print(f"preflight: FAILED: the job did not finish within {timeout:g} s", file=sys.stderr)
        return 2
    print(stdout, end="")
    if "preflight:" not in stdout:
        print(
            f"preflight: FAILED: the job could not start (status {proc.returncode}):\n{stderr}",
            file=sys.stderr,
        )
        return 2
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
