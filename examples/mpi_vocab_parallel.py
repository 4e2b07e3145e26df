"""A vocab-parallel (tensor-parallel) softmax head over MPI.

The head's weight W (features x vocabulary) is split by columns: each rank
holds a slice of the classes and computes only its slice of the logits.
`fastxent.distributed.vocab_parallel_cross_entropy_with_grad` returns the
loss of the full logits, with label smoothing spread over the whole
vocabulary, and this rank's slice of the gradient. No rank ever holds the
full (rows x vocabulary) logits; the collectives move a few numbers per
row. The script trains the head and checks, at the end, the loss and the
gradient against one process holding everything.

    pip install -e ".[mpi]"
    mpiexec -n 2 python examples/mpi_vocab_parallel.py
    mpiexec -n 3 python examples/mpi_vocab_parallel.py --fast
"""

import argparse

import numpy as np
from mpi4py import MPI

import fastxent
from fastxent import distributed


def main(fast=False, comm=MPI.COMM_WORLD):
    rank, size = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(1)  # the same data and labels on every rank
    n_rows, n_features, vocab = (256, 32, 1000) if fast else (2048, 128, 32000)
    true_w = rng.normal(size=(n_features, vocab)).astype(np.float32)
    x = rng.normal(size=(n_rows, n_features)).astype(np.float32)
    y = np.argmax(x @ true_w + rng.gumbel(size=(n_rows, vocab)).astype(np.float32), axis=1)
    edges = np.linspace(0, vocab, size + 1).astype(int)
    start, stop = edges[rank], edges[rank + 1]
    w_shard = np.zeros((n_features, stop - start), np.float32)  # this rank's columns of W

    losses = []
    for step in range(20 if fast else 50):
        logits_shard = x @ w_shard
        loss, grad_shard = distributed.vocab_parallel_cross_entropy_with_grad(
            logits_shard, y, vocab_start=int(start), comm=comm, label_smoothing=0.1, grad_out=logits_shard
        )  # in place: the logits' slice becomes the gradient's slice
        w_shard -= 2.0 * (x.T @ grad_shard)
        losses.append(float(loss))

    # Check against one process holding the whole head (gathered here only for the check).
    logits_shard = x @ w_shard
    loss, grad_shard = distributed.vocab_parallel_cross_entropy_with_grad(
        logits_shard, y, vocab_start=int(start), comm=comm, label_smoothing=0.1)
    full_w = np.concatenate(comm.allgather(w_shard), axis=1)
    full_grad = np.concatenate(comm.allgather(grad_shard), axis=1)
    single_loss, single_grad = fastxent.cross_entropy_with_grad(x @ full_w, y, label_smoothing=0.1)
    loss_error = abs(float(loss) - float(single_loss)) / abs(float(single_loss))
    grad_error = float(np.abs(full_grad - single_grad).max() / np.abs(single_grad).max())
    if rank == 0:
        print(f"{size} ranks, vocabulary {vocab} split as {np.diff(edges).tolist()}")
        print(f"loss {losses[0]:.4f} -> {losses[-1]:.4f}")
        print(f"against one process: loss rel. error {loss_error:.1e}, gradient rel. error {grad_error:.1e}")
    return {"first": losses[0], "last": losses[-1], "loss_error": loss_error, "grad_error": grad_error, "size": size}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a smaller head and fewer steps")
    main(fast=parser.parse_args().fast)
