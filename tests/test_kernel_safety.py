"""The kernel layer refuses mismatched arrays before writing anything.

Lengths are checked when a kernel runs (ValueError naming the argument),
dtypes when it compiles (TypingError naming the argument; a TypeError when
the kernels run as Python under NUMBA_DISABLE_JIT=1). A bad label value
never becomes an index: its row is NaN.
"""

import numba
import numpy as np
import pytest
from numba.core.errors import TypingError

from fastxent import kernels
import reference as ref

COMPILE_ERROR = TypeError if numba.config.DISABLE_JIT else TypingError
SUFFIXES = ["", "_serial"]
N, C = 4, 6


def guarded(shape, dtype=np.float64):
    """An array followed by a sentinel region, to catch writes past its end."""
    size = int(np.prod(shape))
    arena = np.full(size + 64, 7.0, dtype)
    return arena[:size].reshape(shape), arena[size:]


def labels_args(logits, labels=None, weight=None, grad=None, row_loss=None):
    return (
        logits,
        np.array([0, 5, 2, 1]) if labels is None else labels,
        kernels.NO_WEIGHT if weight is None else weight,
        -100,
        0.1,
        0.25,
        np.empty_like(logits) if grad is None else grad,
        np.empty(logits.shape[0], logits.dtype) if row_loss is None else row_loss,
    )


LENGTH_CASES = [
    # (argument index, replacement, message)
    (1, np.array([0, 1, 2]), "labels must have one entry per row"),
    (2, np.ones(5), "weight must have length"),
    (6, np.empty((3, C)), "grad must have the logits' shape"),
    (6, np.empty((N, C + 1)), "grad must have the logits' shape"),
    (7, np.empty(3), "row_loss must have one entry per row"),
]


@pytest.mark.parametrize("suffix", SUFFIXES)
@pytest.mark.parametrize("index,value,msg", LENGTH_CASES)
def test_fused_labels_refuses_mismatched_lengths(rng, suffix, index, value, msg):
    kernel = getattr(kernels, "xent_labels_fused" + suffix)
    args = list(labels_args(rng.standard_normal((N, C))))
    args[index] = value
    before = [a.copy() if isinstance(a, np.ndarray) else a for a in args]
    with pytest.raises(ValueError, match=msg):
        kernel(*args)
    for a, b in zip(args, before):
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)  # nothing written


def test_short_grad_buffer_is_never_written_past(rng):
    logits = rng.standard_normal((N, C))
    grad, sentinel = guarded((N - 1, C))
    with pytest.raises(ValueError, match="grad"):
        kernels.xent_labels_fused(*labels_args(logits, grad=grad))
    assert (sentinel == 7.0).all() and (grad == 7.0).all()


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_other_kernels_refuse_mismatched_lengths(rng, suffix):
    k = lambda name: getattr(kernels, name + suffix)  # noqa: E731
    x = rng.standard_normal((N, C))
    labels = np.array([0, 1, 2, 3])
    probs = np.full((N, C), 1.0 / C)
    w = kernels.NO_WEIGHT
    cases = [
        (lambda: k("xent_labels_fused_inplace")(x.copy(), labels[:3], w, -100, 0.0, 1.0, np.empty(N)), "labels"),
        (lambda: k("xent_labels_loss")(x, labels, w, -100, 0.0, np.empty(N + 1)), "row_loss"),
        (lambda: k("xent_probs_fused")(x, probs[:3], w, 0.0, 1.0, np.empty_like(x), np.empty(N)), "target"),
        (lambda: k("xent_probs_fused")(x, probs, np.ones(2), 0.0, 1.0, np.empty_like(x), np.empty(N)), "weight"),
        (lambda: k("xent_probs_fused_inplace")(x.copy(), probs, w, 0.0, 1.0, np.empty(2)), "row_loss"),
        (lambda: k("xent_probs_loss")(x, probs[:, :3], w, 0.0, np.empty(N)), "target"),
        (lambda: k("log_softmax_rows")(x, np.empty((N, C - 1))), "out"),
        (lambda: k("softmax_rows")(x, np.empty((N + 1, C))), "out"),
        (lambda: k("logsumexp_rows")(x, np.empty(N - 1)), "out"),
        (lambda: k("xent_labels_loss")(np.empty((N, 0)), labels, w, -100, 0.0, np.empty(N)), "at least one class"),
    ]
    for call, msg in cases:
        with pytest.raises(ValueError, match=msg):
            call()


def test_check_labels_refuses_a_short_weight():
    with pytest.raises(ValueError, match="weight must have length"):
        kernels.check_labels(np.array([0, 5]), np.ones(3), 6, -100)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_out_of_range_labels_give_nan_rows_and_touch_nothing_else(rng, suffix):
    logits = rng.standard_normal((N, C))
    labels = np.array([1000, 2, -5, 4])
    grad, sentinel = guarded((N, C))
    row_loss = np.empty(N)
    getattr(kernels, "xent_labels_fused" + suffix)(logits, labels, kernels.NO_WEIGHT, -100, 0.0, 1.0, grad, row_loss)
    assert (sentinel == 7.0).all()
    assert np.isnan(row_loss[[0, 2]]).all() and np.isnan(grad[[0, 2]]).all()
    good = [1, 3]
    want_loss, want_grad = ref.cross_entropy_with_grad(logits[good], labels[good], reduction="none")
    np.testing.assert_allclose(row_loss[good], want_loss, rtol=1e-12)
    np.testing.assert_allclose(grad[good], want_grad, rtol=1e-12, atol=1e-15)


def test_dtype_mismatches_fail_when_compiling(rng):
    x = rng.standard_normal((N, C))
    labels = np.array([0, 1, 2, 3])
    with pytest.raises(COMPILE_ERROR, match="grad must have the logits' dtype float64, got float32"):
        kernels.xent_labels_fused_serial(*labels_args(x, grad=np.empty((N, C), np.float32)))
    with pytest.raises(COMPILE_ERROR, match="row_loss must have the logits' dtype"):
        kernels.xent_labels_fused_serial(*labels_args(x, row_loss=np.empty(N, np.float32)))
    with pytest.raises(COMPILE_ERROR, match="labels must hold integer class indices"):
        kernels.xent_labels_loss_serial(x, labels.astype(np.float64), kernels.NO_WEIGHT, -100, 0.0, np.empty(N))
    with pytest.raises(COMPILE_ERROR, match="target must have the logits' dtype"):
        kernels.xent_probs_loss_serial(x, np.ones((N, C), np.float32), kernels.NO_WEIGHT, 0.0, np.empty(N))
    with pytest.raises(COMPILE_ERROR, match="out must be a 1-D array"):
        kernels.logsumexp_rows_serial(x, np.empty((N, 1)))
