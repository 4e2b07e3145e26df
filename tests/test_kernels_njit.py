"""The kernel layer called from a user's own @njit code."""

import numpy as np
import pytest
from numba import njit, prange

import fastxent as fx
from fastxent import kernels
import reference as ref


@njit
def user_training_step(logits, labels, grad, row_loss):
    n = logits.shape[0]
    no_weight = logits[0, :0]  # an empty array of the logits' dtype means "unweighted"
    total = kernels.xent_labels_fused_serial(logits, labels, no_weight, -100, 0.0, 1.0 / n, grad, row_loss)
    return total / n


@njit(parallel=True)
def user_simulation(logits_batches, labels, out):
    # a user's own parallel loop calling serial kernels on independent slices
    for b in prange(logits_batches.shape[0]):
        rows = np.empty(logits_batches.shape[1])
        out[b] = kernels.xent_labels_loss_serial(logits_batches[b], labels[b], kernels.NO_WEIGHT, -100, 0.1, rows)


@njit
def user_log_softmax(x, out):
    kernels.log_softmax_rows_serial(x, out)
    kernels.softmax_rows(x, out)  # the parallel kernels are callable too
    s = np.empty(x.shape[0])
    kernels.logsumexp_rows(x, s)
    return s


def test_fused_from_user_njit(rng):
    logits = rng.standard_normal((16, 9))
    labels = rng.integers(0, 9, 16)
    grad = np.empty_like(logits)
    rows = np.empty(16)
    loss = user_training_step(logits, labels, grad, rows)
    want_loss, want_grad = ref.cross_entropy_with_grad(logits, labels)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-15)


def test_from_user_parallel_loop(rng):
    logits = rng.standard_normal((4, 8, 6))
    labels = rng.integers(0, 6, (4, 8))
    out = np.empty(4)
    user_simulation(logits, labels, out)
    for b in range(4):
        np.testing.assert_allclose(out[b], ref.cross_entropy_with_grad(logits[b], labels[b], reduction="sum", label_smoothing=0.1)[0], rtol=1e-12)


def test_primitives_from_user_njit(rng):
    x = rng.standard_normal((5, 7))
    out = np.empty_like(x)
    lse = user_log_softmax(x, out)
    np.testing.assert_allclose(out, fx.softmax(x), rtol=1e-14)
    np.testing.assert_allclose(lse, fx.logsumexp(x), rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["labels", "probs"])
