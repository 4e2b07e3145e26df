"""Compiled kernels: the public, njit-callable layer of fastxent.

Every function here takes only arrays and scalars, writes into buffers the
caller passes in, never allocates and never validates. That makes them
callable from a user's own ``@njit`` code (serial or ``parallel=True``)::

    from numba import njit
    from fastxent import kernels

    @njit
    def step(logits, labels, grad, row_loss):
        total = kernels.xent_labels_fused_serial(
            logits, labels, kernels.NO_WEIGHT, -100, 0.0,
            1.0 / logits.shape[0], grad, row_loss)
        return total / logits.shape[0]

Conventions shared by all kernels
---------------------------------
- ``logits`` is a 2-D C-contiguous float32 or float64 array (rows x classes,
  classes >= 1). Outputs have the logits' dtype; arithmetic stays in it,
  except per-batch totals, which are float64.
- ``labels`` is 1-D int32/int64. Every entry must be in ``[0, C)`` or equal
  ``ignore_index``; the kernels do not check (see ``check_labels``).
- ``weight`` is a 1-D array of per-class weights of the logits' dtype, or
  an empty array (``NO_WEIGHT`` or ``logits[:0, 0]``) for "no weights".
- ``grad_scale`` multiplies the gradient: ``1 / mean_denominator`` for a
  mean loss, 1 for a sum. The gradient written is that of
  ``grad_scale * sum(row_loss)``.
- ``row_loss`` receives the per-row losses; the return value is their sum,
  accumulated serially in float64 in row order, so it does not depend on
  the number of threads.
- ``*_serial`` functions are identical twins without ``parallel=True``:
  use them for small problems (a parallel launch costs microseconds) or
  from inside your own parallel loops.
- ``*_inplace`` functions write the gradient over the logits.

Numerics: every row is shifted by its maximum before exponentiating, and
losses are assembled as ``(max - x_target) + log(sum exp(x - max))``, two
non-negative terms, so large logits neither overflow nor cancel. Terms
with a zero target probability are skipped (0 * log 0 = 0).
"""

import math

import numpy as np
from numba import njit, prange

from . import _config
from ._fastmath import cast_like, exp_nonpositive, maxnum

#: Pass as ``weight`` for unweighted classes (float64; its dtype is unused).
NO_WEIGHT = np.empty(0, dtype=np.float64)


# --------------------------------------------------------------------------
# Row helpers: row i of 2-D C-contiguous arrays in, scalars out.
# They index the 2-D arrays instead of taking row views: a view is a new
# array object whose reference count is updated atomically, from every
# thread, on the shared parent (measured: most of the per-row cost at C=10).
# --------------------------------------------------------------------------


@njit(**_config.ROW_REDUCE)
def _row_max(x, i):
    m = x[i, 0]
    for c in range(1, x.shape[1]):
        m = maxnum(m, x[i, c])
    return m


@njit(**_config.ROW_REDUCE)
def _row_sum_exp(x, i, m):
    s = cast_like(x, 0.0)
    for c in range(x.shape[1]):
        s += exp_nonpositive(x[i, c] - m)
    return s


@njit(**_config.ROW_ELEMENTWISE)
def _row_exp_store(x, i, m, e):
    """e = exp(x - m), returns sum(e); e is another array than x.

    The sum is a second loop over e alone, on purpose. Fused into the store
    loop, LLVM guards the vector path with a runtime check that x and e are
    far enough apart, and takes the scalar path when they are not (two small
    arrays allocated next to each other): the sum's order, and so its last
    bit, would then depend on where the caller's buffers happen to lie.
    """
    for c in range(x.shape[1]):
        e[i, c] = exp_nonpositive(x[i, c] - m)
    return _row_sum(e, i)


@njit(**_config.ROW_REDUCE)
def _row_sum(e, i):
    s = cast_like(e, 0.0)
    for c in range(e.shape[1]):
        s += e[i, c]
    return s


@njit(**_config.ROW_REDUCE)
def _row_exp_inplace(x, i, m):
    """x = exp(x - m), returns sum(x).

    A one-array twin of `_row_exp_store`: with two array arguments LLVM
    guards the vector loop with a runtime overlap check, and when the two
    are the same row that check sends every element down the scalar path
    (measured 6x slower).
    """
    s = cast_like(x, 0.0)
    for c in range(x.shape[1]):
        v = exp_nonpositive(x[i, c] - m)
        x[i, c] = v
        s += v
    return s


