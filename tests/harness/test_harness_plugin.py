"""The plugin in one process (pytester): options, fixtures, header, results file, levels, the
mpi marker without --with-mpi."""

from __future__ import annotations

import json

import pytest

from conformance.harness import control

# Under mpiexec the nested session's backend and pytest-mpi see the real MPI world.
one_process = pytest.mark.skipif(
    control.current().size > 1, reason="about a pytest run in a single process"
)

REFERENCE_TEST = """
import os

def test_backend_name(backend):
    assert backend.name == os.environ.get("EXPECTED_BACKEND_NAME", "reference")
"""


def test_backend_default_env_and_option(pytester, monkeypatch):
    pytester.makepyfile(REFERENCE_TEST)
    monkeypatch.delenv("CONFORMANCE_BACKEND", raising=False)
    pytester.runpytest().assert_outcomes(passed=1)
    monkeypatch.setenv("CONFORMANCE_BACKEND", "fake_factory:make")
    monkeypatch.setenv("EXPECTED_BACKEND_NAME", "fake-made")
    pytester.runpytest().assert_outcomes(passed=1)
    # The command line wins over the environment.
    monkeypatch.setenv("EXPECTED_BACKEND_NAME", "fake-adapter")
    pytester.runpytest("--backend", "fake_adapter").assert_outcomes(passed=1)
    # ... and the test can fail: a wrong expectation is seen.
    monkeypatch.setenv("EXPECTED_BACKEND_NAME", "reference")
    pytester.runpytest("--backend", "fake_adapter").assert_outcomes(failed=1)


@one_process
def test_fixtures_in_a_world_of_one(pytester):
    pytester.makepyfile(
        """
        from conformance.backend import Capabilities
        from conformance.harness.control import ControlPlane

        SEEDS = []

        def test_fixtures(backend, world, capabilities, control, conformance_seed):
            assert (world.rank(), world.size()) == (0, 1)
            assert isinstance(capabilities, Capabilities) and capabilities is backend.capabilities
            assert isinstance(control, ControlPlane) and (control.rank, control.size) == (0, 1)
            SEEDS.append(conformance_seed)

        def test_seed_differs_per_test(conformance_seed):
            assert conformance_seed != SEEDS[0]
        """
    )
    pytester.runpytest().assert_outcomes(passed=2)


def test_header_names_backend_mpi_and_variables(pytester, monkeypatch):
    pytester.makepyfile(REFERENCE_TEST)
    monkeypatch.setenv("CONFORMANCE_EXAMPLE_KNOB", "on")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(
        [
            "conformance backend: reference (reference *)",
            "conformance world: world size 1, MPI MPICH*",
            "conformance timeout: 60 s per test*",
            "conformance environment:*CONFORMANCE_EXAMPLE_KNOB=on*",
        ]
    )


def test_backend_that_fails_to_load_errors_every_test(pytester):
    pytester.makepyfile(REFERENCE_TEST)
    result = pytester.runpytest("--backend", "no_such_backend_module")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["conformance backend: no_such_backend_module (failed to load:*"])
    result.stdout.fnmatch_lines(["*BackendLoadError*cannot import module*"])


def test_results_file_has_the_contract_fields(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.robust
        def test_passes():
            pass

        @pytest.mark.core
        def test_fails():
            assert 1 == 2, "one is not two"

        @pytest.fixture
        def broken():
            raise RuntimeError("fixture broke")

        def test_errors(broken):
            pass

        @pytest.mark.xfail(reason="known")
        def test_xfails():
            assert False
        """
    )
    results = pytester.path / "out" / "results.jsonl"
    pytester.runpytest(f"--conformance-results={results}", "--conformance-seed=11")
    lines = [json.loads(line) for line in results.read_text().splitlines()]
    header, tests = lines[0], lines[1:]
    assert (header["kind"], header["schema"], header["backend"]) == ("session", 2, "reference")
    assert header["declared"] == [] and header["capabilities"]["split"] is True
    records = {line["nodeid"].split("::")[1]: line for line in tests}
    fields = {
        "schema", "kind", "nodeid", "outcome", "failing_ranks", "message", "longrepr", "duration",
        "level", "tier", "area", "rule", "seed", "world_size", "backend", "unsupported",
    }  # fmt: skip
    assert all(set(r) - {"phase"} == fields for r in records.values())
    phases = {name: r.get("phase") for name, r in records.items()}
    assert phases == {"test_passes": None, "test_fails": "call", "test_errors": "setup",
                      "test_xfails": None}  # fmt: skip
    assert {name: r["outcome"] for name, r in records.items()} == {
        "test_passes": "passed",
        "test_fails": "wrong",
        "test_errors": "error",
        "test_xfails": "xfailed",
    }
    assert records["test_fails"]["failing_ranks"] == [0]
    assert "one is not two" in records["test_fails"]["message"]
    assert "fixture broke" in records["test_errors"]["longrepr"]
    assert (records["test_passes"]["level"], records["test_fails"]["level"]) == ("robust", "core")
    assert {r["area"] for r in records.values()} == {"results_file_has_the_contract_fields"}
    assert {(r["seed"], r["world_size"], r["backend"]) for r in records.values()} == {
        (11, 1, "reference")
    }


def test_spec_tests_need_exactly_one_level(pytester):
    # No __init__.py: the directory must not shadow the real conformance package.
    specs = pytester.path / "conformance" / "specs"
    specs.mkdir(parents=True)
    (specs / "test_area.py").write_text(
        "import pytest\n"
        "def test_none():\n    pass\n"
        "@pytest.mark.core\n@pytest.mark.robust\ndef test_two():\n    pass\n"
        "@pytest.mark.impl_defined\ndef test_one():\n    pass\n"
    )
    result = pytester.runpytest("--strict-markers", str(specs))
    result.assert_outcomes(passed=1, errors=2)
    result.stdout.fnmatch_lines(["*test_none has no level marker*"])
    result.stdout.fnmatch_lines(["*test_two has several level markers*"])


@one_process
def test_mpi_marker_is_honoured_without_with_mpi(pytester):
    pytester.makepyfile(
        """
        import pytest

        @pytest.mark.mpi(min_size=2)
        def test_needs_two():
            pass

        @pytest.mark.mpi
        def test_any_size():
            pass
        """
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["*requires 2 MPI processes*"])
    result.stdout.no_fnmatch_line("*MPI Information*")


def test_temporary_logs_are_removed_after_a_clean_run_only(pytester):
    pytester.makepyfile("def test_ok():\n    pass\n")
    result = pytester.runpytest()
    result.stdout.no_fnmatch_line("conformance: per-rank logs in*")
    pytester.makepyfile("def test_bad():\n    assert False\n")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["conformance: per-rank logs in *"])
    log_dir = next(line for line in result.outlines if "per-rank logs in" in line).split()[-1]
    assert "test_bad call: failed" in (pytester.path / log_dir / "rank0.log").read_text()
