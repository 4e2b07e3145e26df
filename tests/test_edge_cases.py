"""Non-finite values, empty batches, ignored rows: the documented policy."""

import numpy as np
import pytest
from conftest import DTYPES, tolerances

import fastxent as fx
import reference as ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_empty_batch(dtype, reduction):
    logits = np.zeros((0, 5), dtype)
    for target in (np.zeros(0, np.int64), np.zeros((0, 5), dtype)):
        loss, grad = fx.cross_entropy_with_grad(logits, target, reduction=reduction)
        assert grad.shape == (0, 5)
        if reduction == "mean":
            assert np.isnan(loss)
        elif reduction == "sum":
            assert loss == 0
        else:
            assert loss.shape == (0,)


@pytest.mark.parametrize("dtype", DTYPES)
def test_all_rows_ignored(dtype):
    logits = np.ones((4, 3), dtype)
    labels = np.full(4, -100)
    loss, grad = fx.cross_entropy_with_grad(logits, labels, label_smoothing=0.1)
    assert np.isnan(loss)
    assert np.all(grad == 0)
    assert fx.cross_entropy(logits, labels, reduction="sum") == 0


@pytest.mark.parametrize("dtype", DTYPES)
def test_huge_logits_stay_finite_and_exact(dtype):
    big = 1e4 if dtype == np.float32 else 1e300
    logits = np.array([[big, -big, 0.0], [big, big, -big], [-big, -big, -big]], dtype)
    labels = np.array([0, 1, 2])
    for smoothing in (0.0, 0.2):
        loss, grad = fx.cross_entropy_with_grad(logits, labels, reduction="none", label_smoothing=smoothing)
        want_loss, want_grad = ref.cross_entropy_with_grad(logits, labels, reduction="none", label_smoothing=smoothing)
        assert np.all(np.isfinite(grad))
        rtol, atol = tolerances(dtype)
        np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=atol)
        np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=atol)
    # a tie at +big costs exactly log(2), whatever big is
    np.testing.assert_allclose(fx.cross_entropy(logits[1:2], labels[1:2]), np.log(2), rtol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
def test_minus_inf_mask(dtype):
    logits = np.array([[0.0, -np.inf, 1.0, -np.inf]], dtype)
    # masked non-target class: finite, masked class gets probability 0 and gradient 0
    loss, grad = fx.cross_entropy_with_grad(logits, np.array([2]))
    np.testing.assert_allclose(loss, np.log1p(np.exp(-1.0)), rtol=1e-6)
    assert grad[0, 1] == 0 and grad[0, 3] == 0
    # masked target class: +inf loss, gradient still finite (p - onehot)
    loss, grad = fx.cross_entropy_with_grad(logits, np.array([1]))
    assert loss == np.inf
    assert np.all(np.isfinite(grad)) and grad[0, 1] == -1
    # probability target that is 0 on the masked classes: 0 * log 0 = 0 (PyTorch gives NaN here)
    t = np.array([[0.25, 0.0, 0.75, 0.0]], dtype)
    loss, grad = fx.cross_entropy_with_grad(logits, t)
    want = -(0.25 * np.log(1 / (1 + np.e)) + 0.75 * np.log(np.e / (1 + np.e)))
    np.testing.assert_allclose(loss, want, rtol=1e-6)
    assert np.all(np.isfinite(grad))
    # label smoothing puts mass on the masked class: +inf, as in PyTorch
    assert fx.cross_entropy(logits, np.array([2]), label_smoothing=0.1) == np.inf


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "probs"])
def test_nan_poisons_only_its_row(dtype, kind):
    logits = np.arange(12, dtype=dtype).reshape(4, 3) / 3
    logits[1, 2] = np.nan
    target = np.array([0, 1, 2, 0]) if kind == "labels" else np.full((4, 3), 1 / 3, dtype)
    rows, grad = fx.cross_entropy_with_grad(logits, target, reduction="none")
    assert np.isnan(rows[1]) and np.all(np.isnan(grad[1]))
    keep = [0, 2, 3]
    want_rows, want_grad = ref.cross_entropy_with_grad(logits[keep], target[keep], reduction="none")
    np.testing.assert_allclose(rows[keep], want_rows, rtol=1e-5)
    np.testing.assert_allclose(grad[keep], want_grad, rtol=1e-5, atol=1e-6)
    assert np.isnan(fx.cross_entropy(logits, target))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rows_without_a_finite_maximum_are_nan(dtype):
    """All -inf, or a +inf logit: softmax is undefined; the row is NaN (as in PyTorch)."""
    logits = np.array([[-np.inf, -np.inf], [np.inf, 0.0], [1.0, 2.0]], dtype)
    rows = fx.cross_entropy(logits, np.array([0, 1, 1]), reduction="none")
    assert np.isnan(rows[0]) and np.isnan(rows[1]) and np.isfinite(rows[2])


def test_one_class():
    loss, grad = fx.cross_entropy_with_grad(np.array([[3.0], [-2.0]]), np.array([0, 0]))
    assert loss == 0 and np.all(grad == 0)


def test_one_dimensional_logits_are_a_single_row():
    x = np.array([1.0, 2.0, 3.0])
    loss, grad = fx.cross_entropy_with_grad(x, np.int64(2), reduction="none")
    want_loss, want_grad = ref.cross_entropy_with_grad(x[None], np.array([2]), reduction="none")
    assert loss.shape == () and grad.shape == (3,)
    np.testing.assert_allclose(loss, want_loss[0])
    np.testing.assert_allclose(grad, want_grad[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n, c", [(3, 2), (64, 2), (1000, 10), (130, 300)])  # padded tile, tiles, rows
def test_reduced_loss_counts_its_rows(dtype, n, c):
    """The loss-only call divides by the rows the kernel counted: the same
    loss as the fused call (bit for bit) and as the reference, with ignored
    rows, with every row ignored and with int32 labels."""
    rng = np.random.default_rng(4)
    logits = rng.standard_normal((n, c)).astype(dtype)
    labels = rng.integers(0, c, n)
    labels[rng.random(n) < 0.3] = -100
    rtol = tolerances(dtype)[0]
    for target in (labels, labels.astype(np.int32)):
        for reduction in ("mean", "sum"):
            loss = fx.cross_entropy(logits, target, reduction=reduction)
            assert loss == fx.cross_entropy_with_grad(logits, target, reduction=reduction)[0]
            want, _ = ref.cross_entropy_with_grad(logits.astype(np.float64), labels, reduction=reduction)
            np.testing.assert_allclose(loss, want, rtol=rtol)
    ignored = np.full(n, -100)
    assert np.isnan(fx.cross_entropy(logits, ignored))
    assert fx.cross_entropy(logits, ignored, reduction="sum") == 0
