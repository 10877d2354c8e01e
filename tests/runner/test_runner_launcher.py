"""The launcher: flavor detection, command lines, environment, clear errors without MPI."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conformance.run import launcher
from conformance.run.launcher import MPICH, OPENMPI, UNKNOWN, Launcher

# The launcher's command line on 2 ranks, up to the --timeout value.
LAUNCH = (sys.executable, "-m", "conformance.run.launcher", "-n", "2", "--timeout")


@pytest.mark.parametrize(
    "text, flavor",
    [
        ("MPICH Version:      5.0.2\nMPICH Release date: ...", MPICH),
        ("Open MPI v5.0.5, package: Open MPI ...", OPENMPI),
        ("Intel(R) MPI Library 2021.10 for Linux* OS", MPICH),
        ("Some Vendor MPI 1.0", UNKNOWN),
    ],
)
def test_library_flavor(text: str, flavor: str) -> None:
    assert launcher.flavor_of_library(text) == flavor


def test_openmpi_gets_oversubscribe_and_root_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "_is_root", lambda: True)
    cmd = Launcher("/opt/ompi/bin/mpiexec", OPENMPI).command(3, ["python", "x.py"])
    assert cmd == [
        "/opt/ompi/bin/mpiexec",
        "--oversubscribe",
        "--allow-run-as-root",
        "-n",
        "3",
        "python",
        "x.py",
    ]
    monkeypatch.setattr(launcher, "_is_root", lambda: False)
    assert "--allow-run-as-root" not in Launcher("m", OPENMPI).command(3, [])


def test_mpich_command_has_no_openmpi_flags() -> None:
    assert Launcher("mpiexec", MPICH).command(2, ["a"]) == ["mpiexec", "-n", "2", "a"]


def test_labelled_output_is_split_by_rank() -> None:
    assert "-prepend-rank" in Launcher("mpiexec", MPICH).command(2, [], label_output=True)
    assert "--tag-output" in Launcher("mpiexec", OPENMPI).command(2, [], label_output=True)
    text = "[0] a\n[1] b\nlauncher noise [1] e\n[1,0]<stdout>: c\n[0] [x] d\n[0] ..[1] f\n"
    assert launcher.split_by_rank(text) == {0: ["a", "c", "[x] d", ".."], 1: ["b", "f"]}


def test_rank_count_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Launcher("mpiexec", MPICH).command(0, [])


def test_yield_settings_only_when_ranks_outnumber_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(launcher, "cpu_count", lambda: 2)
    mpich = Launcher("mpiexec", MPICH)
    assert "MPIR_CVAR_POLLS_BEFORE_YIELD" not in mpich.environment(2, base={})
    assert mpich.environment(3, base={})["MPIR_CVAR_POLLS_BEFORE_YIELD"] == "1"
    # A user's own setting wins.
    assert (
        mpich.environment(3, base={"MPIR_CVAR_POLLS_BEFORE_YIELD": "50"})[
            "MPIR_CVAR_POLLS_BEFORE_YIELD"
        ]
        == "50"
    )
    ompi = Launcher("mpiexec", OPENMPI).environment(4, base={})
    assert ompi["OMPI_MCA_mpi_yield_when_idle"] == "1"
    assert "MPIR_CVAR_POLLS_BEFORE_YIELD" not in ompi


def test_missing_mpi4py_gives_install_instructions(tmp_path: Path) -> None:
    # A bare virtualenv-less interpreter without mpi4py: make one by hiding site-packages.
    python = sys.executable
    with pytest.raises(launcher.LauncherError, match=r"pip install"):
        launcher.find_launcher(python=_python_without_mpi4py(tmp_path, python))


def _python_without_mpi4py(tmp_path: Path, python: str) -> str:
    # A wrapper interpreter whose mpi4py import fails, independent of what is installed.
    shim = tmp_path / "mpi4py"
    shim.mkdir()
    (shim / "__init__.py").write_text("raise ImportError('mpi4py hidden for the test')\n")
    wrapper = tmp_path / "python"
    wrapper.write_text(f'#!/bin/sh\nPYTHONPATH={tmp_path} exec {python} "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


def test_explicit_missing_mpiexec_is_an_error() -> None:
    pytest.importorskip("mpi4py")
    with pytest.raises(launcher.LauncherError, match="does not exist"):
        launcher.find_launcher("/nonexistent/mpiexec")


def test_finds_the_launcher_matching_mpi4py() -> None:
    pytest.importorskip("mpi4py")
    found = launcher.find_launcher()
    assert os.access(found.path, os.X_OK)
    version = launcher.library_version()
    assert version is not None
    if launcher.flavor_of_library(version) != UNKNOWN:
        assert found.flavor == launcher.flavor_of_library(version)


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec")
def test_cli_runs_a_command_on_n_ranks() -> None:
    out = subprocess.run(
        [*LAUNCH, "60", "--", sys.executable, "-c", "print('rank-ran')"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("rank-ran") == 2


@pytest.mark.skipif(shutil.which("mpiexec") is None, reason="no mpiexec")
def test_cli_timeout_kills_every_rank(tmp_path: Path) -> None:
    marker = tmp_path / "pids"
    marker.mkdir()
    script = (
        "import os, signal, time, pathlib\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"  # only SIGKILL can end this rank
        f"pathlib.Path({str(marker)!r}, str(os.getpid())).touch()\n"
        "time.sleep(300)\n"
    )
    start = time.monotonic()
    out = subprocess.run(
        [*LAUNCH, "5", "--", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 124
    assert time.monotonic() - start < 60
    pids = [int(p.name) for p in marker.iterdir()]
    assert len(pids) == 2
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [pid for pid in pids if _alive(pid)]


def _alive(pid: int) -> bool:
    # A killed rank may linger briefly as a zombie until its parent (or init) reaps it.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_signal_ends_every_tracked_job_tree_and_raises(tmp_path: Path) -> None:
    """SIGTERM inside interruptible(): every job's tree (children that left its process group
    included) is gone, Interrupted carries the signal, and no job starts afterwards."""
    pids = tmp_path / "pids"
    # The grandchild starts a session of its own, as MPICH's hydra does for each rank.
    script = f"setsid sleep 300 & echo $! > {pids}; sleep 300"
    try:
        with pytest.raises(launcher.Interrupted) as caught:
            with launcher.interruptible():
                proc = launcher.start_job(["sh", "-c", script])
                deadline = time.monotonic() + 30
                while not (pids.exists() and pids.read_text().strip()):
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
                threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
                time.sleep(30)
        assert caught.value.signum == signal.SIGTERM
        assert launcher.exit_status(caught.value.signum) == 143
        grandchild = int(pids.read_text())
        assert proc.poll() is not None
        assert not _alive(grandchild)
        with pytest.raises(launcher.Interrupted):
            launcher.start_job(["true"])
    finally:
        launcher.reset_interrupts()


def test_library_version_drops_the_nul_byte_open_mpi_ends_with(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nprintf 'Open MPI v5.0.11, Sep 16, 2026\\000\\n'\n")
    fake.chmod(0o755)
    assert launcher.library_version(str(fake)) == "Open MPI v5.0.11, Sep 16, 2026"


def test_ranks_keep_bytecode_out_of_the_source_tree_even_when_told_not_to_write_it():
    """With PYTHONDONTWRITEBYTECODE every rank recompiled the suite and redid pytest's assertion
    rewriting in every job; the ranks write bytecode to a cache outside the tree instead."""
    env = Launcher("mpiexec", MPICH).environment(2, base={"PYTHONDONTWRITEBYTECODE": "1"})
    assert "PYTHONDONTWRITEBYTECODE" not in env
    assert env["PYTHONPYCACHEPREFIX"] == str(launcher.PYCACHE_DIR)
    assert not launcher.PYCACHE_DIR.is_relative_to(Path(__file__).resolve().parents[2])
    mine = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONPYCACHEPREFIX": "/elsewhere"}
    assert Launcher("mpiexec", MPICH).environment(2, base=mine)["PYTHONPYCACHEPREFIX"] == (
        "/elsewhere"
    )
    # Without the variable nothing changes: Python writes bytecode where it always does.
    assert "PYTHONPYCACHEPREFIX" not in Launcher("mpiexec", MPICH).environment(2, base={})


def test_collection_warms_the_jobs_bytecode_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner's one collection process compiles into the cache the ranks then read, so the
    first jobs' ranks do not all compile the suite at once."""
    from conformance.run import runner

    seen: dict[str, str] = {}

    def fake_run(cmd, **kwargs):
        seen.update(kwargs["env"])
        return subprocess.CompletedProcess(cmd, 5, "", "")

    monkeypatch.setenv("PYTHONDONTWRITEBYTECODE", "1")
    monkeypatch.delenv("PYTHONPYCACHEPREFIX", raising=False)
    monkeypatch.setattr(runner.subprocess, "run", fake_run)
    runner.collect(runner.RunOptions())
    assert "PYTHONDONTWRITEBYTECODE" not in seen
    assert seen["PYTHONPYCACHEPREFIX"] == str(launcher.PYCACHE_DIR)
