"""Caller-owned buffers, in-place mode, layouts, and inputs left unmodified."""

import numpy as np
import pytest
from conftest import DTYPES

import fastxent as fx
import reference as ref


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "probs"])
def test_out_buffers_are_returned_and_filled(rng, dtype, kind):
    logits = rng.standard_normal((6, 2, 5)).astype(dtype)
    target = rng.integers(0, 5, (6, 2)) if kind == "labels" else rng.dirichlet(np.ones(5), (6, 2)).astype(dtype)
    grad = np.empty_like(logits)
    rows = np.empty((6, 2), dtype)
    loss, g = fx.cross_entropy_with_grad(logits, target, reduction="none", out=rows, grad_out=grad)
    assert loss is rows and g is grad
    want_rows, want_grad = ref.cross_entropy_with_grad(logits, target, reduction="none")
    np.testing.assert_allclose(rows, want_rows, rtol=1e-5)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-7)
    assert fx.cross_entropy(logits, target, reduction="none", out=rows) is rows
    assert fx.cross_entropy_grad(logits, target, out=grad) is grad


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("opts", [{}, dict(label_smoothing=0.2, weight=[1.0, 2.0, 3.0, 0.5, 1.0]), dict(reduction="sum")])
def test_in_place_gradient(rng, dtype, kind, opts):
    logits = (rng.standard_normal((40, 5)) * 4).astype(dtype)
    target = rng.integers(0, 5, 40) if kind == "labels" else rng.dirichlet(np.ones(5), 40).astype(dtype)
    want_loss, want_grad = fx.cross_entropy_with_grad(logits, target, **opts)
    target_before = target.copy()
    loss, grad = fx.cross_entropy_with_grad(logits, target, grad_out=logits, **opts)
    assert grad is logits
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6)
    np.testing.assert_allclose(logits, want_grad, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(target, target_before)


def test_in_place_through_grad_function(rng):
    logits = rng.standard_normal((8, 7))
    labels = rng.integers(0, 7, 8)
    want = fx.cross_entropy_grad(logits, labels)
    assert fx.cross_entropy_grad(logits, labels, out=logits) is logits
    np.testing.assert_allclose(logits, want, rtol=1e-14)


@pytest.mark.parametrize("layout", ["fortran", "strided", "transposed_view"])
def test_non_contiguous_inputs(rng, layout):
    base = rng.standard_normal((12, 9))
    if layout == "fortran":
        logits = np.asfortranarray(base)
    elif layout == "strided":
        logits = rng.standard_normal((24, 18))[::2, ::2]
    else:
        logits = base.T.copy().T
    probs = np.asfortranarray(rng.dirichlet(np.ones(9), 12))
    labels = rng.integers(0, 9, 24)[::2]
    for target in (labels, probs):
        before = logits.copy()
        loss, grad = fx.cross_entropy_with_grad(logits, target, label_smoothing=0.1)
        want_loss, want_grad = ref.cross_entropy_with_grad(logits, target, label_smoothing=0.1)
        np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
        np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(logits, before)


@pytest.mark.parametrize("kind", ["labels", "probs"])
def test_inputs_never_modified(rng, kind):
    logits = rng.standard_normal((64, 600)).astype(np.float32)
    target = rng.integers(0, 600, 64) if kind == "labels" else rng.dirichlet(np.ones(600), 64).astype(np.float32)
    weight = rng.random(600)
    copies = [logits.copy(), target.copy(), weight.copy()]
    for reduction in ("mean", "sum", "none"):
        opts = dict(weight=weight, reduction=reduction, label_smoothing=0.1)
        fx.cross_entropy(logits, target, **opts)
        fx.cross_entropy_grad(logits, target, **opts)
        fx.cross_entropy_with_grad(logits, target, **opts)
        fx.CrossEntropyLoss(**opts)(logits, target)
        fx.log_softmax(logits)
        fx.softmax(logits, axis=0)
        fx.logsumexp(logits)
    for before, after in zip(copies, [logits, target, weight]):
        np.testing.assert_array_equal(before, after)


def test_class_reuses_its_buffers(rng):
    loss_fn = fx.CrossEntropyLoss()
    logits = rng.standard_normal((16, 10))
    labels = rng.integers(0, 10, 16)
    loss_fn(logits, labels)
    first = loss_fn.backward()
    loss_fn(logits * 2, labels)
    assert loss_fn.backward() is first  # same buffer, overwritten
    np.testing.assert_allclose(first, fx.cross_entropy_grad(logits * 2, labels))
    loss_fn(logits[:8].astype(np.float32), labels[:8])  # new shape and dtype: new buffer
    assert loss_fn.backward().shape == (8, 10) and loss_fn.backward().dtype == np.float32
