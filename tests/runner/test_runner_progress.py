"""Terminal progress: counts per rank count, each failure once, in place on a terminal only."""

from __future__ import annotations

import io

from conformance.run.runner import Progress


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def drive(stream: io.StringIO) -> str:
    progress = Progress(stream)
    records = [{"nodeid": "m.py::a", "outcome": "passed"}]
    collected = ["m.py::a", "m.py::b", "m.py::c"]
    progress.update(3, records, collected)
    records.append({"nodeid": "m.py::b", "outcome": "crashed"})
    progress.update(3, records, collected)
    progress.update(3, records, collected)
    records.append({"nodeid": "m.py::c", "outcome": "wrong"})
    progress.update(3, records, collected, final=True)
    return stream.getvalue()


def test_log_output_has_plain_lines_and_each_failure_once() -> None:
    lines = drive(io.StringIO()).splitlines()
    assert lines == [
        "np=3 1/3 tests done, 0 failed, 0 hung or crashed",
        "np=3 CRASHED m.py::b",
        "np=3 WRONG m.py::c",
        "np=3 3/3 tests done, 1 failed, 1 hung or crashed",
    ]


def test_terminal_output_rewrites_one_line_and_ends_it() -> None:
    text = drive(Terminal())
    assert text.count("CRASHED m.py::b") == 1
    assert "\r\x1b[Knp=3 2/3 tests done, 0 failed, 1 hung or crashed" in text
    assert text.endswith("np=3 3/3 tests done, 1 failed, 1 hung or crashed\n")


def test_quiet_prints_nothing() -> None:
    stream = io.StringIO()
    Progress(stream, quiet=True).update(1, [{"nodeid": "x", "outcome": "wrong"}], ["x"])
    assert stream.getvalue() == ""
