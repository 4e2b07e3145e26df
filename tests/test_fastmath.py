"""The vectorizable elementary functions against NumPy, and the compiled helpers beside them."""

import numpy as np
import pytest
from conftest import large
import numba
from numba import njit, prange

from fastxent._fastmath import (borrowed, exp2_int, exp_nonpositive, fast_exp, fast_tanh, frexp_parts, index_as_float,
                                maxnum, store_fence, stream_copy, wide_vectors)


@njit
def exp_all(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_exp(x[i])


@njit
def exp_nonpositive_all(x, out):
    for i in range(x.shape[0]):
        out[i] = exp_nonpositive(x[i])


@njit
def tanh_all(x, out):
    for i in range(x.shape[0]):
        out[i] = fast_tanh(x[i])


@njit
def max_all(x):
    m = x[0]
    for i in range(1, x.shape[0]):
        m = maxnum(m, x[i])
    return m


@large
@pytest.mark.parametrize(
    "dtype,lo,hi,rtol,flush",
    [(np.float32, -110.0, 100.0, 2e-7, 2.5e-38), (np.float64, -760.0, 720.0, 4e-16, 3.4e-308)],
)
def test_exp_against_numpy(dtype, lo, hi, rtol, flush):
    x = np.linspace(lo, hi, 400_001).astype(dtype)
    x = np.concatenate([x, np.array([-np.inf, np.inf, np.nan, 0.0, -0.0], dtype)])
    out = np.empty_like(x)
    exp_all(x, out)
    with np.errstate(over="ignore", under="ignore"):
        want = np.exp(x.astype(np.float64))
    finite = np.isfinite(want) & (want < np.finfo(dtype).max)
    normal = finite & (want >= flush)
    np.testing.assert_allclose(out[normal], want[normal], rtol=rtol, atol=0)
    tiny = finite & (want < flush)  # flushed towards zero, never above the true value's scale
    assert np.all(np.abs(out[tiny] - want[tiny]) <= flush)
    overflow = ~finite & ~np.isnan(x)
    assert np.all(out[overflow & (x > 0)] == np.inf)
    assert out[-5] == 0.0 and out[-4] == np.inf and np.isnan(out[-3]) and out[-2] == 1.0 and out[-1] == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxnum_reduction(dtype):
    x = np.array([1.0, np.nan, 5.0, -np.inf, 3.0], dtype)
    assert max_all(x) == 5.0  # NaN ignored; the kernels let it reach the row's sum instead
    assert max_all(np.array([-np.inf, -np.inf], dtype)) == -np.inf


@pytest.mark.parametrize("dtype,lo,rtol,flush", [(np.float32, -110.0, 2e-7, 1.3e-38), (np.float64, -760.0, 4e-16, 2.6e-308)])
def test_exp_nonpositive_against_numpy(dtype, lo, rtol, flush):
    """The kernels' exp, for x - max(x) <= 0."""
    x = np.concatenate([np.linspace(lo, 0.0, 200_001).astype(dtype), np.array([-np.inf, np.nan, -0.0], dtype)])
    out = np.empty_like(x)
    exp_nonpositive_all(x, out)
    with np.errstate(under="ignore"):
        want = np.exp(x.astype(np.float64))
    normal = want >= flush
    np.testing.assert_allclose(out[normal], want[normal], rtol=rtol, atol=0)
    small = (want < flush) & ~np.isnan(x)
    assert np.all(out[small] <= flush)
    assert out[-3] == 0.0 and np.isnan(out[-2]) and out[-1] == 1.0


@pytest.mark.parametrize("dtype,ulps", [(np.float32, 2.0), (np.float64, 2.0)])
def test_tanh_against_numpy(dtype, ulps):
    """The softcap's tanh, on both sides of its 0.625 branch point and into saturation."""
    tiny = np.finfo(dtype).tiny
    mags = np.concatenate([np.geomspace(tiny, 1.0, 20_001), np.linspace(0.5, 0.75, 20_001), np.linspace(0.0, 25.0, 50_001)])
    x = np.concatenate([mags, -mags]).astype(dtype)
    out = np.empty_like(x)
    tanh_all(x, out)
    want = np.tanh(x.astype(np.longdouble))
    err = np.abs(out.astype(np.longdouble) - want) / np.maximum(np.abs(want), tiny)
    assert err.max() <= ulps * np.finfo(dtype).eps, float(err.max())
    order = np.argsort(x, kind="stable")
    assert np.all(np.diff(out[order]) >= 0)  # monotone, so a row's capped max is its max's cap
    special = np.array([np.inf, -np.inf, np.nan], dtype)
    tanh_all(special, special)
    assert special[0] == 1.0 and special[1] == -1.0 and np.isnan(special[2])


@njit
def bit_helpers_all(n, x, k, like, pow2, frac, expo, as_float):
    for i in range(n.shape[0]):
        pow2[i] = exp2_int(n[i])
    for i in range(x.shape[0]):
        frac[i], expo[i] = frexp_parts(x[i])
    for i in range(k.shape[0]):
        as_float[i] = index_as_float(like, k[i])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_exponent_bit_helpers_against_numpy(dtype):
    """2**n, frexp and the integer-to-float of the labels, built from bits (float64 without an int64 conversion,
    which AVX2 lacks), exact over their whole documented ranges."""
    info = np.finfo(dtype)
    n = np.arange(info.minexp, info.maxexp).astype(dtype)
    rng = np.random.default_rng(3)
    x = np.ldexp(rng.uniform(0.5, 1.0, 100_000), rng.integers(info.minexp + 1, info.maxexp + 1, 100_000)).astype(dtype)
    x = np.concatenate([x, np.array([info.tiny, info.max, 1.0, 0.5, 1.5], dtype)])
    top = 2**24 if dtype == np.float32 else 2**51  # float32 is exact below 2**24, the classes it allows
    k = np.concatenate([np.arange(0, 4097), rng.integers(0, top, 10_000), [top - 1]]).astype(np.int64)
    pow2, frac, expo, as_float = (np.empty(a.shape[0], dtype) for a in (n, x, x, k))
    bit_helpers_all(n, x, k, np.empty(1, dtype), pow2, frac, expo, as_float)
    np.testing.assert_array_equal(pow2, np.ldexp(np.ones_like(n), n.astype(np.int32)))
    want_frac, want_expo = np.frexp(x)
    np.testing.assert_array_equal(frac, want_frac)
    np.testing.assert_array_equal(expo, want_expo.astype(dtype))
    np.testing.assert_array_equal(as_float, k.astype(dtype))
    assert as_float.dtype == dtype


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="LLVM IR exists in compiled code only")
def test_float64_bit_helpers_convert_no_int64():
    """exp, frexp and the labels' float in float64 without ``fptosi``/``sitofp`` of an int64: AVX2 has no vector
    instruction for either, and LLVM then takes each lane through a scalar conversion."""
    x = np.ones(8)
    bit_helpers_all(x, x, np.zeros(8, np.int64), x, x.copy(), x.copy(), x.copy(), x.copy())
    exp_nonpositive_all(-x, x.copy())
    for fn in (bit_helpers_all, exp_nonpositive_all):
        ir = next(text for sig, text in fn.inspect_llvm().items() if sig[0] == numba.float64[::1])
        assert "fptosi double" not in ir and "sitofp i64" not in ir


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="views without reference counts exist in compiled code only")
def test_borrowed_views_write_through_inside_prange():
    """Writes through `borrowed` views reach the arrays, in a parallel loop too
    (Numba's dead-code elimination drops writes to arrays it thinks are new)."""

    @njit(parallel=True)
    def pair_sums(x, out):
        x = borrowed(x)
        out = borrowed(out)
        for i in prange(x.shape[0]):
            out[i] = x[i, 0] + x[i, 1]

    x = np.arange(40.0).reshape(20, 2)
    out = np.zeros(20)
    pair_sums(x, out)
    np.testing.assert_array_equal(out, x[:, 0] + x[:, 1])


