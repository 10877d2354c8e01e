"""Tiny real runs: in-process on one rank, and a launched 2-rank job (--np 2)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).parent
QUICK = ["--reps", "3", "--warmup", "1", "--sample-time", "0.001", "--sizes", "8,4K"]


def _bench(argv, tmp_path, timeout=180, env=None):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-m", "conformance.bench", *argv, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=tmp_path,
        env={**os.environ, **(env or {})},
    )
    report = json.loads(out.read_text()) if out.exists() else None
    return proc, report


def _rows(report, op, mode):
    return [r for r in report["results"] if (r["op"], r["mode"]) == (op, mode)]


def test_one_rank_in_process(tmp_path):
    proc, report = _bench([*QUICK, "--ops", "all_sum,all_gather,sendrecv"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert report["meta"]["np"] == 1 and report["meta"]["backend"] == "reference"
    assert [r["nbytes"] for r in _rows(report, "all_sum", "collective")] == [8, 4096]
    assert not _rows(report, "sendrecv", "latency")  # no peer on one rank
    for row in report["results"]:
        assert row["check"] is None
        assert row["backend"]["time"]["median"] > 0
        assert row["backend"]["busbw_GBps"] == 0.0  # (n-1)/n = 0 on one rank
        assert len(row["backend"]["samples"]) == len(row["baseline"]["samples"]) == 3
        assert row["ratio"]["median"] > 0
    assert "all_gather (time per op" in proc.stdout


@pytest.mark.slow
def test_two_ranks_launched(tmp_path):
    argv = ["--np", "2", "--timeout", "150", *QUICK, "--ops", "all_sum,sum_scatter,sendrecv"]
    proc, report = _bench(argv, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert report["meta"]["np"] == 2
    assert "mpiexec" in proc.stderr  # the launch command is shown
    latency = _rows(report, "sendrecv", "latency")
    bandwidth = _rows(report, "sendrecv", "bandwidth")
    assert [r["nbytes"] for r in latency] == [8, 4096]
    assert all(r["ops_per_iter"] == 2 for r in latency)
    assert all(r["window"] >= 2 and r["ops_per_iter"] == r["window"] for r in bandwidth)
    for row in report["results"]:
        assert row["check"] is None, row["check"]
        t = row["backend"]["time"]["median"]
        factor = 1.0 if row["op"] in ("all_sum", "sendrecv") else 0.5
        assert row["backend"]["busbw_GBps"] == pytest.approx(row["nbytes"] / t / 1e9 * factor)
    assert _rows(report, "sum_scatter", "collective")[0]["in_count"] == 2


@pytest.mark.slow
def test_wrong_results_and_missing_ops_are_reported(tmp_path):
    env = {"PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))}
    argv = ["--np", "2", "--timeout", "150", *QUICK, "--sizes", "64", "--backend"]
    argv += ["bench_wrong_backend", "--ops", "all_sum,sum_scatter,all_gather"]
    proc, report = _bench(argv, tmp_path, env=env)
    assert proc.returncode == 1, proc.stderr
    wrong = _rows(report, "all_sum", "collective")[0]
    assert "all_sum: element 0" in wrong["check"]
    missing = _rows(report, "sum_scatter", "collective")[0]
    assert "sum_scatter not supported" in missing["backend"]["error"]
    assert missing["baseline"]["time"]["median"] > 0 and missing["ratio"] is None
    assert _rows(report, "all_gather", "collective")[0]["check"] is None
    assert "wrong result" in proc.stdout and "backend failed" in proc.stdout


def test_unknown_backend_is_a_setup_error(tmp_path):
    proc, report = _bench([*QUICK, "--backend", "no_such_backend_module"], tmp_path)
    assert proc.returncode == 2 and report is None
    assert "no_such_backend_module" in proc.stderr
