"""Cross-entropy across MPI processes (ranks), exact for every option.

Two ways of splitting a problem between ranks, both on mpi4py communicators
(extra ``[mpi]``; ``import fastxent`` never imports this module):

- **Batch-sharded** (data parallel): each rank holds some rows of the
  batch. `cross_entropy`, `cross_entropy_with_grad` and `CrossEntropyLoss`
  take ``comm=``. A "mean" divides by the *global* denominator (the summed
  class weight of the non-ignored rows of all ranks), so the returned loss
  is the global loss and each rank's gradient is exactly its slice of the
  global loss's gradient. Averaging per-rank means instead is wrong whenever
  ranks hold different numbers of ignored rows or different weights.
- **Vocab-sharded** (tensor parallel): each rank holds a slice of the
  classes of the same rows. `vocab_parallel_cross_entropy_with_grad` gives
  the loss of the concatenated logits and this rank's slice of its
  gradient, with label smoothing exact across shards.

Every call is collective: all ranks of ``comm`` must make it, with the same
options (and, vocab-sharded, the same target). Inputs are validated on each
rank before anything is written, and the verdict travels with the first
collective's data, so a rank that refuses its input makes every rank
raise (`PeerRankError` on the others) instead of leaving them waiting.
Per-row statistics travel as float64 whatever the logits' dtype.
"""

import operator

import numpy as np

try:
    from mpi4py import MPI
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "fastxent.distributed needs mpi4py: pip install 'fastxent[mpi]' (mpi4py and the mpich wheel)"
    ) from exc

from . import _threading, api, kernels
from .loss import CrossEntropyLoss as _LocalCrossEntropyLoss

__all__ = [
    "cross_entropy",
    "cross_entropy_with_grad",
    "CrossEntropyLoss",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_cross_entropy_with_grad",
    "PeerRankError",
]


class PeerRankError(RuntimeError):
    """Another rank refused its input; this rank abandoned the call too.

    Raised on every rank but the ones that found the problem (they raise
    their own error), so that no rank is left waiting in a collective.
    Nothing was written on any rank.
    """


def _check_comm(comm):
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py communicator (mpi4py.MPI.Comm), got {type(comm).__name__}")
    if comm.Is_inter():
        raise TypeError("comm must be an intracommunicator")


def _peer_failure(comm, how_many):
    return PeerRankError(
        f"{how_many} of {comm.Get_size()} ranks refused their input (see their errors); "
        "the call was abandoned on every rank before anything was written"
    )


# --------------------------------------------------------------------------
# Batch-sharded
# --------------------------------------------------------------------------


def _sum_over_ranks(comm, *values):
    buf = np.array(values, dtype=np.float64)
    comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
    return buf


def _prepare_batch(comm, logits, target, weight, ignore_index, reduction, label_smoothing):
    """Validate on this rank; return (problem, error) with exactly one of them None."""
    _check_comm(comm)
    try:
        return api.prepare(logits, target, weight, ignore_index, reduction, label_smoothing), None
    except (TypeError, ValueError) as exc:
        return None, exc


def _batch_fused(comm, p, error, out, grad_out, buffers=None):
    """The fused step on this rank's rows; collective. ``buffers(shape, dtype)``
    gives the (grad, row_loss) pair a loss object owns."""
    row_loss = inplace = None
    if error is None:
        try:
            if buffers is not None:
                grad_out, row_loss = buffers(p.shape, p.dtype)
                row_loss = row_loss.reshape(-1) if p.reduction == "none" else api.NO_ROW_LOSS[p.dtype]
            else:
                out = api.check_loss_out(p, out)
                if grad_out is None:
                    grad_out = np.empty(p.shape, dtype=p.dtype)
                    inplace = False
                else:
                    inplace = api.check_grad_out(p, grad_out, out)
                row_loss = api.row_loss_buffer(p, out)
        except (TypeError, ValueError) as exc:
            error = exc
    # One collective before anything is written: the global denominator
    # (the gradient's factor for "mean") and whether every rank is ready.
    denominator, failed = _sum_over_ranks(comm, p.mean_denominator if error is None else 0.0, error is not None)
    if error is not None:
        raise error
    if failed:
        raise _peer_failure(comm, int(failed))
    if p.reduction != "mean":
        denominator = 1.0
    total = api.fused_total(p, grad_out, row_loss, bool(inplace), api.divide(1.0, denominator))
    if p.reduction == "none":  # the rows' losses are this rank's own: nothing more to add up
        return api.finish(p, total, row_loss, 1.0, out), grad_out
    (total,) = _sum_over_ranks(comm, total)
    return p.dtype.type(api.divide(total, denominator)), grad_out


