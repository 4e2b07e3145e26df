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
  ``xent_labels_loss_counted`` also returns how many rows had a valid label
  that was not ignored: the unweighted mean denominator, with no second
  pass when the total comes out finite (a bad label makes it NaN).
- ``weight`` is a 1-D array of per-class weights of the logits' dtype, or
  an empty array (``NO_WEIGHT`` or ``logits[:0, 0]``) for "no weights".
- ``grad_scale`` multiplies the gradient: ``1 / mean_denominator`` for a
  mean loss, 1 for a sum. The gradient written is that of
  ``grad_scale * sum(row_loss)``.
- ``row_loss`` receives the per-row losses, or is an empty array when only
  their total is wanted (no pass over them then). The return value is the
  total, accumulated in float64 in a fixed order (per group of rows, the
  groups fixed by the shape, then over the groups), so it does not depend
  on the number of threads.
- Cross-entropy kernels (class-index and probability targets) and the
  softmax primitives process rows of at most ``TILE_MAX_CLASSES[itemsize]`` classes
  in class-major tiles of ``TILE_ROWS`` rows (see ``fastxent._config``;
  rows of whole ``ROW_PATH_BLOCK_BYTES`` blocks stay on the row path where
  that is set); results agree with the row path to rounding.
- ``*_serial`` functions are identical twins without ``parallel=True``:
  use them for small problems (a parallel launch costs microseconds) or
  from inside your own parallel loops.
- ``*_inplace`` functions write the gradient over the logits.
- ``xent_labels_*_ext`` kernels take three more arguments, ``z_loss`` and
  ``softcap`` after ``label_smoothing`` and an ``lse`` buffer last (empty
  for none): the z-loss, soft cap and log-sum-exp of language-model
  training. They take the row path at every class count.
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
from ._fastmath import (borrowed, borrowed_rows, cast_like, exp_nonpositive, fast_tanh, index_as_float, log_sum, maxnum,
                        prefetch_read, prefetch_write, stack_empty, store_fence, stream_copy, wide_vectors)
from ._shuffle import rows_to_tile, tile_to_rows

#: Pass as ``weight`` for unweighted classes (float64; its dtype is unused).
NO_WEIGHT = np.empty(0, dtype=np.float64)


# --------------------------------------------------------------------------
# Argument checks: O(1), before anything is written. Types are checked when
# a kernel is compiled (TypingError), lengths when it runs (ValueError).
# --------------------------------------------------------------------------


