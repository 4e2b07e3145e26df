"""NumPy-facing functions: validate, allocate when asked, dispatch.

No arithmetic on whole arrays happens here; it is all in `fastxent.kernels`.
Every check runs before any kernel writes, so a raised error leaves the
caller's inputs and buffers untouched.
"""

import math
import operator

import numpy as np
try:
    from numpy.lib.array_utils import normalize_axis_index
except ImportError:  # NumPy < 2.0
    from numpy.core.multiarray import normalize_axis_index

from . import _config, _threading, kernels

__all__ = [
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "log_softmax",
    "softmax",
    "logsumexp",
]

_REDUCTIONS = ("mean", "sum", "none")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_NO_WEIGHT = {dt: np.empty(0, dtype=dt) for dt in _FLOATS}


# --------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------


def _refuse_autograd_tensor(x, name):
    """A tensor that records gradients cannot become a NumPy array; say where to go."""
    if getattr(x, "requires_grad", False) is True and hasattr(x, "detach"):
        raise TypeError(
            f"{name} is a tensor that requires grad: use fastxent.torch.cross_entropy (or "
            "fastxent.torch.CrossEntropyLoss), which runs under autograd, or pass .detach().numpy()"
        )


def as_float_array(x, name):
    _refuse_autograd_tensor(x, name)
    x = np.asarray(x)
    if x.dtype.kind == "f" and not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))  # byte-swapped data: one converted copy
    if x.dtype not in _FLOATS:
        raise TypeError(f"{name} must be float32 or float64, got dtype {x.dtype}")
    if x.ndim == 0:
        raise ValueError(f"{name} must have at least one dimension (the class axis), got a 0-d array")
    return x


def check_buffer(buf, name, shape, dtype):
    """Raise unless ``buf`` is a writeable C-contiguous array of this shape and dtype."""
    if not isinstance(buf, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(buf).__name__}")
    if buf.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {buf.dtype}")
    if buf.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {buf.shape}")
    if not buf.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    if not buf.flags.writeable:
        raise ValueError(f"{name} is read-only")


def same_buffer(a, b):
    """True when a and b are views of exactly the same elements."""
    if a is b:
        return True
    if a.shape != b.shape or a.strides != b.strides or not np.may_share_memory(a, b):
        return False
    return a.__array_interface__["data"][0] == b.__array_interface__["data"][0]


def check_no_overlap(buf, name, others):
    for other_name, other in others:
        if other is not None and other.size and buf.size and np.may_share_memory(buf, other):
            raise ValueError(f"{name} overlaps {other_name}; pass a separate buffer")


def invalid_label(value, flat_index, batch_shape, n_classes, ignore_index):
    where = np.unravel_index(flat_index, batch_shape) if batch_shape else ()
    return ValueError(
        f"label {value} at index {tuple(int(i) for i in where)} is outside [0, {n_classes}) "
        f"and is not ignore_index ({ignore_index})"
    )


def labels_array(target, batch_shape, n_classes, ignore_index):
    if target.shape != batch_shape:
        raise ValueError(
            f"class-index target must have shape logits.shape[:-1] = {batch_shape}, got {target.shape}"
        )
    if target.dtype.char in "il" and target.dtype.isnative:  # int32, int64
        return target
    if target.dtype == np.uint64 and target.size:
        too_large = target.reshape(-1) > np.iinfo(np.int64).max  # would wrap to negative in int64
        if too_large.any():
            bad = int(np.argmax(too_large))
            raise invalid_label(target.reshape(-1)[bad], bad, batch_shape, n_classes, ignore_index)
    return target.astype(np.int64)


def check_labels(labels, weight, n_classes, ignore_index):
    """`kernels.check_labels` on flat C-contiguous labels, in parallel when that pays off."""
    return _threading.run(kernels.check_labels, kernels.check_labels_serial, labels.size, labels, weight, n_classes,
                          ignore_index, min_elements=_config.LABELS_PARALLEL_MIN)


