"""Evaluate a softmax classifier on more data than fits in memory, with Dask.

The logits of a whole (synthetic) dataset are a lazy dask array made
block by block; `fastxent.dask.cross_entropy` reduces them to the exact
mean loss without ever holding them all. With ``--cluster`` the same
graph runs on a local `distributed` cluster of worker processes (one
thread each, so that Numba's threads and the workers' do not oversubscribe
the cores).

    pip install -e ".[dask]"
    python examples/dask_evaluate.py             # 3.7 GiB of float32 logits, never in memory at once
    python examples/dask_evaluate.py --cluster
    python examples/dask_evaluate.py --fast
"""

import argparse
import time

import dask.array as da
import numpy as np

import fastxent
import fastxent.dask


def make_logits(n_rows, n_features, n_classes, rows_per_chunk):
    """Features drawn block by block, times a fixed weight matrix: lazy logits and labels."""
    w = np.random.default_rng(0).normal(size=(n_features, n_classes)).astype(np.float32) / np.sqrt(n_features)
    features = da.random.default_rng(1).standard_normal((n_rows, n_features), chunks=(rows_per_chunk, n_features),
                                                         dtype=np.float32)
    logits = features @ w
    labels = da.argmax(logits + da.random.default_rng(2).gumbel(size=logits.shape, chunks=logits.chunks), axis=1)
    labels = da.where(da.random.default_rng(3).random(n_rows, chunks=rows_per_chunk) < 0.1, -100, labels)
    return logits, labels


def main(fast=False, cluster=False):
    n_rows, n_classes = (200_000, 100) if fast else (10_000_000, 100)
    logits, labels = make_logits(n_rows, 32, n_classes, rows_per_chunk=50_000)
    loss = fastxent.dask.cross_entropy(logits, labels, label_smoothing=0.05)
    client = None
    if cluster:
        from distributed import Client, LocalCluster

        client = Client(LocalCluster(n_workers=2, threads_per_worker=1, dashboard_address=None))
    start = time.perf_counter()
    value = float(loss.compute())
    seconds = time.perf_counter() - start
    # a check on a slice that fits in memory: the same rows in uneven blocks, lazily and in memory
    head_logits, head_labels = da.compute(logits[:50_000], labels[:50_000])
    uneven = da.from_array(head_logits, chunks=((5_000, 30_000, 15_000), n_classes))
    head_lazy = float(fastxent.dask.cross_entropy(uneven, head_labels, label_smoothing=0.05).compute())
    head_eager = float(fastxent.cross_entropy(head_logits, head_labels, label_smoothing=0.05))
    if client is not None:
        client.close()
    gib = n_rows * n_classes * 4 / 2**30
    print(f"{n_rows} rows x {n_classes} classes ({gib:.2f} GiB of float32 logits) in {logits.numblocks[0]} blocks: "
          f"mean loss {value:.5f} in {seconds:.2f} s ({'cluster' if cluster else 'threads'})")
    print(f"first block, lazy vs in memory: {head_lazy:.7f} vs {head_eager:.7f}")
    return {"loss": value, "head_lazy": head_lazy, "head_eager": head_eager}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a smaller dataset")
    parser.add_argument("--cluster", action="store_true", help="run on a local distributed cluster")
    args = parser.parse_args()
    main(fast=args.fast, cluster=args.cluster)
