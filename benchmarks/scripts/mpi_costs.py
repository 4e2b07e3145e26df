"""Cost of the vocab-sharded and batch-sharded forms against one process.

Run as ``mpiexec -n 2 python benchmarks/scripts/mpi_costs.py`` (asv cannot launch
MPI jobs). Rank 0 times the single-process fused call with every thread
while the other ranks sleep (they poll a non-blocking barrier, so they take
no CPU); then all ranks time the sharded call, each rank on one thread. The
two are interleaved, repeat after repeat, and the medians are compared.
"""

import argparse
import time

import numba
import numpy as np
from mpi4py import MPI

import fastxent
from fastxent import distributed as fd

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()


def idle_barrier():
    request = COMM.Ibarrier()
    while not request.Test():
        time.sleep(0.0005)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    n, v = args.rows, args.classes
    threads = numba.config.NUMBA_NUM_THREADS
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((n, v), dtype=np.float32) if RANK == 0 else None
    labels = np.random.default_rng(1).integers(0, v, n)  # the same on every rank
    grad = np.empty((n, v), np.float32) if RANK == 0 else None
    edges = np.linspace(0, v, SIZE + 1).astype(int)
    a, b = edges[RANK], edges[RANK + 1]
    shard = np.random.default_rng(RANK + 1).standard_normal((n, b - a), dtype=np.float32)
    shard_grad = np.empty_like(shard)
    rows = np.array_split(np.arange(n), SIZE)[RANK]
    batch = np.random.default_rng(RANK + 7).standard_normal((len(rows), v), dtype=np.float32)
    batch_grad = np.empty_like(batch)

    def single():
        if RANK == 0:
            numba.set_num_threads(threads)
            t = time.perf_counter()
            fastxent.cross_entropy_with_grad(logits, labels, grad_out=grad)
            dt = time.perf_counter() - t
        else:
            dt = 0.0
        idle_barrier()
        # Let rank 0's idle worker threads stop spinning (OpenMP waits
        # actively for a while after a parallel region) before the ranks
        # share the cores.
        time.sleep(0.1)
        return dt

    def sharded(call):
        numba.set_num_threads(1)
        COMM.Barrier()
        t = time.perf_counter()
        call()
        dt = time.perf_counter() - t
        return COMM.allreduce(dt, op=MPI.MAX)

    def vocab():
        fd.vocab_parallel_cross_entropy_with_grad(shard, labels, vocab_start=int(a), comm=COMM, grad_out=shard_grad)

    def data():
        fd.cross_entropy_with_grad(batch, labels[rows], comm=COMM, grad_out=batch_grad)

    times = {"single": [], "vocab": [], "batch": []}
    for r in range(args.repeats + 2):  # two warm-up rounds (compilation, dispatch settling)
        for name, run in (("single", single), ("vocab", lambda: sharded(vocab)), ("batch", lambda: sharded(data))):
            dt = run()
            if r >= 2:
                times[name].append(dt)
    if RANK == 0:
        med = {k: float(np.median(t)) for k, t in times.items()}
        print(f"{n} x {v} float32, {SIZE} ranks x 1 thread vs 1 process x {threads} threads (medians of {args.repeats})")
        print(f"  single process fused  {med['single'] * 1e3:8.3f} ms")
        print(f"  vocab-sharded         {med['vocab'] * 1e3:8.3f} ms   ratio {med['vocab'] / med['single']:.2f}")
        print(f"  batch-sharded         {med['batch'] * 1e3:8.3f} ms   ratio {med['batch'] / med['single']:.2f}")


if __name__ == "__main__":
    main()