def cross_entropy_with_grad(
    logits, target, *, comm, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, out=None,
    grad_out=None
):
    """`fastxent.cross_entropy_with_grad` over a batch split between ranks.

    Parameters
    ----------
    logits, target, weight, ignore_index, reduction, label_smoothing, out, grad_out
        As in `fastxent.cross_entropy_with_grad`, for this rank's rows. Ranks
        may hold different numbers of rows (or none).
    comm : mpi4py.MPI.Comm
        All its ranks make the call, with the same options.

    Returns
    -------
    loss : the *global* loss ("mean": the summed losses of all ranks over
        the summed denominators of all ranks; "sum": the sum over all
        ranks), the same on every rank; "none": this rank's row losses.
    grad : this rank's slice of the gradient of the global loss.

    Notes
    -----
    Two all-reduces of one or two float64 numbers: the denominator before
    the kernel (so the gradient is scaled as it is written, with no second
    pass over it, and so no rank writes when another refused its input) and
    the loss sum after it. "none" needs only the first.
    """
    p, error = _prepare_batch(comm, logits, target, weight, ignore_index, reduction, label_smoothing)
    return _batch_fused(comm, p, error, out, grad_out)


def cross_entropy(
    logits, target, *, comm, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, out=None
):
    """`fastxent.cross_entropy` over a batch split between ranks.

    Arguments and the global "mean"/"sum" as in `cross_entropy_with_grad`.
    A reduced loss takes one all-reduce of three numbers (loss sum,
    denominator, refusals) after the kernel, which writes nothing; "none"
    agrees on the input before it writes the row losses.
    """
    p, error = _prepare_batch(comm, logits, target, weight, ignore_index, reduction, label_smoothing)
    if error is None:
        try:
            out = api.check_loss_out(p, out)
        except (TypeError, ValueError) as exc:
            error = exc
    reduced = reduction != "none"  # the same on every rank, valid or not: the collectives match
    total = 0.0
    if not reduced:
        (failed,) = _sum_over_ranks(comm, error is not None)
    elif error is None:
        total = api.loss_total(p, api.NO_ROW_LOSS[p.dtype])
    if reduced:
        total, denominator, failed = _sum_over_ranks(
            comm, total, p.mean_denominator if error is None else 0.0, error is not None
        )
    if error is not None:
        raise error
    if failed:
        raise _peer_failure(comm, int(failed))
    if not reduced:
        row_loss = api.row_loss_buffer(p, out)
        return api.finish(p, api.loss_total(p, row_loss), row_loss, 1.0, out)
    return p.dtype.type(api.divide(total, denominator if p.reduction == "mean" else 1.0))


class CrossEntropyLoss(_LocalCrossEntropyLoss):
    """`fastxent.CrossEntropyLoss` over a batch split between ranks.

    ``forward`` returns the global loss and computes this rank's slice of
    its gradient (see `cross_entropy_with_grad`); ``backward`` returns it.
    The buffers are the object's own and reused, as in the local version.

    Parameters
    ----------
    weight, ignore_index, reduction, label_smoothing
        As in `fastxent.CrossEntropyLoss`.
    comm : mpi4py.MPI.Comm
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, *, comm):
        _check_comm(comm)
        super().__init__(weight, ignore_index, reduction, label_smoothing)
        self.comm = comm

    def forward(self, logits, target):
        p, error = _prepare_batch(
            self.comm, logits, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing
        )
        self._has_grad = False
        loss, _ = _batch_fused(self.comm, p, error, None, None, buffers=self._buffers)
        self._has_grad = True
        return loss

    __call__ = forward


# --------------------------------------------------------------------------
# Vocab-sharded
# --------------------------------------------------------------------------

# Collective 1 (MAX): [refusing rank + 1, shard starts (P), shard ends (P), row maxima (N), labels (N), -labels (N)]
# Collective 2 (SUM): [summed class weight, per-row statistics (N x SHARD_STATS)]
_HEAD2 = 1


class _Shard:
    """One rank's validated vocab-sharded problem."""

    __slots__ = ("logits", "labels", "weight", "vocab_start", "ignore_index", "reduction", "label_smoothing",
                 "batch_shape", "dtype", "grad", "inplace", "out")


