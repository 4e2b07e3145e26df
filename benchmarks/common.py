"""Inputs shared by the benchmark classes: seeded, built in ``setup``."""

import numpy as np

DTYPES = ["float32", "float64"]
SHAPES = ["8192x10", "4096x1000", "512x32000", "64x262144"]


def make_inputs(dtype, shape):
    n, c = (int(v) for v in shape.split("x"))
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, c)).astype(dtype)
    labels = rng.integers(0, c, n)
    probs = rng.random((n, c)).astype(dtype)
    probs /= probs.sum(axis=1, keepdims=True)
    return logits, labels, probs
