"""Data-parallel training with gradient averaging (MLX's distributed page, the same idea): each
rank fits y = 3x + 1 on its own shard; the gradients of both parameters are all_summed (two
collectives built before one evaluation) and averaged; a ring of send/recv every 50 steps
checks the ranks' weights agree. ``STEPS`` steps (default 500)."""

import os

import numpy as np
from backend import array, dist, evaluate, to_numpy

world = dist.init()
rank, size = world.rank(), world.size()
steps = int(os.environ.get("STEPS", "500"))
rng = np.random.default_rng(rank)
xs = rng.normal(size=(64, 1)).astype(np.float32)
ys = (3 * xs + 1).astype(np.float32)
w = np.zeros((1, 1), np.float32)
b = np.zeros((1,), np.float32)
for step in range(steps):
    err = xs @ w + b - ys
    grad_w = array((2 * xs.T @ err / len(xs)).astype(np.float32))
    grad_b = array((2 * err.mean(axis=0)).astype(np.float32))
    total_w = dist.all_sum(grad_w)
    total_b = dist.all_sum(grad_b)
    evaluate(total_w, total_b)
    w = w - 0.1 * to_numpy(total_w) / size
    b = b - 0.1 * to_numpy(total_b) / size
    if size > 1 and step % 50 == 0:
        right, left = (rank + 1) % size, (rank - 1) % size
        mine = array(w.copy())
        if rank % 2 == 0:
            evaluate(dist.send(mine, right))
            theirs = dist.recv_like(mine, left)
        else:
            theirs = dist.recv_like(mine, left)
            evaluate(theirs)
            evaluate(dist.send(mine, right))
        evaluate(theirs)
        assert np.allclose(to_numpy(theirs), w), (to_numpy(theirs), w)
print(f"rank {rank}: w={w.ravel()[0]:.3f} b={b[0]:.3f}", flush=True)