@njit
def stream_into(src, dst, start, n):
    stream_copy(src, dst, start, n)
    store_fence()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stream_copy_writes_exactly_its_range(dtype):
    """`stream_copy` at every start and length around a few cache lines, into
    a 2-D destination: the range gets the source, everything else is untouched
    (the plain stores before and after the whole lines included)."""
    src = np.arange(1.0, 81.0).astype(dtype)
    for start in range(0, 34):
        for n in range(0, 48):
            dst = np.full((16, 8), -1.0, dtype)
            stream_into(src, dst, start, n)
            want = np.full(128, -1.0, dtype)
            want[start : start + n] = src[:n]
            np.testing.assert_array_equal(dst.reshape(-1), want, err_msg=f"start {start}, n {n}")


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="LLVM IR exists in compiled code only")
def test_wide_vectors_marks_the_calling_function():
    """`wide_vectors` gives the function that calls it the attribute
    ``"prefer-vector-width"`` (`_config.VECTOR_BITS`, none when 0) and
    ``noinline``, and changes nothing that function computes."""
    import re

    from fastxent import _config

    @njit
    def total(a):
        wide_vectors()
        s = 0.0
        for v in a:
            s += v
        return s

    assert total(np.arange(10.0)) == 45.0
    ir = total.inspect_llvm(total.signatures[0])
    define = next(line for line in ir.splitlines() if line.startswith("define") and "total" in line and "cpython" not in line)
    group = re.search(r"#(\d+)", define.split(")")[-1])
    attributes = define + (re.search(rf"^attributes #{group.group(1)} = {{(.*)}}$", ir, re.M).group(1) if group else "")
    if _config.VECTOR_BITS:
        assert f'"prefer-vector-width"="{_config.VECTOR_BITS}"' in attributes
        assert "noinline" in attributes
    else:
        assert "prefer-vector-width" not in attributes
