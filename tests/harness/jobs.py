"""Small MPI jobs of the suite, for the harness tests: run, then read results and logs."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from conformance.harness import control
from conformance.records import read_records

HERE = Path(__file__).resolve().parent
FAKES = HERE / "fakes"
SCENARIOS = HERE / "scenarios"
REPO = HERE.parent.parent


@dataclass
class Job:
    """A finished MPI job of the suite: exit status, rank 0's terminal, results, log directory."""

    returncode: int
    output: str
    records: dict[str, dict[str, Any]]
    log_dir: Path

    def record(self, name: str) -> dict[str, Any]:
        """The record of the test whose node id ends with ``::name``."""
        matches = [r for nodeid, r in self.records.items() if nodeid.endswith(f"::{name}")]
        assert len(matches) == 1, f"no single record for {name}: {sorted(self.records)}"
        return matches[0]


def run_job(
    tmp_path: Path, n: int, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> Job:
    """Run ``mpiexec -n N python -m pytest --with-mpi ARGS`` from the repository root with the fakes
    importable, bounded by ``timeout``; results and logs go under ``tmp_path``."""
    mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec not on PATH")
    if control.current().size > 1:
        # Every rank would launch its own job: run these tests from a single process.
        pytest.skip("MPI jobs are launched from a single-process pytest run")
    results = tmp_path / "results.jsonl"
    log_dir = tmp_path / "logs"
    environment = dict(os.environ)
    environment.update(
        PYTHONPATH=os.pathsep.join([str(FAKES), str(REPO), environment.get("PYTHONPATH", "")]),
        # Oversubscribed ranks must yield the CPU while they wait.
        MPIR_CVAR_POLLS_BEFORE_YIELD="1",
    )
    environment.update(env or {})
    command = [
        mpiexec,
        "-n",
        str(n),
        sys.executable,
        "-m",
        "pytest",
        "--with-mpi",
        "-p",
        "no:cacheprovider",
        f"--conformance-results={results}",
        f"--conformance-log-dir={log_dir}",
        *args,
    ]
    done = subprocess.run(
        command,
        cwd=REPO,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    records = {r["nodeid"]: r for r in read_records(results)} if results.exists() else {}
    return Job(done.returncode, done.stdout + done.stderr, records, log_dir)
