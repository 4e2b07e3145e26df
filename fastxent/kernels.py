"""Compiled kernels: the public, njit-callable layer of fastxent.

Every function here takes only arrays and scalars, writes into buffers the
caller passes in and never allocates. That makes them callable from a
user's own ``@njit`` code (serial or ``parallel=True``)::

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
- ``labels`` is 1-D int32/int64. Every entry should be in ``[0, C)`` or
  equal ``ignore_index``. The kernels do not raise on a bad label (that
  would cost a pass over the labels); they never index with it either:
  such a row gets a NaN loss and a NaN gradient. Validate labels with
  ``check_labels`` (one O(N) pass that also gives the mean denominator).
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
- Every kernel checks, in O(1) before it writes anything, that the lengths
  of its arrays agree (rows, classes, labels, weight of length C or 0,
  output buffers) and raises ``ValueError`` naming the argument if not.
  An output or target of another dtype than the logits, or labels that
  are not integers, fail at compile time with a ``TypingError`` naming the
  argument. Run with ``NUMBA_BOUNDSCHECK=1`` while developing code of your
  own around them: every index is then checked.

Numerics: every row is shifted by its maximum before exponentiating, and
losses are assembled as ``(max - x_target) + log(sum exp(x - max))``, two
non-negative terms, so large logits neither overflow nor cancel. Terms
with a zero target probability are skipped (0 * log 0 = 0).
"""

import math
import types as pytypes

import numpy as np
from numba import njit, prange, types
from numba.core.errors import TypingError
from numba.extending import overload

from . import _config
from ._fastmath import cast_like, exp_nonpositive, maxnum

#: Pass as ``weight`` for unweighted classes (float64; its dtype is unused).
NO_WEIGHT = np.empty(0, dtype=np.float64)


# --------------------------------------------------------------------------
# Argument checks: O(1), before anything is written. Types are checked when
# a kernel is compiled (TypingError), lengths when it runs (ValueError).
# --------------------------------------------------------------------------


def _argument_check(name, rows_only, integer):
    """A check of one array argument against the logits, callable from njit code.

    ``rows_only``: the array has one entry per row, else the logits' shape.
    ``integer``: its dtype is an integer type, else the logits' dtype.
    """
    shape_msg = (
        f"{name} must have one entry per row of the logits (length logits.shape[0])"
        if rows_only
        else f"{name} must have the logits' shape (logits.shape[0], logits.shape[1])"
    )
    ndim = 1 if rows_only else 2

    def type_problem(logits_dtype, dtype, arr_ndim, integer_ok):
        if arr_ndim != ndim:
            return f"{name} must be a {ndim}-D array, got {arr_ndim}-D"
        if integer and not integer_ok:
            return f"{name} must hold integer class indices, got {dtype}"
        if not integer and dtype != logits_dtype:
            return f"{name} must have the logits' dtype {logits_dtype}, got {dtype}"
        return None

    def check(logits, arr):
        problem = type_problem(logits.dtype, arr.dtype, arr.ndim, arr.dtype.kind in "iu")
        if problem:
            raise TypeError(problem)
        if arr.shape[0] != logits.shape[0] or (not rows_only and arr.shape[1] != logits.shape[1]):
            raise ValueError(shape_msg)

    @overload(check)
    def _check_typed(logits, arr):
        problem = type_problem(logits.dtype, arr.dtype, arr.ndim, isinstance(arr.dtype, types.Integer))
        if problem:
            raise TypingError(problem)
        if rows_only:

            def impl(logits, arr):
                if arr.shape[0] != logits.shape[0]:
                    raise ValueError(shape_msg)

        else:

            def impl(logits, arr):
                if arr.shape[0] != logits.shape[0] or arr.shape[1] != logits.shape[1]:
                    raise ValueError(shape_msg)

        return impl

    check.__name__ = check.__qualname__ = f"_check_{name}"
    return check


