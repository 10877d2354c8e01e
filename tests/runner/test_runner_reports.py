"""Reports from synthetic records: classes, per-level verdicts, declared capabilities, grouping
across rank counts, tier costs, no machine paths, JSON and JUnit."""

from __future__ import annotations

import json
import os
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from conformance import records as records_mod
from conformance.run import deviations, reports

ROOT = str(Path(reports.__file__).resolve().parents[2])


def rec(nodeid: str, np: int, outcome: str, **extra: Any) -> dict[str, Any]:
    area = nodeid.split("::")[0].rsplit("test_", 1)[-1].removesuffix(".py")
    base = dict(
        records_mod.make_record(
            nodeid,
            outcome,
            duration=0.5,
            level="core",
            tier="basic",
            area=area,
            seed=7,
            reproduce=f"cd {ROOT} && mpiexec -n {np} python -m pytest {nodeid}",
        )
    )
    base["np"] = np
    base.update(extra)
    return base


def summary(records: list[dict[str, Any]], **kw: Any) -> reports.RunSummary:
    kw.setdefault("suite", {"name": "suite", "version": "9.9", "commit": "abc123"})
    return reports.RunSummary(backend="fake", nps=[1, 2], records=records, total_per_np=3, **kw)


def session(*declared: tuple[str, bool], name: str = "fakebackend") -> records_mod.SessionRecord:
    return records_mod.make_session(
        backend="fake",
        backend_name=name,
        backend_version="1.2.3",
        capabilities={"ops": ["all_sum"], "dtypes": {"all_sum": ["float32"]}, "split": False},
        declared=[{"feature": f, "optional": o, "rule": f"rule of {f}"} for f, o in declared],
        world_size=2,
    )


def test_classify_covers_every_outcome() -> None:
    for outcome in ("passed", "unsupported", "wrong", "error", "hung", "crashed", "skipped"):
        assert reports.classify(rec("a", 1, outcome)) == outcome
    assert reports.classify(rec("a", 1, "xfailed")) == "expected"
    assert reports.classify(rec("a", 1, "wrong", deviation="bug")) == "expected"
    assert reports.classify(rec("a", 1, "crashed", deviation="bug")) == "expected"
    assert reports.classify(rec("a", 1, "xpassed")) == "xpassed"
    assert reports.classify(rec("a", 1, "passed", deviation_passed="bug")) == "xpassed"
    assert reports.classify({"nodeid": "a", "outcome": "failed"}) == "wrong"  # schema 1


def test_run_fails_only_on_unexpected_bad_outcomes_problems_or_declared_away_features() -> None:
    fine = [rec("s/test_x.py::a", 1, "passed"), rec("s/test_x.py::b", 2, "xfailed")]
    assert summary(fine).ok
    excused = [*fine, rec("s/test_x.py::c", 2, "hung", deviation="known")]
    assert summary(excused).ok
    assert not summary([*fine, rec("s/test_x.py::c", 2, "crashed")]).ok
    assert not summary([*fine, rec("s/test_x.py::c", 2, "error")]).ok
    assert not summary(fine, problems=["np=3: no tests ran"]).ok
    away = summary(fine, sessions={2: session(("all_max[complex64]", False))})
    assert not away.ok and away.level_verdict("core")[0] == "FAIL"
    optional = summary(fine, sessions={2: session(("sum_scatter", True))})
    assert optional.ok and optional.verdict() == "PASS"


def test_a_declared_away_core_feature_is_named_with_why_it_is_not_optional() -> None:
    run = summary(
        [rec("s/test_all_max.py::a", 2, "unsupported")],
        sessions={
            1: session(("all_max[complex64]", False)),
            2: session(("all_max[complex64]", False)),
        },
    )
    (line,) = run.declared_away()
    assert "all_max[complex64] is declared unsupported (np=1,2) but it is not optional" in line
    assert "rule of all_max[complex64]" in line and 'feature = "all_max[complex64]"' in line
    text = reports.markdown(run)
    assert "— FAIL" in text and "**core: FAIL**" in text
    assert "## Core features declared away" in text
    assert "**core, not optional — fails the run**" in text
    assert "FAIL" in reports.terminal_summary(run) and "not optional" in reports.terminal_summary(
        run
    )