@njit(**_config.ROW_REDUCE)
def _row_weighted_shift_sum(x, i, m, weight):
    """sum_c w_c * (x_c - m), with w = 1 when ``weight`` is empty."""
    s = cast_like(x, 0.0)
    if weight.shape[0] == 0:
        for c in range(x.shape[1]):
            s += x[i, c] - m
    else:
        zero = cast_like(x, 0.0)
        for c in range(x.shape[1]):
            w = cast_like(x, weight[c])
            s += w * (x[i, c] - m) if w != zero else zero  # 0 * log 0 = 0
    return s


@njit(**_config.ROW_REDUCE)
def _row_target_dot(x, i, m, t, weight, keep, spread):
    """Returns (sum_c q_c (x_c - m), sum_c q_c), q_c = (keep t_c + spread) w_c.

    A class with q_c == 0 contributes nothing even if x_c is -inf.
    """
    zero = cast_like(x, 0.0)
    dot = zero
    total = zero
    weighted = weight.shape[0] != 0
    for c in range(x.shape[1]):
        q = keep * t[i, c] + spread
        if weighted:
            q *= cast_like(x, weight[c])
        d = q * (x[i, c] - m)
        dot += d if q != zero else zero
        total += q
    return dot, total


@njit(**_config.ROW_ELEMENTWISE)
def _row_affine(g, i, a, b, weight):
    """g_c = a * g_c - b * w_c (w = 1 when ``weight`` is empty)."""
    if weight.shape[0] == 0:
        for c in range(g.shape[1]):
            g[i, c] = a * g[i, c] - b
    else:
        for c in range(g.shape[1]):
            g[i, c] = a * g[i, c] - b * cast_like(g, weight[c])


@njit(**_config.ROW_ELEMENTWISE)
def _row_probs_grad(g, i, t, weight, keep, spread, a, b):
    """g_c = a * g_c - b * q_c, q_c = (keep t_c + spread) w_c."""
    if weight.shape[0] == 0:
        for c in range(g.shape[1]):
            g[i, c] = a * g[i, c] - b * (keep * t[i, c] + spread)
    else:
        for c in range(g.shape[1]):
            g[i, c] = a * g[i, c] - b * ((keep * t[i, c] + spread) * cast_like(g, weight[c]))


@njit(**_config.ROW_ELEMENTWISE)
def _row_zero(g, i):
    for c in range(g.shape[1]):
        g[i, c] = cast_like(g, 0.0)


@njit(**_config.ROW_ELEMENTWISE)
def _smoothing_split(logits, label_smoothing):
    """(1 - eps, eps / C) in the logits' dtype, computed once per call."""
    eps = cast_like(logits, label_smoothing)
    return cast_like(logits, 1.0) - eps, eps / cast_like(logits, logits.shape[1])


