"""Cross-entropy over dask arrays: evaluation on data larger than memory.

``fastxent.dask.cross_entropy(logits, target, **options)`` is lazy: it
returns a dask array (0-d for "mean"/"sum", the per-row losses for "none")
and runs the fused kernels block by block when computed, on any dask
scheduler, including a ``distributed`` cluster. Needs the extra ``[dask]``;
``import fastxent`` never imports this module.

The class axis must be in one chunk; the rows may be chunked in any way,
unevenly too. "mean" is exact: each block gives its summed loss and its
denominator (summed class weight of its non-ignored rows), the sums are
added up and divided once. A mean of block means would weight the blocks
wrongly whenever they hold different numbers of ignored rows.

Threads: dask's default scheduler for arrays runs blocks in a thread pool.
fastxent lets one of its parallel kernels run at a time in a process and
runs the others' blocks on their serial twins (same results), so threads
never start two parallel kernels at once, which would abort the process
under Numba's ``workqueue`` layer. Numba's threads and dask's threads then
share the cores; for a ``distributed`` cluster, prefer processes with one
or few threads each (``LocalCluster(n_workers=..., threads_per_worker=1)``)
or set ``NUMBA_NUM_THREADS`` so that workers x threads does not exceed the
cores. The ``tbb`` and ``omp`` layers are thread-safe as well.
"""

try:
    import dask.array as da
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("fastxent.dask needs dask: pip install 'fastxent[dask]'") from exc

import numpy as np

from . import api

__all__ = ["cross_entropy"]


def _where(block_info):
    """" at [a, b), ..." (the block's place in the batch axes) for errors raised inside a block."""
    if not block_info or 0 not in block_info:
        return ""
    location = block_info[0]["array-location"][:-1]
    return " at " + ", ".join(f"[{a}, {b})" for a, b in location)


def _block_prepare(x, t, labels, weight, ignore_index, reduction, label_smoothing, block_info):
    target = t[..., 0] if labels else t
    try:
        return api.prepare(x, target, weight, ignore_index, reduction, label_smoothing)
    except ValueError as exc:
        raise ValueError(f"{exc} (the index is within the block{_where(block_info)})") from None


def _block_sums(x, t, labels, weight, ignore_index, label_smoothing, block_info=None):
    """(summed loss, mean denominator) of one block, shaped (1, ..., 1, 2)."""
    p = _block_prepare(x, t, labels, weight, ignore_index, "sum", label_smoothing, block_info)
    total = api.loss_total(p, api.NO_ROW_LOSS[p.dtype])
    return np.array([total, p.mean_denominator]).reshape((1,) * (x.ndim - 1) + (2,))


def _block_rows(x, t, labels, weight, ignore_index, label_smoothing, block_info=None):
    p = _block_prepare(x, t, labels, weight, ignore_index, "none", label_smoothing, block_info)
    row_loss = api.row_loss_buffer(p, None)
    return api.finish(p, api.loss_total(p, row_loss), row_loss, 1.0)


def _reduce(sums, reduction, out_dtype):
    total, denominator = sums
    return np.asarray(out_dtype.type(api.divide(total, denominator if reduction == "mean" else 1.0)))


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0):
    """Lazy `fastxent.cross_entropy` over a dask array.

    Parameters
    ----------
    logits : dask.array.Array (or array_like), float32 or float64, shape (..., C)
        The class axis (last) must be in one chunk; rows may be chunked freely.
    target : dask.array.Array or array_like
        Integer class indices of shape ``logits.shape[:-1]``, or float
        probabilities of the logits' shape; rechunked to match the logits.
    weight, ignore_index, reduction, label_smoothing
        As in `fastxent.cross_entropy`.

    Returns
    -------
    dask.array.Array
        0-d of the logits' dtype for "mean" and "sum"; the per-row losses,
        chunked like the logits' rows, for "none". Call ``.compute()``.

    Raises
    ------
    ValueError, TypeError
        At once for bad shapes, dtypes, options or a split class axis; an
        invalid label raises when the result is computed, naming its block.
    """
    logits = da.asarray(logits)
    if logits.dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise TypeError(f"logits must be float32 or float64, got dtype {logits.dtype}")
    if logits.ndim == 0 or logits.shape[-1] == 0:
        raise ValueError("logits must have a non-empty class axis (the last)")
    if len(logits.chunks[-1]) != 1:
        raise ValueError(
            f"the class axis of logits must be in one chunk, got chunks {logits.chunks[-1]}: "
            "use logits.rechunk({-1: -1})"
        )
    ignore_index, label_smoothing = api.check_options(reduction, ignore_index, label_smoothing)
    weight = api.class_weight(weight, logits.shape[-1], logits.dtype)
    weight = weight if weight.size else None  # the empty "no weights" array is the kernels' convention only
    target = da.asarray(target)
    labels = target.dtype.kind in "iu"
    if labels:
        if target.shape != logits.shape[:-1]:
            raise ValueError(f"class-index target must have shape logits.shape[:-1] = {logits.shape[:-1]}, "
                             f"got {target.shape}")
        target = target.rechunk(logits.chunks[:-1])[..., None]  # a class axis of length 1, in one chunk
    elif target.dtype.kind == "f":
        if target.shape != logits.shape:
            raise ValueError(f"probability target must have the logits' shape {logits.shape}, got {target.shape}")
        target = target.rechunk(logits.chunks)
    else:
        raise TypeError(f"target must be integer class indices or float probabilities, got dtype {target.dtype}")
    options = dict(labels=labels, weight=weight, ignore_index=ignore_index, label_smoothing=label_smoothing)

    if reduction == "none":
        return da.map_blocks(_block_rows, logits, target, drop_axis=logits.ndim - 1, dtype=logits.dtype,
                             meta=np.empty((0,) * (logits.ndim - 1), logits.dtype), **options)
    batch_axes = tuple(range(logits.ndim - 1))
    block_sums = da.map_blocks(
        _block_sums, logits, target, dtype=np.float64,
        chunks=tuple((1,) * len(c) for c in logits.chunks[:-1]) + ((2,),),
        meta=np.empty((0,) * logits.ndim, np.float64), **options,
    )
    sums = block_sums.sum(axis=batch_axes)  # float64: (summed loss, summed denominator)
    return da.map_blocks(_reduce, sums, drop_axis=0, chunks=(), dtype=logits.dtype,
                         meta=np.empty((), logits.dtype), reduction=reduction, out_dtype=logits.dtype)
