"""Running the benchmark as an MPI job: re-executing itself under ``mpiexec -n N``.

The parent process never initializes MPI; it finds the launcher that matches mpi4py
(``conformance.run.launcher``), runs ``python -m conformance.bench ARGS`` on N ranks with
``CONFORMANCE_BENCH_CHILD=1`` set (so the ranks measure instead of launching again), and bounds
the job by a timeout.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

CHILD_ENV = "CONFORMANCE_BENCH_CHILD"


def is_child() -> bool:
    """Whether this process is a rank of a job the benchmark launched itself."""
    return os.environ.get(CHILD_ENV) == "1"


def launch(
    np: int,
    argv: Sequence[str],
    timeout: float | None,
    mpiexec: str | None = None,
    hostfile: Path | None = None,
) -> int:
    """Run the benchmark with ``argv`` on ``np`` ranks (on the hosts of ``hostfile``, if given)
    and return the job's exit status (124 when it was killed after ``timeout`` seconds, 2 when
    no launcher was found or the host file is unusable)."""
    from conformance.run import launcher as launcher_mod
    from conformance.run.hostfile import HostfileError
    from conformance.run.launcher import LauncherError, find_launcher, kill_process_group

    try:
        launcher = find_launcher(mpiexec).with_hostfile(hostfile)
    except (LauncherError, HostfileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for warning in launcher.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    cmd = launcher.command(np, [sys.executable, "-m", "conformance.bench", *argv])
    env = launcher.environment(np)
    env[CHILD_ENV] = "1"
    print("+ " + shlex.join(cmd), file=sys.stderr, flush=True)
    try:
        # SIGINT/SIGTERM end the job's whole tree (the launcher's one interrupt mechanism).
        with launcher_mod.interruptible():
            proc = launcher_mod.start_job(cmd, env=env)
            try:
                return proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                print(f"error: benchmark job exceeded {timeout:g} s; killing it", file=sys.stderr)
                kill_process_group(proc)
                return 124
    except launcher_mod.Interrupted as exc:
        print(f"\n{exc}", file=sys.stderr)
        return launcher_mod.exit_status(exc.signum)