@njit(**_config.ROW_ELEMENTWISE)
def _class_weight_sum(logits, weight):
    if weight.shape[0] == 0:
        return cast_like(logits, logits.shape[1])
    s = 0.0
    for c in range(weight.shape[0]):
        s += weight[c]
    return cast_like(logits, s)


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _row_exps(x, i, m, g, with_grad, inplace):
    """sum_c exp(x_c - m); the exps also go into g (or x) when asked."""
    if not with_grad:
        return _row_sum_exp(x, i, m)
    if inplace:
        return _row_exp_inplace(x, i, m)
    return _row_exp_store(x, i, m, g)


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _labels_row(x, i, y, weight, ignore_index, keep, spread, weight_sum, scale, g, with_grad, inplace):
    """Loss of one row with a class-index target; gradient into g if asked
    (``inplace``: g is x).

    Loss: keep w_y (-log p_y) + spread * sum_c w_c (-log p_c), where
    keep = 1 - eps and spread = eps / C for label smoothing eps.
    Gradient: scale * (W p - q), q_c = keep w_y [c == y] + spread w_c,
    W = sum_c q_c.
    """
    zero = cast_like(x, 0.0)
    if y == ignore_index:
        if with_grad:
            _row_zero(g, i)
        return zero
    m = _row_max(x, i)
    # Read everything that needs the raw logits before g (maybe x) is written.
    x_y = x[i, y]
    shift_sum = zero
    if spread != zero:
        shift_sum = _row_weighted_shift_sum(x, i, m, weight)
    s = _row_exps(x, i, m, g, with_grad, inplace)
    log_s = cast_like(x, math.log(s))
    w_y = cast_like(x, 1.0) if weight.shape[0] == 0 else cast_like(x, weight[y])
    target_mass = keep * w_y
    # 0 * log 0 = 0: a zero-mass target class costs nothing even at -inf
    loss = target_mass * ((m - x_y) + log_s) if target_mass != zero else zero
    if spread != zero:
        loss += spread * (weight_sum * log_s - shift_sum)
    if with_grad:
        row_mass = target_mass + spread * weight_sum
        _row_affine(g, i, scale * row_mass / s, scale * spread, weight)
        g[i, y] -= scale * target_mass
    return loss


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _probs_row(x, i, t, weight, keep, spread, scale, g, with_grad, inplace):
    """Loss of one row with a probability target; gradient into g if asked
    (``inplace``: g is x).

    Loss: -sum_c q_c log p_c, q_c = (keep t_c + spread) w_c, where
    keep = 1 - eps and spread = eps / C for label smoothing eps.
    Gradient: scale * (W p - q), W = sum_c q_c.
    """
    m = _row_max(x, i)
    dot, row_mass = _row_target_dot(x, i, m, t, weight, keep, spread)
    s = _row_exps(x, i, m, g, with_grad, inplace)
    log_s = cast_like(x, math.log(s))
    # 0 * log 0 = 0 again: a row with no target mass costs nothing, even
    # when its softmax is undefined (the gradient stays NaN there).
    loss = row_mass * log_s - dot if row_mass != cast_like(x, 0.0) else -dot
    if with_grad:
        _row_probs_grad(g, i, t, weight, keep, spread, scale * row_mass / s, scale)
    return loss


@njit(**_config.ROW_ELEMENTWISE)
def _sum_rows(row_loss):
    total = 0.0
    for i in range(row_loss.shape[0]):
        total += row_loss[i]
    return total


# --------------------------------------------------------------------------
# Fused cross-entropy kernels, class-index targets.
# --------------------------------------------------------------------------


@njit(**_config.PARALLEL)
def xent_labels_fused(logits, labels, weight, ignore_index, label_smoothing, grad_scale, grad, row_loss):
    """Loss and gradient for class-index targets in one pass over the logits.

    Parameters
    ----------
    logits : (N, C) float32/float64, C-contiguous
    labels : (N,) int32/int64, each in [0, C) or equal to ``ignore_index``
    weight : (C,) class weights of the logits' dtype, or empty
    ignore_index : int
        Rows with this label have loss 0 and gradient 0.
    label_smoothing : float in [0, 1]
    grad_scale : float
        Factor applied to the gradient (1 / denominator for a mean loss).
    grad : (N, C) output, the logits' dtype; must not overlap ``logits``
        (use ``xent_labels_fused_inplace`` for that).
    row_loss : (N,) output, the logits' dtype

    Returns
    -------
    float
        ``sum(row_loss)``, accumulated in float64 in row order.
    """
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    wsum = _class_weight_sum(logits, weight)
    for i in prange(logits.shape[0]):
        row_loss[i] = _labels_row(logits, i, labels[i], weight, ignore_index, keep, spread, wsum, scale, grad, True, False)
    return _sum_rows(row_loss)


@njit(**_config.SERIAL)
def xent_labels_fused_serial(logits, labels, weight, ignore_index, label_smoothing, grad_scale, grad, row_loss):
    """Serial twin of `xent_labels_fused`."""
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    wsum = _class_weight_sum(logits, weight)
    for i in range(logits.shape[0]):
        row_loss[i] = _labels_row(logits, i, labels[i], weight, ignore_index, keep, spread, wsum, scale, grad, True, False)
    return _sum_rows(row_loss)


@njit(**_config.PARALLEL)
def xent_labels_fused_inplace(logits, labels, weight, ignore_index, label_smoothing, grad_scale, row_loss):
    """`xent_labels_fused` writing the gradient over ``logits``.

    One array in and out: one read and one write of the logits per element
    in the common case, and no runtime alias check in the compiled loops.
    """
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    wsum = _class_weight_sum(logits, weight)
    for i in prange(logits.shape[0]):
        row_loss[i] = _labels_row(logits, i, labels[i], weight, ignore_index, keep, spread, wsum, scale, logits, True, True)
    return _sum_rows(row_loss)