_check_grad = _argument_check("grad", rows_only=False, integer=False)
_check_target = _argument_check("target", rows_only=False, integer=False)
_check_out = _argument_check("out", rows_only=False, integer=False)
_check_row_loss = _argument_check("row_loss", rows_only=True, integer=False)
_check_out_rows = _argument_check("out", rows_only=True, integer=False)
_check_labels_arg = _argument_check("labels", rows_only=True, integer=True)


@njit(**_config.ROW_ELEMENTWISE)
def _check_logits_and_weight(logits, weight):
    if logits.shape[1] == 0 and logits.shape[0] != 0:
        raise ValueError("logits must have at least one class (logits.shape[1] == 0)")
    if weight.shape[0] != 0 and weight.shape[0] != logits.shape[1]:
        raise ValueError("weight must have length logits.shape[1] (one per class), or 0 for no weights")


def _twins(body):
    """The parallel kernel compiled from ``body``, and its serial twin.

    The twin is the same Python function compiled without ``parallel=True``
    (``prange`` then runs as ``range``), under its own name so that the two
    get separate entries in Numba's disk cache.
    """
    serial = pytypes.FunctionType(
        body.__code__, body.__globals__, body.__name__ + "_serial", body.__defaults__, body.__closure__
    )
    serial.__qualname__ = body.__qualname__ + "_serial"
    serial.__module__ = body.__module__
    serial.__doc__ = f"Serial twin of `{body.__name__}`: the same body compiled without ``parallel=True``."
    return njit(**_config.PARALLEL)(body), njit(**_config.SERIAL)(serial)


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
    _row_fill(g, i, cast_like(g, 0.0))


@njit(**_config.ROW_ELEMENTWISE)
def _row_fill(g, i, value):
    for c in range(g.shape[1]):
        g[i, c] = value


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
    if y < 0 or y >= x.shape[1]:  # never index with a bad label: the row is NaN
        nan = cast_like(x, np.nan)
        if with_grad:
            _row_fill(g, i, nan)
        return nan
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
# Fused cross-entropy kernels, class-index targets. Each is compiled twice
# by `_twins`: the parallel kernel and its ``_serial`` twin.
# --------------------------------------------------------------------------


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
    _check_logits_and_weight(logits, weight)
    _check_labels_arg(logits, labels)
    _check_grad(logits, grad)
    _check_row_loss(logits, row_loss)
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    wsum = _class_weight_sum(logits, weight)
    for i in prange(logits.shape[0]):
        row_loss[i] = _labels_row(logits, i, labels[i], weight, ignore_index, keep, spread, wsum, scale, grad, True, False)
    return _sum_rows(row_loss)


def xent_labels_fused_inplace(logits, labels, weight, ignore_index, label_smoothing, grad_scale, row_loss):
    """`xent_labels_fused` writing the gradient over ``logits``.

    One array in and out: one read and one write of the logits per element
    in the common case, and no runtime alias check in the compiled loops.
    """
    _check_logits_and_weight(logits, weight)
    _check_labels_arg(logits, labels)
    _check_row_loss(logits, row_loss)
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    wsum = _class_weight_sum(logits, weight)
    for i in prange(logits.shape[0]):
        row_loss[i] = _labels_row(logits, i, labels[i], weight, ignore_index, keep, spread, wsum, scale, logits, True, True)
    return _sum_rows(row_loss)


def xent_labels_loss(logits, labels, weight, ignore_index, label_smoothing, row_loss):
    """Per-row losses only (no gradient) for class-index targets.

    Same arguments and return value as `xent_labels_fused` without
    ``grad_scale`` and ``grad``; reads the logits and writes ``row_loss``.
    """
    _check_logits_and_weight(logits, weight)
    _check_labels_arg(logits, labels)
    _check_row_loss(logits, row_loss)
    keep, spread = _smoothing_split(logits, label_smoothing)
    wsum = _class_weight_sum(logits, weight)
    one = cast_like(logits, 1.0)
    for i in prange(logits.shape[0]):
        row_loss[i] = _labels_row(logits, i, labels[i], weight, ignore_index, keep, spread, wsum, one, logits, False, False)
    return _sum_rows(row_loss)


