"""Reports of a conformance run (runs in the runner, outside every job): Markdown, JSON, JUnit XML.

Contract: :func:`write_all` writes ``report.md``, ``report.json`` and ``junit.xml`` into a
directory from a :class:`RunSummary` (the test records of every rank count, each a results-file
record plus ``np``, ``reproduce`` and, where a known deviation applies, ``deviation`` or
``deviation_passed``; the session header of each rank count; the run's problems).

- The headline gives a verdict per level (core, robust, impl-defined) with its counts, the
  backend and its version, the suite's version and commit, and the rank counts. A level is PASS
  only when at least one of its tests passed, none failed, hung or crashed unexcused, and nothing
  in it was excused by a deviation (then DEVIATES); core is FAIL when a core feature is declared
  unsupported without a deviation entry naming it; robust is UNTESTED (never PASS) for a backend
  without ``set_timeout``, and the report says why (:func:`robust_untested`).
- Every declared capability is listed, each declared-unsupported feature marked optional or not.
- Identical outcomes of one test at several rank counts are one line (or one section).
- A table says what each tier cost (tests, results, time), and one where each MPI job's time
  went (start, collection, tests, teardown: ``conformance.run.jobtime``).
- No path of the machine that made the report appears in it (:func:`scrub`).
- :attr:`RunSummary.ok` is the run's verdict (the runner's exit status is 0 only when it holds).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import conformance
from conformance.harness.levels import BASIC_TIER, LEVELS
from conformance.records import BAD_OUTCOMES, SessionRecord, outcome_of, read_session
from conformance.run import coverage as coverage_mod
from conformance.run import deviations as deviations_mod
from conformance.run import jobtime

UNLABELLED = "unlabelled"
DISTRIBUTION = "mlx-distributed-conformance"

# Classes of the matrix, in display order, with their one-letter legend.
CLASSES = (
    ("passed", "passed"),
    ("unsupported", "U"),
    ("wrong", "W"),
    ("error", "E"),
    ("hung", "H"),
    ("crashed", "C"),
    ("expected", "X"),
    ("xpassed", "XP"),
    ("skipped", "S"),
)
FAILING_CLASSES = frozenset({"wrong", "error", "hung", "crashed"})
LEGEND = (
    "Cells: passed/total, then U unsupported (raised as declared), W wrong result, E error raised, "
    "H hung, C crashed, X expected (xfail or known deviation), XP unexpected pass, S skipped."
)


def classify(record: dict[str, Any]) -> str:
    """The matrix class of a record: the outcome itself, except that a bad outcome a deviation
    excuses and an xfail are ``expected``, and a pass of a listed deviation is ``xpassed``."""
    outcome = outcome_of(record)
    if outcome in BAD_OUTCOMES and record.get("deviation"):
        return "expected"
    if outcome is None:
        return "error"
    if outcome.value == "xfailed":
        return "expected"
    if outcome.value == "passed" and record.get("deviation_passed"):
        return "xpassed"
    return outcome.value


def level_of(record: dict[str, Any]) -> str:
    level = record.get("level")
    return str(level).replace("_", "-") if level else UNLABELLED


def _display(level: str) -> str:
    return level.replace("_", "-")


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
    #: Session header of each rank count (``records.read_session``).
    sessions: dict[int, SessionRecord] = field(default_factory=dict)
    #: Feature id -> description of the deviation entry excusing it.
    excused_features: dict[str, str] = field(default_factory=dict)
    #: The command that made the run, and the suite's identity (``suite_identity``).
    command: str = ""
    suite: dict[str, str] = field(default_factory=dict)
    #: Where each MPI job's time went (``conformance.run.jobtime``).
    jobs: list[jobtime.JobTiming] = field(default_factory=list)
    #: How the run was made that bears on reading it (short deadlines of expected hangs).
    notes: list[str] = field(default_factory=list)
    #: Whether the whole spec was selected (no -k, -m or paths): then a manifest rule with no
    #: record at a rank count is not covered there (``coverage.rule_coverage``).
    complete: bool = False

    @property
    def unexpected(self) -> list[dict[str, Any]]:
        """Records that make the run fail: wrong/error/hung/crashed without a deviation."""
        return [r for r in self.records if classify(r) in FAILING_CLASSES]

    def declared(self) -> dict[str, dict[str, Any]]:
        """Feature id -> {optional, rule, nps} over every rank count's declaration."""
        out: dict[str, dict[str, Any]] = {}
        for np, session in sorted(self.sessions.items()):
            for entry in session.get("declared", []):
                seen = out.setdefault(entry["feature"], {**entry, "nps": []})
                seen["nps"].append(np)
        return out

    def declared_away(self) -> list[str]:
        """One line per core feature declared unsupported with no deviation entry naming it."""
        return [
            f"{feature} is declared unsupported (np={_nps(info['nps'])}) but it is not optional: "
            f"{info['rule']}. Only features the manifest marks optional may be declared "
            f'unsupported, unless a deviation entry says feature = "{feature}" with a reason.'
            for feature, info in self.declared().items()
            if not info["optional"] and feature not in self.excused_features
        ]

    def load_errors(self) -> list[str]:
        return [
            f"np={np}: the backend failed to load: {s['load_error']}"
            for np, s in sorted(self.sessions.items())
            if s.get("load_error")
        ]

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.problems or self.declared_away() or self.load_errors())

    def failure_reasons(self) -> list[str]:
        """Every reason the run fails, one entry each (empty exactly when :attr:`ok`): the
        backend not loading, the problems (jobs that could not run, strict deviations whose test
        passed, rank counts not run), core features declared away, and each unexpected outcome
        (one line per test and outcome, its rank counts joined). The terminal summary and
        report.md both print this list."""
        failures = [
            f"np={_nps(r['np'] for r in group)} {group[0]['outcome']}: {group[0]['nodeid']}: "
            f"{_one_line(group[0])}"
            for group in grouped(self.unexpected, "outcome")
        ]
        return [*self.load_errors(), *self.problems, *self.declared_away(), *failures]

    def counts(self, records: Iterable[dict[str, Any]] | None = None) -> Counter[str]:
        return Counter(classify(r) for r in (self.records if records is None else records))

    def level_verdict(self, level: str) -> tuple[str, Counter[str]]:
        """(PASS | DEVIATES | UNTESTED | FAIL | NO PASSES | NOT RUN, class counts) of one level;
        UNTESTED: the robust level of a backend without deadlines (:func:`robust_untested`)."""
        counts = self.counts(r for r in self.records if level_of(r) == _display(level))
        core = level == "core"
        if not sum(counts.values()):
            return "NOT RUN", counts
        if any(counts[c] for c in FAILING_CLASSES) or (core and self.declared_away()):
            return "FAIL", counts
        if not counts["passed"]:
            return "NO PASSES", counts
        if self.coverage_gaps(level):
            return "NOT COVERED", counts
        if level == "robust" and robust_untested(self):
            return UNTESTED, counts
        excused = any(r.get("deviation") for r in self.records if level_of(r) == _display(level))
        if excused or (core and self._excused_core()):
            return "DEVIATES", counts
        return "PASS", counts

    def coverage(self) -> dict[str, dict[int, str]]:
        """Manifest rule -> rank count -> held / excused / n/a / not covered (``coverage``)."""
        return coverage_mod.rule_coverage(self.records, self.nps, complete=self.complete)

    def coverage_gaps(self, level: str) -> list[tuple[str, list[int]]]:
        """(rule, rank counts) of each rule of ``level`` no test held at some rank count where it
        applies: a level with any reads NOT COVERED, never PASS."""
        return coverage_mod.gaps(self.coverage(), _display(level))

    def _excused_core(self) -> bool:
        return any(
            not i["optional"] for f, i in self.declared().items() if f in self.excused_features
        )

    def verdict(self) -> str:
        """The run's one word: FAIL unless ok; else PASS only if every level that ran passed."""
        if not self.ok:
            return "FAIL"
        if not self.counts()["passed"]:
            return "NO PASSES"
        words = {self.level_verdict(level)[0] for level in LEVELS} - {"NOT RUN"}
        if words <= {"PASS"}:
            return "PASS"
        for word in ("NOT COVERED", "DEVIATES", UNTESTED):
            if word in words:
                return word
        return "NO PASSES"


