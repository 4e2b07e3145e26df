"""Vectorizable elementary functions for Numba kernels.

Numba (>= 0.62) has no SVML, so ``np.exp`` inside a loop compiles to one
scalar libm call per element and blocks vectorization. The exp here is
plain arithmetic (Cody-Waite range reduction, a short polynomial, 2**n
built from exponent bits), which LLVM turns into AVX2/AVX-512 code.

``maxnum`` emits ``llvm.maxnum``, the only max LLVM vectorizes as a
reduction. It ignores a NaN operand; the kernels rely on the NaN reaching
the row's sum of exps instead, so a NaN logit still makes its row NaN.

Accuracy of ``fast_exp`` against ``np.exp`` (tests/test_fastmath.py):
relative error below 2e-7 (float32) and 4e-16 (float64) for normal
results; results below ~2.4e-38 (float32) / ~3.3e-308 (float64), i.e. in
or near the subnormal range, are flushed to zero; overflow gives +inf,
-inf gives 0 and NaN stays NaN.
"""

import math

import numpy as np
from llvmlite import ir
from numba import config, njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

from ._config import EXP_FLAGS

_JIT = not config.DISABLE_JIT
# No Numba-level inline="always": that would lower these bodies with the
# caller's fast-math flags (reassoc undoes Cody-Waite). LLVM still inlines them
# and keeps their own per-instruction flags.
_EXP_OPTS = dict(cache=False, fastmath=set(EXP_FLAGS))


def _llvm_call(builder, name, args):
    fnty = ir.FunctionType(args[0].type, [a.type for a in args])
    fn = cgutils.get_or_insert_function(builder.module, fnty, name)
    return builder.call(fn, args)


def _llvm_suffix(ty):
    return "f32" if ty == types.float32 else "f64"


if _JIT:

    @intrinsic
    def maxnum(typingctx, a, b):
        """``llvm.maxnum``: the larger of a and b; a NaN operand is ignored."""
        if a != b or not isinstance(a, types.Float):
            return None

        def codegen(context, builder, sig, args):
            return _llvm_call(builder, "llvm.maxnum." + _llvm_suffix(a), args)

        return a(a, b), codegen

    @intrinsic
    def rint(typingctx, x):
        """Round to the nearest integer (ties to even), as a float."""
        if not isinstance(x, types.Float):
            return None

        def codegen(context, builder, sig, args):
            return _llvm_call(builder, "llvm.rint." + _llvm_suffix(x), args)

        return x(x), codegen

    @intrinsic
    def exp2_int(typingctx, n):
        """2**n for an integral float n in the normal exponent range.

        Built by writing n + bias into the exponent bits (one integer add,
        shift and bitcast, all vectorizable).
        """
        if not isinstance(n, types.Float):
            return None
        if n == types.float32:
            ity, bias, shift = ir.IntType(32), 127, 23
        else:
            ity, bias, shift = ir.IntType(64), 1023, 52

        def codegen(context, builder, sig, args):
            k = builder.fptosi(args[0], ity)
            k = builder.add(k, ir.Constant(ity, bias))
            k = builder.shl(k, ir.Constant(ity, shift))
            return builder.bitcast(k, args[0].type)

        return n(n), codegen

else:  # NUMBA_DISABLE_JIT=1 (coverage runs): plain Python equivalents

    def maxnum(a, b):
        """``llvm.maxnum``: the larger of a and b; a NaN operand is ignored."""
        return np.fmax(a, b)

    def rint(x):
        """Round to the nearest integer (ties to even), as a float."""
        return np.rint(x)

    def exp2_int(n):
        """2**n for an integral float n in the normal exponent range."""
        return type(n)(math.ldexp(1.0, int(n)))


@njit(**_EXP_OPTS)
def _exp_reduced_f32(xc):
    """(p, n) with exp(xc) = p * 2**n, for a clamped float32 xc (Cephes ``expf``)."""
    n = rint(xc * np.float32(1.44269504088896341))
    # Cody-Waite: ln2 split into an exactly representable head and a tail.
    r = xc - n * np.float32(0.693359375)
    r = r - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    return p * (r * r) + r + np.float32(1.0), n


