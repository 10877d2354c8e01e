"""Known-deviation files: parsing, validation, exact matching, expected outcomes, strictness."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.run import deviations

SPECS = "conformance/specs"
LINK = 'upstream = "https://example.org/issue/1"'


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "backend.toml"
    path.write_text(text, encoding="utf-8")
    return path


def entry(*tests: str, expect: str = "wrong", **kw) -> deviations.Deviation:
    return deviations.Deviation(
        reason=kw.pop("reason", "r"),
        tests=tests,
        expect=frozenset({deviations.EXPECTATIONS[expect].value}),
        no_upstream=kw.pop("no_upstream", "not yet filed"),
        **kw,
    )


def test_shipped_files_are_valid() -> None:
    assert deviations.load(deviations.default_path("reference")) == []
    for name in ("mlx", "mlx-mpi"):
        loaded = deviations.load(deviations.DEVIATIONS_DIR / f"{name}.toml")
        assert loaded and all(d.tests and d.expect for d in loaded)
        assert all(d.upstream or d.no_upstream for d in loaded)


def test_shipped_entries_name_collected_tests(spec_node_ids: list[str]) -> None:
    """Every id in the MLX files is a test of the current suite (no stale or invented ids)."""
    for name in ("mlx", "mlx-mpi"):
        for d in deviations.load(deviations.DEVIATIONS_DIR / f"{name}.toml"):
            missing = [t for t in d.tests if t not in spec_node_ids]
            assert not missing, f"{name}.toml: {missing}"


@pytest.fixture(scope="module")
def spec_node_ids() -> list[str]:
    import subprocess
    import sys

    from conformance.run.runner import package_root

    done = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", SPECS],
        cwd=package_root(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    return [line.strip() for line in done.stdout.splitlines() if "::" in line]


def test_default_path_uses_the_backend_name_before_any_colon() -> None:
    assert deviations.default_path("faulty:drop").name == "faulty.toml"
    assert deviations.default_path("my.pkg:Backend").name == "my_pkg.toml"


def test_missing_file_means_no_deviations(tmp_path: Path) -> None:
    assert deviations.load(tmp_path / "absent.toml") == []


def test_entries_are_parsed_with_ids_outcomes_rank_counts_and_links(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        f"""
[[deviation]]
tests = ["specs/test_all_sum.py::test_values[bool]", "specs/test_all_max.py::test_values[bool]"]
np = [2, 3]
expect = "wrong"
match = "^bool "
reason = "bool is wrong"
{LINK}

[[deviation]]
test = "specs/test_p2p.py::test_self"
np = 4
expect = ["hang", "crash"]
reason = "self send blocks or dies"
no_upstream = "not yet filed: self send"
flaky = "depends on timing"

