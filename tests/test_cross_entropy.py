"""fastxent.cross_entropy* against the float64 reference."""

import itertools

import numpy as np
import pytest
from conftest import DTYPES, large, tolerances
from hypothesis import given, settings
from hypothesis import strategies as st

import fastxent as fx
import reference as ref


def make_case(rng, shape, dtype, kind, scale=3.0, label_dtype=np.int64, ignore_frac=0.0, ignore_index=-100):
    logits = (rng.standard_normal(shape) * scale).astype(dtype)
    n_classes = shape[-1]
    if kind == "labels":
        target = rng.integers(0, n_classes, size=shape[:-1]).astype(label_dtype)
        if ignore_frac:
            target[rng.random(shape[:-1]) < ignore_frac] = ignore_index
    else:
        p = rng.random(shape)
        p[rng.random(shape) < 0.3] = 0.0  # exact zeros exercise 0 * log 0
        target = (p / np.maximum(p.sum(-1, keepdims=True), 1e-300)).astype(dtype)
    return logits, target


def assert_matches(dtype, got, want):
    rtol, atol = tolerances(dtype)
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rtol, atol=atol)


def test_worked_example_from_the_source_notes():
    a = np.array([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]])
    y_onehot = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    for target in (y_onehot, np.array([1, 0])):
        loss, grad = fx.cross_entropy_with_grad(a, target)
        np.testing.assert_allclose(fx.softmax(a), [[0.659, 0.242, 0.099], [0.073, 0.487, 0.440]], atol=5e-4)
        np.testing.assert_allclose(fx.cross_entropy(a, target, reduction="none"), [1.417, 2.620], atol=5e-4)
        np.testing.assert_allclose(loss, 2.019, atol=5e-4)
        np.testing.assert_allclose(grad, [[0.330, -0.379, 0.049], [-0.464, 0.243, 0.220]], atol=5e-4)


OPTIONS = [
    dict(),
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(label_smoothing=0.1),
    dict(weight="random"),
    dict(weight="random", label_smoothing=0.2, reduction="mean"),
    dict(weight="random", label_smoothing=1.0, reduction="sum"),
    dict(ignore_frac=0.3),
    dict(ignore_frac=0.3, weight="random", label_smoothing=0.05),
    dict(ignore_frac=0.3, ignore_index=2, reduction="none", label_smoothing=0.3),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (7, 1), (33, 10), (4, 3, 17), pytest.param((3, 32768), marks=large)])
@pytest.mark.parametrize("opts", OPTIONS, ids=str)
def test_all_functions_match_reference(rng, dtype, kind, shape, opts):
    opts = dict(opts)
    ignore_frac = opts.pop("ignore_frac", 0.0)
    ignore_index = opts.get("ignore_index", -100)
    if kind == "probs":
        ignore_frac = 0.0  # ignore_index is passed but unused for probability targets
    if opts.get("weight") == "random":
        opts["weight"] = rng.random(shape[-1]) + 0.5
    if ignore_index >= shape[-1]:
        ignore_index = opts["ignore_index"] = -100
    logits, target = make_case(rng, shape, dtype, kind, ignore_frac=ignore_frac, ignore_index=ignore_index)
    want_loss, want_grad = ref.cross_entropy_with_grad(logits, target, **opts)

    loss, grad = fx.cross_entropy_with_grad(logits, target, **opts)
    assert grad.dtype == dtype and grad.shape == logits.shape
    assert np.asarray(loss).dtype == dtype
    assert_matches(dtype, loss, want_loss)
    assert_matches(dtype, grad, want_grad)
    assert_matches(dtype, fx.cross_entropy(logits, target, **opts), want_loss)
    assert_matches(dtype, fx.cross_entropy_grad(logits, target, **opts), want_grad)
    loss_fn = fx.CrossEntropyLoss(**opts)
    assert_matches(dtype, loss_fn(logits, target), want_loss)
    assert_matches(dtype, loss_fn.backward(), want_grad)


@pytest.mark.parametrize("label_dtype", [np.int32, np.int64, np.uint8, np.int16])
def test_label_integer_dtypes(rng, label_dtype):
    logits, target = make_case(rng, (20, 6), np.float64, "labels", label_dtype=label_dtype)
    want = ref.cross_entropy_with_grad(logits, target)
    got = fx.cross_entropy_with_grad(logits, target)
    assert_matches(np.float64, got[0], want[0])
    assert_matches(np.float64, got[1], want[1])


@large
@pytest.mark.parametrize("dtype", DTYPES)
def test_large_vocabulary_rows(rng, dtype):
    logits, target = make_case(rng, (4, 50257), dtype, "labels", scale=10.0)
    for opts in (dict(), dict(label_smoothing=0.1, reduction="none")):
        want = ref.cross_entropy_with_grad(logits, target, **opts)
        got = fx.cross_entropy_with_grad(logits, target, **opts)
        assert_matches(dtype, got[0], want[0])
        assert_matches(dtype, got[1], want[1])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(0, 40),
    c=st.integers(1, 300),
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(["labels", "probs"]),
    reduction=st.sampled_from(["mean", "sum", "none"]),
    smoothing=st.sampled_from([0.0, 0.1, 0.5, 1.0]),
    weighted=st.booleans(),
    ignore_frac=st.sampled_from([0.0, 0.5, 1.0]),
    scale=st.sampled_from([1e-3, 1.0, 30.0, 1e4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_cases_match_reference(n, c, dtype, kind, reduction, smoothing, weighted, ignore_frac, scale, seed):
    rng = np.random.default_rng(seed)
    logits, target = make_case(rng, (n, c), dtype, kind, scale=scale, ignore_frac=ignore_frac if kind == "labels" else 0)
    opts = dict(reduction=reduction, label_smoothing=smoothing, weight=rng.random(c) + 0.1 if weighted else None)
    want_loss, want_grad = ref.cross_entropy_with_grad(logits, target, **opts)
    loss, grad = fx.cross_entropy_with_grad(logits, target, **opts)
    rtol, atol = tolerances(dtype)
    # Loss magnitudes grow with the logits' scale; compare relative to it.
    np.testing.assert_allclose(np.asarray(loss, np.float64), want_loss, rtol=rtol, atol=atol * max(scale, 1.0))
    np.testing.assert_allclose(grad.astype(np.float64), want_grad, rtol=rtol, atol=atol)


def test_option_combinations_are_consistent_across_entry_points(rng):
    logits, target = make_case(rng, (9, 4), np.float64, "labels", ignore_frac=0.3)
    for reduction, smoothing in itertools.product(["mean", "sum", "none"], [0.0, 0.3]):
        opts = dict(reduction=reduction, label_smoothing=smoothing, weight=[1.0, 2.0, 0.5, 1.5])
        loss, grad = fx.cross_entropy_with_grad(logits, target, **opts)
        np.testing.assert_array_equal(fx.cross_entropy(logits, target, **opts), loss)
        np.testing.assert_array_equal(fx.cross_entropy_grad(logits, target, **opts), grad)