#: The robust level's verdict for a backend that cannot be held to a deadline.
UNTESTED = "UNTESTED"


def robust_untested(summary: RunSummary) -> str | None:
    """Why the robust level cannot read PASS, or None: deadlines are core to it (SEMANTICS.md,
    "Hangs (robust)"), and a backend without ``set_timeout`` (capability ``timeouts`` False at
    some rank count) has its deadline, stall and kill tests skipped or opted into without one."""
    nps = [
        np
        for np, session in sorted(summary.sessions.items())
        if not (session.get("capabilities") or {}).get("timeouts", True)
    ]
    if not nps:
        return None
    return (
        f"robust: {UNTESTED}: the backend declares no set_timeout (capability timeouts, "
        f"np={_nps(nps)}), so no test could hold it to a deadline; the robust level needs "
        "deadlines (SEMANTICS.md, Hangs) and cannot pass without them"
    )


def _nps(nps: Iterable[int]) -> str:
    return ",".join(map(str, sorted(set(nps))))


def _sorted(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(records, key=lambda r: (r.get("order", 0), r["nodeid"], r.get("np", 0)))


def _count_text(counts: Counter[str]) -> str:
    parts = [f"{counts[name]} {name}" for name, _ in CLASSES if counts[name]]
    return ", ".join(parts) or "no tests"


def _cell(counter: Counter[str]) -> str:
    total = sum(counter.values())
    if not total:
        return ""
    text = f"{counter['passed']}/{total}"
    extras = [f"{label}{counter[name]}" for name, label in CLASSES[1:] if counter[name]]
    return " ".join([text, *extras])


def summarize_run(
    *,
    backend: str,
    nps: list[int],
    results: dict[int, Path],
    records: list[dict[str, Any]],
    collected: list[str],
    problems: list[str],
    deviations: list[deviations_mod.Deviation],
    deviations_file: Path | str = "",
    scope: str = "all",
    duration: float = 0.0,
    launcher: str = "",
    jobs: Sequence[jobtime.JobTiming] = (),
    notes: Sequence[str] = (),
) -> RunSummary:
    """The runner's one call: apply the deviations to ``records`` (of the rank counts in
    ``results``, rank count -> its results file, whose session headers are read), add what they
    found to the problems and warnings, and stamp the suite's identity and the command line."""
    done = sorted(results)
    sessions = {np: s for np, path in results.items() if (s := read_session(path)) is not None}
    # Entries naming the releases they apply to count only for the version that ran.
    version = next((s.get("backend_version") for s in sessions.values()), None)
    deviations = deviations_mod.for_release(deviations, version)
    applied = deviations_mod.apply(records, deviations, {np: collected for np in done}, scope=scope)
    excused = deviations_mod.excused_features(deviations)
    summary = RunSummary(
        backend=backend,
        nps=list(nps),
        records=records,
        total_per_np=len(collected),
        problems=[
            *problems,
            *applied.problems(),
            *(f"np={np}: not run yet" for np in nps if np not in results),
        ],
        warnings=applied.warnings(),
        duration=duration,
        launcher=launcher,
        deviations_file=str(deviations_file),
        sessions=sessions,
        excused_features={f: d.describe() for f, d in excused.items()},
        command=command_line(),
        suite=suite_identity(),
        jobs=list(jobs),
        notes=list(notes),
        complete=scope == "all",
    )
    declared = summary.declared()
    summary.warnings += [
        f"deviation entry for feature {f} names a feature the backend does not declare "
        "unsupported (or an optional one)"
        for f in excused
        if sessions and (f not in declared or declared[f]["optional"])
    ]
    return summary


def command_line() -> str:
    """The ``python -m conformance ...`` command of this process ('' when it is not one)."""
    if Path(sys.argv[0]).name != "__main__.py" or Path(sys.argv[0]).parent.name != "conformance":
        return ""
    return "python -m conformance " + " ".join(shlex.quote(a) for a in sys.argv[1:])


# -- identity and paths ---------------------------------------------------------------------------


def suite_identity(root: Path | None = None) -> dict[str, str]:
    """The suite's distribution name, version and git commit (``unknown`` outside a checkout;
    ``+changes`` when the checkout has uncommitted changes to tracked files)."""
    root = root or Path(conformance.__file__).resolve().parent.parent
    try:
        version = metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        version = "unknown"
    return {"name": DISTRIBUTION, "version": version, "commit": _git_commit(root)}


def _git_commit(root: Path) -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=20, check=True
        )
        return done.stdout.strip()

    try:
        commit = git("rev-parse", "--short=12", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+changes" if dirty else commit


def machine_paths(extra: Iterable[Path | str] = ()) -> dict[str, str]:
    """Path prefixes of this machine -> what reports show instead (longest first when applied)."""
    root = Path(conformance.__file__).resolve().parent.parent
    aliases = {str(Path(p)): f"<{name}>" for name, p in _named(extra)}
    aliases.update(
        {
            str(root) + os.sep: "",
            str(root): ".",
            sys.prefix: "<python>",
            sys.base_prefix: "<python>",
            tempfile.gettempdir(): "<tmp>",
            str(Path.home()): "~",
        }
    )
    return aliases


def _named(paths: Iterable[Path | str]) -> list[tuple[str, Path | str]]:
    return [("report-dir", p) for p in paths]


def scrub(text: str, aliases: dict[str, str]) -> str:
    """``text`` with every path prefix in ``aliases`` replaced (longest prefix first)."""
    for prefix in sorted(aliases, key=len, reverse=True):
        if prefix and prefix not in ("/", os.sep):
            text = text.replace(prefix, aliases[prefix])
    return text


def _scrub_data(value: Any, aliases: dict[str, str]) -> Any:
    if isinstance(value, str):
        return scrub(value, aliases)
    if isinstance(value, dict):
        return {k: _scrub_data(v, aliases) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub_data(v, aliases) for v in value]
    return value


# -- Markdown -------------------------------------------------------------------------------------


def headline(summary: RunSummary) -> list[str]:
    """The title and the per-level verdict lines."""
    backend = _backend_text(summary)
    lines = [f"# Conformance report: {backend} — {summary.verdict()}", ""]
    for level in LEVELS:
        word, counts = summary.level_verdict(level)
        lines.append(f"- **{_display(level)}: {word}** ({_count_text(counts)})")
    untested = robust_untested(summary)
    if untested:
        lines.append(f"- {untested}")
    suite = summary.suite
    lines += [
        "",
        f"- backend: `{summary.backend}` ({backend})",
        f"- suite: {suite.get('name', DISTRIBUTION)} {suite.get('version', 'unknown')}, "
        f"commit {suite.get('commit', 'unknown')}",
        f"- rank counts: {', '.join(map(str, summary.nps))}; {summary.total_per_np} tests per "
        f"rank count; {len(summary.records)} results; {summary.duration:.0f} s",
    ]
    if summary.command:
        lines.append(f"- command: `{summary.command}`")
    if summary.launcher:
        lines.append(f"- launcher: {summary.launcher}")
    if summary.deviations_file:
        lines.append(f"- known deviations: `{summary.deviations_file}`")
    return lines


def _backend_text(summary: RunSummary) -> str:
    for session in summary.sessions.values():
        if session.get("backend_name"):
            return f"{session['backend_name']} {session.get('backend_version', 'unknown')}"
    return summary.backend


def capabilities_section(summary: RunSummary) -> list[str]:
    """Every declared capability, and every declared-unsupported feature with its standing."""
    if not summary.sessions:
        return []
    lines = ["", "## Declared capabilities", ""]
    by_caps: dict[str, list[int]] = defaultdict(list)
    for np, session in sorted(summary.sessions.items()):
        by_caps[json.dumps(session.get("capabilities", {}), sort_keys=True)].append(np)
    for text, nps in by_caps.items():
        lines.append(f"- np={_nps(nps)}: {_describe_capabilities(json.loads(text))}")
    declared = summary.declared()
    if not declared:
        lines += ["", "Nothing is declared unsupported."]
        return lines
    lines += ["", "| declared unsupported | np | standing |", "|---|---|---|"]
    for feature, info in declared.items():
        if info["optional"]:
            standing = f"optional: {info['rule']}"
        elif feature in summary.excused_features:
            standing = f"**core, excused by a deviation**: {summary.excused_features[feature]}"
        else:
            standing = f"**core, not optional — fails the run**: {info['rule']}"
        lines.append(f"| `{feature}` | {_nps(info['nps'])} | {standing} |")
    return lines


def _describe_capabilities(caps: dict[str, Any]) -> str:
    if not caps:
        return "none recorded (the backend did not load)"
    dtypes = caps.get("dtypes", {})
    counts = sorted({len(v) for v in dtypes.values()})
    dtype_text = (
        f"{counts[0]} dtypes for every data op"
        if len(counts) == 1
        else "dtypes " + "; ".join(f"{op}: {len(v)}" for op, v in dtypes.items())
    )
    flags = ", ".join(
        f"{name} {'yes' if caps.get(name) else 'no'}"
        for name in ("split", "sum_scatter", "send_to_self", "timeouts")
    )
    return (
        f"ops {', '.join(caps.get('ops', []))}; {dtype_text}; p2p topology "
        f"{caps.get('p2p_topology')}; {flags}"
    )


def tier_costs(summary: RunSummary) -> list[tuple[str, int, int, float]]:
    """(tier, distinct tests, results, seconds) per tier, most expensive first."""
    tests: dict[str, set[str]] = defaultdict(set)
    results: Counter[str] = Counter()
    seconds: Counter[str] = Counter()
    for record in summary.records:
        tier = record.get("tier") or BASIC_TIER
        tests[tier].add(record["nodeid"])
        results[tier] += 1
        seconds[tier] += float(record.get("duration") or 0.0)
    rows = [(tier, len(tests[tier]), results[tier], seconds[tier]) for tier in tests]
    return sorted(rows, key=lambda row: (-row[3], row[0]))


def _tier_section(summary: RunSummary) -> list[str]:
    rows = tier_costs(summary)
    if not rows:
        return []
    lines = ["", "## What each tier cost", "", "| tier | tests | results | time (s) |"]
    lines.append("|---|---|---|---|")
    lines += [f"| {tier} | {n} | {r} | {s:.1f} |" for tier, n, r, s in rows]
    return lines


def _matrix(summary: RunSummary) -> list[str]:
    by_level: dict[str, dict[str, dict[int, Counter[str]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(Counter))
    )
    for record in summary.records:
        area = record.get("area") or "?"
        by_level[level_of(record)][area][record["np"]][classify(record)] += 1
    lines = ["", LEGEND]
    for level in [*(_display(lv) for lv in LEVELS), UNLABELLED]:
        areas = by_level.get(level)
        if not areas:
            continue
        header = ["area", *(f"np={np}" for np in summary.nps)]
        lines += ["", f"## {level}", "", "| " + " | ".join(header) + " |"]
        lines.append("|" + "---|" * len(header))
        for area in sorted(areas):
            cells = [_cell(areas[area].get(np, Counter())) for np in summary.nps]
            lines.append("| " + " | ".join([area, *cells]) + " |")
    return lines


def _coverage_section(summary: RunSummary) -> list[str]:
    lines = coverage_mod.section(summary.coverage(), summary.nps)
    gaps = [(lv, rule, nps) for lv in LEVELS for rule, nps in summary.coverage_gaps(lv)]
    if gaps:
        lines += ["", "Not covered (the level cannot read PASS):", ""]
        lines += [f"- {_display(lv)}: `{rule}` at np={_nps(nps)}" for lv, rule, nps in gaps]
    return lines


def grouped(records: Iterable[dict[str, Any]], *keys: str) -> list[list[dict[str, Any]]]:
    """Records grouped by node id and ``keys`` (one group = one test's identical outcome at
    several rank counts), in run order."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for record in _sorted(records):
        key = (record["nodeid"], *(str(record.get(k, "")) for k in keys))
        groups.setdefault(key, []).append(record)
    return list(groups.values())


def markdown(summary: RunSummary) -> str:
    """The Markdown report: verdicts, capabilities, matrix per level, tier costs, failures."""
    lines = headline(summary)
    reasons = summary.failure_reasons()
    if reasons:
        lines += ["", "## Why the run failed", ""] + [f"- {_first_line(r)}" for r in reasons]
    if summary.declared_away():
        lines += ["", "## Core features declared away", ""]
        lines += [f"- {line}" for line in summary.declared_away()]
    lines += capabilities_section(summary)
    lines += _matrix(summary)
    lines += _tier_section(summary)
    lines += jobtime.markdown(summary.jobs)
    if summary.notes:
        lines += ["", "## Notes", ""] + [f"- {note}" for note in summary.notes]
    lines += _coverage_section(summary)
    problems = [*summary.load_errors(), *summary.problems]
    if problems:
        lines += ["", "## Problems", ""] + [f"- {p}" for p in problems]
    if summary.warnings:
        lines += ["", "## Warnings", ""] + [f"- {w}" for w in summary.warnings]
    bad = grouped(summary.unexpected, "outcome")
    if bad:
        lines += ["", "## Failures", ""]
        for group in bad:
            lines += _failure_section(group)
    xpassed = grouped((r for r in summary.records if classify(r) == "xpassed"), "deviation_passed")
    if xpassed:
        lines += ["", "## Unexpected passes", ""]
        for group in xpassed:
            first = group[0]
            reason = first.get("deviation_passed") or first.get("message") or ""
            lines.append(f"- `{first['nodeid']}` (np={_nps(r['np'] for r in group)}): {reason}")
    expected = grouped((r for r in summary.records if r.get("deviation")), "outcome", "deviation")
    if expected:
        lines += ["", "## Known deviations observed", ""]
        for group in expected:
            first = group[0]
            lines.append(
                f"- `{first['nodeid']}` {first['outcome']} at np={_nps(r['np'] for r in group)}: "
                f"{first['deviation']}"
            )
    return "\n".join(lines) + "\n"


@functools.cache
def _manifest_rules() -> dict[str, str]:
    from conformance.specs import manifest

    return {
        f"{op}/{rule}": entry["text"]
        for (op, rule), entry in manifest.rules(manifest.load()).items()
    }


def rule_text(cited: str | None) -> str:
    """The manifest's text of the rule ``cited`` ("op/rule-id"); empty when unknown. The text
    lives once, in manifest.toml; reports quote it from there."""
    return _manifest_rules().get(cited or "", "")


def _failure_section(group: list[dict[str, Any]]) -> list[str]:
    record = group[0]
    nps = _nps(r["np"] for r in group)
    lines = [f"### {record['outcome']}: `{record['nodeid']}` (np={nps})", ""]
    rule = rule_text(record.get("rule"))
    if rule:
        lines += [f"Rule `{record['rule']}`: {rule}", ""]
    crash = record.get("crash") or {}
    if crash.get("rank") is not None or crash.get("signal") is not None:
        lines += [f"Crashed: rank {crash.get('rank', '?')}, signal {crash.get('signal', '?')}", ""]
    messages: dict[str, list[int]] = defaultdict(list)
    for r in group:
        ranks = r.get("failing_ranks") or []
        text = (r.get("message") or "").strip()
        head = f"failing ranks {', '.join(map(str, ranks))}\n" if ranks else ""
        messages[head + text].append(r["np"])
    for text, where in messages.items():
        if text:
            label = f"np={_nps(where)}:" if len(messages) > 1 else ""
            lines += ([label] if label else []) + ["```", text, "```", ""]
    commands = list(dict.fromkeys(r.get("reproduce", "") for r in group))
    lines += ["Reproduce:", "", "```sh", *commands, "```", ""]
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


# -- JSON and JUnit -------------------------------------------------------------------------------

_KEEP = (
    "nodeid",
    "np",
    "outcome",
    "failing_ranks",
    "message",
    "duration",
    "seed",
    "level",
    "tier",
    "area",
    "backend",
    "unsupported",
    "crash",
    "reproduce",
    "deviation",
    "deviation_passed",
    "longrepr",
    "stacks",
    "output",
    "rank_output",
    "rank_logs",
)


def json_report(summary: RunSummary) -> dict[str, Any]:
    """The JSON report: run facts, verdicts, capabilities, tier costs, one record per result."""
    records = []
    for record in _sorted(summary.records):
        out = {k: record[k] for k in _KEEP if k in record}
        out["class"] = classify(record)
        records.append(out)
    levels = {}
    for level in LEVELS:
        word, counts = summary.level_verdict(level)
        levels[_display(level)] = {"verdict": word, "counts": dict(counts)}
    return {
        "backend": summary.backend,
        "backend_version": _backend_text(summary),
        "suite": summary.suite,
        "command": summary.command,
        "nps": summary.nps,
        "ok": summary.ok,
        "verdict": summary.verdict(),
        "levels": levels,
        "tests_per_np": summary.total_per_np,
        "duration": round(summary.duration, 3),
        "launcher": summary.launcher,
        "deviations_file": summary.deviations_file,
        "capabilities": {str(np): s.get("capabilities", {}) for np, s in summary.sessions.items()},
        "declared_unsupported": summary.declared(),
        "declared_away": summary.declared_away(),
        "tiers": [
            {"tier": t, "tests": n, "results": r, "seconds": round(s, 3)}
            for t, n, r, s in tier_costs(summary)
        ],
        "jobs": [t.as_dict() for t in summary.jobs],
        "notes": summary.notes,
        "totals": {name: summary.counts()[name] for name, _ in CLASSES},
        "coverage": {
            rule: {str(np): status for np, status in by_np.items()}
            for rule, by_np in summary.coverage().items()
        },
        "problems": [*summary.load_errors(), *summary.problems],
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
            failures=str(classes["wrong"]),
            errors=str(classes["error"] + classes["hung"] + classes["crashed"]),
            skipped=str(classes["skipped"] + classes["expected"]),
            time=f"{sum(float(r.get('duration') or 0) for r in records):.3f}",
        )
        for record in records:
            _junit_case(suite, record, np)
    ET.indent(root)
    return ET.ElementTree(root)


def _junit_case(suite: ET.Element, record: dict[str, Any], np: int) -> None:
    module, _, name = record["nodeid"].partition("::")
    case = ET.SubElement(
        suite,
        "testcase",
        classname=f"np{np}." + module.removesuffix(".py").replace("/", "."),
        name=name or module,
        time=f"{float(record.get('duration') or 0):.3f}",
    )
    kind = classify(record)
    parts = (
        record.get("message"),
        record.get("longrepr"),
        "Reproduce: " + record.get("reproduce", ""),
    )
    text = "\n\n".join(t for t in parts if t)
    if kind == "wrong":
        ET.SubElement(case, "failure", message=_one_line(record), type=kind).text = text
    elif kind in ("error", "hung", "crashed"):
        ET.SubElement(case, "error", message=_one_line(record), type=kind).text = text
        if record.get("output"):
            ET.SubElement(case, "system-out").text = record["output"]
    elif kind in ("skipped", "expected"):
        reason = record.get("deviation") or record.get("message") or record["outcome"]
        ET.SubElement(case, "skipped", message=str(reason)[:500])


def _one_line(record: dict[str, Any]) -> str:
    message = (record.get("message") or record.get("outcome") or "").strip()
    return message.splitlines()[0][:500] if message else record["outcome"]


def _first_line(text: str) -> str:
    # A problem may carry the tail of a job's output after its first line: the report's own
    # Problems section and the terminal show it whole.
    return text.strip().splitlines()[0] if text.strip() else text


def terminal_summary(summary: RunSummary) -> str:
    """The verdict, the verdict per level, and every reason the run failed
    (``RunSummary.failure_reasons``, as report.md's "Why the run failed" lists them)."""
    counts = summary.counts()
    head = (
        f"{summary.verdict()}: "
        + ", ".join(f"{counts[name]} {name}" for name, _ in CLASSES if counts[name])
        + f" in {summary.duration:.0f} s"
    )
    lines = [head]
    for level in LEVELS:
        word, level_counts = summary.level_verdict(level)
        lines.append(f"  {_display(level)}: {word} ({_count_text(level_counts)})")
    untested = robust_untested(summary)
    if untested:
        lines.append(f"  {untested}")
    reasons = summary.failure_reasons()
    if reasons:
        lines.append("why the run failed:")
        lines += ["  - " + reason.replace("\n", "\n    ") for reason in reasons]
    return "\n".join(lines)


def write_all(summary: RunSummary, directory: Path) -> list[Path]:
    """Write report.md, report.json and junit.xml into ``directory`` (machine paths scrubbed);
    return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    aliases = machine_paths([directory.resolve()])
    md = directory / "report.md"
    md.write_text(scrub(markdown(summary), aliases), encoding="utf-8")
    js = directory / "report.json"
    data = _scrub_data(json_report(summary), aliases)
    js.write_text(json.dumps(data, indent=1, default=str) + "\n", "utf-8")
    xml = directory / "junit.xml"
    text = ET.tostring(junit(summary).getroot(), encoding="unicode")
    xml.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n' + scrub(text, aliases) + "\n", "utf-8"
    )
    return [md, js, xml]


# -- crashes --------------------------------------------------------------------------------------

_OPEN_MPI = re.compile(r"process rank (\d+) with PID (\d+) on node \S+ exited on signal (\d+)")
_HYDRA_PID = re.compile(r"PID (\d+) RUNNING AT")
_HYDRA_SIGNAL = re.compile(r"TERMINATED WITH THE EXIT STRING: .*\(signal (\d+)\)")
_RANK_PID = re.compile(r"rank (\d+)\] session start: pid (\d+)")


def crash_details(output: str, rank_logs: Iterable[str] = ()) -> dict[str, int | None]:
    """The rank that died and the signal that killed it, read from the launcher's output (Open
    MPI names the rank; Hydra names the PID, which the rank logs' session-start line maps to a
    rank). Unknown parts are None."""
    found = _OPEN_MPI.search(output)
    if found:
        return {"rank": int(found[1]), "pid": int(found[2]), "signal": int(found[3])}
    pid = _HYDRA_PID.search(output)
    signal = _HYDRA_SIGNAL.search(output)
    ranks = {int(p): int(r) for text in rank_logs for r, p in _RANK_PID.findall(text)}
    pid_value = int(pid[1]) if pid else None
    return {
        "rank": ranks.get(pid_value) if pid_value is not None else None,
        "pid": pid_value,
        "signal": int(signal[1]) if signal else None,
    }
