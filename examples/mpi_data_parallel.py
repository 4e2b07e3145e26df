"""Data-parallel softmax regression over MPI with padded (ignored) rows.

Each rank holds a different share of a token batch and a different number
of padding rows (label -100). `fastxent.distributed.cross_entropy_with_grad`
divides by the global count of real rows, so every rank's gradient is its
exact slice of the global gradient: summing the ranks' weight gradients
gives the single-process gradient, step after step. The naive way, a mean
per rank followed by averaging over ranks, weights the ranks wrongly; the
script prints how far that is from the exact gradient.

    pip install -e ".[mpi]"
    mpiexec -n 2 python examples/mpi_data_parallel.py
    mpiexec -n 2 python examples/mpi_data_parallel.py --fast
"""

import argparse

import numpy as np
from mpi4py import MPI

import fastxent
from fastxent import distributed


def main(fast=False, comm=MPI.COMM_WORLD):
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(0)  # the same global problem on every rank
    n_rows, n_features, n_classes = (600, 16, 10) if fast else (6000, 64, 50)
    true_w = rng.normal(size=(n_features, n_classes))
    x = rng.normal(size=(n_rows, n_features))
    y = np.argmax(x @ true_w + rng.gumbel(size=(n_rows, n_classes)), axis=1)
    cuts = (np.linspace(0, 1, size + 1) ** 2 * n_rows).astype(int)  # unequal shares
    mine = slice(cuts[rank], cuts[rank + 1])
    y[: n_rows // 3][rng.random(n_rows // 3) < 0.8] = -100  # padding, mostly in the first ranks' rows

    w = np.zeros((n_features, n_classes))
    grad_logits = np.empty((mine.stop - mine.start, n_classes))
    losses, naive_errors = [], []
    for step in range(30 if fast else 200):
        logits = x[mine] @ w
        loss, _ = distributed.cross_entropy_with_grad(logits, y[mine], comm=comm, grad_out=grad_logits)
        grad_w = x[mine].T @ grad_logits
        comm.Allreduce(MPI.IN_PLACE, grad_w, op=MPI.SUM)  # the ranks' slices add up to the global gradient
        # the naive data-parallel mean, for comparison only
        local_mean, local_grad = fastxent.cross_entropy_with_grad(logits, y[mine])
        naive = x[mine].T @ np.nan_to_num(local_grad)
        comm.Allreduce(MPI.IN_PLACE, naive, op=MPI.SUM)
        naive /= size
        naive_errors.append(np.abs(naive - grad_w).max() / np.abs(grad_w).max())
        w -= 0.5 * grad_w
        losses.append(float(loss))

    single_loss, single_grad = fastxent.cross_entropy_with_grad(x @ w, y)
    check = np.abs(x.T @ single_grad - comm.allreduce(x[mine].T @ distributed.cross_entropy_with_grad(
        x[mine] @ w, y[mine], comm=comm)[1], op=MPI.SUM)).max()
    if rank == 0:
        print(f"{size} ranks, rows per rank {np.diff(cuts).tolist()}, {int((y == -100).sum())} padding rows in all")
        print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}; single-process loss of the final weights {single_loss:.4f}")
        print(f"max |exact - single-process| weight gradient: {check:.2e}")
        print(f"naive per-rank-mean gradient is off by {100 * np.median(naive_errors):.0f}% (median relative error)")
    return {"first": losses[0], "last": losses[-1], "single_loss": float(single_loss), "grad_error": float(check),
            "naive_error": float(np.median(naive_errors)), "size": size}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a smaller problem and fewer steps")
    main(fast=parser.parse_args().fast)
