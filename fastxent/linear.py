"""A linear head and its cross-entropy, without ever holding the full logits.

``linear_cross_entropy(input, linear_weight, target)`` computes the loss of
``input @ linear_weight.T (+ linear_bias)`` and its gradients with respect
to ``input``, ``linear_weight`` and ``linear_bias``, a block of rows at a
time: each block's logits go into a scratch slab, the fused in-place kernel
turns the slab into the block's gradient of the logits, and two matrix
products (through BLAS) turn that into the block's share of the input
gradient and the weight gradient. At a vocabulary of 32k to 256k classes
the logits and their gradient are the largest arrays of a training step;
here only a (chunk_size, V) slab of them exists.

Class-index targets only: a probability target would be as large as the
logits this function exists to avoid.
"""

import threading

import numpy as np

from . import _config, _threading, api, kernels


__all__ = ["linear_cross_entropy", "LinearCrossEntropyLoss"]

_scratch = threading.local()  # one slab per thread: concurrent calls never share it


def _thread_scratch(name, rows, cols, dtype):
    """A (rows, cols) view of this thread's scratch array ``name``, grown when too small and reused."""
    buf = getattr(_scratch, name, None)
    if buf is None or buf.dtype != dtype or buf.size < rows * cols:
        buf = np.empty(rows * cols, dtype=dtype)
        setattr(_scratch, name, buf)
    return buf[: rows * cols].reshape(rows, cols)