xent_labels_fused, xent_labels_fused_serial = _twins(xent_labels_fused)
xent_labels_fused_inplace, xent_labels_fused_inplace_serial = _twins(xent_labels_fused_inplace)
xent_labels_loss, xent_labels_loss_serial = _twins(xent_labels_loss)


# --------------------------------------------------------------------------
# Fused cross-entropy kernels, probability (soft) targets.
# --------------------------------------------------------------------------


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
    _check_logits_and_weight(logits, weight)
    _check_target(logits, target)
    _check_grad(logits, grad)
    _check_row_loss(logits, row_loss)
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    for i in prange(logits.shape[0]):
        row_loss[i] = _probs_row(logits, i, target, weight, keep, spread, scale, grad, True, False)
    return _sum_rows(row_loss)


def xent_probs_fused_inplace(logits, target, weight, label_smoothing, grad_scale, row_loss):
    """`xent_probs_fused` writing the gradient over ``logits``."""
    _check_logits_and_weight(logits, weight)
    _check_target(logits, target)
    _check_row_loss(logits, row_loss)
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    for i in prange(logits.shape[0]):
        row_loss[i] = _probs_row(logits, i, target, weight, keep, spread, scale, logits, True, True)
    return _sum_rows(row_loss)


def xent_probs_loss(logits, target, weight, label_smoothing, row_loss):
    """Per-row losses only (no gradient) for probability targets."""
    _check_logits_and_weight(logits, weight)
    _check_target(logits, target)
    _check_row_loss(logits, row_loss)
    keep, spread = _smoothing_split(logits, label_smoothing)
    one = cast_like(logits, 1.0)
    for i in prange(logits.shape[0]):
        row_loss[i] = _probs_row(logits, i, target, weight, keep, spread, one, logits, False, False)
    return _sum_rows(row_loss)


xent_probs_fused, xent_probs_fused_serial = _twins(xent_probs_fused)
xent_probs_fused_inplace, xent_probs_fused_inplace_serial = _twins(xent_probs_fused_inplace)
xent_probs_loss, xent_probs_loss_serial = _twins(xent_probs_loss)


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

    Raises
    ------
    ValueError
        If ``weight`` is neither empty nor of length ``n_classes``.
    """
    if weight.shape[0] != 0 and weight.shape[0] != n_classes:
        raise ValueError("weight must have length n_classes (one per class), or 0 for no weights")
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


def log_softmax_rows(x, out):
    """out[i] = log_softmax(x[i]) for a 2-D C-contiguous x; out may be x."""
    _check_logits_and_weight(x, x[0:0, 0])
    _check_out(x, out)
    for i in prange(x.shape[0]):
        _log_softmax_row(x, i, out)


def softmax_rows(x, out):
    """out[i] = softmax(x[i]) for a 2-D C-contiguous x; out may be x."""
    _check_logits_and_weight(x, x[0:0, 0])
    _check_out(x, out)
    for i in prange(x.shape[0]):
        _softmax_row(x, i, out)


def logsumexp_rows(x, out):
    """out[i] = log(sum(exp(x[i]))) for a 2-D C-contiguous x, out of shape (N,)."""
    _check_logits_and_weight(x, x[0:0, 0])
    _check_out_rows(x, out)
    for i in prange(x.shape[0]):
        out[i] = _logsumexp_row(x, i)


log_softmax_rows, log_softmax_rows_serial = _twins(log_softmax_rows)
softmax_rows, softmax_rows_serial = _twins(softmax_rows)
logsumexp_rows, logsumexp_rows_serial = _twins(logsumexp_rows)
