"""The reference implementation of MLX's distributed communication API, over numpy and MPI.

``import reference as dist`` gives the API of ``mlx.core.distributed`` on numpy arrays:
``init``, ``is_available``, ``Group`` (``rank``, ``size``, ``split``), ``all_sum``, ``all_max``,
``all_min``, ``all_gather``, ``sum_scatter``, ``send``, ``recv`` and ``recv_like``, with the
behaviour that ``SEMANTICS.md`` specifies. Beyond MLX it checks that the ranks agree before moving
data and bounds every blocking call by a deadline (``set_timeout`` / ``REFERENCE_TIMEOUT``).
"""

from reference.collectives import all_gather, all_max, all_min, all_sum, sum_scatter
from reference.deadline import get_timeout, set_timeout
from reference.dtypes import DTYPE_NAMES, SUPPORTED_DTYPES
from reference.group import Group, init, is_available
from reference.p2p import recv, recv_like, send

__version__ = "0.1.0"

__all__ = [
    "DTYPE_NAMES",
    "SUPPORTED_DTYPES",
    "Group",
    "all_gather",
    "all_max",
    "all_min",
    "all_sum",
    "get_timeout",
    "init",
    "is_available",
    "recv",
    "recv_like",
    "send",
    "set_timeout",
    "sum_scatter",
]