[[deviation]]
feature = "all_max[complex64]"
reason = "no complex max"
no_upstream = "not yet filed: complex max"
""",
    )
    first, second, third = deviations.load(path)
    assert first.tests == (
        "specs/test_all_sum.py::test_values[bool]",
        "specs/test_all_max.py::test_values[bool]",
    )
    assert first.np == frozenset({2, 3}) and first.expect == frozenset({"wrong"})
    assert first.match == "^bool " and second.match == ""
    assert first.describe() == "bool is wrong (https://example.org/issue/1)"
    assert second.np == frozenset({4}) and second.expect == frozenset({"hung", "crashed"})
    assert (
        second.describe()
        == "self send blocks or dies (no upstream issue: not yet filed: self send)"
    )
    assert second.flaky == "depends on timing"
    assert third.feature == "all_max[complex64]" and not third.tests
    assert deviations.excused_features([first, second, third]) == {"all_max[complex64]": third}


NO_MATCH = 'reason = "r"\nno_upstream = "n"\n'
BASE = NO_MATCH + 'match = "x"\n'


@pytest.mark.parametrize(
    "body, complaint",
    [
        ('[[deviation]]\nexpect = "wrong"\n' + BASE, "'test'"),
        ('[[deviation]]\ntest = "m.py::t"\nexpect = "wrong"\nno_upstream = "n"\n', "'reason'"),
        ('[[deviation]]\ntest = "m.py::t"\n' + BASE, "'expect'"),
        ('[[deviation]]\ntest = "m.py::t"\nexpect = "failed"\n' + BASE, "'expect'"),
        ('[[deviation]]\ntest = "m.py::t[*]"\nexpect = "wrong"\n' + BASE, "wildcard"),
        ('[[deviation]]\ntest = "m.py::test_*"\nexpect = "wrong"\n' + BASE, "wildcard"),
        ('[[deviation]]\ntest = "m.py"\nexpect = "wrong"\n' + BASE, "node id"),
        ('[[deviation]]\ntests = ["m.py::t", "m.py::t"]\nexpect = "wrong"\n' + BASE, "twice"),
        ('[[deviation]]\ntest = "m.py::t"\nexpect = "wrong"\nreason = "r"\n', "upstream"),
        (
            '[[deviation]]\ntest = "m.py::t"\nexpect = "wrong"\n' + BASE + LINK + "\n",
            "exactly one",
        ),
        (
            '[[deviation]]\ntest = "m.py::t"\nexpect = "wrong"\nreason = "r"\nupstream = "#1"\n',
            "URL",
        ),
        ('[[deviation]]\ntest = "m.py::t"\nexpect = "wrong"\nnp = [0]\n' + BASE, "'np'"),
        ('[[deviation]]\ntest = "m.py::t"\nexpect = "wrong"\nflavour = 1\n' + BASE, "unknown keys"),
        ('[[deviation]]\nfeature = "split"\nexpect = "wrong"\n' + BASE, "takes no"),
        (
            '[[deviation]]\ntest = "m.py::t"\nexpect = "error"\n' + NO_MATCH,
            "'match' is required",
        ),
        ('[[deviation]]\ntest = "m.py::t"\nexpect = "wrong"\nmatch = 3\n' + NO_MATCH, "regular"),
        ('[[deviation]]\ntest = "m.py::t"\nexpect = "wrong"\nmatch = "(b"\n' + NO_MATCH, "regular"),
        ("deviations = []\n", "unknown top-level"),
        ("[[deviation]\n", "backend.toml"),
    ],
)
def test_malformed_files_are_rejected_naming_the_problem(
    tmp_path: Path, body: str, complaint: str
) -> None:
    with pytest.raises(deviations.DeviationError, match=complaint):
        deviations.load(write(tmp_path, body))


def test_ids_match_exactly_and_rank_counts_restrict() -> None:
    d = entry("m.py::t[int8-2]", np=frozenset({2}))
    assert d.covers("m.py::t[int8-2]", 2)
    assert not d.covers("m.py::t[int8-3]", 2)
    assert not d.covers("m.py::t[int8-2]", 3)


def test_an_entry_excuses_only_the_outcome_it_expects() -> None:
    wrong, hang = entry("m.py::a"), entry("m.py::b", expect="hang")
    records = [
        {"nodeid": "m.py::a", "np": 2, "outcome": "wrong"},
        {"nodeid": "m.py::a", "np": 3, "outcome": "hung"},
        {"nodeid": "m.py::b", "np": 2, "outcome": "hung"},
        {"nodeid": "m.py::b", "np": 3, "outcome": "crashed"},
    ]
    applied = deviations.apply(records, [wrong, hang], {2: ["m.py::a", "m.py::b"]})
    assert [("deviation" in r) for r in records] == [True, False, True, False]
    assert [(n, np, o) for _, n, np, o in applied.other_outcomes] == [
        ("m.py::a", 3, "hung"),
        ("m.py::b", 3, "crashed"),
    ]
    assert not applied.problems() and "not excused" in applied.warnings()[0]


def test_a_passing_strict_entry_fails_the_run_unless_flaky() -> None:
    strict, flaky = entry("m.py::a"), entry("m.py::b", flaky="timing")
    records = [
        {"nodeid": "m.py::a", "np": 2, "outcome": "passed"},
        {"nodeid": "m.py::b", "np": 2, "outcome": "passed"},
    ]
    applied = deviations.apply(records, [strict, flaky], {2: ["m.py::a", "m.py::b"]})
    assert all(r["deviation_passed"] for r in records)
    (problem,) = applied.problems()
    assert "m.py::a passed at np=2" in problem and "flaky" in problem


def test_stale_entries_are_reported_when_their_test_was_selected() -> None:
    selected_not_run = entry("m.py::ran_elsewhere", np=frozenset({4}))
    missing = entry("m.py::renamed")
    not_selected = entry("m.py::other")
    entries = [selected_not_run, missing, not_selected]
    collected = {4: ["m.py::ran_elsewhere"], 2: ["m.py::other"]}
    full = deviations.apply([], entries, collected)
    assert full.stale == entries
    # Under -k/-m/paths an entry about a test that was not selected says nothing ...
    partial = deviations.apply([], entries, {4: ["m.py::ran_elsewhere"]}, scope="selected")
    assert partial.stale == [selected_not_run]
    # With paths, entries about the selected files are in reach even when their test is gone.
    files = deviations.apply([], entries, {4: ["m.py::ran_elsewhere"]}, scope="files")
    assert files.stale == entries
    # ... but a selected test whose entry matched nothing is still reported.
    assert "matched no test that ran" in partial.warnings()[0]


def test_an_entry_can_name_the_releases_it_applies_to() -> None:
    entries = deviations.parse(
        {
            "deviation": [
                {
                    "test": "conformance/specs/test_values.py::test_a",
                    "expect": "wrong",
                    "match": ".",
                    "reason": "old releases only",
                    "no_upstream": "fixed upstream",
                    "releases": ["..0.29.3", "0.30.0"],
                },
                {
                    "test": "conformance/specs/test_values.py::test_b",
                    "expect": "wrong",
                    "match": ".",
                    "reason": "every release",
                    "no_upstream": "n/a",
                },
            ]
        }
    )
    old, anyrelease = entries
    assert old.applies_to("0.26.5") and old.applies_to("0.29.3") and old.applies_to("0.30.0")
    assert not old.applies_to("0.29.4") and not old.applies_to("0.32.4")
    assert old.applies_to(None)  # a version nobody reported: the file as written
    assert [d.reason for d in deviations.for_release(entries, "0.32.4")] == ["every release"]
    assert deviations.for_release(entries, "0.26.5") == entries
    assert anyrelease.applies_to("0.32.4")
    # The run applies only the entries of the version that ran: a pass is no strict failure.
    record = {"nodeid": old.tests[0], "np": 2, "outcome": "passed"}
    applied = deviations.apply([record], deviations.for_release(entries, "0.32.4"), scope="files")
    assert not applied.problems() and "deviation_passed" not in record


@pytest.mark.parametrize("releases", ["latest", ["0.30"], ["0.3x"], [".."], [], [1]])
def test_bad_releases_are_rejected(releases) -> None:
    entry = {
        "test": "conformance/specs/test_values.py::test_a",
        "expect": "wrong",
        "match": ".",
        "reason": "r",
        "no_upstream": "n",
        "releases": releases,
    }
    if releases == ["0.30"]:  # a two-part version is a version
        assert deviations.parse({"deviation": [entry]})[0].releases == ("0.30",)
        return
    with pytest.raises(deviations.DeviationError, match="releases"):
        deviations.parse({"deviation": [entry]})


def _failed(nodeid: str, np: int, *found: str, outcome: str = "wrong") -> dict:
    """A record as the plugin writes a failed loop test: settle's first line, then one tagged
    line per finding in the full failure text."""
    from conformance.records import format_findings

    first = f"collective assertion failed on ranks [0, 1] of {np}: {found[0]}"
    return {
        "nodeid": nodeid,
        "np": np,
        "outcome": outcome,
        "message": first,
        "longrepr": f"def test():\n    settle(problems)  # bool\nE   {first}"
        + format_findings(list(found)).replace("\n", "\nE   "),
    }


LOOP = "conformance/specs/test_layouts.py::test_layouts_give_the_contiguous_result[all_sum]"


def test_an_entry_for_one_dtype_does_not_excuse_another_in_the_same_test() -> None:
    """MLX mpi's bool defect is listed; a second defect (float64) in the same loop test fails
    the run and is named in the problems."""
    bool_only = entry(LOOP, match=r"^all_sum of \S+ bool ")
    bool_finding = "all_sum of strided bool (5,) differs at (1,): got the byte 2, expected 1 (bool)"
    f64_finding = "all_sum of fortran float64 (3, 4) differs at (0, 1): got 1.0, expected 2.0"
    records = [
        _failed(LOOP, 2, bool_finding),
        _failed(LOOP, 3, bool_finding, f64_finding),
        _failed(LOOP, 4, f64_finding),
    ]
    applied = deviations.apply(records, [bool_only], {2: [LOOP]})
    assert [bool(r.get("deviation")) for r in records] == [True, False, False]
    problems = applied.problems()
    assert len(problems) == 2
    assert "np=3" in problems[0] and f64_finding in problems[0] and bool_finding not in problems[0]
    assert "np=4" in problems[1] and f64_finding in problems[1]


def test_findings_come_from_the_tagged_lines_not_the_test_source() -> None:
    """The test's source in the traceback mentions bool; only the findings count."""
    record = _failed(LOOP, 2, "all_sum of strided float64 (5,) differs at (0,)")
    assert entry(LOOP, match="bool").unnamed(record) != []
    assert entry(LOOP, match="float64").unnamed(record) == []