def checked_labels(target, batch_shape, n_classes, ignore_index, weight):
    """Integer class indices validated in one pass: (flat C-contiguous
    labels, "mean" denominator), or ValueError naming the first bad label."""
    labels = np.ascontiguousarray(labels_array(target, batch_shape, n_classes, ignore_index)).reshape(-1)
    bad, mean_denominator = check_labels(labels, weight, n_classes, ignore_index)
    if bad >= 0:
        raise invalid_label(labels[bad], bad, batch_shape, n_classes, ignore_index)
    return labels, mean_denominator


class _Problem:
    """Validated inputs, reshaped to the 2-D (rows, classes) form the kernels take."""

    __slots__ = (
        "logits",  # (N, C), C-contiguous
        "target",  # (N,) int labels or (N, C) probabilities
        "labels",  # True for class-index targets
        "weight",  # (C,) or empty, logits dtype
        "ignore_index",
        "reduction",
        "label_smoothing",
        "mean_denominator",  # what "mean" divides the summed row losses by
        "shape",  # the caller's logits shape
        "source",  # the caller's logits (as an array), for the in-place test
        "dtype",
        "z_loss",  # float >= 0
        "softcap",  # float > 0, or 0.0 for no cap
    )

    def __init__(self, logits, target, weight, ignore_index, reduction, label_smoothing, mean_denominator, source,
                 z_loss=0.0, softcap=0.0):
        self.logits = logits
        self.target = target
        self.labels = target.ndim == 1
        self.weight = weight
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.mean_denominator = mean_denominator
        self.shape = source.shape
        self.source = source
        self.dtype = logits.dtype
        self.z_loss = z_loss
        self.softcap = softcap

    def extended(self, lse_out):
        """True when the z-loss, soft cap or lse kernels are needed."""
        return self.z_loss != 0.0 or self.softcap != 0.0 or lse_out is not None


