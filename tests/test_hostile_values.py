"""Property tests over hostile values against the float64 reference."""

import numpy as np
from conftest import DTYPES, tolerances
from hypothesis import given, settings
from hypothesis import strategies as st

import fastxent as fx
import reference as ref


@st.composite
def hostile_case(draw):
    dtype = draw(st.sampled_from(DTYPES))
    c = draw(st.one_of(st.integers(1, 40), st.integers(41, 70000)))
    n = draw(st.integers(0, max(0, min(24, 150_000 // c))))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    top = 30 if dtype == np.float64 else draw(st.sampled_from([3, 30]))
    # magnitudes from 1e-30 to 1e30 (1e3 for float32's ordinary case), random signs
    logits = np.sign(rng.standard_normal((n, c))) * 10.0 ** rng.uniform(-30, top, (n, c))
    special = rng.random((n, c))
    fill = draw(st.sampled_from(["none", "mask", "nan", "posinf", "all"]))
    if fill in ("mask", "all"):
        logits[special < 0.2] = -np.inf
    if fill in ("nan", "all"):
        logits[special > 0.97] = np.nan
    if fill in ("posinf", "all"):
        logits[(special > 0.94) & (special <= 0.97)] = np.inf
    logits = logits.astype(dtype)
    kind = draw(st.sampled_from(["labels", "probs"]))
    ignore_index = draw(st.sampled_from([-100, 0, c - 1]))
    if kind == "labels":
        target = rng.choice(np.array([0, c - 1, ignore_index, rng.integers(0, c)]), size=n)
    else:
        p = rng.random((n, c))
        p[rng.random((n, c)) < 0.5] = 0
        target = (p / np.maximum(p.sum(1, keepdims=True), 1e-300)).astype(dtype)
    opts = dict(
        ignore_index=ignore_index,
        reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        label_smoothing=draw(st.sampled_from([0.0, 0.1, 1.0])),
        weight=(rng.random(c) + 0.1) if draw(st.booleans()) else None,
    )
    return logits, target, opts


@settings(max_examples=120, deadline=None)
@given(hostile_case())
def test_hostile_values_match_reference(case):
    logits, target, opts = case
    dtype = logits.dtype.type
    want_loss, want_grad = ref.cross_entropy_with_grad(logits, target, **opts)
    before = logits.copy()
    loss, grad = fx.cross_entropy_with_grad(logits, target, **opts)
    np.testing.assert_array_equal(logits, before)
    rtol, atol = tolerances(dtype)
    # float32 loss terms reach 1e30: an absolute error is meaningless there
    np.testing.assert_allclose(np.asarray(loss, np.float64), want_loss, rtol=rtol * 10, atol=atol)
    np.testing.assert_allclose(grad.astype(np.float64), want_grad, rtol=rtol * 10, atol=atol)
    np.testing.assert_array_equal(np.isnan(grad), np.isnan(want_grad))
