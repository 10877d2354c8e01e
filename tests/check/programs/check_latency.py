"""The check alone: 500 checks of an all_sum fingerprint (no data moves), after 20 warm-up
checks; each rank prints the median time of one check in microseconds. Run it as a rank of a
job (``mlx.launch -n 2 -- python check_latency.py`` or ``mpiexec -n 2 python check_latency.py``);
it turns the check on itself."""

import statistics
import time

import conformance.check  # noqa: F401  (joins the check)
from conformance.check.activate import session

checked = session()
assert checked is not None, "run this as a rank of a job (mlx.launch or mpiexec)"
times = []
for i in range(520):
    fp = {"op": "all_sum", "group": "world", "seq": i, "shape": [2], "dtype": "float32"}
    fp["site"] = "check_latency.py:19"
    start = time.perf_counter()
    checked.check(fp, [])
    if i >= 20:
        times.append(time.perf_counter() - start)
print(f"rank {checked.rank}: check median {statistics.median(times) * 1e6:.0f} us", flush=True)