def check_options(reduction, ignore_index, label_smoothing):
    """Validate the scalar options; return (ignore_index, label_smoothing) as int, float."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    try:
        ignore_index = operator.index(ignore_index)
    except TypeError:
        raise TypeError(f"ignore_index must be an integer, got {type(ignore_index).__name__}") from None
    try:
        label_smoothing = float(label_smoothing)
    except (TypeError, ValueError):
        raise TypeError(f"label_smoothing must be a number, got {type(label_smoothing).__name__}") from None
    if not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing}")
    return ignore_index, label_smoothing


def check_lm_options(z_loss, softcap):
    """Validate ``z_loss`` and ``softcap``; return them as floats (softcap 0.0 for None)."""
    try:
        z_loss = float(z_loss)
    except (TypeError, ValueError):
        raise TypeError(f"z_loss must be a number, got {type(z_loss).__name__}") from None
    if not (0.0 <= z_loss < math.inf):
        raise ValueError(f"z_loss must be finite and >= 0, got {z_loss}")
    if softcap is None:
        return z_loss, 0.0
    try:
        softcap = float(softcap)
    except (TypeError, ValueError):
        raise TypeError(f"softcap must be a number or None, got {type(softcap).__name__}") from None
    if not (0.0 < softcap < math.inf):
        raise ValueError(f"softcap must be finite and > 0 (None for no cap), got {softcap}")
    return z_loss, softcap


def class_weight(weight, n_classes, dtype, name="weight"):
    """``weight`` as a C-contiguous (n_classes,) array of ``dtype``, or the empty "no weights" array."""
    if weight is None:
        return _NO_WEIGHT[dtype]
    _refuse_autograd_tensor(weight, name)
    weight = np.asarray(weight)
    if weight.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be a real numeric array, got dtype {weight.dtype}")
    if weight.shape != (n_classes,):
        raise ValueError(f"{name} must have shape ({n_classes},), got {weight.shape}")
    return np.ascontiguousarray(weight, dtype=dtype)


def prepare(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss=0.0, softcap=None,
            count_in_kernel=False):
    """Validate cross-entropy arguments; return a `_Problem` or raise.

    ``count_in_kernel``: the caller runs the loss-only kernel and nothing
    else. For unweighted class indices reduced to a "mean" or "sum" without
    the z-loss or soft cap, the labels are then left unchecked and
    ``mean_denominator`` None: see `reduced_loss_counted`.
    """
    source = as_float_array(logits, "logits")
    dtype = source.dtype
    n_classes = source.shape[-1]
    if n_classes == 0:
        raise ValueError("logits must have at least one class (last axis has length 0)")
    batch_shape = source.shape[:-1]
    logits2d = (source if source.flags.c_contiguous else np.ascontiguousarray(source)).reshape(-1, n_classes)
    n_rows = logits2d.shape[0]

    ignore_index, label_smoothing = check_options(reduction, ignore_index, label_smoothing)
    z_loss, softcap = check_lm_options(z_loss, softcap)
    weight = class_weight(weight, n_classes, dtype)

    _refuse_autograd_tensor(target, "target")
    target = np.asarray(target)
    if target.dtype.kind in "iu" and count_in_kernel and reduction != "none" and weight.shape[0] == 0 \
            and z_loss == 0.0 and softcap == 0.0:
        labels = labels_array(target, batch_shape, n_classes, ignore_index)
        target2d, mean_denominator = np.ascontiguousarray(labels).reshape(-1), None
    elif target.dtype.kind in "iu":
        target2d, mean_denominator = checked_labels(target, batch_shape, n_classes, ignore_index, weight)
    elif target.dtype.kind == "f":
        if z_loss or softcap:
            raise TypeError("z_loss and softcap take class-index targets; got a probability target")
        if target.shape != source.shape:
            raise ValueError(
                f"probability target must have the logits' shape {source.shape}, got {target.shape}"
            )
        target2d = np.ascontiguousarray(target, dtype=dtype).reshape(n_rows, n_classes)
        mean_denominator = float(n_rows)
    else:
        raise TypeError(
            f"target must be integer class indices or float probabilities, got dtype {target.dtype}"
        )
    return _Problem(logits2d, target2d, weight, ignore_index, reduction, label_smoothing, mean_denominator, source,
                    z_loss, softcap)


# --------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------


def _denominator(p):
    """Divisor of the summed row losses (and of the gradient) for the reduction."""
    return p.mean_denominator if p.reduction == "mean" else 1.0


def divide(a, b):
    """IEEE a / b for Python floats (np.errstate costs microseconds per call)."""
    a, b = float(a), float(b)
    if b != 0.0:
        return a / b
    if a != a or a == 0.0:
        return math.nan
    return math.copysign(math.inf, a) * math.copysign(1.0, b)


def finish(p, total, row_loss, denominator, out=None):
    if p.reduction == "none":
        if out is not None:
            return out
        # None when the caller asked for no per-row losses (cross_entropy_grad)
        return row_loss.reshape(p.shape[:-1]) if row_loss.shape[0] == p.logits.shape[0] else None
    return p.dtype.type(divide(total, denominator))


def check_loss_out(p, out):
    """Validate ``out`` for the per-row losses, or return None when it is absent."""
    return check_row_loss_buffer(out, p.reduction, p.shape[:-1], p.dtype,
                                 [("logits", p.source), ("target", p.target), ("weight", p.weight)])


def check_row_loss_buffer(out, reduction, batch_shape, dtype, inputs):
    """Validate ``out`` for per-row losses (reduction="none" only) against
    the (name, array) ``inputs`` it must not overlap; None when absent."""
    if out is None:
        return None
    if reduction != "none":
        raise ValueError(f"out is only valid with reduction='none', got reduction={reduction!r}")
    check_buffer(out, "out", batch_shape, dtype)
    check_no_overlap(out, "out", inputs)
    return out


def check_lse_out(p, lse_out, outputs):
    """Validate ``lse_out`` (one log-sum-exp per row, class-index targets
    only) against the inputs and the other (name, array) ``outputs``;
    return it as the kernels' 1-D buffer, or None when absent."""
    if lse_out is None:
        return None
    if not p.labels:
        raise TypeError("lse_out takes class-index targets; got a probability target")
    check_buffer(lse_out, "lse_out", p.shape[:-1], p.dtype)
    check_no_overlap(lse_out, "lse_out", [("logits", p.source), ("target", p.target), ("weight", p.weight)] + outputs)
    return lse_out.reshape(-1)


