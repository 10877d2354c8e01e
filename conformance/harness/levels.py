"""Spec levels (SEMANTICS.md): every spec test carries exactly one of ``core``, ``robust`` or
``impl_defined``, and may name the rule it checks with ``spec(op, rule=...)``.

    pytestmark = pytest.mark.core                      # module level, or per test:
    @pytest.mark.robust
    @pytest.mark.spec("all_gather", rule="blocks in rank order")
"""

from __future__ import annotations

from pathlib import Path

import pytest

LEVELS: tuple[str, ...] = ("core", "robust", "impl_defined")

_MARKER_HELP: dict[str, str] = {
    "core": "core: what MLX does and documents; every conforming backend must show it",
    "robust": "robust: what the reference guarantees beyond MLX (clear errors, no hangs)",
    "impl_defined": "impl_defined: backends differ; only the stated bounds are checked",
    "spec": "spec(op, rule=...): the API name and SEMANTICS.md rule a spec test checks",
}

# Tiers: what kind of coverage a spec test adds, orthogonal to its level. A test carries at most
# one tier marker; a test without one is in the basic tier. Opt-in tiers are left out of a run
# unless asked for (they take long or need much memory); every other tier is in the default run.
TIERS: dict[str, str] = {
    "sweep": "element counts across algorithm and chunk thresholds, every element checked",
    "layouts": "strided, reversed, Fortran-order, offset, read-only, 0-d and empty inputs",
    "values": "full-mantissa floats, subnormals, signed zeros, inf, NaN, integer extremes",
    "groups": "every collective on subgroups: halves, reversed keys, odd/even, alternating",
    "sequences": "many calls in a row: changing shapes and dtypes, interleaved groups and p2p",
    "faults": "a rank killed or stalled mid-operation; survivors must raise in time",
    "soak": "opt-in: thousands of calls per group, failure and hang rate per rank count",
    "huge": "opt-in: transfers past 2 GiB (the INT_MAX byte boundary)",
}
OPT_IN_TIERS: tuple[str, ...] = ("soak", "huge")
BASIC_TIER = "basic"

#: Marker of a test that measures how late the backend is (a deadline, a dead or stalled peer):
#: the runner runs these only beside jobs that are mostly waiting, never beside the CPU-bound
#: rest of the suite, so other jobs' load cannot make a backend look late.
TIMED = "timed"
TIMED_HELP = (
    f"{TIMED}: the test measures how late the backend raises; python -m conformance run keeps "
    "CPU-bound jobs from running beside it"
)

core = pytest.mark.core
robust = pytest.mark.robust
impl_defined = pytest.mark.impl_defined


def spec(op: str, rule: str = "") -> pytest.MarkDecorator:
    """Mark a test as checking ``rule`` of ``op`` (the manifest link)."""
    return pytest.mark.spec(op, rule=rule)


def register_markers(config: pytest.Config) -> None:
    """Declare the level and spec markers so ``--strict-markers`` accepts them."""
    for help_text in _MARKER_HELP.values():
        config.addinivalue_line("markers", help_text)
    for tier, text in TIERS.items():
        config.addinivalue_line("markers", f"{tier}: tier: {text}")
    config.addinivalue_line("markers", TIMED_HELP)


def is_timed(item: pytest.Item) -> bool:
    """Whether ``item`` measures how late the backend is (the :data:`TIMED` marker)."""
    return item.get_closest_marker(TIMED) is not None


def levels_of(item: pytest.Item) -> list[str]:
    """The distinct level markers on ``item`` (module, class and function marks together)."""
    return sorted({mark.name for mark in item.iter_markers() if mark.name in LEVELS})


def level_of(item: pytest.Item) -> str | None:
    """The item's level, or None when it has none or several."""
    found = levels_of(item)
    return found[0] if len(found) == 1 else None


def tier_of(item: pytest.Item) -> str:
    """The item's tier marker, or ``BASIC_TIER`` when it has none."""
    found = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
    return found[0] if found else BASIC_TIER


def spec_of(item: pytest.Item) -> tuple[str, str] | None:
    """(op, rule) from the item's ``spec`` marker, if any."""
    mark = item.get_closest_marker("spec")
    if mark is None or not mark.args:
        return None
    return str(mark.args[0]), str(mark.kwargs.get("rule", ""))


def area_of(item: pytest.Item) -> str:
    """The spec area: the test module's name without the ``test_`` prefix."""
    stem = Path(str(item.path)).stem
    return stem.removeprefix("test_")


def is_spec_item(item: pytest.Item) -> bool:
    """Whether the item lives in a spec module (under a ``specs`` directory of ``conformance``)."""
    parts = Path(str(item.path)).parts
    return len(parts) >= 2 and parts[-2] == "specs" and "conformance" in parts


def level_problem(item: pytest.Item) -> str | None:
    """Why a spec item's level marking is invalid, or None when it has exactly one level."""
    if not is_spec_item(item):
        return None
    found = levels_of(item)
    if len(found) == 1:
        return None
    if not found:
        return f"spec test {item.nodeid} has no level marker; add one of {list(LEVELS)}"
    return f"spec test {item.nodeid} has several level markers {found}; keep exactly one"