def test_a_failure_without_tagged_findings_is_matched_on_its_exception_text() -> None:
    """One finding: what the exceptions said (pytest's E lines: every rank's detail), not the
    test's source; else the message."""
    record = {
        "nodeid": "m.py::a",
        "np": 2,
        "outcome": "wrong",
        "message": "failed on ranks [0, 1] of 2: expected TypeError on every rank",
        "longrepr": "    with raises(complex128):\n"
        "E   CollectiveFailure: expected TypeError on every rank\n"
        "E     rank 0: returned normally\n"
        "E     rank 1: raised ValueError: Invalid type",
    }
    assert entry("m.py::a", match="rank 0: returned normally").unnamed(record) == []
    assert entry("m.py::a", match="complex128").unnamed(record) != []
    no_traceback = {**record, "longrepr": ""}
    assert entry("m.py::a", match="expected TypeError").unnamed(no_traceback) == []
    # A failure with no message at all names nothing an entry could be about.
    bare = {"nodeid": "m.py::a", "np": 2, "outcome": "error"}
    assert entry("m.py::a", expect="error", match="complex128").unnamed(bare) != []


def test_a_failure_with_more_findings_than_it_lists_is_not_excused_whole() -> None:
    from conformance.records import MAX_FINDINGS

    found = [f"all_sum bool count={n} wrong" for n in range(MAX_FINDINGS + 3)]
    record = _failed(LOOP, 2, *found)
    (left,) = entry(LOOP, match="bool").unnamed(record)
    assert left == "3 more findings not shown"


def test_settle_lists_every_finding_on_a_tagged_line() -> None:
    from conformance.records import FINDING_TAG, findings_of, format_findings

    text = format_findings(["a float64\nsecond line", "b bool"])
    assert text == f"\n{FINDING_TAG} a float64 second line\n{FINDING_TAG} b bool"
    assert findings_of({"longrepr": "E  x" + text.replace("\n", "\nE   ")}) == [
        "a float64 second line",
        "b bool",
    ]