NO_ROW_LOSS = {dt: np.empty(0, dtype=dt) for dt in _FLOATS}


def row_loss_buffer(p, out):
    """Where the kernels write per-row losses: nowhere (an empty array) for a
    reduced loss, whose total the kernels sum themselves."""
    if out is not None:
        return out.reshape(-1)
    if p.reduction == "none":
        return np.empty(p.logits.shape[0], dtype=p.dtype)
    return NO_ROW_LOSS[p.dtype]


# (parallel kernel, serial twin), keyed by (class-index target?, in place?)
_FUSED = {
    (True, False): (kernels.xent_labels_fused, kernels.xent_labels_fused_serial),
    (True, True): (kernels.xent_labels_fused_inplace, kernels.xent_labels_fused_inplace_serial),
    (False, False): (kernels.xent_probs_fused, kernels.xent_probs_fused_serial),
    (False, True): (kernels.xent_probs_fused_inplace, kernels.xent_probs_fused_inplace_serial),
}
_LOSS_ONLY = {
    True: (kernels.xent_labels_loss_counted, kernels.xent_labels_loss_counted_serial),
    False: (kernels.xent_probs_loss, kernels.xent_probs_loss_serial),
}
# With a z-loss, a soft cap or lse_out (class-index targets), keyed by in place?
_FUSED_EXT = {
    False: (kernels.xent_labels_fused_ext, kernels.xent_labels_fused_ext_serial),
    True: (kernels.xent_labels_fused_inplace_ext, kernels.xent_labels_fused_inplace_ext_serial),
}
_LOSS_ONLY_EXT = (kernels.xent_labels_loss_ext, kernels.xent_labels_loss_ext_serial)


def _options(p):
    """The kernels' option arguments after the target, in their order."""
    if p.labels:
        return (p.weight, p.ignore_index, p.label_smoothing)
    return (p.weight, p.label_smoothing)


def fused(p, grad, row_loss, out=None, inplace=False, lse=None):
    """Run the fused kernel: gradient into ``grad``, losses into ``row_loss``.

    ``grad`` has the caller's logits shape; ``inplace`` means it is the
    logits themselves (see `check_grad_out`); ``lse`` is None or the 1-D
    buffer of `check_lse_out`. Returns the loss as the API does.
    """
    denominator = _denominator(p)
    total = fused_total(p, grad, row_loss, inplace, divide(1.0, denominator), lse)
    return finish(p, total, row_loss, denominator, out)


def fused_total(p, grad, row_loss, inplace, grad_scale, lse=None):
    """Run the fused kernel with gradient factor ``grad_scale``; return the
    summed row losses (float64), before any reduction."""
    extended = p.extended(lse)
    parallel, serial = _FUSED_EXT[inplace] if extended else _FUSED[p.labels, inplace]
    args = (p.logits, p.target) + _options(p)
    if extended:
        args += (p.z_loss, p.softcap)
    args += (grad_scale,)
    if not inplace:
        args += (grad.reshape(p.logits.shape),)
    args += (row_loss,)
    if extended:
        args += (NO_ROW_LOSS[p.dtype] if lse is None else lse,)
    return _threading.run(parallel, serial, p.logits.size, *args)