def default_chunk_size(n_rows, n_classes, n_features, itemsize):
    """Rows per slab: see `_config.LINEAR_CHUNK_BYTES` for the measurement."""
    rows = max(_config.LINEAR_CHUNK_MIN_ROWS, _config.LINEAR_CHUNK_BYTES // max(1, n_classes * itemsize))
    return int(min(n_rows, rows)) if n_rows else 1


def _accumulate_weight_grad(grad_weight, dlogits, x, first):
    """grad_weight (V, D) += dlogits.T @ x (``=`` for the first slab), LINEAR_CLASS_BLOCK classes at a time.

    One product into the whole (V, D) gradient with a slab's few rows as
    the inner dimension was measured at 1.6 to 1.9x the time of the same
    product done in blocks of classes through a small temporary that stays
    in cache (scipy's gemm with beta = 1 included); see `_config`.
    """
    block = _config.LINEAR_CLASS_BLOCK
    tmp = _thread_scratch("block", min(block, grad_weight.shape[0]), grad_weight.shape[1], grad_weight.dtype)
    for v0 in range(0, grad_weight.shape[0], block):
        v1 = min(grad_weight.shape[0], v0 + block)
        if first:
            np.matmul(dlogits[:, v0:v1].T, x, out=grad_weight[v0:v1])
        else:
            np.matmul(dlogits[:, v0:v1].T, x, out=tmp[: v1 - v0])
            grad_weight[v0:v1] += tmp[: v1 - v0]


def _check_operands(x, w, bias):
    x = api.as_float_array(x, "input")
    w = api.as_float_array(w, "linear_weight")
    if w.ndim != 2:
        raise ValueError(f"linear_weight must have shape (V, D), got {w.shape}")
    if w.dtype != x.dtype:
        raise TypeError(f"linear_weight has dtype {w.dtype}, input {x.dtype}: they must agree")
    if x.shape[-1] != w.shape[1]:
        raise ValueError(f"input has {x.shape[-1]} features (last axis) but linear_weight is {w.shape} (V, D)")
    if w.shape[0] == 0:
        raise ValueError("linear_weight must have at least one row (one class)")
    if bias is not None:
        bias = api.as_float_array(bias, "linear_bias")
        if bias.shape != (w.shape[0],) or bias.dtype != x.dtype:
            raise ValueError(f"linear_bias must have shape ({w.shape[0]},) and dtype {x.dtype}, "
                             f"got {bias.shape} {bias.dtype}")
    return x, np.ascontiguousarray(w), bias


def linear_cross_entropy(
    input, linear_weight, target, *, linear_bias=None, weight=None, ignore_index=-100, reduction="mean",
    label_smoothing=0.0, z_loss=0.0, softcap=None, chunk_size=None, out=None, grad_input_out=None,
    grad_weight_out=None, grad_bias_out=None, lse_out=None
):
    """Cross-entropy of a linear head, with its gradients, a slab of rows at a time.

    Parameters
    ----------
    input : array_like, float32 or float64, shape (..., D)
    linear_weight : array_like of shape (V, D), input's dtype (as
        ``torch.nn.Linear`` stores it).
    target : integer array of shape ``input.shape[:-1]``: class indices in
        [0, V) or ``ignore_index``.
    linear_bias : array_like of shape (V,), optional
    weight, ignore_index, reduction, label_smoothing, z_loss, softcap
        As in `fastxent.cross_entropy`.
    chunk_size : int, optional
        Rows per slab of logits. Default: `default_chunk_size` (a slab of
        about ``_config.LINEAR_CHUNK_BYTES``).
    out : ndarray, optional
        Per-row losses (reduction="none"), shape ``input.shape[:-1]``.
    grad_input_out, grad_weight_out, grad_bias_out : ndarray, optional
        Buffers for the gradients (C-contiguous, the operands' shapes and
        dtype). They are overwritten, not accumulated into.
    lse_out : ndarray, optional
        Each row's log-sum-exp of its (capped) logits, shape ``input.shape[:-1]``.

    Returns
    -------
    (loss, grad_input, grad_linear_weight), plus ``grad_linear_bias`` when
    a bias is given. ``loss`` is that of
    ``cross_entropy(input @ linear_weight.T + linear_bias, target, ...)``;
    the gradients are those of ``loss`` (of the summed row losses for
    reduction="none").
    """
    x, w, bias = _check_operands(input, linear_weight, linear_bias)
    n_classes, n_features = w.shape
    batch_shape = x.shape[:-1]
    x2d = np.ascontiguousarray(x).reshape(-1, n_features)
    n_rows = x2d.shape[0]
    ignore_index, label_smoothing = api.check_options(reduction, ignore_index, label_smoothing)
    z_loss, softcap = api.check_lm_options(z_loss, softcap)
    class_weight = api.class_weight(weight, n_classes, x.dtype)
    _refuse_probabilities(target)
    labels, mean_denominator = api.checked_labels(np.asarray(target), batch_shape, n_classes, ignore_index,
                                                  class_weight)
    if chunk_size is None:
        chunk_size = default_chunk_size(n_rows, n_classes, n_features, x.dtype.itemsize)
    elif not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")

    def buffer(given, name, shape):
        if given is None:
            return np.empty(shape, dtype=x.dtype)
        api.check_buffer(given, name, shape, x.dtype)
        api.check_no_overlap(given, name, [("input", x), ("linear_weight", w), ("linear_bias", bias)])
        return given

    grad_input = buffer(grad_input_out, "grad_input_out", x.shape)
    grad_weight = buffer(grad_weight_out, "grad_weight_out", w.shape)
    grad_bias = buffer(grad_bias_out, "grad_bias_out", (n_classes,)) if bias is not None else None
    out = api.check_row_loss_buffer(out, reduction, batch_shape, x.dtype,
                                    [("input", x), ("linear_weight", w), ("linear_bias", bias)])
    row_loss = (out if out is not None else np.empty(batch_shape, x.dtype)) if reduction == "none" else None
    if lse_out is not None:
        api.check_buffer(lse_out, "lse_out", batch_shape, x.dtype)
        api.check_no_overlap(lse_out, "lse_out", [("input", x), ("linear_weight", w), ("linear_bias", bias),
                                                  ("grad_input_out", grad_input), ("grad_weight_out", grad_weight),
                                                  ("grad_bias_out", grad_bias), ("out", out)])
    extended = z_loss != 0.0 or softcap != 0.0 or lse_out is not None

    denominator = mean_denominator if reduction == "mean" else 1.0
    scale = api.divide(1.0, denominator)
    grad_input2d = grad_input.reshape(n_rows, n_features)
    total = 0.0
    if n_rows == 0:
        grad_weight.fill(0)
        if grad_bias is not None:
            grad_bias.fill(0)
    for start in range(0, n_rows, chunk_size):
        stop = min(n_rows, start + chunk_size)
        xs = x2d[start:stop]
        logits = _thread_scratch("slab", stop - start, n_classes, x.dtype)
        np.matmul(xs, w.T, out=logits)
        if bias is not None:
            logits += bias
        rows = row_loss.reshape(-1)[start:stop] if row_loss is not None else api.NO_ROW_LOSS[x.dtype]
        if extended:
            lse = lse_out.reshape(-1)[start:stop] if lse_out is not None else api.NO_ROW_LOSS[x.dtype]
            total += _threading.run(kernels.xent_labels_fused_inplace_ext, kernels.xent_labels_fused_inplace_ext_serial,
                                    logits.size, logits, labels[start:stop], class_weight, ignore_index,
                                    label_smoothing, z_loss, softcap, scale, rows, lse)
        else:
            total += _threading.run(kernels.xent_labels_fused_inplace, kernels.xent_labels_fused_inplace_serial,
                                    logits.size, logits, labels[start:stop], class_weight, ignore_index,
                                    label_smoothing, scale, rows)
        # `logits` now holds this block's gradient of the loss with respect to its logits.
        np.matmul(logits, w, out=grad_input2d[start:stop])
        _accumulate_weight_grad(grad_weight, logits, xs, first=start == 0)
        if grad_bias is not None:
            if start == 0:
                np.sum(logits, axis=0, out=grad_bias)
            else:
                grad_bias += logits.sum(axis=0)
    if reduction == "none":
        loss = row_loss
    else:
        loss = x.dtype.type(api.divide(total, denominator))
    grads = (grad_input, grad_weight) + ((grad_bias,) if bias is not None else ())
    return (loss,) + grads


def _refuse_probabilities(target):
    dtype = getattr(target, "dtype", None) or np.asarray(target).dtype
    if np.dtype(dtype).kind == "f":
        raise TypeError(
            "linear_cross_entropy takes class-index targets only: a probability target would be as large as "
            "the logits it avoids; compute the logits and use fastxent.cross_entropy_with_grad"
        )
    if np.dtype(dtype).kind not in "iu":
        raise TypeError(f"target must hold integer class indices, got dtype {dtype}")


class LinearCrossEntropyLoss:
    """`linear_cross_entropy` with a forward/backward interface and owned gradient buffers.

    ``forward(input, linear_weight, target, linear_bias=None, lse_out=None)`` returns the
    loss and computes the gradients; ``backward()`` returns
    ``(grad_input, grad_linear_weight[, grad_linear_bias])``, buffers the
    object reuses while the shapes stay the same (the next forward
    overwrites them).
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
                 softcap=None, chunk_size=None):
        api.check_options(reduction, ignore_index, label_smoothing)
        api.check_lm_options(z_loss, softcap)
        self.weight, self.ignore_index, self.reduction = weight, ignore_index, reduction
        self.label_smoothing, self.chunk_size = label_smoothing, chunk_size
        self.z_loss, self.softcap = z_loss, softcap
        self._buffers = {}
        self._grads = None

    def _buffer(self, name, shape, dtype):
        buf = self._buffers.get(name)
        if buf is None or buf.shape != tuple(shape) or buf.dtype != dtype:
            buf = self._buffers[name] = np.empty(shape, dtype=dtype)
        return buf

    def forward(self, input, linear_weight, target, linear_bias=None, lse_out=None):
        x, w = np.asarray(input), np.asarray(linear_weight)
        self._grads = None
        result = linear_cross_entropy(
            x, w, target, linear_bias=linear_bias, weight=self.weight, ignore_index=self.ignore_index,
            reduction=self.reduction, label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
            chunk_size=self.chunk_size, lse_out=lse_out,
            grad_input_out=self._buffer("input", x.shape, x.dtype) if x.dtype == w.dtype else None,
            grad_weight_out=self._buffer("weight", w.shape, w.dtype) if x.dtype == w.dtype else None,
            grad_bias_out=self._buffer("bias", w.shape[:1], w.dtype) if linear_bias is not None else None,
        )
        self._grads = result[1:]
        return result[0]

    __call__ = forward

    def backward(self):
        if self._grads is None:
            raise RuntimeError("backward() called before forward(): there is no gradient yet")
        return self._grads