@njit(**_EXP_OPTS)
def _exp_reduced_f64(xc):
    """(p, n) with exp(xc) = p * 2**n, for a clamped float64 xc (degree-12 Taylor
    on |r| <= ln2/2, ~1 ulp)."""
    n = rint(xc * 1.4426950408889634)
    r = xc - n * 6.93145751953125e-1
    r = r - n * 1.42860682030941723212e-6
    p = 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    return p * (r * r) + r + 1.0, n


@njit(**_EXP_OPTS)
def exp_f32(x):
    """Vectorizable float32 exp."""
    lo = np.float32(-86.6)  # exp(lo) ~ 2.4e-38; smaller results flush to 0
    hi = np.float32(88.72283)  # log(FLT_MAX)
    xc = x if x > lo else lo
    p, n = _exp_reduced_f32(xc if xc < hi else hi)
    # 2**(n-1) * 2 keeps n = 128 (x near log(FLT_MAX)) representable.
    y = p * exp2_int(n - np.float32(1.0))
    y = y + y
    y = y if x >= lo else np.float32(0.0)
    y = y if x <= hi else np.float32(np.inf)
    return y if x == x else x


@njit(**_EXP_OPTS)
def exp_f64(x):
    """Vectorizable float64 exp."""
    lo = -708.0  # exp(lo) ~ 3.3e-308; smaller results flush to 0
    hi = 709.782712893384  # log(DBL_MAX)
    xc = x if x > lo else lo
    p, n = _exp_reduced_f64(xc if xc < hi else hi)
    y = p * exp2_int(n - 1.0)
    y = y + y
    y = y if x >= lo else 0.0
    y = y if x <= hi else np.inf
    return y if x == x else x


@njit(**_EXP_OPTS)
def _exp_nonpositive_f32(x):
    lo = np.float32(-87.3)  # exp(lo) ~ 1.2e-38 keeps 2**n normal; smaller results flush to 0
    p, n = _exp_reduced_f32(x if x > lo else lo)
    y = p * exp2_int(n)
    y = y if x >= lo else np.float32(0.0)
    return y if x == x else x


@njit(**_EXP_OPTS)
def _exp_nonpositive_f64(x):
    lo = -708.3  # exp(lo) ~ 2.5e-308 keeps 2**n normal; smaller results flush to 0
    p, n = _exp_reduced_f64(x if x > lo else lo)
    y = p * exp2_int(n)
    y = y if x >= lo else 0.0
    return y if x == x else x


def _by_float_type(name, f32_impl, f64_impl, doc):
    """A scalar function that calls ``f32_impl`` or ``f64_impl`` by the type of
    its argument, in Python and (through an overload) in compiled code."""

    def func(x):
        return f32_impl(x) if isinstance(x, np.float32) else f64_impl(x)

    func.__name__ = func.__qualname__ = name
    func.__doc__ = doc

    @overload(func)
    def _overload(x):
        if x == types.float32:
            return lambda x: f32_impl(x)
        if x == types.float64:
            return lambda x: f64_impl(x)
        return None

    return func


fast_exp = _by_float_type(
    "fast_exp", exp_f32, exp_f64, """exp(x) for a float32 or float64 scalar, vectorizable in a loop."""
)

exp_nonpositive = _by_float_type(
    "exp_nonpositive",
    _exp_nonpositive_f32,
    _exp_nonpositive_f64,
    """exp(x) for x <= 0 (or NaN): `fast_exp` without the overflow handling.

    The kernels only exponentiate ``x - max(x) <= 0``; dropping the upper
    clamp and its select shortens the polynomial exp by four vector
    instructions. Results for x > 0 are unspecified.
    """,
)


def cast_like(arr, value):
    """``value`` converted to the dtype of ``arr``.

    Keeps float32 kernels in float32: a float64 scalar argument would
    otherwise promote every element it touches.
    """
    return arr.dtype.type(value)


@overload(cast_like, inline="always")
def _cast_like_overload(arr, value):
    target = arr.dtype
    return lambda arr, value: target(value)
