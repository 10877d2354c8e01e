"""The run's schedule (conformance.run.schedule): phases, the rank budget, threads per rank count.

Runs in the test process only: threads and sleeps stand for jobs.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from conformance.run import schedule


def test_phases_put_the_timed_tests_last_each_in_collected_order():
    collected = ["a", "t1", "b", "t2", "c"]
    info = {"t1": {"timed": True}, "t2": {"timed": True}, "b": {"timed": False}}
    assert schedule.phases(collected, info) == [["a", "b", "c"], ["t1", "t2"]]


def test_phases_leave_out_an_empty_phase():
    assert schedule.phases(["a", "b"], {}) == [["a", "b"]]
    assert schedule.phases(["t"], {"t": {"timed": True}}) == [["t"]]


def _peak_ranks(budget: schedule.RankBudget, sizes: list[int]) -> int:
    """The most ranks held at once when one thread per size holds them for a moment."""
    held, peak, lock = [0], [0], threading.Lock()

    def job(count: int) -> None:
        with budget.ranks(count):
            with lock:
                held[0] += count
                peak[0] = max(peak[0], held[0])
            time.sleep(0.05)
            with lock:
                held[0] -= count

    threads = [threading.Thread(target=job, args=(n,)) for n in sizes]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads), "a job never got its ranks"
    return peak[0]


def test_the_budget_bounds_the_ranks_in_flight():
    assert _peak_ranks(schedule.RankBudget(6), [4, 3, 2, 1]) <= 6


def test_a_budget_of_one_runs_one_job_at_a_time():
    assert _peak_ranks(schedule.RankBudget(1), [4, 3, 2, 1]) == 4


def test_a_job_larger_than_the_budget_still_runs_alone():
    assert _peak_ranks(schedule.RankBudget(3), [4, 4]) == 4


def test_the_budget_must_be_positive():
    with pytest.raises(ValueError, match="at least 1, not 0"):
        schedule.RankBudget(0)


def test_run_all_runs_every_rank_count_at_once():
    """Every rank count starts before any has finished (however slowly the threads start)."""
    spans: dict[int, tuple[float, float]] = {}

    def work(np: int):
        def go() -> None:
            start = time.monotonic()
            time.sleep(0.3)
            spans[np] = (start, time.monotonic())

        return go

    schedule.run_all({np: work(np) for np in (1, 2, 3)})
    assert sorted(spans) == [1, 2, 3]
    last_start = max(start for start, _ in spans.values())
    first_end = min(end for _, end in spans.values())
    assert last_start < first_end, f"the rank counts ran one after the other: {spans}"


def test_run_all_raises_a_thread_error_after_every_thread_ended():
    finished = []

    def fails() -> None:
        raise RuntimeError("np 2 broke")

    def slow() -> None:
        time.sleep(0.2)
        finished.append(4)

    with pytest.raises(RuntimeError, match="np 2 broke"):
        schedule.run_all({2: fails, 4: slow})
    assert finished == [4]


def test_an_interrupt_waits_for_every_thread_then_is_raised_again():
    """The interrupt reaches the main thread while it waits; the threads end on their own (their
    jobs were ended) and only then is the interrupt raised, so their records are all in."""
    finished = []

    def work() -> None:
        time.sleep(1.0)
        finished.append(True)

    def interrupt_soon() -> None:
        time.sleep(0.2)
        os.kill(os.getpid(), signal.SIGINT)

    threading.Thread(target=interrupt_soon).start()
    with pytest.raises(KeyboardInterrupt):
        schedule.run_all({2: work, 3: work})
    assert finished == [True, True]
