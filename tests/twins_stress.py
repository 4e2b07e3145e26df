"""Every parallel kernel against its serial twin, bit for bit, on random problems.

Random shapes, dtypes, target kinds, options and buffer offsets (so rows
start at every alignment). Used by tests/test_twins_stress.py, in this
process and in fresh processes with a cold disk cache; also runnable as
``python tests/twins_stress.py SEED SECONDS``.
"""

import sys
import time

import numpy as np

from fastxent import kernels


def offset_array(rng, shape, dtype):
    """An uninitialised array starting 0-15 elements into a larger one."""
    off = int(rng.integers(0, 16))
    size = int(np.prod(shape))
    return np.empty(size + off, dtype)[off:].reshape(shape)


def one_problem(rng):
    """Runs every kernel of one random problem both ways; returns a mismatch or None."""
    dtype = (np.float32, np.float64)[rng.integers(2)]
    n, c = int(rng.integers(1, 300)), int(rng.integers(1, 100))
    logits = offset_array(rng, (n, c), dtype)
    logits[...] = rng.standard_normal((n, c)) * rng.choice([1.0, 30.0])
    if rng.random() < 0.2:  # non-finite rows too
        logits[rng.integers(n), rng.integers(c)] = rng.choice([np.nan, -np.inf, np.inf])
    weight = (rng.random(c) + 0.5).astype(dtype) if rng.random() < 0.5 else kernels.NO_WEIGHT
    smoothing = float(rng.choice([0.0, 0.1, 1.0]))
    if rng.random() < 0.5:
        target = rng.integers(0, c, n)
        target[rng.random(n) < 0.1] = -100
        names = ["xent_labels_fused", "xent_labels_fused_inplace", "xent_labels_loss"]
        options = (weight, -100, smoothing)
    else:
        target = offset_array(rng, (n, c), dtype)
        target[...] = rng.dirichlet(np.ones(c), n)
        names = ["xent_probs_fused", "xent_probs_fused_inplace", "xent_probs_loss"]
        options = (weight, smoothing)
    results = {}
    for suffix in ("", "_serial"):
        fused, inplace, loss = (getattr(kernels, name + suffix) for name in names)
        out = []
        grad, rows = offset_array(rng, (n, c), dtype), offset_array(rng, (n,), dtype)
        out += [fused(logits, target, *options, 1.0 / n, grad, rows), grad, rows]
        x, rows = offset_array(rng, (n, c), dtype), offset_array(rng, (n,), dtype)
        x[...] = logits
        out += [inplace(x, target, *options, 1.0 / n, rows), x, rows]
        rows = offset_array(rng, (n,), dtype)
        out += [loss(logits, target, *options, rows), rows]
        for name in ("log_softmax_rows", "softmax_rows"):
            y = offset_array(rng, (n, c), dtype)
            getattr(kernels, name + suffix)(logits, y)
            out.append(y)
        lse = offset_array(rng, (n,), dtype)
        getattr(kernels, "logsumexp_rows" + suffix)(logits, lse)
        out.append(lse)
        results[suffix] = out
    for k, (a, b) in enumerate(zip(results[""], results["_serial"])):
        a, b = np.asarray(a), np.asarray(b)
        same = (a == b) | (np.isnan(a) & np.isnan(b))
        if not same.all():
            return f"{names[0]} {np.dtype(dtype).name} {n}x{c} output {k}: {int((~same).sum())} of {a.size} differ"
    return None


def run(seed, seconds, max_problems=100_000):
    """(problems checked, list of mismatches) within a time budget."""
    rng = np.random.default_rng(seed)
    deadline = time.monotonic() + seconds
    mismatches, count = [], 0
    while time.monotonic() < deadline and count < max_problems:
        problem = one_problem(rng)
        count += 1
        if problem:
            mismatches.append(problem)
    return count, mismatches


if __name__ == "__main__":
    count, mismatches = run(int(sys.argv[1]), float(sys.argv[2]))
    print(f"{count} problems, {len(mismatches)} mismatches")
    for m in mismatches[:20]:
        print(m)
    sys.exit(1 if mismatches else 0)
