"""Reports of a conformance run: Markdown matrix, JSON records and JUnit XML.

Contract: :func:`write_all` writes ``report.md``, ``report.json`` and ``junit.xml`` into a
directory from a :class:`RunSummary` (records of every rank count, each a results-file record
plus ``np``, ``reproduce`` and, where a known deviation applies, ``deviation`` or
``deviation_passed``). Every test that failed, hung, crashed or errored is listed with the
command that reproduces it alone. :attr:`RunSummary.ok` is the run's verdict: no unexpected
bad outcome and no problem that kept tests from running.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Levels in report order; records without a level are shown under "unlabelled".
LEVELS = ("core", "robust", "impl-defined")
UNLABELLED = "unlabelled"
BAD = frozenset({"failed", "hung", "crashed", "error"})

# Column classes of the matrix, in display order, with their one-letter legend.
CLASSES = (
    ("passed", "passed"),
    ("failed", "F"),
    ("hung", "H"),
    ("expected", "X"),
    ("xpassed", "XP"),
    ("skipped", "S"),
)


def classify(record: dict[str, Any]) -> str:
    """The matrix class of a record: passed, failed, hung, expected, xpassed or skipped.

    ``failed`` covers failed and error; ``hung`` covers hung and crashed; ``expected`` covers
    xfailed and bad outcomes excused by a known deviation; ``xpassed`` covers pytest's xpassed
    and passes of a test listed as a known deviation.
    """
    outcome = record.get("outcome")
    if outcome in BAD and record.get("deviation"):
        return "expected"
    if outcome in ("failed", "error"):
        return "failed"
    if outcome in ("hung", "crashed"):
        return "hung"
    if outcome == "xfailed":
        return "expected"
    if outcome == "xpassed" or (outcome == "passed" and record.get("deviation_passed")):
        return "xpassed"
    if outcome == "passed":
        return "passed"
    return "skipped"


def level_of(record: dict[str, Any]) -> str:
    level = record.get("level")
    if not level:
        return UNLABELLED
    return str(level).replace("_", "-")


@dataclass
class RunSummary:
    """Everything the reports show."""

    backend: str
    nps: list[int]
    records: list[dict[str, Any]]
    total_per_np: int = 0
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    duration: float = 0.0
    launcher: str = ""
    deviations_file: str = ""

    @property
    def unexpected(self) -> list[dict[str, Any]]:
        """Records that make the run fail: failed/hung/crashed/error without a deviation."""
        return [r for r in self.records if classify(r) in ("failed", "hung")]

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.problems

    def counts(self, records: Iterable[dict[str, Any]] | None = None) -> Counter[str]:
        return Counter(classify(r) for r in (self.records if records is None else records))


def _sorted(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (r.get("np", 0), r.get("order", 0), r["nodeid"]))


def _cell(counter: Counter[str]) -> str:
    total = sum(counter.values())
    if not total:
        return ""
    text = f"{counter['passed']}/{total}"
    extras = [f"{label}{counter[name]}" for name, label in CLASSES[1:] if counter[name]]
    return " ".join([text, *extras])


def markdown(summary: RunSummary) -> str:
    """The Markdown report: verdict, matrix per level, failures with reproduction commands."""
    lines: list[str] = []
    verdict = "PASS" if summary.ok else "FAIL"
    counts = summary.counts()
    lines += [
        f"# Conformance report: `{summary.backend}` — {verdict}",
        "",
        f"- rank counts: {', '.join(map(str, summary.nps))}; "
        f"{summary.total_per_np} tests per rank count; {len(summary.records)} results",
        "- " + ", ".join(f"{name} {counts[name]}" for name, _ in CLASSES),
        f"- duration: {summary.duration:.0f} s",
    ]
    if summary.launcher:
        lines.append(f"- launcher: {summary.launcher}")
    if summary.deviations_file:
        lines.append(f"- known deviations: `{summary.deviations_file}`")
    lines += [
        "",
        "Cells: passed/total, then F failed or error, H hung or crashed, X expected failure "
        "(xfail or known deviation), XP unexpected pass, S skipped.",
    ]
    by_level: dict[str, dict[str, dict[int, Counter[str]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(Counter))
    )
    for record in summary.records:
        area = record.get("area") or "?"
        by_level[level_of(record)][area][record["np"]][classify(record)] += 1
    for level in [*LEVELS, UNLABELLED]:
        areas = by_level.get(level)
        if not areas:
            continue
        lines += ["", f"## {level}", ""]
        header = ["area", *(f"np={np}" for np in summary.nps)]
        lines.append("| " + " | ".join(header) + " |")
        lines.append("|" + "---|" * len(header))
        for area in sorted(areas):
            cells = [_cell(areas[area].get(np, Counter())) for np in summary.nps]
            lines.append("| " + " | ".join([area, *cells]) + " |")
    if summary.problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in summary.problems]
    if summary.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in summary.warnings]
    bad = _sorted(summary.unexpected)
    if bad:
        lines += ["", "## Failures", ""]
        for record in bad:
            lines += _failure_section(record)
    xpassed = [r for r in _sorted(summary.records) if classify(r) == "xpassed"]
    if xpassed:
        lines += ["", "## Unexpected passes", ""]
        for record in xpassed:
            reason = record.get("deviation_passed") or record.get("message") or ""
            lines.append(f"- np={record['np']} `{record['nodeid']}`: {reason}")
    expected = [r for r in _sorted(summary.records) if r.get("deviation") and r.get("outcome")]
    if expected:
        lines += ["", "## Known deviations observed", ""]
        for record in expected:
            lines.append(
                f"- np={record['np']} `{record['nodeid']}` {record['outcome']}: "
                f"{record['deviation']}"
            )
    return "\n".join(lines) + "\n"


def _failure_section(record: dict[str, Any]) -> list[str]:
    ranks = record.get("failing_ranks") or []
    lines = [
        f"### {record['outcome']}: `{record['nodeid']}` (np={record['np']})",
        "",
    ]
    if ranks:
        lines.append(f"Failing ranks: {', '.join(map(str, ranks))}")
        lines.append("")
    message = (record.get("message") or "").strip()
    if message:
        lines += ["```", message, "```", ""]
    lines += ["Reproduce:", "", "```sh", record.get("reproduce", ""), "```", ""]
    detail = (record.get("longrepr") or "").strip()
    if detail:
        lines += ["<details><summary>details</summary>", "", "```", detail, "```", "</details>"]
        lines.append("")
    sections = (
        ("what each rank printed", record.get("rank_output")),
        ("stacks", record.get("stacks")),
        ("rank logs", record.get("rank_logs")),
    )
    for title, texts in sections:
        if texts:
            lines += [f"<details><summary>{title}</summary>", ""]
            for rank, text in sorted(texts.items(), key=lambda kv: str(kv[0])):
                lines += [f"rank {rank}:", "", "```", str(text).rstrip(), "```", ""]
            lines += ["</details>", ""]
    output = (record.get("output") or "").strip()
    if output:
        lines += ["<details><summary>job output</summary>", "", "```", output, "```"]
        lines += ["</details>", ""]
    return lines


def json_report(summary: RunSummary) -> dict[str, Any]:
    """The JSON report: run facts, totals and one record per test and rank count."""
    keep = (
        "nodeid",
        "np",
        "outcome",
        "failing_ranks",
        "message",
        "duration",
        "seed",
        "level",
        "area",
        "backend",
        "reproduce",
        "deviation",
        "deviation_passed",
        "longrepr",
        "stacks",
        "output",
        "rank_output",
        "rank_logs",
    )
    records = []
    for record in _sorted(summary.records):
        out = {k: record[k] for k in keep if k in record}
        out["class"] = classify(record)
        records.append(out)
    return {
        "backend": summary.backend,
        "nps": summary.nps,
        "ok": summary.ok,
        "tests_per_np": summary.total_per_np,
        "duration": round(summary.duration, 3),
        "launcher": summary.launcher,
        "deviations_file": summary.deviations_file,
        "totals": {name: summary.counts()[name] for name, _ in CLASSES},
        "problems": summary.problems,
        "warnings": summary.warnings,
        "records": records,
    }


def junit(summary: RunSummary) -> ET.ElementTree:
    """JUnit XML: one test suite per rank count, one test case per test."""
    root = ET.Element("testsuites", name=f"conformance {summary.backend}")
    for np in summary.nps:
        records = _sorted(r for r in summary.records if r["np"] == np)
        classes = Counter(classify(r) for r in records)
        suite = ET.SubElement(
            root,
            "testsuite",
            name=f"{summary.backend} np={np}",
            tests=str(len(records)),
            failures=str(classes["failed"]),
            errors=str(classes["hung"]),
            skipped=str(classes["skipped"] + classes["expected"]),
            time=f"{sum(float(r.get('duration') or 0) for r in records):.3f}",
        )
        for record in records:
            module, _, name = record["nodeid"].partition("::")
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"np{np}." + module.removesuffix(".py").replace("/", "."),
                name=name or module,
                time=f"{float(record.get('duration') or 0):.3f}",
            )
            kind = classify(record)
            text = "\n\n".join(
                t
                for t in (
                    record.get("message") or "",
                    record.get("longrepr") or "",
                    "Reproduce: " + record.get("reproduce", ""),
                )
                if t
            )
            if kind == "failed":
                el = ET.SubElement(case, "failure", message=_one_line(record), type="failed")
                el.text = text
            elif kind == "hung":
                el = ET.SubElement(case, "error", message=_one_line(record), type=record["outcome"])
                el.text = text
                output = record.get("output") or ""
                if output:
                    ET.SubElement(case, "system-out").text = output
            elif kind in ("skipped", "expected"):
                reason = record.get("deviation") or record.get("message") or record["outcome"]
                ET.SubElement(case, "skipped", message=str(reason)[:500])
    ET.indent(root)
    return ET.ElementTree(root)


def _one_line(record: dict[str, Any]) -> str:
    message = (record.get("message") or record.get("outcome") or "").strip()
    return message.splitlines()[0][:500] if message else record["outcome"]


def terminal_summary(summary: RunSummary) -> str:
    """A few lines for the terminal: verdict, totals, and each unexpected failure."""
    counts = summary.counts()
    head = (
        f"{'PASS' if summary.ok else 'FAIL'}: "
        + ", ".join(f"{counts[name]} {name}" for name, _ in CLASSES if counts[name])
        + f" in {summary.duration:.0f} s"
    )
    lines = [head]
    for record in _sorted(summary.unexpected):
        lines.append(f"  np={record['np']} {record['outcome']}: {record['nodeid']}")
    return "\n".join(lines)


def write_all(summary: RunSummary, directory: Path) -> list[Path]:
    """Write report.md, report.json and junit.xml into ``directory``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    md = directory / "report.md"
    md.write_text(markdown(summary), encoding="utf-8")
    js = directory / "report.json"
    js.write_text(json.dumps(json_report(summary), indent=1, default=str) + "\n", "utf-8")
    xml = directory / "junit.xml"
    junit(summary).write(xml, encoding="utf-8", xml_declaration=True)
    return [md, js, xml]
