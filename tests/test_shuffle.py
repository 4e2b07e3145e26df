"""The shuffle transposes of full tiles (`fastxent._shuffle`).

They are checked directly against NumPy's transpose, then through the
kernels on both sides of the measured limit (``_config.SHUFFLE_MAX_CLASSES``)
and of the squares (C >= LANES) against the float64 reference.
"""

import numpy as np
import pytest
from numba import njit

import fastxent as fx
from fastxent import _config, kernels
from fastxent._shuffle import LANES, SHUFFLE_CLASSES, rows_to_tile, tile_to_rows
import reference as ref
from conftest import tolerances

B = _config.TILE_ROWS


@njit(cache=True)
def load(rows, row0, tile):
    return rows_to_tile(rows, row0, tile, B)


@njit(cache=True)
def store(rows, row0, tile):
    return tile_to_rows(rows, row0, tile, B)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_against_numpy_transpose(rng, dtype):
    size = np.dtype(dtype).itemsize
    lanes = LANES[size]
    squares = [lanes - 2, lanes, lanes + 1, 2 * lanes - 1, 2 * lanes, 2 * lanes + 3, _config.TILE_MAX_CLASSES[size]]
    for c in sorted(set(range(1, SHUFFLE_CLASSES[size][-1] + 3)) | {lanes - 1, *squares}):
        n, row0 = 3 * B + 5, B + 3  # a tile that starts off any vector boundary
        rows = rng.standard_normal((n, c)).astype(dtype)
        sentinel = np.array(-7.0, dtype)
        tile = np.full(c * B + 4, sentinel)
        shuffled = c in SHUFFLE_CLASSES[size] or c >= _config.SQUARE_MIN_CLASSES[size]
        assert load(rows, row0, tile) is shuffled
        if not shuffled:
            assert (tile == sentinel).all()  # declined: nothing written
            continue
        np.testing.assert_array_equal(tile[: c * B], rows[row0 : row0 + B].T.reshape(-1))
        assert (tile[c * B :] == sentinel).all()

        out = np.full((n, c), sentinel)
        assert store(out, row0, tile) is True
        np.testing.assert_array_equal(out[row0 : row0 + B], rows[row0 : row0 + B])
        assert (out[:row0] == sentinel).all() and (out[row0 + B :] == sentinel).all()


def test_limits_are_the_measured_ones():
    assert SHUFFLE_CLASSES[4] == tuple(range(2, _config.SHUFFLE_MAX_CLASSES[4] + 1))
    assert SHUFFLE_CLASSES[8] == tuple(range(2, _config.SHUFFLE_MAX_CLASSES[8] + 1))
    for size, classes in SHUFFLE_CLASSES.items():
        assert max(classes) <= _config.TILE_MAX_CLASSES[size]
        assert _config.SHUFFLE_MAX_CLASSES[size] < _config.SQUARE_MIN_CLASSES[size] <= LANES[size]


def test_moves_bits_not_values():
    """NaN payloads, signed zeros and infinities come back bit for bit."""
    c = 4
    bits = np.arange(B * c, dtype=np.uint32) | np.uint32(0x7FC00000)  # NaNs with payloads
    rows = bits.view(np.float32).reshape(B, c).copy()
    rows[0] = [-0.0, np.inf, -np.inf, 0.0]
    tile = np.empty(c * B, np.float32)
    out = np.empty_like(rows)
    assert load(rows, 0, tile) and store(out, 0, tile)
    np.testing.assert_array_equal(out.view(np.uint32), rows.view(np.uint32))


def _edges():
    for dtype in (np.float32, np.float64):
        size = np.dtype(dtype).itemsize
        top = _config.SHUFFLE_MAX_CLASSES[size]
        square = _config.SQUARE_MIN_CLASSES[size]
        for c in sorted({2, 3, top, top + 1, square - 1, square, LANES[size] - 1, LANES[size], LANES[size] + 3}):
            yield dtype, c


@pytest.mark.parametrize("dtype, c", list(_edges()))
def test_kernels_on_both_sides_of_the_limit(rng, dtype, c):
    n = 3 * B + 7  # full tiles by shuffles, a partial last tile by loops
    logits = (rng.standard_normal((n, c)) * 3).astype(dtype)
    labels = rng.integers(0, c, n)
    labels[::11] = -100
    logits[B + 5, 1] = np.nan  # a NaN row inside a shuffled tile
    rtol, atol = tolerances(dtype)
    good = np.ones(n, bool)
    good[B + 5] = False

    rows = np.empty(n, dtype)
    grad = np.empty_like(logits)
    kernels.xent_labels_fused(logits, labels, kernels.NO_WEIGHT, -100, 0.1, 1.0, grad, rows)
    want_rows, want_grad = ref.cross_entropy_with_grad(
        logits[good], labels[good], reduction="none", label_smoothing=0.1
    )
    np.testing.assert_allclose(rows[good], want_rows, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad[good], want_grad, rtol=rtol, atol=atol)
    assert np.isnan(rows[B + 5]) and np.isnan(grad[B + 5]).all()

    rows_serial, grad_serial = np.empty_like(rows), np.empty_like(grad)
    kernels.xent_labels_fused_serial(logits, labels, kernels.NO_WEIGHT, -100, 0.1, 1.0, grad_serial, rows_serial)
    np.testing.assert_array_equal(grad_serial, grad)
    np.testing.assert_array_equal(rows_serial, rows)

    import scipy.special as sp

    want = sp.softmax(logits[good].astype(np.float64), axis=1)
    np.testing.assert_allclose(fx.softmax(logits)[good], want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_strided_output_takes_the_loops(rng, dtype):
    """A kernel called with a non-contiguous buffer (from user njit code):
    the element loops write it, and nothing between its columns."""
    import scipy.special as sp

    x = rng.standard_normal((2 * B, 4)).astype(dtype)
    wide = np.full((2 * B, 8), np.array(5.0, dtype))
    kernels.softmax_rows(x, wide[:, ::2])
    rtol, atol = tolerances(dtype)
    np.testing.assert_allclose(wide[:, ::2], sp.softmax(x.astype(np.float64), axis=1), rtol=rtol, atol=atol)
    assert (wide[:, 1::2] == 5.0).all()