def _prepare_shard(logits, target, vocab_start, weight, ignore_index, reduction, label_smoothing, out, grad_out,
                   with_grad):
    s = _Shard()
    source = api.as_float_array(logits, "logits_shard")
    width = source.shape[-1]
    if width == 0:
        raise ValueError("logits_shard must hold at least one class (last axis has length 0)")
    s.batch_shape = source.shape[:-1]
    s.dtype = source.dtype
    s.logits = (source if source.flags.c_contiguous else np.ascontiguousarray(source)).reshape(-1, width)
    try:
        s.vocab_start = operator.index(vocab_start)
    except TypeError:
        raise TypeError(f"vocab_start must be an integer, got {type(vocab_start).__name__}") from None
    if s.vocab_start < 0:
        raise ValueError(f"vocab_start must be >= 0, got {s.vocab_start}")
    s.ignore_index, s.label_smoothing = api.check_options(reduction, ignore_index, label_smoothing)
    s.reduction = reduction
    s.weight = api.class_weight(weight, width, s.dtype, "weight_shard")
    target = np.asarray(target)
    if target.dtype.kind not in "iu":
        raise TypeError(
            f"target must hold integer (global) class indices, got dtype {target.dtype}; "
            "probability targets are not supported vocab-sharded"
        )
    s.labels = np.ascontiguousarray(api.labels_array(target, s.batch_shape, "V", s.ignore_index)).reshape(-1)
    s.out = api.check_row_loss_buffer(out, reduction, s.batch_shape, s.dtype,
                                      [("logits_shard", source), ("target", s.labels), ("weight_shard", s.weight)])
    s.grad, s.inplace = None, False
    if with_grad:
        if grad_out is None:
            s.grad = np.empty(source.shape, dtype=s.dtype)
        else:
            others = [("target", s.labels), ("weight_shard", s.weight), ("out", s.out)]
            s.inplace = api.check_grad_buffer(grad_out, source, s.dtype, others, "logits_shard")
            s.grad = grad_out
    return s


def _row_count(target):
    try:
        return int(np.size(target))
    except Exception:  # noqa: BLE001 - any unreadable target still takes part with no rows
        return 0


def _check_partition(starts, ends):
    """Raise unless the shards [start, end) tile [0, V) exactly; return V."""
    order = np.argsort(starts, kind="stable")
    expected = 0.0
    for k in order:
        if starts[k] != expected:
            shards = ", ".join(f"rank {j}: [{int(starts[j])}, {int(ends[j])})" for j in range(len(starts)))
            raise ValueError(f"the shards' class ranges do not tile [0, V) without gaps or overlaps ({shards})")
        expected = ends[k]
    return int(expected)


def _vocab_parallel(comm, logits_shard, target, vocab_start, weight_shard, ignore_index, reduction, label_smoothing,
                    out, grad_out, with_grad):
    _check_comm(comm)
    rank, size = comm.Get_rank(), comm.Get_size()
    try:
        s = _prepare_shard(logits_shard, target, vocab_start, weight_shard, ignore_index, reduction, label_smoothing,
                           out, grad_out, with_grad)
        error, n = None, s.logits.shape[0]
    except (TypeError, ValueError) as exc:
        s, error, n = None, exc, _row_count(target)

    head1 = 1 + 2 * size
    local1 = np.full(head1 + 3 * n, -np.inf)
    local2 = np.zeros(_HEAD2 + n * kernels.SHARD_STATS)
    stats = local2[_HEAD2:].reshape(n, kernels.SHARD_STATS)
    local_max = local1[head1:head1 + n]
    if error is None:
        local1[0] = 0.0
        local1[1 + rank] = s.vocab_start
        local1[1 + size + rank] = s.vocab_start + s.logits.shape[1]
        local1[head1 + n:head1 + 2 * n] = s.labels  # max and -min of each label over the ranks: equal iff
        local1[head1 + 2 * n:] = -s.labels.astype(np.float64)  # every rank passed the same one
        # Pass 1 reads the shard only: a call refused below leaves it as it was.
        _threading.run(kernels.vocab_shard_partials, kernels.vocab_shard_partials_serial, s.logits.size, s.logits,
                       s.labels, s.vocab_start, s.weight, s.ignore_index, s.label_smoothing != 0.0, local_max, stats)
    else:
        local1[0] = rank + 1.0
    global1 = np.empty_like(local1)
    comm.Allreduce(local1, global1, op=MPI.MAX)
    if error is not None:
        raise error
    if global1[0] > 0:
        raise PeerRankError(
            f"rank {int(global1[0]) - 1} refused its input (see its error); "
            "the call was abandoned on every rank before anything was written"
        )
    n_classes = _check_partition(global1[1:1 + size], global1[1 + size:head1])
    if not np.array_equal(global1[head1 + n:head1 + 2 * n], -global1[head1 + 2 * n:]):
        raise ValueError("the ranks passed different targets: every rank must pass the same (global) class indices")
    bad, _ = api.check_labels(s.labels, kernels.NO_WEIGHT, n_classes, s.ignore_index)
    if bad >= 0:  # the same labels on every rank: every rank raises here
        raise api.invalid_label(s.labels[bad], bad, s.batch_shape, n_classes, s.ignore_index)
    global_max = global1[head1:head1 + n]

    local2[0] = s.weight.sum(dtype=np.float64) if s.weight.size else s.logits.shape[1]
    kernels.vocab_shard_rebase(local_max, global_max, local2[0], stats)
    global2 = np.empty_like(local2)
    comm.Allreduce(local2, global2, op=MPI.SUM)
    weight_sum = global2[0]
    row_stats = global2[_HEAD2:].reshape(n, kernels.SHARD_STATS)
    active = s.labels != s.ignore_index
    denominator = row_stats[active, kernels.SHARD_WEIGHT].sum() if s.reduction == "mean" else 1.0
    store = s.out.reshape(-1) if s.out is not None else (
        np.empty(n, dtype=s.dtype) if s.reduction == "none" else api.NO_ROW_LOSS[s.dtype])
    grad = s.grad.reshape(s.logits.shape) if with_grad else s.logits  # in place: s.grad is the logits
    total = _threading.run(kernels.vocab_shard_fused, kernels.vocab_shard_fused_serial, s.logits.size, s.logits,
                           s.labels, s.vocab_start, s.weight, s.ignore_index, s.label_smoothing, n_classes, weight_sum,
                           api.divide(1.0, denominator), global_max, row_stats, grad, store, with_grad)
    if s.reduction == "none":
        loss = s.out if s.out is not None else store.reshape(s.batch_shape)
    else:
        loss = s.dtype.type(api.divide(total, denominator))
    return (loss, s.grad) if with_grad else loss


