"""Medians, spread and paired ratios."""

import pytest

from conformance.bench.stats import paired_ratios, summarize


def test_summary_of_odd_sample():
    s = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert (s.median, s.min, s.max, s.count) == (3.0, 1.0, 5.0, 5)
    assert (s.p25, s.p75) == (2.0, 4.0)
    assert s.spread == pytest.approx(2.0 / 3.0)


def test_summary_ignores_outliers_in_the_median():
    assert summarize([1.0, 1.0, 1.0, 1.0, 1000.0]).median == 1.0


def test_summary_dict_has_spread():
    d = summarize([2.0, 2.0]).as_dict()
    assert d["median"] == 2.0 and d["spread"] == 0.0 and d["count"] == 2


def test_empty_sample_is_an_error():
    with pytest.raises(ValueError):
        summarize([])


def test_paired_ratio_is_baseline_over_backend():
    # backend twice as slow as the baseline in each pair -> 0.5 of its throughput
    assert paired_ratios([1.0, 2.0], [2.0, 4.0]) == [0.5, 0.5]
    with pytest.raises(ValueError):
        paired_ratios([1.0], [1.0, 2.0])


def test_machine_load_probe_counts_others():
    import sys

    from conformance.bench import machine

    count = machine.runnable_tasks()
    if not sys.platform.startswith("linux"):
        assert count is None
        return
    # This process is running, so at least one task is runnable.
    assert count >= 1
    assert machine.others_runnable(10_000) == 0
    assert len(machine.load_average()) == 3
