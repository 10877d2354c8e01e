"""A backend that returns wrong all_sum results and has no sum_scatter: the bench must report
the wrong result (exit status 1) and the missing op, and still measure the baseline."""

import reference
from reference import all_gather, init, is_available, recv, recv_like, send

__all__ = ["all_gather", "all_sum", "init", "is_available", "recv", "recv_like", "send"]


def all_sum(x, *, group=None, stream=None):
    return reference.all_sum(x, group=group, stream=stream) + 1


def sum_scatter(x, *, group=None, stream=None):
    raise RuntimeError("[wrong] sum_scatter not supported.")
