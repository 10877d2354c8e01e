"""MLX's distributed hello: every rank all_sums ones; ``CALLS`` times (default 1)."""

import os

import numpy as np
from backend import array, dist, evaluate, to_numpy

world = dist.init()
calls = int(os.environ.get("CALLS", "1"))
x = array(np.ones(10, dtype=np.float32))
for _ in range(calls):
    y = dist.all_sum(x)
    evaluate(y)
assert (to_numpy(y) == world.size()).all(), to_numpy(y)
print(f"rank {world.rank()}: {calls} all_sum ok", flush=True)
