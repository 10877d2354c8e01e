"""``python -m conformance check [options] -- COMMAND...``: run a program with every distributed
call checked across ranks; ``python -m conformance check --merge DIR``: the cross-rank view of
the flight recorders a checked job wrote.

The job is launched with ``mlx.launch`` (default; ``--backend`` is passed to it) or ``mpiexec``
(``--launcher mpiexec``, the MPI matching mpi4py). The program is not changed: each rank loads
``conformance/check/boot/sitecustomize.py`` from ``PYTHONPATH``, which joins the check. Rank 0
hosts the coordinator on ``127.0.0.1`` (or the first host of ``--hostfile``) at a free port.
Exit status: the job's (1 when the check found a problem), 2 for usage errors.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import socket
import sys
from collections.abc import Sequence

from conformance.check import merge, settings

EXIT_PROBLEM = 1
BOOT_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "boot")


class UsageError(Exception):
    """Bad command line: one line for the user, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m conformance check", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "-n", "--np", type=int, default=None, help="ranks (default 2, or the host file's)"
    )
    p.add_argument("--launcher", choices=("mlx", "mpiexec"), default="mlx")
    p.add_argument("--backend", default="ring", help="mlx.launch's --backend (default ring)")
    p.add_argument("--hostfile", help="host file for the launcher (mlx.launch JSON or MPI's)")
    p.add_argument(
        "--timeout",
        type=float,
        default=settings.DEFAULT_TIMEOUT,
        help="seconds a check may wait for the other ranks (default %(default)g)",
    )
    p.add_argument(
        "--record-dir",
        default=settings.DEFAULT_DIR,
        help="where each rank's flight recorder is written (default %(default)s)",
    )
    p.add_argument("--merge", metavar="DIR", help="show the flight recorders in DIR and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, launch, wait; print the merged flight recorders if the job wrote any."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    program: list[str] = []
    if "--" in args_list:
        cut = args_list.index("--")
        args_list, program = args_list[:cut], args_list[cut + 1 :]
    try:
        args = _parser().parse_args(args_list)
        if args.merge:
            if not os.path.isdir(args.merge):
                raise UsageError(f"--merge {args.merge}: no such directory")
            print(merge.render(args.merge))
            return 0
        if not program:
            raise UsageError("no program: python -m conformance check [options] -- python train.py")
        if args.np is not None and args.np < 1:
            raise UsageError(f"-n {args.np}: need at least one rank")
        if not args.timeout > 0:
            raise UsageError(f"--timeout {args.timeout}: must be positive")
        if args.hostfile and not os.path.isfile(args.hostfile):
            raise UsageError(f"--hostfile {args.hostfile}: no such file")
        cmd, env = _job(args, program)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return _run(cmd, env, os.path.abspath(args.record_dir))


def _job(args: argparse.Namespace, program: list[str]) -> tuple[list[str], dict[str, str]]:
    """The launcher's command line and the ranks' environment."""
    host = _first_host(args.hostfile) if args.hostfile else "127.0.0.1"
    record_dir = os.path.abspath(args.record_dir)
    ours = {
        settings.ENV_ENABLE: "1",
        settings.ENV_ADDR: f"{host}:{_free_port(host)}",
        settings.ENV_TIMEOUT: f"{args.timeout:g}",
        settings.ENV_DIR: record_dir,
        "PYTHONPATH": os.pathsep.join(p for p in (BOOT_DIR, os.environ.get("PYTHONPATH")) if p),
    }
    np = args.np if args.np is not None else (None if args.hostfile else 2)
    if args.launcher == "mlx":
        launch = shutil.which("mlx.launch", path=os.path.dirname(sys.executable)) or shutil.which(
            "mlx.launch"
        )
        if launch is None:
            raise UsageError("mlx.launch not found: pip install 'mlx[cpu]' (or --launcher mpiexec)")
        cmd = [launch, "--backend", args.backend]
        cmd += ["--hostfile", args.hostfile] if args.hostfile else []
        cmd += ["-n", str(np)] if np is not None else []
        for key, value in ours.items():  # remote hosts get only what --env names
            cmd += ["--env", f"{key}={value}"]
        return [*cmd, "--", *program], {**os.environ, **ours}
    from conformance.run import launcher as launcher_mod

    try:
        launcher = launcher_mod.find_launcher().with_hostfile(args.hostfile)
    except (launcher_mod.LauncherError, ValueError) as exc:
        raise UsageError(str(exc).splitlines()[0]) from None
    np = np if np is not None else 2
    return launcher.command(np, program), launcher.environment(np, {**os.environ, **ours})


def _first_host(path: str) -> str:
    """The address of the host file's first host (where rank 0, and the coordinator, run)."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    try:
        hosts = json.loads(text)
        first = hosts[0]
        name = (first.get("ips") or [first.get("ssh")])[0] if isinstance(first, dict) else first
    except (ValueError, IndexError, KeyError, TypeError):
        lines = [ln.split()[0] for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        if not lines:
            raise UsageError(f"--hostfile {path}: no host in it") from None
        name = lines[0].split(":")[0]
    try:
        return socket.gethostbyname(name)
    except OSError:
        raise UsageError(f"--hostfile {path}: cannot resolve its first host {name!r}") from None


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, 0))
        except OSError:
            probe.bind(("", 0))
        return probe.getsockname()[1]


def _run(cmd: list[str], env: dict[str, str], record_dir: str) -> int:
    from conformance.run import launcher as launcher_mod

    for stale in glob.glob(os.path.join(record_dir, "rank-*.json")):
        os.remove(stale)
    try:
        with launcher_mod.interruptible():
            proc = launcher_mod.start_job(cmd, env=env)
            code = proc.wait()
            launcher_mod.forget_job(proc)
    except launcher_mod.Interrupted as exc:
        code = launcher_mod.exit_status(exc.signum)
    if glob.glob(os.path.join(record_dir, "rank-*.json")):
        print(merge.render(record_dir), file=sys.stderr)
        if code == 0 and merge.found_problem(record_dir):
            code = EXIT_PROBLEM  # mlx.launch exits 0 even when its ranks did not
    return code