@njit(**_config.SERIAL)
def xent_labels_fused_inplace_serial(logits, labels, weight, ignore_index, label_smoothing, grad_scale, row_loss):
    """Serial twin of `xent_labels_fused_inplace`."""
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    wsum = _class_weight_sum(logits, weight)
    for i in range(logits.shape[0]):
        row_loss[i] = _labels_row(logits, i, labels[i], weight, ignore_index, keep, spread, wsum, scale, logits, True, True)
    return _sum_rows(row_loss)


@njit(**_config.PARALLEL)
def xent_labels_loss(logits, labels, weight, ignore_index, label_smoothing, row_loss):
    """Per-row losses only (no gradient) for class-index targets.

    Same arguments and return value as `xent_labels_fused` without
    ``grad_scale`` and ``grad``; reads the logits and writes ``row_loss``.
    """
    keep, spread = _smoothing_split(logits, label_smoothing)
    wsum = _class_weight_sum(logits, weight)
    one = cast_like(logits, 1.0)
    for i in prange(logits.shape[0]):
        row_loss[i] = _labels_row(logits, i, labels[i], weight, ignore_index, keep, spread, wsum, one, logits, False, False)
    return _sum_rows(row_loss)


@njit(**_config.SERIAL)
def xent_labels_loss_serial(logits, labels, weight, ignore_index, label_smoothing, row_loss):
    """Serial twin of `xent_labels_loss`."""
    keep, spread = _smoothing_split(logits, label_smoothing)
    wsum = _class_weight_sum(logits, weight)
    one = cast_like(logits, 1.0)
    for i in range(logits.shape[0]):
        row_loss[i] = _labels_row(logits, i, labels[i], weight, ignore_index, keep, spread, wsum, one, logits, False, False)
    return _sum_rows(row_loss)


# --------------------------------------------------------------------------
# Fused cross-entropy kernels, probability (soft) targets.
# --------------------------------------------------------------------------


@njit(**_config.PARALLEL)
def xent_probs_fused(logits, target, weight, label_smoothing, grad_scale, grad, row_loss):
    """Loss and gradient for probability targets in one pass over the logits.

    Parameters
    ----------
    logits : (N, C) float32/float64, C-contiguous
    target : (N, C) target probabilities, the logits' dtype. Rows need not
        sum to 1; the gradient is ``(sum_c q_c) * softmax - q``.
    weight, label_smoothing, grad_scale, grad, row_loss
        As in `xent_labels_fused`. Smoothing mixes the target with the
        uniform distribution: ``(1 - eps) * t + eps / C``.

    Returns
    -------
    float
        ``sum(row_loss)``, accumulated in float64 in row order.
    """
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    for i in prange(logits.shape[0]):
        row_loss[i] = _probs_row(logits, i, target, weight, keep, spread, scale, grad, True, False)
    return _sum_rows(row_loss)


@njit(**_config.SERIAL)
def xent_probs_fused_serial(logits, target, weight, label_smoothing, grad_scale, grad, row_loss):
    """Serial twin of `xent_probs_fused`."""
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    for i in range(logits.shape[0]):
        row_loss[i] = _probs_row(logits, i, target, weight, keep, spread, scale, grad, True, False)
    return _sum_rows(row_loss)


@njit(**_config.PARALLEL)
def xent_probs_fused_inplace(logits, target, weight, label_smoothing, grad_scale, row_loss):
    """`xent_probs_fused` writing the gradient over ``logits``."""
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    for i in prange(logits.shape[0]):
        row_loss[i] = _probs_row(logits, i, target, weight, keep, spread, scale, logits, True, True)
    return _sum_rows(row_loss)


@njit(**_config.SERIAL)
def xent_probs_fused_inplace_serial(logits, target, weight, label_smoothing, grad_scale, row_loss):
    """Serial twin of `xent_probs_fused_inplace`."""
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    for i in range(logits.shape[0]):
        row_loss[i] = _probs_row(logits, i, target, weight, keep, spread, scale, logits, True, True)
    return _sum_rows(row_loss)