def test_a_deviation_entry_for_the_feature_excuses_it_but_core_is_not_pass() -> None:
    run = summary(
        [rec("s/test_all_max.py::a", 2, "passed")],
        sessions={2: session(("all_max[complex64]", False))},
        excused_features={"all_max[complex64]": "no complex max (no upstream issue: x)"},
    )
    assert run.ok and run.declared_away() == []
    assert run.level_verdict("core")[0] == "DEVIATES" and run.verdict() == "DEVIATES"
    assert "core, excused by a deviation" in reports.markdown(run)


def test_no_pass_for_a_level_where_nothing_passed() -> None:
    run = summary(
        [
            rec("s/test_a.py::x", 1, "skipped"),
            rec("s/test_a.py::y", 2, "wrong", deviation="known", level="robust"),
            rec("s/test_a.py::z", 2, "passed", level="impl_defined"),
        ]
    )
    assert run.ok
    assert run.level_verdict("core")[0] == "NO PASSES"
    assert run.level_verdict("robust")[0] == "NO PASSES"
    assert run.level_verdict("impl_defined")[0] == "PASS"
    assert run.verdict() == "NO PASSES"
    assert "PASS" not in reports.markdown(run).splitlines()[0].replace("NO PASSES", "")


def test_no_pass_for_a_run_where_nothing_passed() -> None:
    assert summary([]).verdict() == "NO PASSES"
    assert summary([rec("s/test_a.py::x", 1, "skipped", level=None)]).verdict() == "NO PASSES"


def test_a_level_with_excused_failures_deviates() -> None:
    run = summary(
        [rec("s/test_a.py::x", 1, "passed"), rec("s/test_a.py::y", 2, "wrong", deviation="k")]
    )
    assert run.level_verdict("core") == ("DEVIATES", run.counts())
    assert run.level_verdict("robust")[0] == "NOT RUN"


def test_headline_names_backend_version_suite_commit_and_rank_counts() -> None:
    run = summary([rec("s/test_a.py::x", 1, "passed")], sessions={1: session()})
    head = "\n".join(reports.headline(run))
    assert head.startswith("# Conformance report: fakebackend 1.2.3 — PASS")
    assert "**core: PASS** (1 passed)" in head
    assert "**robust: NOT RUN**" in head and "**impl-defined: NOT RUN**" in head
    assert "suite 9.9, commit abc123" in head and "rank counts: 1, 2" in head


def test_capabilities_are_listed() -> None:
    run = summary([], sessions={2: session(("Group.split", True))})
    text = "\n".join(reports.capabilities_section(run))
    assert "## Declared capabilities" in text and "split no" in text
    assert "| `Group.split` | 2 | optional: rule of Group.split |" in text


def test_identical_outcomes_across_rank_counts_are_one_line() -> None:
    records = [
        rec("s/test_a.py::y", np, "wrong", deviation="bug 2 (no upstream issue: n)")
        for np in (2, 3, 4)
    ]
    records += [rec("s/test_a.py::z", np, "hung") for np in (2, 3)]
    text = reports.markdown(summary(records))
    observed = text.split("## Known deviations observed")[1]
    assert observed.count("s/test_a.py::y") == 1 and "wrong at np=2,3,4: bug 2" in observed
    failures = text.split("## Failures")[1]
    assert failures.count("### hung: `s/test_a.py::z` (np=2,3)") == 1
    assert "np=2,3 hung: s/test_a.py::z" in reports.terminal_summary(summary(records))


def test_a_failure_quotes_its_rule_from_the_manifest() -> None:
    from conformance.specs import manifest

    text_of_rule = manifest.rules(manifest.load())[("all_gather", "rank-order")]["text"]
    records = [rec("s/test_all_gather.py::t", 2, "wrong", rule="all_gather/rank-order")]
    failures = reports.markdown(summary(records)).split("## Failures")[1]
    assert f"Rule `all_gather/rank-order`: {text_of_rule}" in failures
    unknown = [rec("s/test_all_gather.py::t", 2, "wrong", rule="all_gather/no-such-rule")]
    assert "Rule `" not in reports.markdown(summary(unknown)).split("## Failures")[1]


