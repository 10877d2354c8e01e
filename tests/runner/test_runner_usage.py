"""Usage errors of ``run``, ``selftest`` and ``preflight`` (conformance.run.usage): found before
any job starts, one line naming the value and the fix, exit status 2 (issue 28's cases).

Each case runs ``python -m conformance ...`` as a user would; none launches a job, so a case that
started one (the old behaviour) shows as a slow run with exit status 1, not as 2.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conformance.run import runner, usage

#: Seconds a usage error may take: it is found before collection and before any job.
PROMPT = 60


def conformance(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "conformance", *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=PROMPT,
        check=False,
    )


CASES = [
    (["run", "--backend", "refrence"], {}, "--backend 'refrence' cannot be loaded"),
    (["run"], {"REFERENCE_DATA_PLANE": "bogus"}, "REFERENCE_DATA_PLANE='bogus' is not a data"),
    (["run", "--np", "-1"], {}, "--np '-1' is not a list of rank counts"),
    (["run", "--np", "abc"], {}, "--np 'abc' is not a list of rank counts"),
    (["run", "--max-ranks", "0"], {}, "--max-ranks '0' is not a count; give a positive integer"),
    (["run", "--np", "0"], {}, "--np '0' is not a list of rank counts"),
    (["run", "--timeout", "-5"], {}, "--timeout '-5' is not a duration"),
    (["run", "--timeout", "0"], {}, "--timeout '0' is not a duration"),
    (["run", "-k", "all_gather and"], {}, "-k 'all_gather and' is not a valid pytest expression"),
    (["run", "-m", "robust or"], {}, "-m 'robust or' is not a valid pytest expression"),
    (["run", "--deviations", "nonexist.toml"], {}, "--deviations 'nonexist.toml' does not exist"),
    (["run", "--hostfile", "nohosts"], {}, "--hostfile 'nohosts' does not exist"),
    (["selftest", "--np", "abc"], {}, "--np 'abc' is not a list of rank counts"),
    (["selftest", "--timeout", "-5"], {}, "--timeout '-5' is not a duration"),
    (["selftest", "--hostfile", "nohosts"], {}, "--hostfile 'nohosts' does not exist"),
    (["preflight", "--np", "0"], {}, "--np '0' is not a list of rank counts"),
    (["preflight", "--timeout", "0"], {}, "--timeout '0' is not a duration"),
    (["preflight", "--hostfile", "nohosts"], {}, "--hostfile 'nohosts' does not exist"),
]


@pytest.mark.parametrize(("args", "env", "line"), CASES, ids=[" ".join(c[0]) for c in CASES])
def test_usage_error_is_one_line_and_exit_2(
    args: list[str], env: dict[str, str], line: str, tmp_path: Path
) -> None:
    done = conformance(
        [*args, "--report-dir", "reports"] if args[0] != "preflight" else args, tmp_path, **env
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and line in lines[0], done.stderr
    assert not (tmp_path / "reports").exists(), "a usage error must come before any report"


def test_mlx_without_mlx_is_a_usage_error(tmp_path: Path) -> None:
    try:
        import mlx.core  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("MLX is installed here")
    done = conformance(["run", "--backend", "mlx"], tmp_path)
    assert done.returncode == 2
    assert "MLX is not installed" in done.stderr and "pip install" in done.stderr


def test_backend_next_to_the_caller_loads_in_the_driver(tmp_path: Path, monkeypatch) -> None:
    package = tmp_path / "mypackage"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mybackend.py").write_text("from reference import *  # noqa: F403\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PYTHONPATH", raising=False)
    usage.check_backend("mypackage.mybackend")
    with pytest.raises(usage.UsageError, match=r"mypackage\.nothere"):
        usage.check_backend("mypackage.nothere")
    # ... and the ranks get the caller's directory first on PYTHONPATH.
    opts = runner.options_from(
        runner.build_parser().parse_args(["--backend", "mypackage.mybackend"])
    )
    assert runner.caller_environment(opts)["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)


@pytest.mark.slow
def test_backend_next_to_the_caller_runs_in_every_rank(tmp_path: Path) -> None:
    """Issue 28, item 1: the README's own example, from the folder holding the package."""
    package = tmp_path / "mypackage"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mybackend.py").write_text(
        textwrap.dedent(
            """
            from reference import *  # noqa: F403
            from reference import __all__  # noqa: F401
            """
        )
    )
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "conformance",
            "run",
            "--backend",
            "mypackage.mybackend",
            "--np",
            "2",
            "-k",
            "test_size_agreed",
            "--report-dir",
            "reports",
        ],
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "PASS: 1 passed" in done.stdout


def test_rank_counts_accept_lists_and_ranges() -> None:
    assert usage.rank_counts("3,1-2,3") == [1, 2, 3]
    assert usage.rank_count("4") == 4
    for bad in ("", "1-", "4-2", "2,x", "1.5"):
        with pytest.raises(usage.UsageError, match="rank counts"):
            usage.rank_counts(bad)
    for bad in ("nan", "inf", "-1", "x"):
        with pytest.raises(usage.UsageError, match="positive number of seconds"):
            usage.positive_seconds(bad, "--timeout")
    assert usage.positive_seconds("2.5", "--timeout") == 2.5
