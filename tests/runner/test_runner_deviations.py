"""Known-deviation files: parsing, validation, matching and classification of records."""

from __future__ import annotations

from pathlib import Path

import pytest

from conformance.run import deviations


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "backend.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_shipped_reference_file_is_valid_and_empty() -> None:
    path = deviations.default_path("reference")
    assert path.exists()
    assert deviations.load(path) == []


def test_default_path_uses_the_backend_name_before_any_colon() -> None:
    assert deviations.default_path("faulty:drop").name == "faulty.toml"
    assert deviations.default_path("my.pkg:Backend").name == "my_pkg.toml"


def test_missing_file_means_no_deviations(tmp_path: Path) -> None:
    assert deviations.load(tmp_path / "absent.toml") == []


def test_entries_are_parsed_with_rank_counts_and_links(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[deviation]]
test = "specs/test_all_sum.py::test_bool*"
np = [2, 3]
reason = "aborts on bool"
upstream = "https://example.org/issue/1"

[[deviation]]
test = "specs/test_p2p.py::test_self"
np = 4
reason = "self send unsupported"
""",
    )
    first, second = deviations.load(path)
    assert first.np == frozenset({2, 3})
    assert first.describe() == "aborts on bool (https://example.org/issue/1)"
    assert second.np == frozenset({4})
    assert second.describe() == "self send unsupported"


@pytest.mark.parametrize(
    "body, complaint",
    [
        ('[[deviation]]\nreason = "r"\n', "'test'"),
        ('[[deviation]]\ntest = "t"\n', "'reason'"),
        ('[[deviation]]\ntest = "t"\nreason = "r"\nnp = [0]\n', "'np'"),
        ('[[deviation]]\ntest = "t"\nreason = "r"\nnp = "2"\n', "'np'"),
        ('[[deviation]]\ntest = "t"\nreason = "r"\nflavour = 1\n', "unknown keys"),
        ("deviations = []\n", "unknown top-level"),
        ("[[deviation]\n", "backend.toml"),
    ],
)
def test_malformed_files_are_rejected_naming_the_problem(
    tmp_path: Path, body: str, complaint: str
) -> None:
    with pytest.raises(deviations.DeviationError, match=complaint):
        deviations.load(write(tmp_path, body))


def test_brackets_in_patterns_match_parametrized_ids_literally() -> None:
    entry = deviations.Deviation(test="m.py::t[int8-2]", reason="r")
    assert entry.matches("m.py::t[int8-2]", 3)
    assert not entry.matches("m.py::t[int8-3]", 3)
    wildcard = deviations.Deviation(test="m.py::t[int8-*]", reason="r")
    assert wildcard.matches("m.py::t[int8-7]", 1)
    assert not wildcard.matches("m.py::t[int16-7]", 1)


def test_rank_counts_restrict_matches() -> None:
    entry = deviations.Deviation(test="m.py::t", reason="r", np=frozenset({2}))
    assert entry.matches("m.py::t", 2)
    assert not entry.matches("m.py::t", 3)


def test_apply_excuses_failures_flags_passes_and_returns_unmatched() -> None:
    entries = [
        deviations.Deviation(test="m.py::fails", reason="known bug", np=frozenset({2})),
        deviations.Deviation(test="m.py::passes", reason="fixed upstream?"),
        deviations.Deviation(test="m.py::gone", reason="renamed test"),
    ]
    records = [
        {"nodeid": "m.py::fails", "np": 2, "outcome": "failed"},
        {"nodeid": "m.py::fails", "np": 3, "outcome": "failed"},
        {"nodeid": "m.py::passes", "np": 1, "outcome": "passed"},
        {"nodeid": "m.py::hangs", "np": 1, "outcome": "hung"},
    ]
    collected = {n: ["m.py::fails", "m.py::passes", "m.py::hangs"] for n in (1, 2, 3)}
    unmatched = deviations.apply(records, entries, collected)
    assert [d.test for d in unmatched] == ["m.py::gone"]
    assert records[0]["deviation"] == "known bug"
    assert "deviation" not in records[1]  # np 3 is not listed
    assert records[2]["deviation_passed"] == "fixed upstream?"
    assert "deviation" not in records[3]


def test_entry_matching_a_collected_test_that_did_not_run_is_not_unmatched() -> None:
    entries = [deviations.Deviation(test="m.py::t", reason="r", np=frozenset({4}))]
    assert deviations.apply([], entries, {4: ["m.py::t"]}) == []
    assert deviations.apply([], entries, {2: ["m.py::t"]}) == entries