def _argument_check(name, rows_only, integer, empty_ok=False):
    """A check of one array argument against the logits, callable from njit code.

    ``rows_only``: the array has one entry per row, else the logits' shape.
    ``integer``: its dtype is an integer type, else the logits' dtype.
    ``empty_ok``: a length of 0 is accepted too (for "not wanted").
    """
    shape_msg = (
        f"{name} must have one entry per row of the logits (length logits.shape[0])"
        + (", or length 0" if empty_ok else "")
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
        if empty_ok and arr.shape[0] == 0:
            return
        if arr.shape[0] != logits.shape[0] or (not rows_only and arr.shape[1] != logits.shape[1]):
            raise ValueError(shape_msg)

    @overload(check)
    def _check_typed(logits, arr):
        problem = type_problem(logits.dtype, arr.dtype, arr.ndim, isinstance(arr.dtype, types.Integer))
        if problem:
            raise TypingError(problem)
        if rows_only:

            def impl(logits, arr):
                if arr.shape[0] != logits.shape[0] and not (empty_ok and arr.shape[0] == 0):
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
_check_row_loss = _argument_check("row_loss", rows_only=True, integer=False, empty_ok=True)
_check_lse = _argument_check("lse", rows_only=True, integer=False, empty_ok=True)
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
#
# Unsigned indices: Numba turns a negative index into one from the end, so
# an index LLVM cannot prove non-negative (``labels[start + k]`` with a
# runtime start) costs a select per element, and a vector of such indices
# is a gather. Loops over a run of labels or row losses, over a row's last
# group of classes and over a tile's classes from the second on therefore
# index with ``np.uint64``, which has no negative case (bounds checks
# under NUMBA_BOUNDSCHECK=1 are unchanged): 5x faster label validation,
# and no gather left in the row loops or the tile max (`inspect_asm`).
# --------------------------------------------------------------------------


# Whole vectors along a row. A loop over a row's classes left to LLVM runs
# as SUM_LANES-wide vector code plus a scalar remainder of up to
# SUM_LANES - 1 classes, and at C = 33 to 1000 that remainder cost more
# than the rest of the row (measured, one thread, float32: the fused row at
# C = 64 took 130 ns, of which 50 were the max's remainder). So every row
# loop here runs over whole groups of SUM_LANES classes, then, when C is
# not a multiple of SUM_LANES, once more over the row's last SUM_LANES
# classes, which overlaps the groups before: a max takes them all (a max
# is idempotent), a sum or a store masks the lanes already done. Rows of
# fewer than SUM_LANES classes go one class at a time.
#
# Sums along a row run in an order written out here, not left to the
# compiler: SUM_LANES interleaved partial sums (lane k takes the classes
# k, k + SUM_LANES, ... in turn, and in the overlapping last group the
# class n - SUM_LANES + k), then a fixed pairwise tree. LLVM vectorizes
# the lanes as independent adds without reassociating anything, so every
# compilation of a kernel (parallel or serial twin, inlined into a user's
# function, compiled now or loaded from the disk cache) adds in the same
# order and gives the same bits, whatever vector path it takes. With
# ``reassoc`` the order was LLVM's choice per compilation, and a kernel
# compiled in one process and loaded from the disk cache in another gave
# results different in the last bit from one compiled in-process.

SUM_LANES = _config.SUM_LANES
assert SUM_LANES in (1, 2, 4, 8, 16, 32, 64) and _config.TILE_ROWS in (1, 2, 4, 8, 16, 32, 64), "see _lanes_total"


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _larger(a, t):
    """t if t > a else a, for a not NaN: a NaN t is skipped, as by maxnum,
    but this is one vmaxps where maxnum is a max, a NaN test and a blend."""
    return t if t > a else a


@njit(**_config.ROW_ELEMENTWISE)
def _fold_max(acc, h):
    if acc.shape[0] > h:
        for k in range(h):
            acc[k] = _larger(acc[k], acc[k + h])


@njit(**_config.ROW_REDUCE)  # reassoc for the short rows' maxnum reduction
def _row_max(x, i):
    """The row's largest logit, NaNs skipped (a row of NaNs only gives -inf
    from SUM_LANES classes up, NaN below; its exps are NaN either way).

    In SUM_LANES lanes and a tree, as the sums are (a max is exact, so any
    order gives the same value). Left to LLVM as one ``maxnum`` reduction,
    each step was a max, a NaN test and a blend, and the 16 lanes of the
    last vector were folded one after another in scalar code: the max took
    26 of 121 ns a row at C = 256 (float32, one thread), 14 now.
    """
    n = x.shape[1]
    if n < SUM_LANES:
        m = x[i, 0]
        for c in range(1, n):
            m = maxnum(m, x[i, c])  # a reduction LLVM vectorizes (it does not, written as a select)
        return m
    acc = stack_empty(x, SUM_LANES)
    neg_inf = cast_like(x, -np.inf)
    for k in range(SUM_LANES):
        acc[k] = _larger(neg_inf, x[i, k])  # lanes start off NaN
    main = n - n % SUM_LANES
    for c0 in range(SUM_LANES, main, SUM_LANES):
        for k in range(SUM_LANES):
            acc[k] = _larger(acc[k], x[i, np.uint64(c0 + k)])  # see "Unsigned indices"
    if main < n:
        base = n - SUM_LANES
        for k in range(SUM_LANES):
            acc[k] = _larger(acc[k], x[i, np.uint64(base + k)])
    _fold_max(acc, 32)
    _fold_max(acc, 16)
    _fold_max(acc, 8)
    _fold_max(acc, 4)
    _fold_max(acc, 2)
    _fold_max(acc, 1)
    return acc[0]


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _lanes_zero(x):
    acc = stack_empty(x, SUM_LANES)
    for k in range(SUM_LANES):
        acc[k] = cast_like(x, 0.0)
    return acc


@njit(**_config.ROW_ELEMENTWISE)
def _fold_lanes(acc, h):
    if acc.shape[0] > h:
        for k in range(h):
            acc[k] += acc[k + h]


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _lanes_total(acc):
    """Pairwise sum of the lanes of ``acc`` (a power of two of them, at most
    64), in a fixed order; clobbers acc. The halvings are written out: as a
    loop over h, LLVM left them scalar, 8 ns a row at C = 64."""
    _fold_lanes(acc, 32)
    _fold_lanes(acc, 16)
    _fold_lanes(acc, 8)
    _fold_lanes(acc, 4)
    _fold_lanes(acc, 2)
    _fold_lanes(acc, 1)
    return acc[0]


def _row_sum_of(term):
    """A row helper ``f(x, i, a, b) = sum_c term(x, i, c, a, b)`` (class order
    and lanes as in "Whole vectors along a row"). ``term`` is a compiled
    function; each helper made here is its own compiled function."""

    @njit(**_config.ROW_ELEMENTWISE)
    def row_sum(x, i, a, b):
        n = x.shape[1]
        zero = cast_like(x, 0.0)
        acc = _lanes_zero(x)
        main = n - n % SUM_LANES
        for c0 in range(0, main, SUM_LANES):
            for k in range(SUM_LANES):
                acc[k] += term(x, i, c0 + k, a, b)
        if n < SUM_LANES:
            for c in range(n):
                acc[c] += term(x, i, c, a, b)
        elif main < n:
            base = n - SUM_LANES
            for k in range(SUM_LANES):
                v = term(x, i, np.uint64(base + k), a, b)  # see "Unsigned indices"
                acc[k] += v if base + k >= main else zero
        return _lanes_total(acc)

    return row_sum


@njit(**_config.ROW_ELEMENTWISE)
def _weight_of(x, weight, c):
    """w_c in x's dtype; 1 when ``weight`` is empty."""
    return cast_like(x, 1.0) if weight.shape[0] == 0 else cast_like(x, weight[c])


@njit(**_config.ROW_ELEMENTWISE)
def _exp_term(x, i, c, m, unused):
    return exp_nonpositive(x[i, c] - m)


@njit(**_config.ROW_ELEMENTWISE)
def _shift_term(x, i, c, m, weight):
    w = _weight_of(x, weight, c)
    return w * (x[i, c] - m) if w != cast_like(x, 0.0) else cast_like(x, 0.0)  # 0 * log 0 = 0


_row_sum_exp_of = _row_sum_of(_exp_term)
_row_weighted_shift_sum_of = _row_sum_of(_shift_term)


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _row_sum_exp(x, i, m):
    """sum_c exp(x_c - m)."""
    return _row_sum_exp_of(x, i, m, 0)


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _row_weighted_shift_sum(x, i, m, weight):
    """sum_c w_c * (x_c - m), with w = 1 when ``weight`` is empty."""
    return _row_weighted_shift_sum_of(x, i, m, weight)


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _row_exp_store(x, i, m, e):
    """e = exp(x - m), returns sum(e); e may be x itself (the in-place kernels)."""
    n = x.shape[1]
    zero = cast_like(x, 0.0)
    acc = _lanes_zero(x)
    main = n - n % SUM_LANES
    for c0 in range(0, main, SUM_LANES):
        for k in range(SUM_LANES):
            v = exp_nonpositive(x[i, c0 + k] - m)
            e[i, c0 + k] = v
            acc[k] += v
    if n < SUM_LANES:
        for c in range(n):
            v = exp_nonpositive(x[i, c] - m)
            e[i, c] = v
            acc[c] += v
    elif main < n:
        # The last group's exps go through scratch that aliases nothing: with
        # stores into e (which may be x) beside the loads LLVM kept it scalar.
        base = n - SUM_LANES
        tail = stack_empty(x, SUM_LANES)
        for k in range(SUM_LANES):
            v = exp_nonpositive(x[i, np.uint64(base + k)] - m)  # see "Unsigned indices"
            tail[k] = v
            acc[k] += v if base + k >= main else zero
        for c in range(main, n):
            e[i, np.uint64(c)] = tail[np.uint64(c - base)]
    return _lanes_total(acc)


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _target_mass(x, i, c, t, weight, keep, spread):
    """q_c = (keep t_c + spread) w_c."""
    q = keep * t[i, c] + spread
    return q * cast_like(x, weight[c]) if weight.shape[0] != 0 else q


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _row_target_dot(x, i, m, t, weight, keep, spread):
    """Returns (sum_c q_c (x_c - m), sum_c q_c), q_c = (keep t_c + spread) w_c,
    in the lanes of "Whole vectors along a row".

    A class with q_c == 0 contributes nothing even if x_c is -inf.
    """
    zero = cast_like(x, 0.0)
    n = x.shape[1]
    dot = _lanes_zero(x)
    mass = _lanes_zero(x)
    main = n - n % SUM_LANES
    for c0 in range(0, main, SUM_LANES):
        for k in range(SUM_LANES):
            q = _target_mass(x, i, c0 + k, t, weight, keep, spread)
            dot[k] += q * (x[i, c0 + k] - m) if q != zero else zero
            mass[k] += q
    if n < SUM_LANES:
        for c in range(n):
            q = _target_mass(x, i, c, t, weight, keep, spread)
            dot[c] += q * (x[i, c] - m) if q != zero else zero
            mass[c] += q
    elif main < n:
        base = n - SUM_LANES
        for k in range(SUM_LANES):
            c = np.uint64(base + k)  # see "Unsigned indices"
            q = _target_mass(x, i, c, t, weight, keep, spread)
            q = q if base + k >= main else zero
            dot[k] += q * (x[i, c] - m) if q != zero else zero
            mass[k] += q
    return _lanes_total(dot), _lanes_total(mass)


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
    return _row_exp_store(x, i, m, x if inplace else g)


# --------------------------------------------------------------------------
# Soft-capped logits (Gemma 2): u = cap * tanh(x / cap). With a gradient,
# the capped row is written into the gradient buffer and the usual row
# helpers run on it; loss-only kernels cap each logit as they read it. No
# flag may reach inside these loops: a branch on a runtime argument there
# (store or not) kept LLVM from vectorizing them, at 30 ns an element.
# --------------------------------------------------------------------------


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _cap(v, cap):
    return cap * fast_tanh(v / cap)


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _exp_shifted(x, d):
    """exp(d) for d = u - max(u) (in x's dtype): <= 0 but for rounding, which is clamped (NaN stays NaN)."""
    zero = cast_like(x, 0.0)
    return exp_nonpositive(d if not d > zero else zero)


@njit(**_config.ROW_ELEMENTWISE)
def _capped_exp_term(x, i, c, m, cap):
    return _exp_shifted(x, _cap(x[i, c], cap) - m)


@njit(**_config.ROW_ELEMENTWISE)
def _capped_shift_term(x, i, c, m, cap_weight):
    cap, weight = cap_weight
    w = _weight_of(x, weight, c)
    return w * (_cap(x[i, c], cap) - m) if w != cast_like(x, 0.0) else cast_like(x, 0.0)  # 0 * log 0 = 0


_row_capped_sum_exp_of = _row_sum_of(_capped_exp_term)
_row_capped_shift_sum_of = _row_sum_of(_capped_shift_term)


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _row_cap_store(x, i, cap, u):
    """u_c = cap tanh(x_c / cap) for row i; u may be x. The in-place kernels
    pass x itself: with two names for one array LLVM's runtime overlap check
    fails and the loop runs unvectorized, 15x slower."""
    for c in range(x.shape[1]):
        u[i, c] = _cap(x[i, c], cap)


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _row_capped_sum_exp(x, i, m, cap):
    """sum_c exp(u_c - m) for u_c = cap tanh(x_c / cap), without storing u
    (the loss-only kernels)."""
    return _row_capped_sum_exp_of(x, i, m, cap)


@njit(**_config.ROW_ELEMENTWISE)
def _row_capped_shift_sum(x, i, m, cap, weight):
    """sum_c w_c (u_c - m) for u_c = cap tanh(x_c / cap), without storing u."""
    return _row_capped_shift_sum_of(x, i, m, (cap, weight))


@njit(**_config.ROW_ELEMENTWISE)
def _row_capped_affine(g, i, m, a, b, weight, cap):
    """g_c = (a exp(u_c - m) - b w_c) (1 - (u_c / cap)^2), where g holds u:
    `_row_affine` on the capped logits, times the cap's derivative."""
    one = cast_like(g, 1.0)
    weighted = weight.shape[0] != 0
    for c in range(g.shape[1]):
        u = g[i, c]
        t = u / cap
        w = cast_like(g, weight[c]) if weighted else one
        g[i, c] = (a * _exp_shifted(g, u - m) - b * w) * (one - t * t)


@njit(**_config.ROW_ELEMENTWISE)
def _row_lse(x, i, cap):
    """log sum_c exp(u_c), u = x, or its soft cap when cap != 0."""
    m = _row_max(x, i)
    if cap != cast_like(x, 0.0):
        m = _cap(m, cap)
        s = _row_capped_sum_exp(x, i, m, cap)
    else:
        s = _row_sum_exp(x, i, m)
    return m + cast_like(x, math.log(s))

@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _labels_row(x, i, y, weight, ignore_index, keep, spread, weight_sum, z_loss, cap, scale, g, lse, with_grad,
                inplace, options):
    """Loss of one row with a class-index target; gradient into g if asked
    (``inplace``: g is x); the row's log-sum-exp into lse[i] unless lse is empty.

    With u = x, or u = cap tanh(x / cap) when ``cap`` != 0, p = softmax(u)
    and lse = log sum_c exp(u_c):
    Loss: keep w_y (-log p_y) + spread * sum_c w_c (-log p_c) + z_loss lse^2,
    where keep = 1 - eps and spread = eps / C for label smoothing eps.
    Gradient: scale * ((W + 2 z_loss lse) p - q) * du/dx,
    q_c = keep w_y [c == y] + spread w_c, W = sum_c q_c.
    Ignored rows: loss 0, gradient 0 (their lse is still given).
    ``options`` False (a constant at every call site) compiles the z-loss,
    cap and lse away: the default kernels run the code they ran before them.
    """
    zero = cast_like(x, 0.0)
    capped = options and cap != zero
    give_lse = options and lse.shape[0] != 0
    with_z = options and z_loss != zero
    if y == ignore_index:
        if give_lse:
            lse[i] = _row_lse(x, i, cap)
        if with_grad:
            _row_zero(g, i)
        return zero
    if y < 0 or y >= x.shape[1]:  # never index with a bad label: the row is NaN
        nan = cast_like(x, np.nan)
        if give_lse:
            lse[i] = nan
        if with_grad:
            _row_fill(g, i, nan)
        return nan
    # Read everything that needs the raw logits before g (maybe x) is written.
    shift_sum = zero
    if capped and with_grad:
        # The capped row goes into g first; everything else reads it there.
        # (``x if inplace else g``: LLVM must see that g is x, as in `_row_exps`.)
        x_y = _cap(x[i, y], cap)
        _row_cap_store(x, i, cap, x if inplace else g)
        m = _row_max(x if inplace else g, i)
        if spread != zero:
            shift_sum = _row_weighted_shift_sum(x if inplace else g, i, m, weight)
        s = _row_sum_exp(x if inplace else g, i, m)
    elif capped:
        # Loss only, nothing to store into: the max of the capped row is the
        # cap of the row's max (tanh is monotone).
        m = _cap(_row_max(x, i), cap)
        x_y = _cap(x[i, y], cap)
        if spread != zero:
            shift_sum = _row_capped_shift_sum(x, i, m, cap, weight)
        s = _row_capped_sum_exp(x, i, m, cap)
    else:
        m = _row_max(x, i)
        x_y = x[i, y]
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
    row_lse = m + log_s
    if with_z:
        loss += z_loss * (row_lse * row_lse)
    if give_lse:
        lse[i] = row_lse
    if with_grad:
        row_mass = target_mass + spread * weight_sum
        if with_z:
            row_mass += (z_loss + z_loss) * row_lse
        if capped:
            _row_capped_affine(x if inplace else g, i, m, scale * row_mass / s, scale * spread, weight, cap)
            t_y = x_y / cap
            g[i, y] -= scale * target_mass * (cast_like(x, 1.0) - t_y * t_y)
        else:
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


# --------------------------------------------------------------------------
# Groups of rows. A call's rows are split into at most SUM_GROUPS groups of
# consecutive rows, by a rule that depends on the shape only. Each group's
# loss is summed in a fixed order and the groups' sums in group order, so
# the batch total is the same for any number of threads. No pass over the
# per-row losses is needed, so ``row_loss`` may be empty (not stored).
# --------------------------------------------------------------------------

# Row helpers are always called with an int64 index (a prange index is
# unsigned): one specialization of each helper serves the parallel kernel
# and its serial twin, which halves their compile work.

TILE_ROWS = _config.TILE_ROWS
TILE_ELEMENTS = _config.TILE_ROWS * max(_config.TILE_MAX_CLASSES.values())
TILE_MAX_CLASSES_F32 = _config.TILE_MAX_CLASSES[4]
TILE_MAX_CLASSES_F64 = _config.TILE_MAX_CLASSES[8]
ROW_PATH_BLOCK_BYTES = _config.ROW_PATH_BLOCK_BYTES
SUM_GROUPS = _config.SUM_GROUPS


@njit(**_config.ROW_ELEMENTWISE)
def _groups(logits, tiles):
    """(tiled, n_groups, units per group) for a call on ``logits``.

    The units are tiles of TILE_ROWS rows when ``tiles`` is allowed, C is at
    most TILE_MAX_CLASSES[itemsize] (but rows of whole ROW_PATH_BLOCK_BYTES
    blocks, see `_config`) and there are rows enough to fill a tile
    or to pay for a padded one (TILE_MIN_ROWS_*); rows otherwise. A group holds at least GROUP_MIN_ELEMENTS
    elements: each costs a call with a dozen arrays (about 0.16 us of
    reference counting), which at one row a group was most of a small call.
    """
    n, c = logits.shape
    limit = TILE_MAX_CLASSES_F32 if logits.itemsize == 4 else TILE_MAX_CLASSES_F64
    enough = n >= TILE_ROWS or n >= _config.TILE_MIN_ROWS_FIXED + _config.TILE_MIN_ROWS_PER_CLASS * c
    row_bytes = c * logits.itemsize
    whole_blocks = (ROW_PATH_BLOCK_BYTES > 0 and row_bytes % max(1, ROW_PATH_BLOCK_BYTES) == 0
                    and row_bytes >= 2 * ROW_PATH_BLOCK_BYTES)
    tiled = tiles and c <= limit and not whole_blocks and enough and logits.flags.c_contiguous
    units = (n + TILE_ROWS - 1) // TILE_ROWS if tiled else n
    unit_elements = max(1, TILE_ROWS * c if tiled else c)
    n_groups, per_group = _split(units, max(1, _config.GROUP_MIN_ELEMENTS // unit_elements))
    return tiled, n_groups, per_group


@njit(**_config.ROW_ELEMENTWISE)
def _split(units, min_per_group):
    """(n_groups, units per group): at most SUM_GROUPS groups of at least
    ``min_per_group`` units. Full groups only (but the last), so the
    threads' static halves of the groups hold equal work."""
    per_group = max(min_per_group, (units + SUM_GROUPS - 1) // SUM_GROUPS)
    return ((units + per_group - 1) // per_group if units else 0), per_group


@njit(**_config.ROW_ELEMENTWISE)
def _sum_groups(partial, n_groups):
    total = 0.0
    for k in range(n_groups):
        total += partial[k]
    return total


PREFETCH_AHEAD_BYTES = _config.PREFETCH_AHEAD_BYTES
PREFETCH_ROW_BYTES = _config.PREFETCH_ROW_BYTES
CACHE_LINE = _config.CACHE_LINE


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _prefetch_bytes(arr, start, n_bytes, write):
    """Ask for the cache lines of bytes start..start + n_bytes of ``arr``'s
    data (those inside it), to be read, or written when ``write``: a hint,
    results do not change."""
    stop = min(start + n_bytes, arr.size * arr.itemsize)
    if start >= stop:
        return
    for offset in range(start, stop, CACHE_LINE):
        if write:
            prefetch_write(arr, offset)
        else:
            prefetch_read(arr, offset)
    if write:  # the last line, which the stride may have stepped over
        prefetch_write(arr, stop - 1)
    else:
        prefetch_read(arr, stop - 1)


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _units_ahead(unit_bytes):
    """How many units (tiles, rows) of ``unit_bytes`` ahead to ask for: the
    nearest whole unit at least PREFETCH_AHEAD_BYTES ahead, the next one at
    least (see `_config.PREFETCH_AHEAD_BYTES`)."""
    return max(1, (PREFETCH_AHEAD_BYTES + unit_bytes - 1) // unit_bytes)


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _rows_ahead(x):
    """Rows from a tile of ``x`` to the tile whose memory it asks for."""
    return TILE_ROWS * _units_ahead(TILE_ROWS * x.shape[1] * x.itemsize)


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _prefetch_tile_share(arr, ahead, c, write):
    """Ask for class c's share (1 / C of the bytes) of the tile of rows
    ahead.. of a 2-D C-contiguous ``arr`` (see `_config.PREFETCH_AHEAD_BYTES`).
    Called once per class step of a tile loop, the requests spread over the
    tile's compute."""
    share_bytes = TILE_ROWS * arr.itemsize
    _prefetch_bytes(arr, (ahead * arr.shape[1] + c * TILE_ROWS) * arr.itemsize, share_bytes, write)


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _prefetch_row_ahead(x, i):
    """At row i of a C-contiguous ``x``, ask for the row `_units_ahead` rows
    on when rows are PREFETCH_ROW_BYTES long (see `_config.PREFETCH_ROW_BYTES`)."""
    row_bytes = x.shape[1] * x.itemsize
    if PREFETCH_ROW_BYTES[0] <= row_bytes <= PREFETCH_ROW_BYTES[1]:
        _prefetch_bytes(x, (i + _units_ahead(row_bytes)) * row_bytes, row_bytes, False)


@njit(**_config.ROW_ELEMENTWISE)
def _labels_rows(x, labels, start, stop, weight, ignore_index, keep, spread, wsum, z_loss, cap, scale, g, row_loss, lse,
                 with_grad, inplace, options):
    """Rows start..stop one at a time; returns (their summed loss (float64,
    row order), the number of rows whose label is valid and not ignored)."""
    store = row_loss.shape[0] != 0
    total = 0.0
    kept = 0
    n_classes = x.shape[1]
    for i in range(start, stop):
        _prefetch_row_ahead(x, i)
        y = labels[i]
        loss = _labels_row(x, i, y, weight, ignore_index, keep, spread, wsum, z_loss, cap, scale, g, lse,
                           with_grad, inplace, options)
        kept += np.int64((y != ignore_index) & (y >= 0) & (y < n_classes))
        if store:
            row_loss[i] = loss
        total += loss
    return total, kept


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _tile_load(x, r0, nb, T):
    """T[c * TILE_ROWS + b] = x[r0 + b, c] for the nb rows of a tile; padding lanes get 0.
    A full tile of few classes is moved by vector shuffles (`_shuffle`)."""
    B = TILE_ROWS
    if nb == B and rows_to_tile(x, r0, T, TILE_ROWS):
        return
    zero = cast_like(x, 0.0)
    for b in range(nb):
        for c in range(x.shape[1]):
            T[c * B + b] = x[r0 + b, c]
    for b in range(nb, B):
        for c in range(x.shape[1]):
            T[c * B + b] = zero


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _tile_store(T, out, r0, nb):
    """out[r0 + b, c] = T[c * TILE_ROWS + b] for the nb real rows of a tile."""
    B = TILE_ROWS
    if nb == B and tile_to_rows(out, r0, T, TILE_ROWS):
        return
    for b in range(nb):
        for c in range(out.shape[1]):
            out[r0 + b, c] = T[c * B + b]


STREAM_MIN_BYTES = _config.STREAM_MIN_BYTES
STREAM_MIN_TILE_BYTES = _config.STREAM_MIN_TILE_BYTES


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _streamed(out):
    """Whether the tiles write ``out`` by non-temporal stores (`_stream_tile`;
    see `_config.STREAM_MIN_BYTES`). A strided ``out`` takes plain stores:
    `stream_copy` writes a contiguous range."""
    return (out.flags.c_contiguous & (out.size * out.itemsize >= STREAM_MIN_BYTES)
            & (TILE_ROWS * out.shape[1] * out.itemsize >= STREAM_MIN_TILE_BYTES))


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _stage_for(out):
    """Scratch for `_stream_tile` on the caller's stack, TILE_ROWS rows (or
    more) of out's C. The tile functions take it as an argument, None for
    plain stores: with it on their own stack at every call, the tiles that
    do not stream ran 2 to 8 % slower (one thread, in cache, float32 C = 10
    and 32)."""
    return borrowed_rows(stack_empty(out, TILE_ELEMENTS), out.shape[1])


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _stream_tile(T, out, r0, nb, stage, staged):
    """`_tile_store` by non-temporal stores through ``stage`` (scratch of at
    least TILE_ROWS rows of C, from `_stage_for`): the tile goes to the
    stage, and the rows staged by the tile before (``staged``: their (r0,
    nb)) go out by `stream_copy`. Returns what is staged now; the caller
    ends with `_flush_stage`.

    A stage is read a tile after it was written: read at once, the stage's
    loads (aligned as ``out`` is) straddled the transpose's stores still in
    flight, and every one waited for them (float64 C = 2 fused 2.8 -> 4.0
    times the copy)."""
    _flush_stage(stage, out, staged, False)
    _tile_store(T, stage, 0, TILE_ROWS)
    return r0, nb


def _store_tile_or_stage(T, out, r0, nb, stage, staged):
    """`_tile_store` when ``stage`` is None, else `_stream_tile`; returns
    what is staged now. Compiled as an overload chosen by the stage's type:
    a branch on ``stage is None`` in an inlined helper is typed both ways,
    and `_stream_tile` does not type with a None stage."""
    if stage is None:
        _tile_store(T, out, r0, nb)
        return staged
    return _stream_tile(T, out, r0, nb, stage, staged)


@overload(_store_tile_or_stage, inline="always", jit_options=_config.ROW_ELEMENTWISE)
def _store_tile_or_stage_typed(T, out, r0, nb, stage, staged):
    if isinstance(stage, types.NoneType):

        def impl(T, out, r0, nb, stage, staged):
            _tile_store(T, out, r0, nb)
            return staged

    else:

        def impl(T, out, r0, nb, stage, staged):
            return _stream_tile(T, out, r0, nb, stage, staged)

    return impl


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _flush_stage(stage, out, staged, last):
    """Stream the staged rows ``staged`` = (r0, nb) of a tile to ``out``; when
    ``last``, fence the stores (`store_fence`) for other threads."""
    r0, nb = staged
    stream_copy(stage, out, r0 * out.shape[1], nb * out.shape[1])
    if last:
        store_fence()


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _tile_sum_exps(T, n_classes, m, s, store):
    """s[b] = sum_c exp(T[c * TILE_ROWS + b] - m[b]), down each lane in class
    order; the exps replace T when ``store``."""
    B = TILE_ROWS
    if n_classes == 2:
        # One of a two-class row's shifts is its max's own: 0 (a finite
        # max) or NaN, or the other is -inf. For such a d, exp(d) is 0 if
        # d == -inf, else d + 1 (1 or NaN), so each row takes one
        # polynomial exp and the results are those of the loop below.
        zero = cast_like(T, 0.0)
        one = cast_like(T, 1.0)
        for b in range(B):
            d0 = T[b] - m[b]
            d1 = T[B + b] - m[b]
            first = d0 == zero
            e = exp_nonpositive(d1 if first else d0)
            d = d0 if first else d1
            f = zero if d == -np.inf else d + one
            e0 = f if first else e
            e1 = e if first else f
            if store:
                T[b] = e0
                T[B + b] = e1
            s[b] = (zero + e0) + e1
        return
    for b in range(B):
        s[b] = cast_like(T, 0.0)
    for c in range(n_classes):
        for b in range(B):
            e = exp_nonpositive(T[c * B + b] - m[b])
            if store:
                T[c * B + b] = e
            s[b] += e


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _accumulate_lanes(acc, loss):
    """acc[b] += loss[b] over a tile's lanes, acc in float64. A loop of its
    own: in the loop that computes a float32 loss, the float64 lanes made
    LLVM take 8 lanes a vector for all of it (the log included), not 16."""
    for b in range(TILE_ROWS):
        acc[b] += loss[b]


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _tile_labels(labels, r0, nb, weight, ignore_index, n_classes, keep, y, state, mass):
    """The labels of the rows r0..r0 + nb of a tile, per lane b of its TILE_ROWS:
    y[b] the label (-1 for ignored, invalid and padding lanes), state[b] 0 for
    a row to compute, 1 for ignored or padding, 2 for an invalid label, and
    mass[b] = keep * w_y (0 but for rows to compute).

    y and state are kept in the logits' dtype (classes up to 2**24 are exact
    in float32), so the tile loops compare lanes of one width: int64 labels
    beside float32 lanes split every vector in two. Callers pass a constant
    ``nb`` for a full tile, which makes the label read one contiguous load
    (a clamped index made it a gather).
    """
    zero = cast_like(y, 0.0)
    one = cast_like(y, 1.0)
    two = one + one
    # Conditions combined with & and |, not ``and``/``or`` (branches, which
    # kept this loop scalar); the weights' gather in a loop of its own.
    for b in range(TILE_ROWS):
        label = labels[np.uint64(r0 + b if b < nb else r0)]  # see "Unsigned indices"
        ignored = (b >= nb) | (label == ignore_index)
        computed = (label >= 0) & (label < n_classes) & (b < nb) & (label != ignore_index)
        y[b] = index_as_float(y, label if computed else 0) if computed else -one
        state[b] = zero if computed else (one if ignored else two)
        mass[b] = keep if computed else zero
    if weight.shape[0] != 0:
        for b in range(TILE_ROWS):
            label = labels[np.uint64(r0 + b if b < nb else r0)]
            w_y = cast_like(y, weight[label if state[b] == zero else 0])
            mass[b] = mass[b] * w_y if state[b] == zero else zero


@njit(**_config.ROW_ELEMENTWISE)
def _labels_tiles(x, labels, blk0, blk1, weight, ignore_index, keep, spread, wsum, scale, g, row_loss, with_grad, inplace,
                  stage):
    """Tiles blk0..blk1 of TILE_ROWS rows, class-major; returns (their summed
    loss, the number of rows whose label is valid and not ignored).

    With rows of a few classes, loops along a row never fill a vector. Each
    tile is therefore transposed into ``T[c * TILE_ROWS + b] = x[r0 + b, c]``
    so that every loop over the classes runs down the rows, one vector lane
    per row: max, target logit, exp and sum, one (polynomial) log per lane,
    gradient, and the gradient is transposed back. Every per-row sum runs
    over the classes in order, so the results do not depend on how LLVM
    vectorizes. Same formulas and semantics as `_labels_row`. Scratch lives
    on the stack. Padding lanes of a last, partial tile are treated as
    ignored rows and never written out.
    """
    wide_vectors()  # see `_config.VECTOR_BITS`
    n, n_classes = x.shape
    B = TILE_ROWS
    T = stack_empty(x, TILE_ELEMENTS)
    m = stack_empty(x, B)  # row max
    s = stack_empty(x, B)  # sum of exps, then the gradient factor
    xy = stack_empty(x, B)  # target logit, then the row loss
    shift = stack_empty(x, B)  # sum_c w_c (x_c - max), for label smoothing
    share = stack_empty(x, B)  # scale * spread for a row to compute, else 0
    mass = stack_empty(x, B)  # keep * w_y: the target's share of the row mass
    y = stack_empty(x, B)  # the label as a float (see `_tile_labels`); -1 for ignored, invalid and padding lanes
    state = stack_empty(x, B)  # 0: a row to compute, 1: ignored or padding, 2: invalid label
    acc = stack_empty(NO_WEIGHT, B)  # float64 loss of each lane, over the tiles
    zero = cast_like(x, 0.0)
    nan = cast_like(x, np.nan)
    one = cast_like(x, 1.0)
    two = one + one
    weighted = weight.shape[0] != 0
    store = row_loss.shape[0] != 0
    rows_ahead = _rows_ahead(x)
    stream = stage is not None  # a stage from `_stage_for`: g is written by `_stream_tile`
    staged = (0, 0)
    kept = 0
    for b in range(B):
        acc[b] = 0.0
    for blk in range(blk0, blk1):
        r0 = blk * B
        nb = min(B, n - r0)
        _tile_load(x, r0, nb, T)
        if nb == B:  # a constant tile length: the labels are one contiguous load
            _tile_labels(labels, r0, B, weight, ignore_index, n_classes, keep, y, state, mass)
        else:
            _tile_labels(labels, r0, nb, weight, ignore_index, n_classes, keep, y, state, mass)
        if not with_grad:  # only the loss-only callers use the count
            for b in range(B):
                kept += np.int64(state[b] == zero)  # an integer sum: vectorizes, a float one would not
        for b in range(B):
            m[b] = T[b]
            xy[b] = T[b] if y[b] == zero else zero
        # The memory of the tile rows_ahead on is asked for a class's share
        # at a time, over this tile's loops (see `_config.PREFETCH_AHEAD_BYTES`).
        ahead = r0 + rows_ahead
        _prefetch_bytes(labels, ahead * labels.itemsize, B * labels.itemsize, False)
        _prefetch_tile_share(x, ahead, 0, False)
        for c in range(1, n_classes):
            _prefetch_tile_share(x, ahead, c, False)
            cf = cast_like(x, c)
            for b in range(B):
                t = T[np.uint64(c * B + b)]  # see "Unsigned indices": a signed index here made every load a gather
                m[b] = maxnum(m[b], t)
                xy[b] = t if y[b] == cf else xy[b]
        if spread != zero:
            for b in range(B):
                shift[b] = zero
            for c in range(n_classes):
                w = cast_like(x, weight[c]) if weighted else cast_like(x, 1.0)
                for b in range(B):
                    d = w * (T[c * B + b] - m[b])
                    shift[b] += d if w != zero else zero  # 0 * log 0 = 0
        _tile_sum_exps(T, n_classes, m, s, with_grad)
        for b in range(B):
            log_s = log_sum(s[b])
            target_mass = mass[b]
            loss = target_mass * ((m[b] - xy[b]) + log_s) if target_mass != zero else zero
            if spread != zero:
                loss += spread * (wsum * log_s - shift[b])
            loss = zero if state[b] == one else loss
            xy[b] = nan if state[b] == two else loss
        _accumulate_lanes(acc, xy)
        if store:
            for b in range(nb):
                row_loss[np.uint64(r0 + b)] = xy[b]
        if with_grad:
            # The row states go into per-lane factors here, once a row, so
            # that the loop over the logits has one select (the target's):
            # an ignored row gets factor 0 and no smoothing share, an
            # invalid one a NaN factor. 0 * exp is 0 only for a finite exp:
            # an ignored row whose sum of exps is NaN (a NaN or +inf logit,
            # or all -inf) is zeroed after the loop.
            spread_scale = scale * spread
            unfinite_ignored = False
            for b in range(B):
                factor = scale * (mass[b] + spread * wsum) / s[b]
                unfinite_ignored |= (state[b] == one) & (s[b] != s[b])  # an or: vectorizes, a float sum would not
                factor = zero if state[b] == one else factor
                s[b] = nan if state[b] == two else factor
                share[b] = spread_scale if state[b] == zero else zero
                mass[b] *= scale
            for c in range(n_classes):
                if not (inplace or stream):  # a streamed gradient is not read
                    _prefetch_tile_share(g, ahead, c, True)
                w = cast_like(x, weight[c]) if weighted else cast_like(x, 1.0)
                cf = cast_like(x, c)
                if spread == zero:
                    for b in range(B):
                        v = s[b] * T[c * B + b]
                        T[c * B + b] = v - mass[b] if y[b] == cf else v
                else:
                    for b in range(B):
                        v = s[b] * T[c * B + b] - share[b] * w
                        T[c * B + b] = v - mass[b] if y[b] == cf else v
            if unfinite_ignored:
                for b in range(B):
                    if state[b] == one:
                        for c in range(n_classes):
                            T[c * B + b] = zero
            staged = _store_tile_or_stage(T, g, r0, nb, stage, staged)
    if stage is not None:
        _flush_stage(stage, g, staged, True)
    return _lanes_total(acc), kept


@njit(**_config.ROW_ELEMENTWISE)
def _labels_group(x, labels, grp, tiled, per_group, weight, ignore_index, keep, spread, wsum, z_loss, cap, scale, g,
                  row_loss, lse, with_grad, inplace, options):
    """(Summed loss, rows with a valid label not ignored) of group ``grp``
    (see `_groups`), by tiles or by rows. Tiles take no z-loss, soft cap or
    lse: callers passing them do not tile."""
    start = grp * per_group
    if tiled:
        n_tiles = (x.shape[0] + TILE_ROWS - 1) // TILE_ROWS
        stop = min(n_tiles, start + per_group)
        if with_grad and not inplace and _streamed(g):
            return _labels_tiles(x, labels, start, stop, weight, ignore_index, keep, spread, wsum, scale, g, row_loss,
                                 with_grad, inplace, _stage_for(g))
        return _labels_tiles(x, labels, start, stop, weight, ignore_index, keep, spread, wsum, scale, g, row_loss,
                             with_grad, inplace, None)
    return _labels_rows(x, labels, start, min(x.shape[0], start + per_group), weight, ignore_index, keep, spread,
                        wsum, z_loss, cap, scale, g, row_loss, lse, with_grad, inplace, options)


@njit(**_config.ROW_ELEMENTWISE)
def _probs_tiles(x, t, blk0, blk1, weight, keep, spread, scale, g, row_loss, with_grad, inplace, stage):
    """Tiles blk0..blk1 of TILE_ROWS rows for probability targets, class-major
    as in `_labels_tiles` (logits and targets both transposed); returns their
    summed loss. Same formulas and semantics as `_probs_row`. Padding lanes
    hold zero logits and zero targets; their loss is dropped and they are
    never written out."""
    wide_vectors()  # see `_config.VECTOR_BITS`
    n, n_classes = x.shape
    B = TILE_ROWS
    T = stack_empty(x, TILE_ELEMENTS)
    Q = stack_empty(x, TILE_ELEMENTS)  # the target, then q_c = (keep t_c + spread) w_c
    m = stack_empty(x, B)  # row max
    s = stack_empty(x, B)  # sum of exps, then the gradient factor
    dot = stack_empty(x, B)  # sum_c q_c (x_c - max), then the row loss
    mass = stack_empty(x, B)  # sum_c q_c
    acc = stack_empty(NO_WEIGHT, B)  # float64 loss of each lane, over the tiles
    zero = cast_like(x, 0.0)
    weighted = weight.shape[0] != 0
    store = row_loss.shape[0] != 0
    rows_ahead = _rows_ahead(x)
    stream = stage is not None  # see `_labels_tiles`
    staged = (0, 0)
    for b in range(B):
        acc[b] = 0.0
    for blk in range(blk0, blk1):
        r0 = blk * B
        nb = min(B, n - r0)
        _tile_load(x, r0, nb, T)
        _tile_load(t, r0, nb, Q)
        for b in range(B):
            m[b] = T[b]
            dot[b] = zero
            mass[b] = zero
        ahead = r0 + rows_ahead
        _prefetch_tile_share(x, ahead, 0, False)  # see `_labels_tiles`
        for c in range(1, n_classes):
            _prefetch_tile_share(x, ahead, c, False)
            for b in range(B):
                m[b] = maxnum(m[b], T[np.uint64(c * B + b)])  # see "Unsigned indices"
        for c in range(n_classes):
            _prefetch_tile_share(t, ahead, c, False)
            w = cast_like(x, weight[c]) if weighted else cast_like(x, 1.0)
            for b in range(B):
                q = keep * Q[c * B + b] + spread
                q = q * w if weighted else q
                Q[c * B + b] = q
                dot[b] += q * (T[c * B + b] - m[b]) if q != zero else zero  # 0 * log 0 = 0
                mass[b] += q
        _tile_sum_exps(T, n_classes, m, s, with_grad)
        for b in range(B):
            log_s = log_sum(s[b])
            loss = mass[b] * log_s - dot[b] if mass[b] != zero else -dot[b]
            dot[b] = loss if b < nb else zero  # label smoothing gives padding lanes a mass
            if with_grad:
                s[b] = scale * mass[b] / s[b]
        _accumulate_lanes(acc, dot)
        if store:
            for b in range(nb):
                row_loss[np.uint64(r0 + b)] = dot[b]
        if with_grad:
            for c in range(n_classes):
                if not (inplace or stream):  # a streamed gradient is not read
                    _prefetch_tile_share(g, ahead, c, True)
                for b in range(B):
                    T[c * B + b] = s[b] * T[c * B + b] - scale * Q[c * B + b]
            staged = _store_tile_or_stage(T, g, r0, nb, stage, staged)
    if stage is not None:
        _flush_stage(stage, g, staged, True)
    return _lanes_total(acc)


@njit(**_config.ROW_ELEMENTWISE)
def _probs_group(x, t, grp, tiled, per_group, weight, keep, spread, scale, g, row_loss, with_grad, inplace):
    """Summed loss of group ``grp`` (see `_groups`) for probability targets, by tiles or by rows."""
    start = grp * per_group
    if tiled:
        n_tiles = (x.shape[0] + TILE_ROWS - 1) // TILE_ROWS
        stop = min(n_tiles, start + per_group)
        if with_grad and not inplace and _streamed(g):
            return _probs_tiles(x, t, start, stop, weight, keep, spread, scale, g, row_loss, with_grad, inplace,
                                _stage_for(g))
        return _probs_tiles(x, t, start, stop, weight, keep, spread, scale, g, row_loss, with_grad, inplace, None)
    store = row_loss.shape[0] != 0
    total = 0.0
    for i in range(start, min(x.shape[0], start + per_group)):
        _prefetch_row_ahead(x, i)
        _prefetch_row_ahead(t, i)
        loss = _probs_row(x, i, t, weight, keep, spread, scale, g, with_grad, inplace)
        if store:
            row_loss[i] = loss
        total += loss
    return total


# --------------------------------------------------------------------------
# Fused cross-entropy kernels, class-index targets. Each is compiled twice
# by `_twins`: the parallel kernel and its ``_serial`` twin.
# --------------------------------------------------------------------------


@njit(inline="always", **_config.ROW_ELEMENTWISE)
def _no_options(logits):
    """(0 in the logits' dtype, an empty lse buffer): no z-loss, no soft cap, no lse."""
    return cast_like(logits, 0.0), stack_empty(logits, 1)[:0]


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
    row_loss : (N,) output of the logits' dtype for the per-row losses, or
        an empty array when only their total is wanted.

    Returns
    -------
    float
        The summed row losses, accumulated in float64 in a fixed order
        (per group of rows, then over the groups; see `_groups`).
    """
    logits = borrowed(logits)  # see `borrowed`
    labels = borrowed(labels)
    weight = borrowed(weight)
    grad = borrowed(grad)
    row_loss = borrowed(row_loss)
    _check_logits_and_weight(logits, weight)
    _check_labels_arg(logits, labels)
    _check_grad(logits, grad)
    _check_row_loss(logits, row_loss)
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    wsum = _class_weight_sum(logits, weight)
    tiled, n_groups, per_group = _groups(logits, grad.flags.c_contiguous)
    zero, no_lse = _no_options(logits)
    partial = stack_empty(NO_WEIGHT, SUM_GROUPS)
    for grp in prange(n_groups):
        partial[grp], _ = _labels_group(logits, labels, np.int64(grp), tiled, per_group, weight, ignore_index, keep,
                                        spread, wsum, zero, zero, scale, grad, row_loss, no_lse, True, False, False)
    return _sum_groups(partial, n_groups)


def xent_labels_fused_inplace(logits, labels, weight, ignore_index, label_smoothing, grad_scale, row_loss):
    """`xent_labels_fused` writing the gradient over ``logits``.

    One array in and out: one read and one write of the logits per element
    in the common case, and no runtime alias check in the compiled loops.
    """
    logits = borrowed(logits)  # see `borrowed`
    labels = borrowed(labels)
    weight = borrowed(weight)
    row_loss = borrowed(row_loss)
    _check_logits_and_weight(logits, weight)
    _check_labels_arg(logits, labels)
    _check_row_loss(logits, row_loss)
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    wsum = _class_weight_sum(logits, weight)
    tiled, n_groups, per_group = _groups(logits, True)
    zero, no_lse = _no_options(logits)
    partial = stack_empty(NO_WEIGHT, SUM_GROUPS)
    for grp in prange(n_groups):
        partial[grp], _ = _labels_group(logits, labels, np.int64(grp), tiled, per_group, weight, ignore_index, keep,
                                        spread, wsum, zero, zero, scale, logits, row_loss, no_lse, True, True, False)
    return _sum_groups(partial, n_groups)


def xent_labels_loss_counted(logits, labels, weight, ignore_index, label_smoothing, row_loss):
    """Per-row losses only (no gradient) for class-index targets, and the
    number of rows they count.

    Same arguments as `xent_labels_fused` without ``grad_scale`` and
    ``grad``; reads the logits and writes ``row_loss``.

    Returns
    -------
    (total, kept) : (float, float)
        ``total`` as `xent_labels_fused` returns it; ``kept`` the number of
        rows whose label is in ``[0, C)`` and not ``ignore_index``. With no
        invalid label (the total is then not NaN) and no weight, ``kept`` is
        the "mean" denominator: a caller that only needs the reduced loss
        can leave `check_labels` until the total comes out NaN, and read
        the labels once.
    """
    logits = borrowed(logits)  # see `borrowed`
    labels = borrowed(labels)
    weight = borrowed(weight)
    row_loss = borrowed(row_loss)
    _check_logits_and_weight(logits, weight)
    _check_labels_arg(logits, labels)
    _check_row_loss(logits, row_loss)
    keep, spread = _smoothing_split(logits, label_smoothing)
    wsum = _class_weight_sum(logits, weight)
    one = cast_like(logits, 1.0)
    tiled, n_groups, per_group = _groups(logits, True)
    zero, no_lse = _no_options(logits)
    partial = stack_empty(NO_WEIGHT, SUM_GROUPS)
    kept = stack_empty(NO_WEIGHT, SUM_GROUPS)
    for grp in prange(n_groups):
        partial[grp], kept[grp] = _labels_group(logits, labels, np.int64(grp), tiled, per_group, weight, ignore_index,
                                                keep, spread, wsum, zero, zero, one, logits, row_loss, no_lse, False,
                                                False, False)
    return _sum_groups(partial, n_groups), _sum_groups(kept, n_groups)


xent_labels_fused, xent_labels_fused_serial = _twins(xent_labels_fused)
xent_labels_fused_inplace, xent_labels_fused_inplace_serial = _twins(xent_labels_fused_inplace)
xent_labels_loss_counted, xent_labels_loss_counted_serial = _twins(xent_labels_loss_counted)


@njit(**_config.SERIAL)
def xent_labels_loss(logits, labels, weight, ignore_index, label_smoothing, row_loss):
    """`xent_labels_loss_counted` returning the summed row losses alone (its
    loop runs in parallel)."""
    return xent_labels_loss_counted(logits, labels, weight, ignore_index, label_smoothing, row_loss)[0]


@njit(**_config.SERIAL)
def xent_labels_loss_serial(logits, labels, weight, ignore_index, label_smoothing, row_loss):
    """`xent_labels_loss_counted_serial` returning the summed row losses alone."""
    return xent_labels_loss_counted_serial(logits, labels, weight, ignore_index, label_smoothing, row_loss)[0]


# --------------------------------------------------------------------------
# The same kernels with the options of language-model training: a z-loss,
# a soft cap on the logits and each row's log-sum-exp. They take the row
# path at every class count (the class-major tiles take none of these), so
# the kernels above stay as they are, bit for bit, for everyone else.
# --------------------------------------------------------------------------


@njit(**_config.ROW_ELEMENTWISE)
def _ext_setup(logits, labels, weight, label_smoothing, z_loss, softcap, row_loss, lse):
    """Checks and per-call constants of the ext kernels: (keep, spread, wsum, z, cap)."""
    _check_logits_and_weight(logits, weight)
    _check_labels_arg(logits, labels)
    _check_row_loss(logits, row_loss)
    _check_lse(logits, lse)
    if not (softcap >= 0.0 and softcap < np.inf):
        raise ValueError("softcap must be finite and >= 0 (0 for no soft cap)")
    keep, spread = _smoothing_split(logits, label_smoothing)
    return keep, spread, _class_weight_sum(logits, weight), cast_like(logits, z_loss), cast_like(logits, softcap)


def xent_labels_fused_ext(logits, labels, weight, ignore_index, label_smoothing, z_loss, softcap, grad_scale, grad,
                          row_loss, lse):
    """`xent_labels_fused` with a z-loss, a soft cap and the rows' log-sum-exp.

    Parameters
    ----------
    logits, labels, weight, ignore_index, label_smoothing, grad_scale, grad, row_loss
        As in `xent_labels_fused`.
    z_loss : float
        Adds ``z_loss * lse**2`` to each non-ignored row's loss, without the
        class weight (PaLM; Liger-Kernel's ``lse_square_scale``).
    softcap : float
        When > 0, the logits are replaced by ``softcap * tanh(logits / softcap)``
        first (Gemma 2); loss, z-loss, lse and the gradient (through the
        chain rule) all see the capped logits. 0: no cap.
    lse : (N,) output of the logits' dtype for each row's log-sum-exp (of
        the capped logits; ignored rows included), or an empty array.

    Returns
    -------
    float
        The summed row losses, as in `xent_labels_fused`.
    """
    logits = borrowed(logits)  # see `borrowed`
    labels = borrowed(labels)
    weight = borrowed(weight)
    grad = borrowed(grad)
    row_loss = borrowed(row_loss)
    lse = borrowed(lse)
    keep, spread, wsum, z, cap = _ext_setup(logits, labels, weight, label_smoothing, z_loss, softcap, row_loss, lse)
    _check_grad(logits, grad)
    scale = cast_like(logits, grad_scale)
    _, n_groups, per_group = _groups(logits, False)
    partial = stack_empty(NO_WEIGHT, SUM_GROUPS)
    for grp in prange(n_groups):
        partial[grp], _ = _labels_group(logits, labels, np.int64(grp), False, per_group, weight, ignore_index, keep,
                                        spread, wsum, z, cap, scale, grad, row_loss, lse, True, False, True)
    return _sum_groups(partial, n_groups)


def xent_labels_fused_inplace_ext(logits, labels, weight, ignore_index, label_smoothing, z_loss, softcap, grad_scale,
                                  row_loss, lse):
    """`xent_labels_fused_ext` writing the gradient over ``logits``."""
    logits = borrowed(logits)  # see `borrowed`
    labels = borrowed(labels)
    weight = borrowed(weight)
    row_loss = borrowed(row_loss)
    lse = borrowed(lse)
    keep, spread, wsum, z, cap = _ext_setup(logits, labels, weight, label_smoothing, z_loss, softcap, row_loss, lse)
    scale = cast_like(logits, grad_scale)
    _, n_groups, per_group = _groups(logits, False)
    partial = stack_empty(NO_WEIGHT, SUM_GROUPS)
    for grp in prange(n_groups):
        partial[grp], _ = _labels_group(logits, labels, np.int64(grp), False, per_group, weight, ignore_index, keep,
                                        spread, wsum, z, cap, scale, logits, row_loss, lse, True, True, True)
    return _sum_groups(partial, n_groups)


def xent_labels_loss_ext(logits, labels, weight, ignore_index, label_smoothing, z_loss, softcap, row_loss, lse):
    """`xent_labels_loss` with a z-loss, a soft cap and the rows' log-sum-exp
    (see `xent_labels_fused_ext`); returns the summed row losses alone."""
    logits = borrowed(logits)  # see `borrowed`
    labels = borrowed(labels)
    weight = borrowed(weight)
    row_loss = borrowed(row_loss)
    lse = borrowed(lse)
    keep, spread, wsum, z, cap = _ext_setup(logits, labels, weight, label_smoothing, z_loss, softcap, row_loss, lse)
    one = cast_like(logits, 1.0)
    _, n_groups, per_group = _groups(logits, False)
    partial = stack_empty(NO_WEIGHT, SUM_GROUPS)
    for grp in prange(n_groups):
        partial[grp], _ = _labels_group(logits, labels, np.int64(grp), False, per_group, weight, ignore_index, keep,
                                        spread, wsum, z, cap, one, logits, row_loss, lse, False, False, True)
    return _sum_groups(partial, n_groups)


xent_labels_fused_ext, xent_labels_fused_ext_serial = _twins(xent_labels_fused_ext)
xent_labels_fused_inplace_ext, xent_labels_fused_inplace_ext_serial = _twins(xent_labels_fused_inplace_ext)
xent_labels_loss_ext, xent_labels_loss_ext_serial = _twins(xent_labels_loss_ext)


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
        The summed row losses, as in `xent_labels_fused`.
    """
    logits = borrowed(logits)  # see `borrowed`
    target = borrowed(target)
    weight = borrowed(weight)
    grad = borrowed(grad)
    row_loss = borrowed(row_loss)
    _check_logits_and_weight(logits, weight)
    _check_target(logits, target)
    _check_grad(logits, grad)
    _check_row_loss(logits, row_loss)
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    tiled, n_groups, per_group = _groups(logits, grad.flags.c_contiguous)
    partial = stack_empty(NO_WEIGHT, SUM_GROUPS)
    for grp in prange(n_groups):
        partial[grp] = _probs_group(logits, target, np.int64(grp), tiled, per_group, weight, keep, spread, scale, grad,
                                    row_loss, True, False)
    return _sum_groups(partial, n_groups)


def xent_probs_fused_inplace(logits, target, weight, label_smoothing, grad_scale, row_loss):
    """`xent_probs_fused` writing the gradient over ``logits``."""
    logits = borrowed(logits)  # see `borrowed`
    target = borrowed(target)
    weight = borrowed(weight)
    row_loss = borrowed(row_loss)
    _check_logits_and_weight(logits, weight)
    _check_target(logits, target)
    _check_row_loss(logits, row_loss)
    keep, spread = _smoothing_split(logits, label_smoothing)
    scale = cast_like(logits, grad_scale)
    tiled, n_groups, per_group = _groups(logits, True)
    partial = stack_empty(NO_WEIGHT, SUM_GROUPS)
    for grp in prange(n_groups):
        partial[grp] = _probs_group(logits, target, np.int64(grp), tiled, per_group, weight, keep, spread, scale, logits,
                                    row_loss, True, True)
    return _sum_groups(partial, n_groups)


def xent_probs_loss(logits, target, weight, label_smoothing, row_loss):
    """Per-row losses only (no gradient) for probability targets."""
    logits = borrowed(logits)  # see `borrowed`
    target = borrowed(target)
    weight = borrowed(weight)
    row_loss = borrowed(row_loss)
    _check_logits_and_weight(logits, weight)
    _check_target(logits, target)
    _check_row_loss(logits, row_loss)
    keep, spread = _smoothing_split(logits, label_smoothing)
    one = cast_like(logits, 1.0)
    tiled, n_groups, per_group = _groups(logits, True)
    partial = stack_empty(NO_WEIGHT, SUM_GROUPS)
    for grp in prange(n_groups):
        partial[grp] = _probs_group(logits, target, np.int64(grp), tiled, per_group, weight, keep, spread, one, logits,
                                    row_loss, False, False)
    return _sum_groups(partial, n_groups)


xent_probs_fused, xent_probs_fused_serial = _twins(xent_probs_fused)
xent_probs_fused_inplace, xent_probs_fused_inplace_serial = _twins(xent_probs_fused_inplace)
xent_probs_loss, xent_probs_loss_serial = _twins(xent_probs_loss)


# --------------------------------------------------------------------------
# Validation of class indices and the "mean" denominator: one pass over
# the labels, in parallel groups. At C = 2 the int64 labels are as large as
# the float32 logits, and a serial pass with an early exit took 1.2 to 1.4
# times a copy of the logits; this one counts invalid labels instead of
# stopping at the first (the loop vectorizes) and looks for the first only
# when there is one.
# --------------------------------------------------------------------------

LABEL_LANES = 8


@njit(**_config.ROW_ELEMENTWISE)
def _count_labels(labels, n_classes, ignore_index, start, stop):
    """(invalid labels, labels not ignored) among labels start..stop."""
    bad = 0
    kept = 0
    for i in range(start, stop):
        y = labels[np.uint64(i)]  # see "Unsigned indices"
        counted = y != ignore_index
        bad += np.int64(counted & ((y < 0) | (y >= n_classes)))
        kept += np.int64(counted)
    return bad, kept


@njit(**_config.ROW_ELEMENTWISE)
def _label_group(labels, weight, n_classes, ignore_index, start, stop):
    """(number of invalid labels, their mean denominator) over labels start..stop.

    The weighted denominator is summed in LABEL_LANES interleaved float64
    lanes and a fixed tree: a fixed order that the compiler vectorizes.
    """
    bad = 0
    acc = stack_empty(NO_WEIGHT, LABEL_LANES)
    for k in range(LABEL_LANES):
        acc[k] = 0.0
    weighted = weight.shape[0] != 0
    if not weighted:
        bad, kept = _count_labels(labels, n_classes, ignore_index, start, stop)
        return bad, float(kept)
    main = stop - (stop - start) % LABEL_LANES
    for i0 in range(start, main, LABEL_LANES):
        for k in range(LABEL_LANES):
            y = labels[np.uint64(i0 + k)]
            invalid = (y < 0) | (y >= n_classes)
            counted = y != ignore_index
            bad += np.int64(counted & invalid)
            acc[k] += weight[0 if invalid else y] if counted & (not invalid) else 0.0
    for i in range(main, stop):
        y = labels[np.uint64(i)]
        invalid = (y < 0) | (y >= n_classes)
        counted = y != ignore_index
        bad += np.int64(counted & invalid)
        acc[i - main] += weight[0 if invalid else y] if counted & (not invalid) else 0.0
    return bad, _lanes_total(acc)


def check_labels(labels, weight, n_classes, ignore_index):
    """Validate class indices and compute the "mean" denominator, in one pass.

    Returns
    -------
    (first_invalid, mean_denominator) : (int, float)
        ``first_invalid`` is the index of the first label outside
        ``[0, n_classes)`` that is not ``ignore_index``, or -1 when every
        label is valid. ``mean_denominator`` is the sum of ``weight[label]``
        over the rows not equal to ``ignore_index`` (their count when
        ``weight`` is empty), as PyTorch defines the mean, summed in a
        fixed order (groups of labels fixed by their number); NaN if a
        label is invalid.

    Raises
    ------
    ValueError
        If ``weight`` is neither empty nor of length ``n_classes``.
    """
    labels = borrowed(labels)  # see `borrowed`
    weight = borrowed(weight)
    if weight.shape[0] != 0 and weight.shape[0] != n_classes:
        raise ValueError("weight must have length n_classes (one per class), or 0 for no weights")
    n = labels.shape[0]
    per_group = max(_config.LABEL_GROUP_MIN, (n + SUM_GROUPS - 1) // SUM_GROUPS)
    n_groups = (n + per_group - 1) // per_group
    partial = stack_empty(NO_WEIGHT, SUM_GROUPS)
    bad = stack_empty(NO_WEIGHT, SUM_GROUPS)
    for grp in prange(n_groups):
        start = np.int64(grp) * per_group
        nbad, partial[grp] = _label_group(labels, weight, n_classes, ignore_index, start, min(n, start + per_group))
        bad[grp] = nbad
    for grp in range(n_groups):
        if bad[grp] != 0.0:
            for i in range(grp * per_group, n):
                y = labels[i]
                if y != ignore_index and (y < 0 or y >= n_classes):
                    return i, np.nan
    return -1, _sum_groups(partial, n_groups)


check_labels, check_labels_serial = _twins(check_labels)


# --------------------------------------------------------------------------
# One row, for callers in compiled code (the simulation user: one agent's
# action scores at a time). The batch kernels' per-call setup (groups,
# partial sums, calls between compiled functions passing arrays) costs
# about twice a 10-class row's arithmetic; this entry is inlined into its
# caller and runs the same row helper, so it gives the same bits as a
# one-row batch call.
# --------------------------------------------------------------------------


@njit(inline="always", **_config.SERIAL)
def xent_label_row(logits, label, weight, ignore_index, label_smoothing, grad_scale, grad, with_grad, inplace):
    """Loss of row 0 of a (1, C) ``logits`` against class index ``label``.

    With ``with_grad`` the gradient, times ``grad_scale``, goes into row 0
    of ``grad`` (which is ``logits`` itself when ``inplace``). A label
    outside ``[0, C)`` that is not ``ignore_index`` gives NaN, as in the
    batch kernels; check it first to raise instead.
    """
    # No `borrowed` here: this body is inlined into its caller, and the
    # reference counts of the caller's arrays are its business.
    _check_logits_and_weight(logits, weight)
    if with_grad:
        _check_grad(logits, grad)
    keep, spread = _smoothing_split(logits, label_smoothing)
    wsum = _class_weight_sum(logits, weight)
    zero, no_lse = _no_options(logits)
    return _labels_row(logits, np.int64(0), label, weight, ignore_index, keep, spread, wsum, zero, zero,
                       cast_like(logits, grad_scale), grad, no_lse, with_grad, inplace, False)


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


@njit(**_config.ROW_ELEMENTWISE)
def _softmax_tiles(x, out, blk0, blk1, log, stage):
    """Tiles blk0..blk1 of TILE_ROWS rows, class-major as in `_labels_tiles`:
    out = log_softmax(x) when ``log``, else softmax(x); out may be x. The
    row helpers' formulas, with the polynomial log of `log_sum`."""
    wide_vectors()  # see `_config.VECTOR_BITS`
    n, n_classes = x.shape
    B = TILE_ROWS
    T = stack_empty(x, TILE_ELEMENTS)
    m = stack_empty(x, B)  # row max
    s = stack_empty(x, B)  # sum of exps, then its log (log) or inverse
    rows_ahead = _rows_ahead(x)
    stream = stage is not None  # see `_labels_tiles`
    staged = (0, 0)
    for blk in range(blk0, blk1):
        r0 = blk * B
        nb = min(B, n - r0)
        _tile_load(x, r0, nb, T)
        for b in range(B):
            m[b] = T[b]
        ahead = r0 + rows_ahead
        _prefetch_tile_share(x, ahead, 0, False)  # see `_labels_tiles`
        for c in range(1, n_classes):
            _prefetch_tile_share(x, ahead, c, False)
            for b in range(B):
                m[b] = maxnum(m[b], T[np.uint64(c * B + b)])  # see "Unsigned indices"
        _tile_sum_exps(T, n_classes, m, s, not log)
        if log:
            for b in range(B):
                s[b] = log_sum(s[b])
            for c in range(n_classes):
                if not stream:  # a streamed output is not read
                    _prefetch_tile_share(out, ahead, c, True)
                for b in range(B):
                    T[c * B + b] = (T[c * B + b] - m[b]) - s[b]
        else:
            for b in range(B):
                s[b] = cast_like(x, 1.0) / s[b]
            for c in range(n_classes):
                if not stream:
                    _prefetch_tile_share(out, ahead, c, True)
                for b in range(B):
                    T[c * B + b] *= s[b]
        staged = _store_tile_or_stage(T, out, r0, nb, stage, staged)
    if stage is not None:
        _flush_stage(stage, out, staged, True)


@njit(**_config.ROW_ELEMENTWISE)
def _softmax_group(x, out, grp, tiled, per_group, log):
    """Group ``grp`` of `_groups` for `log_softmax_rows` / `softmax_rows`, by tiles or by rows."""
    start = grp * per_group
    if tiled:
        n_tiles = (x.shape[0] + TILE_ROWS - 1) // TILE_ROWS
        stop = min(n_tiles, start + per_group)
        if _streamed(out):
            _softmax_tiles(x, out, start, stop, log, _stage_for(out))
        else:
            _softmax_tiles(x, out, start, stop, log, None)
        return
    for i in range(start, min(x.shape[0], start + per_group)):
        _prefetch_row_ahead(x, i)
        if log:
            _log_softmax_row(x, i, out)
        else:
            _softmax_row(x, i, out)


def log_softmax_rows(x, out):
    """out[i] = log_softmax(x[i]) for a 2-D C-contiguous x; out may be x.
    Rows of at most TILE_MAX_CLASSES[itemsize] classes go by class-major tiles."""
    x = borrowed(x)  # see `borrowed`
    out = borrowed(out)
    _check_logits_and_weight(x, x[0:0, 0])
    _check_out(x, out)
    tiled, n_groups, per_group = _groups(x, out.flags.c_contiguous)
    for grp in prange(n_groups):
        _softmax_group(x, out, np.int64(grp), tiled, per_group, True)


def softmax_rows(x, out):
    """out[i] = softmax(x[i]) for a 2-D C-contiguous x; out may be x.
    Rows of at most TILE_MAX_CLASSES[itemsize] classes go by class-major tiles."""
    x = borrowed(x)  # see `borrowed`
    out = borrowed(out)
    _check_logits_and_weight(x, x[0:0, 0])
    _check_out(x, out)
    tiled, n_groups, per_group = _groups(x, out.flags.c_contiguous)
    for grp in prange(n_groups):
        _softmax_group(x, out, np.int64(grp), tiled, per_group, False)


def logsumexp_rows(x, out):
    """out[i] = log(sum(exp(x[i]))) for a 2-D C-contiguous x, out of shape (N,)."""
    x = borrowed(x)  # see `borrowed`
    out = borrowed(out)
    _check_logits_and_weight(x, x[0:0, 0])
    _check_out_rows(x, out)
    for i in prange(x.shape[0]):
        out[i] = _logsumexp_row(x, np.int64(i))


log_softmax_rows, log_softmax_rows_serial = _twins(log_softmax_rows)
softmax_rows, softmax_rows_serial = _twins(softmax_rows)
logsumexp_rows, logsumexp_rows_serial = _twins(logsumexp_rows)


# --------------------------------------------------------------------------
# Vocab-sharded cross-entropy (`fastxent.distributed`). Each process holds
# the columns vocab_start .. vocab_start + width of the logits of the same
# rows. A call runs in two passes over the shard with two collectives on
# per-row float64 statistics between them, none of which these kernels do:
#
#   1. `vocab_shard_partials` reads the shard (nothing is written, so a
#      call refused after a collective leaves every buffer as it was):
#      local row max m_k, sum_c exp(x_c - m_k), sum_c w_c (x_c - r_k)
#      (r_k = m_k, or 0 for a shard row without a finite max), the target
#      logit and weight where the label falls in the shard.
#   -- all-reduce MAX of the row maxes: M = max_k m_k
#   2. `vocab_shard_rebase` moves the sums to the global max (O(N)).
#   -- all-reduce SUM of the rebased statistics
#   3. `vocab_shard_fused` (and its in-place and loss-only forms) assembles
#      each row's loss from the global statistics, exactly as `_labels_row`
#      does, and writes the shard's slice of the gradient.
# --------------------------------------------------------------------------

#: Columns of the per-row statistics: sum of exps, weighted shift sum,
#: target logit, target weight (the last two from the shard holding the target).
SHARD_SUM_EXP, SHARD_SHIFT, SHARD_TARGET, SHARD_WEIGHT = range(4)
SHARD_STATS = 4


@njit(**_config.ROW_ELEMENTWISE)
def _check_shard(logits, labels, weight, row_max, stats):
    _check_logits_and_weight(logits, weight)
    _check_labels_arg(logits, labels)
    if row_max.shape[0] != logits.shape[0]:
        raise ValueError("row_max must have one entry per row of logits")
    if stats.shape[0] != logits.shape[0] or stats.shape[1] != SHARD_STATS:
        raise ValueError("stats must have shape (logits.shape[0], SHARD_STATS)")


def vocab_shard_partials(logits, labels, vocab_start, weight, ignore_index, with_shift, row_max, stats):
    """Per-row statistics of one vocabulary shard, relative to its own maxima.

    Parameters
    ----------
    logits : (N, W) float32/float64, C-contiguous: columns ``vocab_start``
        to ``vocab_start + W`` of the full (N, V) logits.
    labels : (N,) int32/int64 global class indices (or ``ignore_index``).
    vocab_start : int
    weight : (W,) the shard's class weights, or empty.
    ignore_index : int
    with_shift : bool
        Compute the weighted shift sum (needed for label smoothing only).
    row_max : (N,) float64 output: the shard's row maxima (-inf for
        ignored rows, which then take no part in the global maximum).
    stats : (N, SHARD_STATS) float64 output; see the SHARD_* columns.
    """
    logits = borrowed(logits)  # see `borrowed`
    labels = borrowed(labels)
    weight = borrowed(weight)
    row_max = borrowed(row_max)
    stats = borrowed(stats)
    _check_shard(logits, labels, weight, row_max, stats)
    width = logits.shape[1]
    for i in prange(logits.shape[0]):
        ii = np.int64(i)
        for k in range(SHARD_STATS):
            stats[ii, k] = 0.0
        row_max[ii] = -np.inf
        y = labels[ii]
        if y == ignore_index:
            continue
        m = _row_max(logits, ii)
        row_max[ii] = m
        finite = m > -np.inf and m < np.inf
        if m > -np.inf:  # a shard row of -inf only adds no exps (exp(-inf - -inf) would be NaN)
            stats[ii, SHARD_SUM_EXP] = _row_sum_exp(logits, ii, m)
        if with_shift:
            stats[ii, SHARD_SHIFT] = _row_weighted_shift_sum(logits, ii, m if finite else cast_like(logits, 0.0), weight)
        local = y - vocab_start
        if local >= 0 and local < width:
            stats[ii, SHARD_TARGET] = logits[ii, local]
            stats[ii, SHARD_WEIGHT] = 1.0 if weight.shape[0] == 0 else weight[local]


vocab_shard_partials, vocab_shard_partials_serial = _twins(vocab_shard_partials)


@njit(**_config.SERIAL)
def vocab_shard_rebase(row_max, global_max, weight_sum, stats):
    """Rebase one shard's `vocab_shard_partials` to the global row maxima (O(N)).

    ``weight_sum`` is the sum of the shard's class weights (its width when
    unweighted). Afterwards the statistics of all shards can be summed.
    """
    if global_max.shape[0] != row_max.shape[0] or stats.shape[0] != row_max.shape[0]:
        raise ValueError("row_max, global_max and stats must have one entry per row")
    for i in range(row_max.shape[0]):
        m, big = row_max[i], global_max[i]
        if m > -np.inf:
            stats[i, SHARD_SUM_EXP] *= math.exp(m - big)
        finite = m > -np.inf and m < np.inf
        stats[i, SHARD_SHIFT] += weight_sum * ((m if finite else 0.0) - big)


@njit(**_config.ROW_ELEMENTWISE)
def _shard_rows(x, labels, start, stop, vocab_start, weight, ignore_index, keep, spread, wsum, scale, global_max, stats,
                g, row_loss, with_grad):
    """Loss (float64) of rows start..stop from the global statistics; their
    gradient slice into g (which may be x). The formulas are `_labels_row`'s."""
    store = row_loss.shape[0] != 0
    width = x.shape[1]
    total = 0.0
    for i in range(start, stop):
        y = labels[i]
        loss = 0.0
        if y == ignore_index:
            if with_grad:
                _row_zero(g, i)
        else:
            big = global_max[i]
            s = stats[i, SHARD_SUM_EXP]
            # s is 0 for a row of -inf only (the single-process kernel gives NaN there, and so does this)
            log_s = math.log(s) if s > 0.0 else (-np.inf if s == 0.0 else np.nan)
            target_mass = keep * stats[i, SHARD_WEIGHT]
            loss = target_mass * ((big - stats[i, SHARD_TARGET]) + log_s) if target_mass != 0.0 else 0.0
            if spread != 0.0:
                loss += spread * (wsum * log_s - stats[i, SHARD_SHIFT])
            if with_grad:
                m = cast_like(x, big)
                a = cast_like(x, scale * (target_mass + spread * wsum) / s)
                b = cast_like(x, scale * spread)
                if weight.shape[0] == 0:
                    for c in range(width):
                        g[i, c] = a * exp_nonpositive(x[i, c] - m) - b
                else:
                    for c in range(width):
                        g[i, c] = a * exp_nonpositive(x[i, c] - m) - b * cast_like(x, weight[c])
                local = y - vocab_start
                if local >= 0 and local < width:
                    g[i, local] -= cast_like(x, scale * target_mass)
        if store:
            row_loss[i] = loss
        total += loss
    return total


def vocab_shard_fused(logits, labels, vocab_start, weight, ignore_index, label_smoothing, n_classes, weight_sum,
                      grad_scale, global_max, stats, grad, row_loss, with_grad):
    """Losses and this shard's gradient slice from the summed statistics.

    Parameters
    ----------
    logits, labels, vocab_start, weight, ignore_index
        As in `vocab_shard_partials`.
    label_smoothing : float in [0, 1]
    n_classes : int
        The full vocabulary size V (smoothing spreads eps / V over it).
    weight_sum : float
        Sum of the class weights over the full vocabulary (V if unweighted).
    grad_scale : float
        As in `xent_labels_fused`.
    global_max : (N,) float64, the all-reduced (MAX) row maxima.
    stats : (N, SHARD_STATS) float64, the all-reduced (SUM) rebased statistics.
    grad : (N, W) output of the logits' dtype. It may be ``logits`` itself
        (each element is read before it is written), and is untouched when
        ``with_grad`` is False.
    row_loss : (N,) output for the per-row losses (the same on every shard),
        or empty.
    with_grad : bool

    Returns
    -------
    float
        The summed row losses (float64, fixed order, as the other kernels).
    """
    logits = borrowed(logits)  # see `borrowed`
    labels = borrowed(labels)
    weight = borrowed(weight)
    global_max = borrowed(global_max)
    stats = borrowed(stats)
    grad = borrowed(grad)
    row_loss = borrowed(row_loss)
    _check_shard(logits, labels, weight, global_max, stats)
    _check_grad(logits, grad)
    _check_row_loss(logits, row_loss)
    spread = label_smoothing / n_classes
    keep = 1.0 - label_smoothing
    # Groups by the rows alone: shards of different widths must sum the same
    # row losses in the same order, so that every rank returns the same total.
    n_groups, per_group = _split(logits.shape[0], 1)
    partial = stack_empty(NO_WEIGHT, SUM_GROUPS)
    for grp in prange(n_groups):
        start = np.int64(grp) * per_group
        partial[grp] = _shard_rows(logits, labels, start, min(logits.shape[0], start + per_group), vocab_start, weight,
                                   ignore_index, keep, spread, weight_sum, grad_scale, global_max, stats, grad,
                                   row_loss, with_grad)
    return _sum_groups(partial, n_groups)


vocab_shard_fused, vocab_shard_fused_serial = _twins(vocab_shard_fused)


_config.key_cache_on_sources(globals())
