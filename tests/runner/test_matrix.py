"""The release matrix's own logic: release selection and the merged report (no installs)."""

from __future__ import annotations

from typing import Any

import pytest

from conformance.run import matrix

AVAILABLE = ["0.26.5", "0.27.1", "0.29.4", "0.30.1", "0.31.0", "0.32.4"]


def test_selection_by_list_range_and_all() -> None:
    assert matrix.select_releases("0.32.4,0.26.5", AVAILABLE) == ["0.26.5", "0.32.4"]
    assert matrix.select_releases("0.29.0..0.30.1", AVAILABLE) == ["0.29.4", "0.30.1"]
    assert matrix.select_releases("..0.27.1,0.32.4", AVAILABLE) == ["0.26.5", "0.27.1", "0.32.4"]
    assert matrix.select_releases("all", AVAILABLE) == AVAILABLE
    # Versions sort numerically, not as text (0.9 < 0.10).
    assert matrix.select_releases("0.10.0,0.9.1") == ["0.9.1", "0.10.0"]


@pytest.mark.parametrize("spec", ["latest", "0.30", "0.3x.1", "", "0.40..0.50"])
def test_bad_or_empty_selection_is_a_clear_error(spec: str) -> None:
    if spec == "0.30":  # a two-part version is a version; only garbage is rejected
        assert matrix.select_releases(spec, AVAILABLE) == ["0.30"]
        return
    with pytest.raises(matrix.MatrixError, match="--mlx"):
        matrix.select_releases(spec, AVAILABLE)


def _record(nodeid: str, outcome: str, area: str = "values", np: int = 2) -> dict[str, Any]:
    return {"nodeid": nodeid, "np": np, "outcome": outcome, "area": area, "level": "core"}


def _report(records: list[dict[str, Any]], ops: list[str] | None = None) -> dict[str, Any]:
    caps = {"2": {"ops": ops or ["Group", "all_sum", "init", "is_available", "sum_scatter"]}}
    return {
        "records": records,
        "levels": {"core": {"verdict": "PASS", "counts": {"passed": len(records)}}},
        "capabilities": caps,
    }


def test_changes_name_the_tests_whose_outcome_moved() -> None:
    old = matrix.Row(
        "0.29.0",
        _report([_record("t.py::a", "wrong"), _record("t.py::b", "passed")], ops=["all_sum"]),
    )
    new = matrix.Row(
        "0.30.1", _report([_record("t.py::a", "passed"), _record("t.py::b", "passed")])
    )
    assert matrix.changes(old, new) == {"wrong -> passed": [("t.py::a", [2])]}
    assert matrix.changes(new, new) == {}


def test_markdown_has_a_row_per_release_and_says_why_one_is_missing() -> None:
    rows = [
        matrix.Row("0.26.5", problem="pip could not install mlx==0.26.5: no matching wheel"),
        matrix.Row("0.29.0", _report([_record("t.py::a", "wrong")], ops=["all_sum"])),
        matrix.Row("0.30.1", _report([_record("t.py::a", "passed")])),
    ]
    text = matrix.markdown(rows, "python -m conformance matrix --mlx all", ["--np", "2"])
    assert "| 0.26.5 | pip could not install mlx==0.26.5: no matching wheel |" in text
    assert "### 0.29.0 -> 0.30.1" in text and "**wrong -> passed** (1 tests)" in text
    assert "0.26.5 ->" not in text  # a release without a report is not compared
    line = next(ln for ln in text.splitlines() if ln.startswith("| 0.29.0 | PASS"))
    assert "sum_scatter" in line  # declared absent from the API


def test_saved_reports_are_merged_without_running_or_installing(tmp_path, capsys) -> None:
    import json

    for version, outcome in (("0.29.0", "wrong"), ("0.30.1", "passed")):
        (tmp_path / f"mlx-{version}").mkdir()
        report = _report([_record("t.py::a", outcome)]) | {"verdict": "PASS", "duration": 5.0}
        (tmp_path / f"mlx-{version}" / "report.json").write_text(json.dumps(report))
    cache = tmp_path / "cache"  # must stay empty: nothing is installed
    argv = ["--mlx", "0.29.0,0.30.1", "--reuse-reports", "--report-dir", str(tmp_path)]
    assert matrix.main([*argv, "--cache-dir", str(cache)]) == 0
    assert not any(cache.iterdir())
    text = (tmp_path / "matrix.md").read_text()
    assert "### 0.29.0 -> 0.30.1" in text and "`t.py::a` (np=2)" in text
    merged = json.loads((tmp_path / "matrix.json").read_text())
    assert [r["version"] for r in merged["releases"]] == ["0.29.0", "0.30.1"]
    assert merged["changes"][0]["changes"] == {"wrong -> passed": [["t.py::a", [2]]]}