def loss_total(p, row_loss, lse=None):
    """Run the loss-only kernel; return the summed row losses (float64)."""
    if p.extended(lse):
        lse = NO_ROW_LOSS[p.dtype] if lse is None else lse
        return _threading.run(*_LOSS_ONLY_EXT, p.logits.size, p.logits, p.target, *_options(p), p.z_loss, p.softcap,
                              row_loss, lse)
    parallel, serial = _LOSS_ONLY[p.labels]
    total = _threading.run(parallel, serial, p.logits.size, p.logits, p.target, *_options(p), row_loss)
    return total[0] if p.labels else total  # (total, rows kept) for labels


def reduced_loss_counted(p):
    """The "mean" or "sum" loss of a problem whose labels `prepare` left
    unchecked, with one read of them instead of two.

    The loss-only kernel counts the rows it kept (valid labels that are not
    ignore_index), which is the unweighted "mean" denominator once every
    label is valid. An invalid label makes its row's loss and so the total
    NaN: only then are the labels checked, to name the first bad one (a NaN
    total with valid labels comes from the logits and is returned). Measured
    (2 threads, 8M elements from memory, time over np.copyto, interleaved,
    two processes; labels checked before -> counted by the kernel): float32
    C = 2: 1.41-1.47 -> 0.98-1.08; C = 4: 1.06-1.08 -> 0.83; C = 10: 0.85
    -> 0.75; float64 C = 2: 1.16-1.20 -> 0.91-0.95; C = 4: 1.18-1.22 ->
    0.99-1.01; C = 10: 1.04 -> 0.94-0.97; C = 1000 unchanged (0.73, 0.76).
    """
    total, kept = _threading.run(*_LOSS_ONLY[True], p.logits.size, p.logits, p.target, *_options(p),
                                 NO_ROW_LOSS[p.dtype])
    if total != total:
        bad, _ = check_labels(p.target, p.weight, p.logits.shape[1], p.ignore_index)
        if bad >= 0:
            raise invalid_label(p.target[bad], bad, p.shape[:-1], p.logits.shape[1], p.ignore_index)
    return p.dtype.type(divide(total, kept if p.reduction == "mean" else 1.0))


def check_grad_out(p, grad_out, out):
    """Validate ``grad_out``; return True when it is the logits (in-place mode)."""
    return check_grad_buffer(grad_out, p.source, p.dtype, [("target", p.target), ("weight", p.weight), ("out", out)])


def check_grad_buffer(grad_out, source, dtype, others, source_name="logits"):
    """Validate a gradient buffer for logits ``source``; return True when it
    is ``source`` itself (in-place mode). It must not overlap ``others``
    (name, array) pairs, nor ``source`` unless it is exactly ``source``."""
    check_buffer(grad_out, "grad_out", source.shape, dtype)
    inplace = same_buffer(grad_out, source) and source.flags.c_contiguous
    if not inplace:
        others = others + [(source_name, source)]
    check_no_overlap(grad_out, "grad_out", others)
    return inplace


# --------------------------------------------------------------------------
# Public cross-entropy functions
# --------------------------------------------------------------------------

