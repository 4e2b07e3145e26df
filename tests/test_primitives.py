"""log_softmax, softmax and logsumexp against scipy.special."""

import numpy as np
import pytest
import scipy.special as sp
from conftest import DTYPES, large, tolerances

import fastxent as fx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,axis", [((7,), 0), ((5, 9), -1), ((5, 9), 0), pytest.param((3, 4, 40000), -1, marks=large), ((3, 4, 6), 1), ((1, 1), -1)])
def test_match_scipy(rng, dtype, shape, axis):
    x = (rng.standard_normal(shape) * 20).astype(dtype)
    rtol, atol = tolerances(dtype)
    x64 = x.astype(np.float64)
    for got, want in [
        (fx.log_softmax(x, axis=axis), sp.log_softmax(x64, axis=axis)),
        (fx.softmax(x, axis=axis), sp.softmax(x64, axis=axis)),
        (fx.logsumexp(x, axis=axis), sp.logsumexp(x64, axis=axis)),
    ]:
        assert np.asarray(got).dtype == dtype
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite(dtype):
    x = np.array([[0.0, -np.inf, 1.0], [np.nan, 0.0, 1.0], [-np.inf, -np.inf, -np.inf], [1e30, 1e30, 0]], dtype)
    ls = fx.log_softmax(x)
    assert ls[0, 1] == -np.inf and np.all(np.isfinite(ls[0, [0, 2]]))
    assert np.all(np.isnan(ls[1]))
    np.testing.assert_allclose(fx.softmax(x)[3], [0.5, 0.5, 0.0])
    lse = fx.logsumexp(x)
    assert np.isnan(lse[1])
    assert np.isnan(lse[2]) or lse[2] == -np.inf  # documented: row without a finite max is NaN
    np.testing.assert_allclose(lse[3], np.float64(np.float32(1e30)) if dtype == np.float32 else 1e30, rtol=1e-6)


def test_empty_axis_and_empty_batch():
    assert fx.log_softmax(np.zeros((3, 0))).shape == (3, 0)
    np.testing.assert_array_equal(fx.logsumexp(np.zeros((3, 0))), [-np.inf] * 3)
    assert fx.softmax(np.zeros((0, 4))).shape == (0, 4)


@pytest.mark.parametrize("func", [fx.log_softmax, fx.softmax])
def test_out_and_in_place(rng, func):
    x = rng.standard_normal((6, 11))
    want = func(x.copy())
    out = np.empty_like(x)
    assert func(x, out=out) is out
    np.testing.assert_array_equal(out, want)
    y = x.copy()
    assert func(y, out=y) is y
    np.testing.assert_allclose(y, want, rtol=1e-14)
    out0 = np.empty_like(x)
    assert func(x, axis=0, out=out0) is out0
    np.testing.assert_allclose(out0, func(x.T.copy()).T, rtol=1e-14)


def test_logsumexp_out(rng):
    x = rng.standard_normal((6, 11))
    out = np.empty(11)
    assert fx.logsumexp(x, axis=0, out=out) is out
    np.testing.assert_allclose(out, sp.logsumexp(x, axis=0), rtol=1e-13)


@pytest.mark.parametrize("func", [fx.log_softmax, fx.softmax, fx.logsumexp])
def test_bad_input(func):
    with pytest.raises(TypeError, match="float32 or float64"):
        func(np.arange(4))
    with pytest.raises(ValueError, match="0-d"):
        func(np.float64(1.0))
    with pytest.raises(getattr(np, "exceptions", np).AxisError):  # np.exceptions: NumPy >= 1.25
        func(np.zeros((2, 3)), axis=2)
    with pytest.raises(ValueError, match="shape"):
        func(np.zeros((2, 3)), out=np.zeros((3, 3)))
