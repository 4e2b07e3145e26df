"""Throughput of `fastxent.dask.cross_entropy` against the in-memory call.

``python benchmarks/scripts/dask_costs.py [--gib 2] [--chunk-mib 64] [--classes 1000]``

The logits are generated in memory once and wrapped with
``dask.array.from_array`` (so the comparison is the compute, not a disk);
then the in-memory `fastxent.cross_entropy` and the dask version
(threaded scheduler, the default for arrays) run interleaved, and the
medians are compared.
"""

import argparse
import time

import numpy as np

import fastxent
import fastxent.dask as fdask
import dask.array as da


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gib", type=float, default=2.0)
    parser.add_argument("--chunk-mib", type=float, default=64.0)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    c = args.classes
    n = int(args.gib * 2**30 / 4 / c)
    rows_per_chunk = max(1, int(args.chunk_mib * 2**20 / 4 / c))
    rng = np.random.default_rng(0)
    x = np.empty((n, c), np.float32)
    for i in range(0, n, rows_per_chunk):
        x[i:i + rows_per_chunk] = rng.standard_normal((min(rows_per_chunk, n - i), c), dtype=np.float32)
    y = rng.integers(0, c, n)
    lazy = fdask.cross_entropy(da.from_array(x, chunks=(rows_per_chunk, c)), da.from_array(y, chunks=rows_per_chunk))
    contenders = {"in-memory": lambda: fastxent.cross_entropy(x, y), "dask": lambda: lazy.compute()}
    results = {k: f() for k, f in contenders.items()}  # warm-up (compilation)
    times = {k: [] for k in contenders}
    for _ in range(args.repeats):
        for k, f in contenders.items():
            t = time.perf_counter()
            results[k] = f()
            times[k].append(time.perf_counter() - t)
    med = {k: float(np.median(t)) for k, t in times.items()}
    gib = x.nbytes / 2**30
    print(f"{n} x {c} float32 ({gib:.2f} GiB), chunks of {rows_per_chunk} rows ({args.chunk_mib:g} MiB), "
          f"medians of {args.repeats}")
    for k in contenders:
        print(f"  {k:10s} {med[k] * 1e3:9.1f} ms  {gib / med[k]:6.2f} GiB/s   loss {results[k]:.6f}")
    print(f"  dask throughput / in-memory throughput: {med['in-memory'] / med['dask']:.2f}")


if __name__ == "__main__":
    main()
