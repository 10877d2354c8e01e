"""``bench compare``: ratios of two saved reports side by side, each case flagged comparable only
when the two runs' raw mpi4py times agree (conformance.bench.compare)."""

from __future__ import annotations

import pytest

from conformance.bench.cli import main
from conformance.bench.compare import compare, render_comparison
from conformance.bench.output import make_report, write_json


def _row(op: str, nbytes: int, ratio: float | None, raw: float | None) -> dict:
    return {
        "op": op,
        "mode": "collective",
        "nbytes": nbytes,
        "ratio": None if ratio is None else {"median": ratio},
        "baseline": None if raw is None else {"time": {"median": raw}},
    }


BEFORE = make_report(
    {"backend": "reference"},
    [
        _row("all_sum", 8, 0.40, 3.4e-6),
        _row("all_sum", 4 << 20, 0.48, 600e-6),
        _row("all_gather", 4 << 20, 0.77, 200e-6),
        _row("sum_scatter", 64, 0.36, 3.5e-6),  # not in AFTER
    ],
)
AFTER = make_report(
    {"backend": "reference"},
    [
        _row("all_sum", 8, 0.54, 3.5e-6),
        _row("all_sum", 4 << 20, 1.40, 560e-6),
        _row("all_gather", 4 << 20, 0.93, 548e-6),
        _row("all_max", 8, 0.5, 3.4e-6),  # not in BEFORE
        _row("all_min", 8, None, None),  # no baseline
    ],
)


def test_cases_in_both_reports_pair_up_and_a_moved_baseline_is_flagged():
    rows = compare(BEFORE, AFTER, tolerance=0.15)
    assert [(r["op"], r["nbytes"]) for r in rows] == [
        ("all_sum", 8),
        ("all_sum", 4 << 20),
        ("all_gather", 4 << 20),
    ]
    small, large, gather = rows
    assert (small["ratio_before"], small["ratio_after"]) == (0.40, 0.54)
    assert small["comparable"] and large["comparable"]
    # Signed: the raw time fell from 600 to 560 us (-7 %) and rose from 200 to 548 us.
    assert large["raw_moved"] == pytest.approx(560 / 600 - 1)
    assert not gather["comparable"] and gather["raw_moved"] == pytest.approx(548 / 200 - 1)


def test_a_time_that_fell_is_a_negative_change_and_a_halving_is_as_far_as_a_doubling():
    before = make_report({}, [_row("all_sum", 8, 0.30, 3.96e-6), _row("all_max", 8, 0.5, 2e-6)])
    after = make_report({}, [_row("all_sum", 8, 0.60, 1.84e-6), _row("all_max", 8, 0.5, 4e-6)])
    fell, doubled = compare(before, after, tolerance=0.15)
    assert fell["raw_moved"] == pytest.approx(1.84 / 3.96 - 1)  # -54 %, not +115 %
    assert not fell["comparable"] and not doubled["comparable"]
    assert compare(before, after, tolerance=1.0)[1]["comparable"]  # 2x apart: 100 %
    assert not compare(before, after, tolerance=0.99)[1]["comparable"]
    line = render_comparison([fell], 0.15).splitlines()[2]
    assert "-54%" in line and "+115%" not in line
    assert "+100%" in line  # the ratio doubled


def test_the_tolerance_decides_what_is_comparable():
    assert all(r["comparable"] for r in compare(BEFORE, AFTER, tolerance=2.0))
    assert [r["comparable"] for r in compare(BEFORE, AFTER, tolerance=0.05)] == [
        True,
        False,
        False,
    ]
    with pytest.raises(ValueError, match="tolerance"):
        compare(BEFORE, AFTER, tolerance=-0.1)


def test_the_table_shows_both_ratios_and_the_flag():
    text = render_comparison(compare(BEFORE, AFTER, 0.15), 0.15)
    lines = text.splitlines()
    gather = next(line for line in lines if line.startswith("all_gather"))
    assert "0.77 -> 0.93" in gather and "not comparable" in gather
    assert "200 us" in gather and "548 us" in gather
    small = next(line for line in lines if line.startswith("all_sum") and " 8 |" in line)
    assert "not comparable" not in small and "+35%" in small
    assert lines[-1].startswith("3 cases in both reports; 2 comparable, 1 not")


def test_cli_compare_prints_the_comparison_and_rejects_bad_input(tmp_path, capsys):
    before, after = tmp_path / "before.json", tmp_path / "after.json"
    write_json(BEFORE, before)
    write_json(AFTER, after)
    assert main(["compare", str(before), str(after)]) == 0
    out = capsys.readouterr().out
    assert "not comparable" in out and "2 comparable, 1 not" in out
    assert main(["compare", str(before), str(tmp_path / "missing.json")]) == 2
    (tmp_path / "other.json").write_text('{"schema": "something else"}')
    assert main(["compare", str(before), str(tmp_path / "other.json")]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(before), str(after), "--tolerance", "-1"])
    assert exit_info.value.code == 2
