"""Command lines the runner builds: pytest arguments, reproduction commands, node-id ordering."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from conformance.run import runner
from conformance.run.launcher import MPICH, Launcher


def test_pytest_args_pass_every_option() -> None:
    opts = runner.RunOptions(
        backend="mlx", timeout=12.5, seed=9, keyword="sum", markers="core", paths=["a.py"]
    )
    args = runner.pytest_args(opts)
    assert args[:4] == ["--backend", "mlx", "--conformance-timeout", "12.5"]
    assert ["--conformance-seed", "9"] == args[4:6]
    assert args[-5:] == ["-k", "sum", "-m", "core", "a.py"]
    assert runner.job_environment(runner.RunOptions(max_examples=3)) == {
        "CONFORMANCE_MAX_EXAMPLES": "3"
    }


def test_reproduce_command_runs_one_test_without_selection_filters(tmp_path: Path) -> None:
    opts = runner.RunOptions(backend="faulty:drop", keyword="not slow", markers="core", seed=4)
    launcher = Launcher("/opt/elsewhere/mpiexec", MPICH)
    nodeid = "conformance/specs/test_all_sum.py::test_values[int8-(3,)]"
    command = runner.reproduce_command(opts, launcher, 3, nodeid)
    # Runs from any directory: no cd into the suite, the test named by module.
    assert "cd " not in command and "&&" not in command
    words = shlex.split(command)
    words = [w for w in words if "=" not in w or w.startswith("-")]  # drop VAR=value prefixes
    assert words[:3] == ["/opt/elsewhere/mpiexec", "-n", "3"]
    assert words[3] in ("python", sys.executable)
    assert words[-2:] == ["--pyargs", "conformance.specs.test_all_sum::test_values[int8-(3,)]"]
    pytest_words = words[words.index("pytest") + 1 :]
    assert "-k" not in pytest_words and "-m" not in pytest_words
    assert words[words.index("--backend") + 1] == "faulty:drop"
    assert words[words.index("--conformance-seed") + 1] == "4"


def test_tests_outside_the_suite_keep_their_file_in_ids_and_reproduce_commands(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "mine" / "test_sleep.py"
    opts = runner.RunOptions(paths=[f"{outside}::test_sleep"])
    # The jobs' rootdir holds the file, so pytest's id names it (not "::test_sleep").
    assert opts.root == outside.parent
    command = runner.reproduce_command(opts, None, 2, "test_sleep.py::test_sleep")
    assert shlex.split(command)[-1] == f"{outside}::test_sleep"
    assert runner.RunOptions().root == runner.package_root()


def test_absolute_keeps_test_suffix(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "test_x.py").write_text("")
    monkeypatch.chdir(tmp_path)
    assert runner._absolute("test_x.py::test_a[1]") == f"{tmp_path}/test_x.py::test_a[1]"
    assert runner._absolute("missing.py::t") == "missing.py::t"


def test_collection_errors_come_without_the_list_of_collected_ids(tmp_path: Path) -> None:
    (tmp_path / "test_good.py").write_text("def test_a():\n    pass\n")
    (tmp_path / "test_bad.py").write_text("import no_such_module_anywhere\n")
    opts = runner.RunOptions(paths=[str(tmp_path / "test_good.py"), str(tmp_path / "test_bad.py")])
    ids, text = runner.collect(opts)
    assert ids == ["test_good.py::test_a"]
    assert "no_such_module_anywhere" in text and "test_good.py::test_a" not in text