def test_matrix_counts_per_level_and_rank_count() -> None:
    records = [
        rec("s/test_all_sum.py::a", 1, "passed"),
        rec("s/test_all_sum.py::a", 2, "wrong", failing_ranks=[1], message="boom on 1"),
        rec("s/test_all_sum.py::b", 2, "unsupported"),
        rec("s/test_p2p.py::c", 2, "crashed", level="robust", crash={"rank": 1, "signal": 9}),
        rec("s/test_p2p.py::d", 1, "skipped", level="impl_defined"),
    ]
    text = reports.markdown(summary(records))
    core = text.split("## core")[1].split("##")[0]
    assert "| all_sum | 1/1 | 0/2 U1 W1 |" in core
    robust = text.split("## robust")[1].split("##")[0]
    assert "| p2p |  | 0/1 C1 |" in robust
    failures = text.split("## Failures")[1]
    assert "failing ranks 1\nboom on 1" in failures
    assert "Crashed: rank 1, signal 9" in failures
    assert "s/test_all_sum.py::b" not in failures


def test_tier_costs() -> None:
    records = [
        rec("s/test_a.py::x", 1, "passed", tier="sweep", duration=3.0),
        rec("s/test_a.py::x", 2, "passed", tier="sweep", duration=4.0),
        rec("s/test_a.py::y", 1, "passed", duration=1.0),
        rec("s/test_a.py::z", 1, "passed", tier=None, duration=1.5),
    ]
    run = summary(records)
    assert reports.tier_costs(run) == [("sweep", 1, 2, 7.0), ("basic", 2, 2, 2.5)]
    text = reports.markdown(run)
    assert "## What each tier cost" in text and "| sweep | 1 | 2 | 7.0 |" in text
    tiers = reports.json_report(run)["tiers"]
    assert tiers[0] == {"tier": "sweep", "tests": 1, "results": 2, "seconds": 7.0}


def test_reports_carry_no_machine_paths(tmp_path: Path) -> None:
    records = [
        rec(
            "conformance/specs/test_a.py::x",
            2,
            "error",
            message=f"see {tmp_path}/np2/attempt1.out",
            longrepr=f"{ROOT}/conformance/specs/test_a.py:3: in x\n{sys.prefix}/lib/numpy.py:9",
        )
    ]
    run = summary(records, problems=[f"np=2: see {tmp_path / 'np2' / 'attempt1.out'}"])
    run.deviations_file = f"{ROOT}/conformance/deviations/fake.toml"
    reports.write_all(run, tmp_path)
    for name in ("report.md", "report.json", "junit.xml"):
        text = (tmp_path / name).read_text()
        assert ROOT not in text and str(tmp_path) not in text and sys.prefix not in text, name
    md = (tmp_path / "report.md").read_text()
    assert "`conformance/deviations/fake.toml`" in md
    assert "cd . && mpiexec -n 2" in md and "<report-dir>/np2/attempt1.out" in md


def test_json_has_verdicts_and_one_record_per_test_and_rank_count(tmp_path: Path) -> None:
    records = [
        rec("s/test_a.py::x", 1, "passed"),
        rec("s/test_a.py::x", 2, "wrong", failing_ranks=[0, 1], message="m"),
    ]
    paths = reports.write_all(summary(records, sessions={1: session()}), tmp_path)
    data = json.loads((tmp_path / "report.json").read_text())
    assert {p.name for p in paths} == {"report.md", "report.json", "junit.xml"}
    assert data["ok"] is False and data["verdict"] == "FAIL"
    assert data["levels"]["core"]["verdict"] == "FAIL"
    assert data["suite"]["commit"] == "abc123" and data["backend_version"] == "fakebackend 1.2.3"
    assert data["totals"]["passed"] == 1 and data["totals"]["wrong"] == 1
    by_np = {r["np"]: r for r in data["records"]}
    assert by_np[2]["failing_ranks"] == [0, 1] and by_np[2]["tier"] == "basic"
    assert by_np[1]["class"] == "passed"


def test_junit_has_a_suite_per_rank_count_with_failures_errors_skips(tmp_path: Path) -> None:
    records = [
        rec("s/test_a.py::x", 1, "passed"),
        rec("s/test_a.py::x", 2, "wrong", message="bad value\nmore"),
        rec("s/test_a.py::y", 2, "crashed", output="segfault"),
        rec("s/test_a.py::z", 2, "skipped", message="needs 3 ranks"),
    ]
    reports.write_all(summary(records), tmp_path)
    root = ET.parse(tmp_path / "junit.xml").getroot()
    suites = {s.get("name"): s for s in root.iter("testsuite")}
    assert set(suites) == {"fake np=1", "fake np=2"}
    two = suites["fake np=2"]
    counts = (two.get("tests"), two.get("failures"), two.get("errors"), two.get("skipped"))
    assert counts == ("3", "1", "1", "1")
    failure = two.find("testcase[@name='x']/failure")
    assert failure is not None and failure.get("message") == "bad value"
    assert "Reproduce: cd . && mpiexec -n 2" in (failure.text or "")
    error = two.find("testcase[@name='y']/error")
    assert error is not None and error.get("type") == "crashed"
    assert two.find("testcase[@name='y']/system-out").text == "segfault"
    assert two.find("testcase[@name='z']/skipped") is not None


