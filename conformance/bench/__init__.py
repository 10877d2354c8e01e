"""``python -m conformance bench``: figures any backend author recognises.

For each op and size, the median and spread of the time per op, nccl-tests' algorithm and bus
bandwidths, OSU's point-to-point latency and bandwidth, each measured against raw mpi4py calls
on the same buffers in the same job. Modules: ``units`` (sizes), ``formulas`` (what a size means
per op, bandwidths), ``stats`` (medians, spread, paired ratios), ``ops`` (the calls timed),
``measure`` (the timing loop), ``output`` (JSON and table), ``plot`` (PNG), ``compare`` (two
saved runs case by case), ``launch`` (re-executing under mpiexec), ``cli`` (arguments and the
run).
"""

from conformance.bench.cli import main

__all__ = ["main"]