@njit(**_config.PARALLEL)
def xent_probs_loss(logits, target, weight, label_smoothing, row_loss):
    """Per-row losses only (no gradient) for probability targets."""
    keep, spread = _smoothing_split(logits, label_smoothing)
    one = cast_like(logits, 1.0)
    for i in prange(logits.shape[0]):
        row_loss[i] = _probs_row(logits, i, target, weight, keep, spread, one, logits, False, False)
    return _sum_rows(row_loss)


@njit(**_config.SERIAL)
def xent_probs_loss_serial(logits, target, weight, label_smoothing, row_loss):
    """Serial twin of `xent_probs_loss`."""
    keep, spread = _smoothing_split(logits, label_smoothing)
    one = cast_like(logits, 1.0)
    for i in range(logits.shape[0]):
        row_loss[i] = _probs_row(logits, i, target, weight, keep, spread, one, logits, False, False)
    return _sum_rows(row_loss)


# --------------------------------------------------------------------------
# Helpers for the mean reduction and validation (O(N), serial).
# --------------------------------------------------------------------------


@njit(**_config.SERIAL)
def check_labels(labels, weight, n_classes, ignore_index):
    """Validate class indices and compute the "mean" denominator, in one pass.

    Returns
    -------
    (first_invalid, mean_denominator) : (int, float)
        ``first_invalid`` is the index of the first label outside
        ``[0, n_classes)`` that is not ``ignore_index``, or -1 when every
        label is valid. ``mean_denominator`` is the sum of ``weight[label]``
        over the rows not equal to ``ignore_index`` (their count when
        ``weight`` is empty), as PyTorch defines the mean; NaN if a label
        is invalid.
    """
    total = 0.0
    for i in range(labels.shape[0]):
        y = labels[i]
        if y == ignore_index:
            continue
        if y < 0 or y >= n_classes:
            return i, np.nan
        total += 1.0 if weight.shape[0] == 0 else weight[y]
    return -1, total


# --------------------------------------------------------------------------
# Row-wise primitives over the last axis of a 2-D array.
# --------------------------------------------------------------------------


@njit(**_config.ROW_ELEMENTWISE)
def _log_softmax_row(x, i, out):
    m = _row_max(x, i)
    log_s = cast_like(x, math.log(_row_sum_exp(x, i, m)))
    for c in range(x.shape[1]):
        out[i, c] = (x[i, c] - m) - log_s


@njit(**_config.ROW_ELEMENTWISE)
def _softmax_row(x, i, out):
    m = _row_max(x, i)
    s = _row_exp_store(x, i, m, out)
    inv = cast_like(x, 1.0) / s
    for c in range(x.shape[1]):
        out[i, c] *= inv


@njit(**_config.ROW_ELEMENTWISE)
def _logsumexp_row(x, i):
    m = _row_max(x, i)
    return m + cast_like(x, math.log(_row_sum_exp(x, i, m)))


@njit(**_config.PARALLEL)
def log_softmax_rows(x, out):
    """out[i] = log_softmax(x[i]) for a 2-D C-contiguous x; out may be x."""
    for i in prange(x.shape[0]):
        _log_softmax_row(x, i, out)


@njit(**_config.SERIAL)
def log_softmax_rows_serial(x, out):
    """Serial twin of `log_softmax_rows`."""
    for i in range(x.shape[0]):
        _log_softmax_row(x, i, out)


@njit(**_config.PARALLEL)
def softmax_rows(x, out):
    """out[i] = softmax(x[i]) for a 2-D C-contiguous x; out may be x."""
    for i in prange(x.shape[0]):
        _softmax_row(x, i, out)


@njit(**_config.SERIAL)
def softmax_rows_serial(x, out):
    """Serial twin of `softmax_rows`."""
    for i in range(x.shape[0]):
        _softmax_row(x, i, out)


@njit(**_config.PARALLEL)
def logsumexp_rows(x, out):
    """out[i] = log(sum(exp(x[i]))) for a 2-D C-contiguous x, out of shape (N,)."""
    for i in prange(x.shape[0]):
        out[i] = _logsumexp_row(x, i)


@njit(**_config.SERIAL)
def logsumexp_rows_serial(x, out):
    """Serial twin of `logsumexp_rows`."""
    for i in range(x.shape[0]):
        out[i] = _logsumexp_row(x, i)
