"""fastxent.distributed against the single-process API and the float64
reference, on every rank of COMM_WORLD.

Run under ``mpiexec -n 2`` or ``-n 3`` (see README); a plain pytest run
skips this module. Every test makes its collective calls first and asserts
afterwards, so a failing assertion on one rank never leaves the others
waiting in a collective.
"""

import os

import numpy as np
import pytest

from tests import reference
from tests.conftest import tolerances

if not any(k in os.environ for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")):
    pytest.skip("MPI tests run under mpiexec -n 2 or -n 3", allow_module_level=True)
MPI = pytest.importorskip("mpi4py.MPI")

import fastxent  # noqa: E402
from fastxent import distributed as fd  # noqa: E402

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()

OPTIONS = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(weight=True),
    dict(weight=True, reduction="sum", ignore_index=3),
    dict(label_smoothing=0.25),
    dict(label_smoothing=0.1, weight=True),
    dict(label_smoothing=0.3, weight=True, reduction="none"),
]
OPTION_IDS = ["-".join(f"{k}={v}" for k, v in o.items()) or "default" for o in OPTIONS]


def problem(dtype, n_rows, n_classes, seed, nonfinite=False):
    """The same logits, labels and weights on every rank."""
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n_rows, n_classes)) * 4).astype(dtype)
    y = rng.integers(0, n_classes, n_rows)
    y[rng.random(n_rows) < 0.2] = -100
    w = rng.uniform(0.0, 2.0, n_classes).astype(dtype)
    w[1] = 0.0
    if nonfinite:
        x[1] = -np.inf  # a whole row of -inf
        x[2, : n_classes // 2] = -np.inf  # -inf in the first shard(s) only
        x[4, -1] = np.nan
        x[5, 0] = np.inf
        y[1:6] = 1
    return x, y, w


def my_classes(n_classes, seed=7):
    """This rank's class range [a, b): unequal ranges, one per rank, covering [0, n_classes)."""
    rng = np.random.default_rng(seed + SIZE)
    cuts = np.sort(rng.choice(np.arange(1, n_classes), SIZE - 1, replace=False))
    edges = np.concatenate([[0], cuts, [n_classes]])
    return int(edges[RANK]), int(edges[RANK + 1])


def expand(opts, w, y):
    """The options with the weight array filled in; the labels with their ignored rows marked as the options say."""
    opts = dict(opts)
    if opts.pop("weight", False):
        opts["weight"] = w
    y = np.where(y == -100, opts.get("ignore_index", -100), y)
    return opts, y


def assert_close(actual, expected, dtype, rtol=None):
    r, a = tolerances(dtype)
    np.testing.assert_allclose(actual, expected, rtol=rtol or r, atol=0 if rtol else a, equal_nan=True)


def test_world_has_several_ranks():
    assert SIZE >= 2, "run these tests under mpiexec -n 2 or more"


# --------------------------------------------------------------------------
# Vocab-sharded
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vocab_sharded_total_is_the_same_on_every_rank_for_many_rows(dtype):
    """Shards of different widths group the rows alike: a grouping by the
    shard's elements summed the same row losses in different orders."""
    x, y, _ = problem(dtype, 3000, 37, seed=3)
    a, b = my_classes(37)
    for reduction in ("mean", "sum"):
        loss, _ = fd.vocab_parallel_cross_entropy_with_grad(x[:, a:b].copy(), y, vocab_start=a, comm=COMM,
                                                             reduction=reduction)
        assert len(set(COMM.allgather(np.asarray(loss).tobytes()))) == 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opts", OPTIONS, ids=OPTION_IDS)
@pytest.mark.parametrize("nonfinite", [False, True], ids=["finite", "nonfinite"])
def test_vocab_sharded_equals_single_process(dtype, opts, nonfinite):
    x, y, w = problem(dtype, 23, 37, seed=1, nonfinite=nonfinite)
    opts, y = expand(opts, w, y)
    a, b = my_classes(37)
    shard_opts = dict(opts)
    if "weight" in shard_opts:
        shard_opts["weight_shard"] = shard_opts.pop("weight")[a:b]
    loss, grad = fd.vocab_parallel_cross_entropy_with_grad(
        x[:, a:b].copy(), y, vocab_start=a, comm=COMM, **shard_opts
    )
    loss_only = fd.vocab_parallel_cross_entropy(x[:, a:b].copy(), y, vocab_start=a, comm=COMM, **shard_opts)
    single_loss, single_grad = fastxent.cross_entropy_with_grad(x, y, **opts)
    # every rank returns the same loss, bit for bit
    all_losses = COMM.allgather(np.asarray(loss).tobytes())

    assert len(set(all_losses)) == 1
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    assert_close(loss, single_loss, dtype, rtol)
    assert_close(loss_only, single_loss, dtype, rtol)
    assert_close(grad, single_grad[:, a:b], dtype, None if dtype == np.float32 else 1e-12)
    if not nonfinite:
        ref_loss, ref_grad = reference.cross_entropy_with_grad(x, y, **opts)
        assert_close(loss, ref_loss, dtype)
        assert_close(grad, ref_grad[:, a:b], dtype)


def test_vocab_sharded_smoothing_uses_the_full_vocabulary():
    # Megatron-LM's vocab-parallel smoothing spreads eps over each shard's
    # own width; the loss must be that of the unsharded logits.
    x, y, _ = problem(np.float64, 16, 50, seed=2)
    a, b = my_classes(50)
    loss = fd.vocab_parallel_cross_entropy(x[:, a:b].copy(), y, vocab_start=a, comm=COMM, label_smoothing=0.4)
    ref_loss, _ = reference.cross_entropy_with_grad(x, y, label_smoothing=0.4)
    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_vocab_sharded_in_place_and_buffers(dtype):
    x, y, w = problem(dtype, 30, 41, seed=3)
    a, b = my_classes(41)
    shard = x[:, a:b].copy()
    out = np.empty(30, dtype=dtype)
    loss, grad = fd.vocab_parallel_cross_entropy_with_grad(
        shard, y, vocab_start=a, comm=COMM, reduction="none", out=out, grad_out=shard, label_smoothing=0.1
    )
    single_loss, single_grad = fastxent.cross_entropy_with_grad(x, y, reduction="none", label_smoothing=0.1)

    assert loss is out and grad is shard
    assert_close(out, single_loss, dtype)
    assert_close(shard, single_grad[:, a:b], dtype)


def test_vocab_sharded_batch_axes():
    x, y, _ = problem(np.float64, 24, 19, seed=4)
    a, b = my_classes(19)
    x3, y3 = x.reshape(4, 6, 19), y.reshape(4, 6)
    loss, grad = fd.vocab_parallel_cross_entropy_with_grad(x3[..., a:b], y3, vocab_start=a, comm=COMM)
    single_loss, single_grad = fastxent.cross_entropy_with_grad(x3, y3)

    assert grad.shape == (4, 6, b - a)
    assert abs(loss - single_loss) <= 1e-12 * abs(single_loss)
    np.testing.assert_allclose(grad, single_grad[..., a:b], rtol=1e-12, atol=1e-15)


def collective_error(call):
    """Run a collective call on every rank; return the exception raised here (or None)."""
    try:
        call()
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


def test_vocab_sharded_bad_label_raises_everywhere_and_writes_nothing():
    x, y, _ = problem(np.float64, 12, 20, seed=5)
    y[7] = 20  # outside the global vocabulary [0, 20)
    a, b = my_classes(20)
    shard = x[:, a:b].copy()
    before = shard.copy()
    exc = collective_error(
        lambda: fd.vocab_parallel_cross_entropy_with_grad(shard, y, vocab_start=a, comm=COMM, grad_out=shard)
    )

    assert isinstance(exc, ValueError) and "label 20 at index (7,)" in str(exc)
    np.testing.assert_array_equal(shard, before)


def test_vocab_sharded_shards_must_tile_the_vocabulary():
    x, y, _ = problem(np.float64, 8, 20, seed=6)
    a, b = my_classes(20)
    b_claimed = b + 1 if RANK == 0 else b  # rank 0's shard overlaps rank 1's
    shard = np.zeros((8, b_claimed - a)) if RANK == 0 else x[:, a:b].copy()
    exc = collective_error(lambda: fd.vocab_parallel_cross_entropy(shard, y, vocab_start=a, comm=COMM))

    assert isinstance(exc, ValueError) and "do not tile" in str(exc)


def test_vocab_sharded_refused_input_on_one_rank_raises_on_all():
    x, y, _ = problem(np.float64, 8, 20, seed=6)
    a, b = my_classes(20)
    start = -1 if RANK == SIZE - 1 else int(a)
    exc = collective_error(lambda: fd.vocab_parallel_cross_entropy(x[:, a:b].copy(), y, vocab_start=start, comm=COMM))

    if RANK == SIZE - 1:
        assert isinstance(exc, ValueError) and "vocab_start must be >= 0" in str(exc)
    else:
        assert isinstance(exc, fd.PeerRankError) and f"rank {SIZE - 1}" in str(exc)


def test_vocab_sharded_targets_must_agree():
    x, y, _ = problem(np.float64, 10, 20, seed=8)
    a, b = my_classes(20)
    y = y.copy()
    y[3] = RANK  # a different (valid) label on each rank
    exc = collective_error(lambda: fd.vocab_parallel_cross_entropy(x[:, a:b].copy(), y, vocab_start=a, comm=COMM))

    assert isinstance(exc, ValueError) and "different targets" in str(exc)


def test_vocab_sharded_refuses_probability_targets_and_bad_comm():
    x = np.zeros((4, 5))
    with pytest.raises(TypeError, match="communicator"):
        fd.vocab_parallel_cross_entropy(x, np.zeros(4, dtype=int), vocab_start=0, comm=object())
    exc = collective_error(lambda: fd.vocab_parallel_cross_entropy(x, np.full((4, 5), 0.2), vocab_start=5 * RANK,
                                                                    comm=COMM))
    assert isinstance(exc, TypeError) and "probability targets" in str(exc)


# --------------------------------------------------------------------------
# Batch-sharded
# --------------------------------------------------------------------------


def my_rows(n_rows):
    """Unequal row blocks: rank r gets a share growing with r (rank 0 may get few)."""
    cuts = np.linspace(0, 1, SIZE + 1) ** 1.5 * n_rows
    return slice(int(cuts[RANK]), int(cuts[RANK + 1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("opts", OPTIONS + [dict(target="probs"), dict(target="probs", label_smoothing=0.2)],
                         ids=OPTION_IDS + ["probs", "probs-smoothing"])
@pytest.mark.parametrize("nonfinite", [False, True], ids=["finite", "nonfinite"])
def test_batch_sharded_equals_single_process(dtype, opts, nonfinite):
    x, y, w = problem(dtype, 40, 13, seed=9, nonfinite=nonfinite)
    rows = my_rows(40)
    y[30:38] = -100  # uneven ignored counts per rank: the last rank's rows are mostly ignored
    opts, y = expand(opts, w, y)
    target = y
    if opts.pop("target", None) == "probs":
        target = np.random.default_rng(1).dirichlet(np.ones(13), 40).astype(dtype)
    loss, grad = fd.cross_entropy_with_grad(x[rows], target[rows], comm=COMM, **opts)
    loss_only = fd.cross_entropy(x[rows], target[rows], comm=COMM, **opts)
    module = fd.CrossEntropyLoss(comm=COMM, **opts)
    module_loss = module(x[rows], target[rows])
    module_grad = module.backward()
    single_loss, single_grad = fastxent.cross_entropy_with_grad(x, target, **opts)

    expected_loss = single_loss[rows] if opts.get("reduction") == "none" else single_loss
    rtol = 1e-12 if dtype == np.float64 else 2e-6
    for got in (loss, loss_only, module_loss):
        assert_close(got, expected_loss, dtype, rtol)
    for got in (grad, module_grad):
        assert_close(got, single_grad[rows], dtype, None if dtype == np.float32 else 1e-12)
    if not nonfinite:
        ref_loss, ref_grad = reference.cross_entropy_with_grad(x, target, **opts)
        assert_close(grad, ref_grad[rows], dtype)
        if opts.get("reduction") != "none":
            assert_close(loss, ref_loss, dtype)


def test_batch_sharded_mean_is_not_a_mean_of_rank_means():
    x, y, _ = problem(np.float64, 30, 7, seed=10)
    rows = my_rows(30)
    first_block_end = int(np.linspace(0, 1, SIZE + 1)[1] ** 1.5 * 30)
    y[: first_block_end - 2] = -100  # rank 0 keeps two rows that count
    loss = fd.cross_entropy(x[rows], y[rows], comm=COMM)
    local_mean = fastxent.cross_entropy(x[rows], y[rows])
    means = COMM.allgather(float(local_mean))
    ref_loss, _ = reference.cross_entropy_with_grad(x, y)

    assert abs(loss - ref_loss) <= 1e-12 * abs(ref_loss)
    assert abs(np.nanmean(means) - ref_loss) > 1e-6  # the naive average would be wrong here


def test_batch_sharded_bad_label_on_one_rank_raises_on_every_rank():
    x, y, _ = problem(np.float64, 20, 6, seed=11)
    rows = my_rows(20)
    xs, ys = x[rows].copy(), y[rows].copy()
    if RANK == 1:
        ys[0] = 99
    grad = np.full_like(xs, 7.0)
    exc = collective_error(lambda: fd.cross_entropy_with_grad(xs, ys, comm=COMM, grad_out=grad))
    exc_loss = collective_error(lambda: fd.cross_entropy(xs, ys, comm=COMM))
    exc_none = collective_error(lambda: fd.cross_entropy(xs, ys, comm=COMM, reduction="none"))

    for e in (exc, exc_loss, exc_none):
        if RANK == 1:
            assert isinstance(e, ValueError) and "label 99" in str(e)
        else:
            assert isinstance(e, fd.PeerRankError) and "1 of" in str(e)
    assert np.all(grad == 7.0)


def test_batch_sharded_rank_without_rows():
    x, y, _ = problem(np.float32, 12, 5, seed=12)
    rows = slice(0, 0) if RANK == 0 else my_rows(12)
    if RANK == 1:
        rows = slice(0, my_rows(12).stop)
    loss, grad = fd.cross_entropy_with_grad(x[rows], y[rows], comm=COMM)
    single_loss, _ = fastxent.cross_entropy_with_grad(x, y)
    assert grad.shape == x[rows].shape
    assert abs(loss - single_loss) <= 2e-6 * abs(single_loss)


def test_batch_sharded_bad_comm():
    with pytest.raises(TypeError, match="communicator"):
        fd.cross_entropy(np.zeros((2, 3)), np.zeros(2, dtype=int), comm="world")
    with pytest.raises(TypeError, match="communicator"):
        fd.CrossEntropyLoss(comm=None)
