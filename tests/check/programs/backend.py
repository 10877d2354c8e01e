"""The test programs run on real MLX or on the reference: ``CHECK_PROGRAM_BACKEND=mlx|reference``.

``dist`` is the distributed API, ``array(numpy array)`` makes a backend array, ``evaluate(*xs)``
forces evaluation (MLX is lazy; the reference is not)."""

import os

import numpy as np

if os.environ.get("CHECK_PROGRAM_BACKEND", "mlx") == "mlx":
    import mlx.core as mx

    dist = mx.distributed
    float16, float32, int32 = mx.float16, mx.float32, mx.int32

    def array(x):
        return mx.array(x)

    def evaluate(*xs):
        mx.eval(*xs)

    def to_numpy(x):
        return np.array(x)
else:
    import reference as dist  # noqa: F401  (what the programs import from here)

    float16, float32, int32 = np.float16, np.float32, np.int32

    def array(x):
        return np.asarray(x)

    def evaluate(*xs):
        pass

    def to_numpy(x):
        return np.asarray(x)