_VOCAB_DOC = """
    Parameters
    ----------
    logits_shard : array_like, float32 or float64, shape (..., W)
        Columns ``vocab_start`` to ``vocab_start + W`` of the full logits
        (..., V). Shards may have different widths; together the ranks'
        shards must cover [0, V) exactly once (checked).
    target : array_like of integers, shape ``logits_shard.shape[:-1]``
        *Global* class indices in [0, V), or ``ignore_index``; the same on
        every rank. Class-index targets only.
    vocab_start : int
        The global index of this shard's first class.
    comm : mpi4py.MPI.Comm
        All its ranks make the call, with the same options.
    weight_shard : array_like of shape (W,), optional
        This shard's slice of the class weights.
    ignore_index, reduction, label_smoothing
        As in `fastxent.cross_entropy`, for the full vocabulary: smoothing
        spreads eps / V over all V classes, exactly as on the unsharded
        logits (not eps / W per shard).
    out : ndarray, optional
        Buffer for the per-row losses (reduction="none" only).
"""


def vocab_parallel_cross_entropy_with_grad(
    logits_shard, target, *, vocab_start, comm, weight_shard=None, ignore_index=-100, reduction="mean",
    label_smoothing=0.0, out=None, grad_out=None
):
    return _vocab_parallel(comm, logits_shard, target, vocab_start, weight_shard, ignore_index, reduction,
                           label_smoothing, out, grad_out, with_grad=True)


vocab_parallel_cross_entropy_with_grad.__doc__ = (
    """Loss of logits split by classes between ranks, and this rank's gradient slice.

    The result equals `fastxent.cross_entropy_with_grad` on the logits
    concatenated along the class axis: the same loss on every rank, and on
    each rank the gradient's columns of its own shard.
"""
    + _VOCAB_DOC
    + """    grad_out : ndarray, optional
        Buffer for the gradient slice, the shard's shape and dtype; may be
        ``logits_shard`` itself (in place).

    Returns
    -------
    loss, grad_shard

    Notes
    -----
    Two passes over the shard and two all-reduces of O(N) float64 numbers:
    the row maxima (MAX, together with every rank's class range and
    verdict on its input) and the rebased sums of exps, target logits,
    target weights and, for smoothing, weighted logit sums (SUM). Nothing
    is written before the second collective, so a refused call leaves
    every rank's buffers and logits as they were.
"""
)


def vocab_parallel_cross_entropy(
    logits_shard, target, *, vocab_start, comm, weight_shard=None, ignore_index=-100, reduction="mean",
    label_smoothing=0.0, out=None
):
    return _vocab_parallel(comm, logits_shard, target, vocab_start, weight_shard, ignore_index, reduction,
                           label_smoothing, out, None, with_grad=False)


vocab_parallel_cross_entropy.__doc__ = (
    """Loss of logits split by classes between ranks (no gradient).
"""
    + _VOCAB_DOC
    + """
    Returns
    -------
    loss : the same on every rank (per-row losses for reduction="none").
"""
)
