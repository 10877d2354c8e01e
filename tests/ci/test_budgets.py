"""The test budget (ci/budgets.tsv, docs/contracts.md "Test budget"): what each step of
ci/test.sh may cost, and the check that a recorded step table stays within 2x of it.

``ci/test.sh`` writes what each step took to ``<reports>/steps.tsv`` and runs this module on it
at the end (``CI_STEP_TABLE``); in the machinery step it reads the table of the last run in the
default reports directory, and skips when there is none.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUDGETS = ROOT / "ci" / "budgets.tsv"
DEFAULT_TABLE = ROOT / "conformance-reports" / "ci" / "steps.tsv"
#: A step may take this many times its budget before the check fails.
OVERRUN = 2.0
#: What each mode may cost in all (seconds; docs/contracts.md, "Test budget"): the quick set in
#: 10 minutes, the full set's steps in 23 (``.ci/run`` adds the install: 25 in all).
MODE_LIMITS = {"quick": 600, "full": 1380}
MODES = ("quick", "full")


def read_budgets(path: Path = BUDGETS) -> dict[str, dict[str, int]]:
    """``{mode: {step: seconds}}`` from the budget file (a ``-`` cell: the mode skips the step)."""
    budgets: dict[str, dict[str, int]] = {mode: {} for mode in MODES}
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        step, *cells = line.split()
        if len(cells) != len(MODES):
            raise ValueError(f"{path}: {line!r} needs a budget per mode {MODES}")
        for mode, cell in zip(MODES, cells, strict=True):
            if cell != "-":
                budgets[mode][step] = int(cell)
    return budgets


def read_table(path: Path) -> list[dict[str, str]]:
    """Rows of a step table written by ci/test.sh: step, mode, status, seconds, budget."""
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        step, mode, status, seconds, budget = line.split("\t")
        rows.append(dict(step=step, mode=mode, status=status, seconds=seconds, budget=budget))
    return rows


def overruns(rows: list[dict[str, str]], budgets: dict[str, dict[str, int]]) -> list[str]:
    """One line per step that ran (exit 0) and took more than :data:`OVERRUN` x its budget in
    ``budgets`` (the budget file, not the one the table recorded: a step cannot raise its own)."""
    found = []
    for row in rows:
        if row["status"] != "0":
            continue  # a failed or skipped step is reported as such, not as slow
        budget = budgets.get(row["mode"], {}).get(row["step"])
        if budget is None:
            found.append(f"{row['step']}: no {row['mode']} budget in {BUDGETS.name}")
        elif int(row["seconds"]) > OVERRUN * budget:
            found.append(
                f"{row['step']} ({row['mode']}) took {row['seconds']} s, over {OVERRUN:g}x its "
                f"budget of {budget} s: cut it (docs/contracts.md, 'Test budget') or raise "
                "the budget with the measurement that justifies it"
            )
    return found


def test_budgets_fit_each_mode() -> None:
    """Every step has a budget, and each mode's steps add up to no more than its limit."""
    budgets = read_budgets()
    assert set(budgets["quick"]) <= set(budgets["full"]), "full runs every step quick runs"
    for mode, limit in MODE_LIMITS.items():
        total = sum(budgets[mode].values())
        assert total <= limit, f"the {mode} steps' budgets add up to {total} s, over {limit} s"


def test_overrun_is_caught(tmp_path: Path) -> None:
    """The check fails a step over 2x its budget, and only that one."""
    budgets = {"quick": {"lint": 10, "spec": 100}, "full": {}}
    table = tmp_path / "steps.tsv"
    table.write_text(
        "# step\tmode\tstatus\tseconds\tbudget\n"
        "lint\tquick\t0\t20\t10\n"  # exactly 2x: allowed
        "spec\tquick\t0\t201\t999\n"  # over 2x of the file's budget, whatever the table says
        "lint\tquick\t1\t500\t10\n",  # failed: reported as a failure elsewhere
        encoding="utf-8",
    )
    found = overruns(read_table(table), budgets)
    assert len(found) == 1 and found[0].startswith("spec (quick) took 201 s"), found


def test_recorded_steps_within_budget() -> None:
    """The last step table (``CI_STEP_TABLE``, else the default reports directory's) has no step
    that took over 2x its budget."""
    table = Path(os.environ.get("CI_STEP_TABLE") or DEFAULT_TABLE)
    if not table.is_file():
        pytest.skip(f"no step table at {table}: run bash ci/test.sh first")
    rows = read_table(table)
    if not rows:
        pytest.skip(f"{table} records no step yet")
    problems = overruns(rows, read_budgets())
    assert not problems, "\n".join(problems)
