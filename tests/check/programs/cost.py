"""Per-call time of all_sum at ``BYTES`` bytes (float32), ``CALLS`` calls after 20 warm-up calls;
rank 0 prints the median in microseconds. Run it checked and unchecked to see the check's cost."""

import os
import time

import numpy as np
from backend import array, dist, evaluate

world = dist.init()
nbytes, calls = int(os.environ.get("BYTES", "8")), int(os.environ.get("CALLS", "200"))
x = array(np.ones(max(nbytes // 4, 1), dtype=np.float32))
times = []
for i in range(calls + 20):
    start = time.perf_counter()
    evaluate(dist.all_sum(x))
    if i >= 20:
        times.append(time.perf_counter() - start)
if world.rank() == 0:
    print(f"BYTES={nbytes} median_us={np.median(times) * 1e6:.0f}", flush=True)
