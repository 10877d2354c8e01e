"""Rule coverage of a conformance run: which manifest rules held at which rank counts (runs in the
runner, outside every job).

A level's PASS is a claim about every rule of that level, so it needs a test of each rule that
held, at each rank count the run took where the rule applies. Tests cite their rule with
``@pytest.mark.spec(op, rule=...)``; the plugin writes it into each record (``rule``), and the
manifest (``conformance/specs/manifest.toml``) gives each rule its level.

Contract (:func:`rule_coverage`, :func:`gaps`):

- A rule *held* at a rank count when one of its records there passed, or raised as declared
  unsupported (``unsupported``), or passed unexpectedly (``xpassed``).
- It is *excused* there when it did not hold but a known deviation excused one of its records
  (the level then reads DEVIATES, never PASS).
- It is *not applicable* there when every one of its records was skipped: only the spec skips (for
  the world size or a capability the backend declares; a skip raised inside a backend call is an
  error, ``conformance.backend.guarded``).
- Otherwise it is *not covered* there: its records failed, hung, crashed or ended xfailed, or --
  in a run of the whole spec -- it has no record at all. A level with a rule not covered at some
  rank count reads NOT COVERED (unless it FAILs), whatever passed besides.
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Iterable, Mapping
from typing import Any

from conformance.records import GOOD_OUTCOMES, Outcome, outcome_of

HELD = "held"
EXCUSED = "excused"
NOT_APPLICABLE = "n/a"
NOT_COVERED = "not covered"
#: Status -> the cell the report shows.
CELLS = {HELD: "held", EXCUSED: "excused", NOT_APPLICABLE: "n/a", NOT_COVERED: "**NOT COVERED**"}


@functools.cache
def manifest_levels() -> dict[str, str]:
    """ "op/rule-id" -> the rule's level (``core``, ``robust``, ``impl-defined``)."""
    from conformance.specs import manifest

    return {
        f"{op}/{rule}": str(entry["level"]).replace("_", "-")
        for (op, rule), entry in manifest.rules(manifest.load()).items()
    }


def _status(records: list[Mapping[str, Any]]) -> str:
    outcomes = [outcome_of(r) for r in records]
    if any(o in GOOD_OUTCOMES for o in outcomes):
        return HELD
    if any(r.get("deviation") for r in records):
        return EXCUSED
    if records and all(o is Outcome.SKIPPED for o in outcomes):
        return NOT_APPLICABLE
    return NOT_COVERED


def rule_coverage(
    records: Iterable[Mapping[str, Any]],
    nps: Iterable[int],
    *,
    complete: bool = True,
    levels: Mapping[str, str] | None = None,
) -> dict[str, dict[int, str]]:
    """ "op/rule-id" -> rank count -> status, for every rule of ``levels`` (default: the
    manifest's) at every rank count of ``nps``. ``complete`` says the whole spec was selected:
    then a rule with no record at a rank count is not covered; otherwise (``-k``, ``-m``, paths)
    only rules some record cites are shown."""
    levels = manifest_levels() if levels is None else levels
    by_rule: dict[str, dict[int, list[Mapping[str, Any]]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        rule = record.get("rule")
        if rule:
            by_rule[str(rule)][int(record["np"])].append(record)
    shown = levels if complete else [rule for rule in levels if rule in by_rule]
    return {rule: {np: _status(by_rule[rule][np]) for np in nps} for rule in shown}


def gaps(coverage: Mapping[str, Mapping[int, str]], level: str) -> list[tuple[str, list[int]]]:
    """(rule, rank counts) of each rule of ``level`` that is not covered somewhere."""
    levels = manifest_levels()
    out = []
    for rule, by_np in coverage.items():
        if levels.get(rule) != level:
            continue
        missing = [np for np, status in sorted(by_np.items()) if status == NOT_COVERED]
        if missing:
            out.append((rule, missing))
    return out


def section(coverage: Mapping[str, Mapping[int, str]], nps: list[int]) -> list[str]:
    """The report's table of rule coverage per rank count, one row per rule, by level."""
    if not coverage:
        return []
    levels = manifest_levels()
    lines = [
        "",
        "## Rule coverage",
        "",
        "Each manifest rule at each rank count: held (a test of it passed or raised as declared "
        "unsupported), excused (a known deviation), n/a (the spec skipped every test of it there: "
        "world size or a declared capability), NOT COVERED (no test of it held: it failed, ended "
        "xfailed or did not run).",
    ]
    header = ["rule", *(f"np={np}" for np in nps)]
    for level in dict.fromkeys(levels.values()):
        rules = [rule for rule in coverage if levels.get(rule) == level]
        if not rules:
            continue
        held = sum(all(s != NOT_COVERED for s in coverage[r].values()) for r in rules)
        lines += ["", f"### {level}: {held} of {len(rules)} rules covered at every rank count", ""]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for rule in rules:
            cells = [CELLS[coverage[rule].get(np, NOT_COVERED)] for np in nps]
            lines.append(f"| `{rule}` | " + " | ".join(cells) + " |")
    return lines
