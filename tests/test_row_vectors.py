"""The row path in whole vectors: rows of C > TILE_MAX_CLASSES[itemsize] go through
groups of SUM_LANES classes and one overlapping last group (kernels.py,
"Whole vectors along a row"). These cases put C on both sides of every
multiple of SUM_LANES they touch and non-finite values in the overlap."""

import numpy as np
import pytest
from numba import njit

import fastxent as fx
from fastxent import _config, kernels
import reference as ref
from conftest import assert_matches_reference, tolerances

L = _config.SUM_LANES
# "max+1": the smallest C on the row path; "k-1", "k", "k+1", "k+36": around
# k, the first multiple of SUM_LANES on it.
CLASSES = ["max+1", "k-1", "k", "k+1", "k+36", 1000]


def resolve(n_classes, dtype):
    if isinstance(n_classes, int):
        return n_classes
    limit = _config.TILE_MAX_CLASSES[np.dtype(dtype).itemsize]
    if n_classes == "max+1":
        return limit + 1
    k = L * (limit // L + 1)
    return k + int(n_classes[1:]) if len(n_classes) > 1 else k


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", CLASSES)
def test_rows_match_reference(rng, dtype, n_classes):
    n_classes = resolve(n_classes, dtype)
    assert n_classes > _config.TILE_MAX_CLASSES[np.dtype(dtype).itemsize]
    n = 2 * _config.TILE_ROWS + 5  # rows enough for a tile, so only C decides
    x = (rng.standard_normal((n, n_classes)) * 4).astype(dtype)
    labels = rng.integers(0, n_classes, n)
    labels[::5] = -100
    probs = rng.random((n, n_classes)).astype(dtype)
    probs /= probs.sum(axis=1, keepdims=True)
    weight = (rng.random(n_classes) + 0.5).astype(dtype)
    rtol, atol = tolerances(dtype)
    for target in (labels, probs):
        for opts in ({}, dict(weight=weight, label_smoothing=0.15)):
            # in place, the same bits: the overlapping group never reads a gradient as a logit
            assert_matches_reference(x, target, dtype, **opts)
    np.testing.assert_allclose(fx.log_softmax(x), ref.log_softmax(x), rtol=rtol, atol=atol)
    np.testing.assert_allclose(fx.logsumexp(x), ref.logsumexp(x), rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_non_finite_values_in_the_overlapping_group(rng, dtype):
    c = 2 * L + 7  # the last group covers classes L + 7 .. 2 L + 6, of which 2 L .. 2 L + 6 are new
    x = rng.standard_normal((6, c)).astype(dtype)
    labels = np.array([0, 1, 2, 3, c - 1, 5])
    x[0, c - 1] = np.nan  # a NaN among the new classes of the last group
    x[1, L + 8] = np.nan  # a NaN in the overlap (counted once, in a whole group)
    x[2, c - 2] = -np.inf  # a masked class in the tail: probability 0
    x[3, L + 9] = -np.inf  # a masked class in the overlap
    x[4, c - 1] = 60.0  # the max in the tail
    grad = np.empty_like(x)
    rows = np.empty(6, dtype)
    kernels.xent_labels_fused(x, labels, x[0, :0], -100, 0.0, 1.0, grad, rows)
    assert np.isnan(rows[:2]).all() and np.isnan(grad[:2]).all()
    rtol, atol = tolerances(dtype)
    want_rows, want_grad = ref.cross_entropy_with_grad(x[2:], labels[2:], reduction="none")
    np.testing.assert_allclose(rows[2:], want_rows, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad[2:], want_grad, rtol=rtol, atol=atol)
    assert grad[2, c - 2] == 0.0 and grad[3, L + 9] == 0.0
    serial = np.empty_like(x)
    kernels.xent_labels_fused_serial(x, labels, x[0, :0], -100, 0.0, 1.0, serial, rows[:0])
    np.testing.assert_array_equal(serial, grad)


@pytest.mark.parametrize("n", [0, 1, _config.LABEL_GROUP_MIN - 1, _config.LABEL_GROUP_MIN + 1, 300_007])
def test_check_labels_in_groups(rng, n):
    """Counts and weighted sums over groups of labels, the first invalid label
    wherever it falls, the parallel kernel and its twin alike."""
    labels = rng.integers(0, 7, n)
    labels[rng.random(n) < 0.1] = -100
    weight = rng.random(7) + 0.5
    kept = labels != -100
    for parallel in (kernels.check_labels, kernels.check_labels_serial):
        assert parallel(labels, kernels.NO_WEIGHT, 7, -100) == (-1, float(kept.sum()))
        bad, total = parallel(labels, weight, 7, -100)
        assert bad == -1
        np.testing.assert_allclose(total, weight[labels[kept]].sum(), rtol=1e-13)
    assert kernels.check_labels(labels, weight, 7, -100) == kernels.check_labels_serial(labels, weight, 7, -100)
    if n < 2:
        return
    for first in sorted({n - 1, n // 2, 1}):
        broken = labels.copy()
        broken[first] = 7
        broken[min(first + _config.LABEL_GROUP_MIN, n - 1)] = -5  # a later one, maybe in another group
        for check in (kernels.check_labels, kernels.check_labels_serial):
            bad, total = check(broken, weight, 7, -100)
            assert bad == first and np.isnan(total)


@njit(cache=True)
def _row_maxima(x, out):
    for i in range(x.shape[0]):
        out[i] = kernels._row_max(x, i)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_classes", [3, L - 1, L, L + 1, 2 * L + 7, 1000])
def test_row_max_skips_nans_in_every_lane(rng, dtype, n_classes):
    """The row max of the row path (lanes and a tree from SUM_LANES classes
    up) against np.nanmax, with the largest value, NaNs and infinities in
    the first lane, the main groups, and the overlapping last group."""
    rows = []
    for place in sorted({0, 1, L - 1, min(L, n_classes - 1), n_classes // 2, n_classes - 2, n_classes - 1}):
        place = max(0, min(place, n_classes - 1))
        row = rng.standard_normal(n_classes)
        row[place] = 9.0  # the largest
        rows.append(row)
        with_nan = row.copy()
        with_nan[(place + 1) % n_classes] = np.nan
        with_nan[0] = np.nan if place else with_nan[0]
        rows.append(with_nan)
        with_inf = row.copy()
        with_inf[place] = np.inf
        rows.append(with_inf)
    rows.append(np.full(n_classes, -np.inf))
    x = np.array(rows, dtype=dtype)
    out = np.empty(len(rows), dtype)
    _row_maxima(x, out)
    np.testing.assert_array_equal(out, np.nanmax(x, axis=1))
    all_nan = np.full((1, n_classes), np.nan, dtype)
    _row_maxima(all_nan, out[:1])
    assert np.isnan(out[0]) if n_classes < L else out[0] == -np.inf
