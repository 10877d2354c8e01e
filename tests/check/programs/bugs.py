"""The classic bugs of distributed programs, one per ``BUG``: ``one_rank`` (a collective on rank 0
only), ``shape`` (rank-dependent shape), ``dtype``, ``send_no_recv``, ``wrong_group`` (needs
split: the reference only), ``sleep`` (the last rank sleeps far past the deadline)."""

import os
import time

import numpy as np
from backend import array, dist, evaluate, float16, float32

bug = os.environ["BUG"]
world = dist.init()
rank, size = world.rank(), world.size()
x = array(np.ones(4, dtype=np.float32))
for _ in range(3):  # some clean calls first
    evaluate(dist.all_sum(x))
if bug == "one_rank":
    if rank == 0:
        evaluate(dist.all_sum(x))  # BUG-LINE one_rank
elif bug == "shape":
    evaluate(dist.all_sum(array(np.ones(4 + rank, dtype=np.float32))))  # BUG-LINE shape
elif bug == "dtype":
    dtype = float16 if rank == size - 1 else float32
    evaluate(dist.all_sum(array(np.ones(4)).astype(dtype)))  # BUG-LINE dtype
elif bug == "send_no_recv":
    if rank == 0:
        evaluate(dist.send(array(np.ones(1 << 20, dtype=np.float32)), 1))  # BUG-LINE send_no_recv
    evaluate(dist.all_sum(x))
elif bug == "wrong_group":
    copy = world.split(0)  # the same ranks as the world, but another group
    group = copy if rank == 0 else world
    evaluate(dist.all_sum(x, group=group))  # BUG-LINE wrong_group
elif bug == "sleep":
    if rank == size - 1:
        time.sleep(300)
    evaluate(dist.all_sum(x))  # BUG-LINE sleep
evaluate(dist.all_sum(x))
print(f"rank {rank}: finished", flush=True)
