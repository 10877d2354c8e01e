"""A backend whose all_sum never returns on rank 1 (a deliberately hung peer), in Python code so
the watchdog can show where it is."""

import time
from typing import Any

import reference
from reference import (  # noqa: F401
    Group,
    all_gather,
    all_max,
    all_min,
    init,
    is_available,
    recv,
    recv_like,
    send,
    sum_scatter,
)


def all_sum(x: Any, *, group: Any = None, stream: Any = None) -> Any:
    if reference.init().rank() == 1:
        while True:  # never returns: the hang under test
            time.sleep(0.05)
    return reference.all_sum(x, group=group)