def test_summarize_run_applies_deviations_and_reads_session_headers(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    records_mod.ResultsFile(path).write(session(("all_max[complex64]", False)))
    entries = [
        deviations.Deviation(
            reason="r", tests=("m.py::a",), expect=frozenset({"wrong"}), no_upstream="n"
        ),
        deviations.Deviation(reason="r", feature="split", no_upstream="n"),
    ]
    records = [rec("m.py::a", 2, "passed")]
    run = reports.summarize_run(
        backend="fake",
        nps=[2, 3],
        results={2: path},
        records=records,
        collected=["m.py::a"],
        problems=[],
        deviations=entries,
    )
    assert run.sessions[2]["backend_name"] == "fakebackend"
    assert any("m.py::a passed at np=2" in p for p in run.problems)
    assert "np=3: not run yet" in run.problems
    assert any("feature split" in w for w in run.warnings)
    assert run.declared_away() and not run.ok


def test_summarize_run_applies_only_the_entries_of_the_version_that_ran(tmp_path: Path) -> None:
    path = tmp_path / "results.jsonl"
    records_mod.ResultsFile(path).write(session())  # backend_version 1.2.3

    def entry(test: str, releases: tuple[str, ...]) -> deviations.Deviation:
        return deviations.Deviation(
            reason=f"about {releases}",
            tests=(test,),
            expect=frozenset({"wrong"}),
            no_upstream="n",
            releases=releases,
        )

    records = [rec("m.py::old", 2, "passed"), rec("m.py::now", 2, "wrong")]
    run = reports.summarize_run(
        backend="fake",
        nps=[2],
        results={2: path},
        records=records,
        collected=["m.py::old", "m.py::now"],
        problems=[],
        deviations=[entry("m.py::old", ("..1.2.2",)), entry("m.py::now", ("1.2.0..1.3",))],
    )
    # The entry for older releases neither excuses nor turns this release's pass into a failure.
    assert "deviation_passed" not in records[0] and records[1]["deviation"].startswith("about")
    assert run.ok, run.problems


def test_crash_details_from_launcher_output() -> None:
    hydra = (
        "=   PID 4242 RUNNING AT vm\n=   EXIT CODE: 9\n"
        "YOUR APPLICATION TERMINATED WITH THE EXIT STRING: Killed (signal 9)\n"
    )
    logs = ["[12:00:00 rank 1] session start: pid 4242, world size 2"]
    assert reports.crash_details(hydra, logs) == {"rank": 1, "pid": 4242, "signal": 9}
    assert reports.crash_details(hydra)["rank"] is None
    ompi = "mpiexec noticed that process rank 3 with PID 77 on node n1 exited on signal 11 (x)."
    assert reports.crash_details(ompi) == {"rank": 3, "pid": 77, "signal": 11}


DECLARING_BACKEND = '''
"""The reference, declaring complex64 all_max/all_min unsupported (a core feature) and raising
as the manifest asks when given it."""
import numpy as np

import reference
from conformance.backend import DATA_OPS, DTYPE_NAMES, Capabilities
from reference import (  # noqa: F401
    Group, all_gather, all_sum, init, is_available, recv, recv_like, send, sum_scatter,
)

BACKEND_NAME = "declaring"
__version__ = "0.0.1"
capabilities = Capabilities(
    dtypes={
        op: frozenset(DTYPE_NAMES) - ({"complex64"} if op in ("all_max", "all_min") else set())
        for op in DATA_OPS
    }
)


def _refuse(op, x, group):
    if np.asarray(x).dtype == np.complex64:
        raise TypeError(f"{op}: complex64 is not supported by this backend")
    return getattr(reference, op)(x, group=group)


def all_max(x, *, group=None, stream=None):
    return _refuse("all_max", x, group)


def all_min(x, *, group=None, stream=None):
    return _refuse("all_min", x, group)
'''


@pytest.mark.slow
def test_a_core_feature_declared_unsupported_fails_a_real_two_rank_run(
    tmp_path: Path, monkeypatch: Any
) -> None:
    """Every selected test ends as declared (complex64 raises as the manifest names), yet the run
    fails: complex64 is core, and the report says which feature and why it is not optional. A
    deviation entry naming the feature excuses it, and core is then DEVIATES, not PASS."""
    from conformance.run import runner

    (tmp_path / "h4_declaring.py").write_text(DECLARING_BACKEND, encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{os.environ.get('PYTHONPATH', '')}")
    spec = runner.package_root() / "conformance" / "specs" / "test_all_max_all_min.py"

    def run(name: str, deviations_file: Path) -> tuple[int, dict[str, Any], str]:
        opts = runner.RunOptions(
            backend="h4_declaring",
            nps=[2],
            keyword="test_complex_lexicographic or test_bool_max_is_or_min_is_and",
            paths=[str(spec)],
            report_dir=tmp_path / name,
            deviations=deviations_file,
            timeout=30.0,
            quiet=True,
        )
        status = runner.run(opts)
        data = json.loads((tmp_path / name / "report.json").read_text())
        return status, data, (tmp_path / name / "report.md").read_text()

    status, data, md = run("declared", tmp_path / "none.toml")
    assert status == 1
    assert (data["totals"]["unsupported"], data["totals"]["passed"]) == (2, 2)
    assert data["levels"]["core"]["verdict"] == "FAIL"
    assert "all_max[complex64] is declared unsupported (np=2) but it is not optional" in md
    assert "every data op takes all 14" in md and "| `all_min[complex64]` | 2 |" in md
    excuse = tmp_path / "excuse.toml"
    excuse.write_text(
        "".join(
            f'[[deviation]]\nfeature = "{op}[complex64]"\nreason = "no complex {op}"\n'
            'no_upstream = "a test backend"\n\n'
            for op in ("all_max", "all_min")
        ),
        encoding="utf-8",
    )
    status, data, md = run("excused", excuse)
    assert status == 0, md
    assert data["declared_away"] == [] and data["levels"]["core"]["verdict"] == "DEVIATES"
    assert "core, excused by a deviation" in md


def test_terminal_and_report_give_every_reason_a_run_failed(tmp_path: Path) -> None:
    """Issue 28, item 5: a strict deviation whose test passed fails the run, and the terminal
    says so (not just "1 xpassed"), as do declared-away features, problems and failures."""
    strict = deviations.Deviation(
        reason="bool max is wrong",
        tests=("s/test_x.py::b",),
        expect=frozenset({"wrong"}),
        no_upstream="not yet filed",
    )
    records = [
        rec("s/test_x.py::a", 2, "passed"),
        rec("s/test_x.py::b", 2, "passed"),
        rec("s/test_x.py::c", 2, "crashed", message="rank 1 died of SIGSEGV"),
    ]
    results = tmp_path / "results.jsonl"
    results.write_text(json.dumps(session(("all_max[complex64]", False))) + "\n")
    run = reports.summarize_run(
        backend="fake",
        nps=[2, 3],
        results={2: results},
        records=records,
        collected=[r["nodeid"] for r in records],
        problems=["np=2: the job could not run tests (status 4); see out\ntail line"],
        deviations=[strict],
    )
    reasons = run.failure_reasons()
    assert not run.ok and len(reasons) == 5, reasons
    says = ["s/test_x.py::b passed", "np=3: not run yet", "status 4", "all_max[complex64]"]
    says.append("np=2 crashed: s/test_x.py::c: rank 1 died of SIGSEGV")
    terminal = reports.terminal_summary(run)
    reports.write_all(run, tmp_path)
    md = (tmp_path / "report.md").read_text()
    why = md.split("## Why the run failed", 1)[1].split("\n## ", 1)[0]
    for text in says:
        assert text in terminal.split("why the run failed:", 1)[1], text
        assert text in why, text
    fine = summary([rec("s/test_x.py::a", 2, "passed")])
    assert fine.ok and fine.failure_reasons() == []
    assert "why the run failed" not in reports.terminal_summary(fine)
    assert "Why the run failed" not in reports.markdown(fine)