_OPTIONS_DOC = """
    Parameters
    ----------
    logits : array_like, float32 or float64, shape (..., C)
        Unnormalized scores; the last axis holds the C classes and all
        leading axes are the batch. Kept in its dtype.
    target : array_like
        Either integer class indices of shape ``logits.shape[:-1]``, each in
        ``[0, C)`` or equal to ``ignore_index``; or float probabilities of the
        logits' shape (soft labels, converted to the logits' dtype).
    weight : array_like of shape (C,), optional
        Per-class weights, as in ``torch.nn.functional.cross_entropy``.
    ignore_index : int, default -100
        Class-index rows with this label contribute 0 loss and 0 gradient
        and are left out of the mean. Unused for probability targets.
    reduction : {"mean", "sum", "none"}, default "mean"
        "mean" divides the summed loss by the summed weight of the
        non-ignored rows (by the number of rows for probability targets);
        a mean over no rows is NaN. "sum" of no rows is 0. "none" gives
        one loss per row.
    label_smoothing : float in [0, 1], default 0
        Mixes the target with the uniform distribution over C classes.
    z_loss : float >= 0, default 0
        Adds ``z_loss * lse**2`` to each non-ignored row's loss, where
        ``lse`` is the row's log-sum-exp, without the class weight (PaLM's
        z-loss; Liger-Kernel's ``lse_square_scale``). "mean" divides it by
        the same denominator as the rest of the loss. Class-index targets.
    softcap : float > 0, optional
        Replaces the logits by ``softcap * tanh(logits / softcap)`` first
        (Gemma 2); loss, z-loss, lse and the gradient (chain rule included)
        see the capped logits. Non-finite logits are capped too: -inf
        becomes -softcap. Class-index targets.
"""

_LSE_DOC = """    lse_out : ndarray, optional
        Buffer for each row's log-sum-exp (of the capped logits with
        ``softcap``), ignored rows included: shape ``logits.shape[:-1]``,
        the logits' dtype, C-contiguous. Class-index targets.
"""

# z_loss, softcap and lse_out run kernels that take each row in turn:
# below TILE_MAX_CLASSES[itemsize] classes they are slower than the default call,
# which lays short rows out class-major (see README, Performance).


def cross_entropy(logits, target, *, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                  z_loss=0.0, softcap=None, out=None, lse_out=None):
    p = prepare(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap,
                count_in_kernel=lse_out is None)
    out = check_loss_out(p, out)
    if p.mean_denominator is None:
        return reduced_loss_counted(p)
    lse = check_lse_out(p, lse_out, [("out", out)])
    row_loss = row_loss_buffer(p, out)
    return finish(p, loss_total(p, row_loss, lse), row_loss, _denominator(p), out)


cross_entropy.__doc__ = (
    """Softmax cross-entropy loss, with PyTorch's options and semantics.
"""
    + _OPTIONS_DOC
    + """    out : ndarray, optional
        Buffer for the per-row losses (reduction="none" only): shape
        ``logits.shape[:-1]``, the logits' dtype, C-contiguous, writeable.
"""
    + _LSE_DOC
    + """
    Returns
    -------
    loss : numpy scalar of the logits' dtype ("mean", "sum"), or an array of
        per-row losses of shape ``logits.shape[:-1]`` ("none"; ``out`` if given).
"""
)