def test_kernel_variants_agree(rng, dtype, kind):
    """Parallel kernels and their serial twins give identical bits (so results
    do not depend on the dispatch); in-place kernels agree to rounding (their
    loops differ, so LLVM may order a sum differently)."""
    logits = rng.standard_normal((64, 33)).astype(dtype)
    w = (rng.random(33) + 0.5).astype(dtype)
    if kind == "labels":
        target = rng.integers(0, 33, 64)
        names = ["xent_labels_fused", "xent_labels_fused_inplace", "xent_labels_loss"]
        opts = (w, -100, 0.1)
    else:
        target = rng.dirichlet(np.ones(33), 64).astype(dtype)
        names = ["xent_probs_fused", "xent_probs_fused_inplace", "xent_probs_loss"]
        opts = (w, 0.1)
    runs = {}
    for suffix in ("", "_serial"):
        fused, inplace, loss_only = (getattr(kernels, n + suffix) for n in names)
        g, r = np.empty_like(logits), np.empty(64, dtype)
        t = fused(logits, target, *opts, 1 / 64, g, r)
        x, r_inplace = logits.copy(), np.empty(64, dtype)
        t_inplace = inplace(x, target, *opts, 1 / 64, r_inplace)
        r_loss = np.empty(64, dtype)
        t_loss = loss_only(logits, target, *opts, r_loss)
        runs[suffix] = (t, g, r, t_inplace, x, r_inplace, t_loss, r_loss)
    for a, b in zip(runs[""], runs["_serial"]):
        np.testing.assert_array_equal(a, b)
    t, g, r, t_inplace, x, r_inplace, t_loss, r_loss = runs[""]
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    np.testing.assert_allclose(x, g, rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(r_inplace, r, rtol=rtol)
    np.testing.assert_allclose(r_loss, r, rtol=rtol)
    np.testing.assert_allclose([t_inplace, t_loss], [t, t], rtol=rtol)


@pytest.mark.parametrize("n, c", [(1000, 4), (40, 300)])  # tiles, rows
def test_loss_kernel_counts_the_rows_it_kept(rng, n, c):
    """`xent_labels_loss_counted` returns (total, kept): kept counts the
    labels in [0, C) that are not ignore_index, invalid ones left out (their
    rows are NaN); `xent_labels_loss` the same total."""
    logits = rng.standard_normal((n, c))
    labels = rng.integers(0, c, n)
    labels[rng.random(n) < 0.2] = 7
    labels[[3, 11]] = [-1, c]
    want = int(np.sum((labels != 7) & (labels >= 0) & (labels < c)))
    for kernel, total_only in [(kernels.xent_labels_loss_counted, kernels.xent_labels_loss),
                               (kernels.xent_labels_loss_counted_serial, kernels.xent_labels_loss_serial)]:
        total, kept = kernel(logits, labels, kernels.NO_WEIGHT, 7, 0.0, np.empty(0))
        assert np.isnan(total) and kept == want
        ok = np.where((labels < 0) | (labels >= c), 0, labels)
        total, kept = kernel(logits, ok, kernels.NO_WEIGHT, 7, 0.0, np.empty(0))
        assert kept == np.sum(ok != 7)
        assert total_only(logits, ok, kernels.NO_WEIGHT, 7, 0.0, np.empty(0)) == total
        np.testing.assert_allclose(total, ref.cross_entropy_with_grad(logits, ok, ignore_index=7, reduction="sum")[0],
                                   rtol=1e-12)


def test_validation_helpers():
    labels = np.array([0, 4, -100, 2])
    assert kernels.check_labels(labels, np.array([1.0, 2, 3, 4, 5]), 5, -100) == (-1, 1 + 5 + 3)
    assert kernels.check_labels(labels, kernels.NO_WEIGHT, 5, -100) == (-1, 3)
    bad, denominator = kernels.check_labels(labels, kernels.NO_WEIGHT, 4, -100)
    assert bad == 1 and np.isnan(denominator)
    assert kernels.check_labels(np.array([3, -1]), kernels.NO_WEIGHT, 4, -1) == (-1, 1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [4, 10, 33, 100])
def test_results_do_not_depend_on_buffer_placement(rng, dtype, n_classes):
    """Bits must not change with where the caller's buffers lie: LLVM's
    runtime overlap checks pick between vector and scalar loops by address."""
    n = 6
    size = n * n_classes
    logits = rng.standard_normal((n, n_classes)).astype(dtype)
    labels = rng.integers(0, n_classes, n)
    probs = rng.dirichlet(np.ones(n_classes), n).astype(dtype)
    want = [fx.cross_entropy_with_grad(logits, t) for t in (labels, probs)]
    want_softmax = fx.softmax(logits)
    itemsize = np.dtype(dtype).itemsize
    for gap in range(0, 512 // itemsize, 3):  # grad right after the logits, 0..512 bytes apart
        arena = np.empty(2 * size + gap, dtype)
        x = arena[:size].reshape(n, n_classes)
        g = arena[size + gap :].reshape(n, n_classes)
        x[...] = logits
        for t, (loss, grad) in zip((labels, probs), want):
            got_loss, _ = fx.cross_entropy_with_grad(x, t, grad_out=g)
            assert got_loss == loss
            np.testing.assert_array_equal(g, grad)
        fx.softmax(x, out=g)
        np.testing.assert_array_equal(g, want_softmax)