def cross_entropy_with_grad(
    logits, target, *, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
    softcap=None, out=None, grad_out=None, lse_out=None
):
    p = prepare(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    out = check_loss_out(p, out)
    inplace = False
    if grad_out is not None:
        inplace = check_grad_out(p, grad_out, out)
    lse = check_lse_out(p, lse_out, [("out", out), ("grad_out", grad_out)])
    if grad_out is None:
        grad_out = np.empty(p.shape, dtype=p.dtype)
    loss = fused(p, grad_out, row_loss_buffer(p, out), out, inplace, lse)
    return loss, grad_out


cross_entropy_with_grad.__doc__ = (
    """Loss and its gradient with respect to the logits, in one fused pass.
"""
    + _OPTIONS_DOC
    + """    out : ndarray, optional
        Buffer for the per-row losses (reduction="none" only).
    grad_out : ndarray, optional
        Buffer for the gradient: the logits' shape and dtype, C-contiguous,
        writeable. It may be the logits array itself: then the gradient
        overwrites the logits (in-place mode, one read and one write per
        element). Any other overlap with the inputs is an error.
"""
    + _LSE_DOC
    + """
    Returns
    -------
    loss : as `cross_entropy`
    grad : ndarray of the logits' shape: the gradient of ``loss`` (of the sum
        of the row losses for reduction="none"); ``grad_out`` if given.
"""
)


def cross_entropy_grad(
    logits, target, *, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
    softcap=None, out=None, lse_out=None
):
    p = prepare(logits, target, weight, ignore_index, reduction, label_smoothing, z_loss, softcap)
    inplace = False
    if out is not None:
        inplace = check_grad_out(p, out, None)
    lse = check_lse_out(p, lse_out, [("out", out)])
    if out is None:
        out = np.empty(p.shape, dtype=p.dtype)
    fused(p, out, NO_ROW_LOSS[p.dtype], inplace=inplace, lse=lse)
    return out


cross_entropy_grad.__doc__ = (
    """Gradient of `cross_entropy` with respect to the logits.
"""
    + _OPTIONS_DOC
    + """    out : ndarray, optional
        Buffer for the gradient (same rules as ``grad_out`` of
        `cross_entropy_with_grad`; it may be the logits array itself).
"""
    + _LSE_DOC
    + """
    Returns
    -------
    grad : ndarray of the logits' shape (``out`` if given); for
        reduction="none" the gradient of the sum of the row losses.
"""
)


# --------------------------------------------------------------------------
# Row-wise primitives along any axis
# --------------------------------------------------------------------------


def _rowwise(x, axis, out, name, keep_axis):
    """Move ``axis`` last, run ``name`` over rows, put the result where it belongs."""
    x = as_float_array(x, "x")
    axis = normalize_axis_index(axis, x.ndim)
    out_shape = x.shape if keep_axis else x.shape[:axis] + x.shape[axis + 1 :]
    if out is not None:
        check_buffer(out, "out", out_shape, x.dtype)
        if not same_buffer(out, x):
            check_no_overlap(out, "out", [("x", x)])
    moved = np.moveaxis(x, axis, -1)
    n_classes = moved.shape[-1]
    n_rows = math.prod(moved.shape[:-1])
    x2d = np.ascontiguousarray(moved).reshape(n_rows, n_classes)
    direct = out is not None and (axis == x.ndim - 1 or not keep_axis)
    if direct:
        result = out
    else:
        result = np.empty(moved.shape if keep_axis else out_shape, dtype=x.dtype)
    if n_classes == 0:
        if not keep_axis:  # log-sum-exp of nothing
            result[...] = -np.inf
    else:
        pair = (getattr(kernels, name), getattr(kernels, name + "_serial"))
        res2d = result.reshape(x2d.shape) if keep_axis else result.reshape(-1)
        _threading.run(*pair, x2d.size, x2d, res2d)
    if keep_axis:
        result = np.moveaxis(result, -1, axis)
    if out is not None and result is not out:
        np.copyto(out, result)
        result = out
    return result if result.ndim else result[()]


def log_softmax(x, axis=-1, out=None):
    """Numerically stable ``x - logsumexp(x, axis)``.

    Parameters
    ----------
    x : array_like, float32 or float64
    axis : int, default -1
    out : ndarray, optional
        Result buffer of x's shape and dtype, C-contiguous; may be ``x``.

    Returns
    -------
    ndarray of x's shape and dtype (``out`` if given).
    """
    return _rowwise(x, axis, out, "log_softmax_rows", keep_axis=True)


def softmax(x, axis=-1, out=None):
    """``exp(x - logsumexp(x, axis))``, computed stably.

    Parameters and return value as `log_softmax`.
    """
    return _rowwise(x, axis, out, "softmax_rows", keep_axis=True)


def logsumexp(x, axis=-1, out=None):
    """``log(sum(exp(x), axis))`` without overflow (shifted by the maximum).

    Parameters
    ----------
    x : array_like, float32 or float64
    axis : int, default -1
    out : ndarray, optional
        Buffer of x's shape without ``axis``, x's dtype, C-contiguous.

    Returns
    -------
    ndarray (a numpy scalar for 1-D input); ``out`` if given. An empty axis
    gives -inf.
    """
    return _rowwise(x, axis, out, "logsumexp_rows", keep_axis=False)
