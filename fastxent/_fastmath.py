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
from llvmlite import binding as llvm_binding
from llvmlite import ir
from numba import config, njit, types
from numba.core import cgutils, ir_utils
from numba.extending import intrinsic, overload
from numba.np.arrayobj import populate_array

from ._config import CACHE_LINE, EXP_FLAGS, STREAM_STORES, VECTOR_BITS

_JIT = not config.DISABLE_JIT
# 1.5 * 2**52: a float64 integer n < 2**51 in size plus this is exact, with
# n + 2**51 in the low bits. _TWO_52_BITS: the bits of 2**52.
_ROUND_MAGIC_F64 = 6755399441055744.0
_TWO_52_BITS = 0x4330000000000000


def _small_int_as_f64(builder, k, minus):
    """LLVM IR for the float64 k - minus, for an i64 0 <= k < 2**52: k in the
    low bits of 2**52, read as a float, less 2**52 + minus (exact for a small
    minus). AVX2 has no vector ``sitofp`` from int64; this is an or and a
    subtraction."""
    as_float = builder.bitcast(builder.or_(k, ir.Constant(ir.IntType(64), _TWO_52_BITS)), ir.DoubleType())
    return builder.fsub(as_float, ir.Constant(ir.DoubleType(), 2.0**52 + minus))
# No Numba-level inline="always": that would lower these bodies with the
# caller's fast-math flags (reassoc undoes Cody-Waite). LLVM still inlines them
# and keeps their own per-instruction flags.
_EXP_OPTS = dict(cache=False, fastmath=set(EXP_FLAGS))
# Functions that divide: IEEE division, as in the kernels. With Numba's
# default error model a division checks for zero and may raise, and that
# branch keeps LLVM from vectorizing the caller's loop.
_DIV_OPTS = dict(_EXP_OPTS, error_model="numpy")


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
        shift and bitcast, all vectorizable). A float64 n becomes an integer
        by adding 1.5 * 2**52 and reading the low bits: AVX2 has no vector
        conversion of float64 to int64, and LLVM's ``fptosi`` took four
        scalar conversions a vector there (the same bits either way).
        """
        if not isinstance(n, types.Float):
            return None
        if n == types.float32:
            ity, bias, shift = ir.IntType(32), 127, 23
        else:
            ity, bias, shift = ir.IntType(64), 1023, 52

        def codegen(context, builder, sig, args):
            if n == types.float32:
                k = builder.fptosi(args[0], ity)
            else:
                # n + 1.5 * 2**52 is exact for |n| < 2**51; its low bits are
                # n + 2**51, and the shift drops everything above bit 11.
                k = builder.bitcast(builder.fadd(args[0], ir.Constant(args[0].type, _ROUND_MAGIC_F64)), ity)
            k = builder.add(k, ir.Constant(ity, bias))
            k = builder.shl(k, ir.Constant(ity, shift))
            return builder.bitcast(k, args[0].type)

        return n(n), codegen

    @intrinsic
    def frexp_parts(typingctx, x):
        """(f, e) with x = f * 2**e and f in [0.5, 1), for a positive normal x.

        Read from the bits (shift, mask, bitcast: vectorizable); other
        inputs give unspecified results.
        """
        if not isinstance(x, types.Float):
            return None
        if x == types.float32:
            ity, shift, bias, mant_mask, half_bits = ir.IntType(32), 23, 126, 0x007FFFFF, 0x3F000000
        else:
            ity, shift, bias, mant_mask, half_bits = ir.IntType(64), 52, 1022, 0x000FFFFFFFFFFFFF, 0x3FE0000000000000
        sig = types.UniTuple(x, 2)(x)

        def codegen(context, builder, sig, args):
            bits = builder.bitcast(args[0], ity)
            biased = builder.lshr(bits, ir.Constant(ity, shift))
            f_bits = builder.or_(builder.and_(bits, ir.Constant(ity, mant_mask)), ir.Constant(ity, half_bits))
            f = builder.bitcast(f_bits, args[0].type)
            if x == types.float32:
                e = builder.sitofp(builder.sub(biased, ir.Constant(ity, bias)), args[0].type)
            else:
                e = _small_int_as_f64(builder, biased, bias)  # the biased exponent is below 2**12
            return context.make_tuple(builder, sig.return_type, [f, e])

        return sig, codegen

    def _prefetch_intrinsic(write):
        def prefetch(typingctx, arr, offset):
            if not isinstance(arr, types.Array) or not isinstance(offset, types.Integer):
                return None

            def codegen(context, builder, sig, args):
                data = context.make_array(arr)(context, builder, value=args[0]).data
                i8p = ir.IntType(8).as_pointer()
                i32 = ir.IntType(32)
                pointer = builder.gep(builder.bitcast(data, i8p), [args[1]])  # not inbounds: a hint past the end is legal
                name = "llvm.prefetch.p0" if llvm_binding.llvm_version_info[0] >= 17 else "llvm.prefetch.p0i8"
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [i8p, i32, i32, i32]), name)
                # (address, 1 = for a write, locality 3 = keep in every cache level, 1 = data)
                builder.call(fn, [pointer, ir.Constant(i32, int(write)), ir.Constant(i32, 3), ir.Constant(i32, 1)])
                return context.get_dummy_value()

            return types.void(arr, offset), codegen

        prefetch.__doc__ = (
            f"Ask for the cache line holding byte ``offset`` of ``arr``'s data, to be "
            f"{'written' if write else 'read'} soon (``llvm.prefetch``: a hint, which never faults)."
        )
        return intrinsic(prefetch)

    prefetch_read = _prefetch_intrinsic(False)
    prefetch_write = _prefetch_intrinsic(True)

    @intrinsic
    def stream_copy(typingctx, src, dst, start, n):
        """``dst.flat[start + k] = src[k]`` for k < n, the whole cache lines of
        ``dst`` by non-temporal stores (see `_config.STREAM_STORES`).

        A store to a line that is not in cache first reads the line
        (read for ownership): an output written from memory by plain stores
        moves its bytes twice. A non-temporal store writes a whole 64-byte
        line without reading it and without keeping it in cache. Elements
        before the first and after the last whole line of the range are
        plain stores; so is all of it when the destination address is not a
        multiple of the element size, or on a machine without
        `_config.STREAM_STORES`. ``src`` is read by unaligned vector loads;
        it is meant to be a small scratch buffer in cache. The stores are
        weakly ordered: call `store_fence` before other threads read
        ``dst``. Unchecked: both ranges must lie inside their arrays, and a
        ``dst`` typed with layout 'A' must be C-contiguous in fact (the
        kernels type strided outputs as 'A' and check their flags at run
        time before they stream).
        """
        ok = (
            isinstance(src, types.Array) and isinstance(dst, types.Array) and src.dtype == dst.dtype
            and isinstance(src.dtype, types.Float) and src.layout == "C" and dst.layout in ("C", "A")
            and isinstance(start, types.Integer) and isinstance(n, types.Integer)
        )
        if not ok:
            return None

        def codegen(context, builder, sig, args):
            source = context.make_array(sig.args[0])(context, builder, value=args[0]).data
            target = context.make_array(sig.args[1])(context, builder, value=args[1]).data
            intp = context.get_value_type(types.intp)
            first = context.cast(builder, args[2], sig.args[2], types.intp)
            count = context.cast(builder, args[3], sig.args[3], types.intp)
            elt = context.get_data_type(sig.args[0].dtype)
            size = context.get_abi_sizeof(elt)
            lanes = CACHE_LINE // size
            line_ty = ir.VectorType(elt, lanes)
            target = builder.gep(target, [first])
            address = builder.ptrtoint(target, intp)

            def const(v):
                return ir.Constant(intp, v)

            def plain(lo, hi):
                with cgutils.for_range_slice(builder, lo, hi, const(1), intp) as (k, _):
                    builder.store(builder.load(builder.gep(source, [k])), builder.gep(target, [k]))

            if not STREAM_STORES:
                plain(const(0), count)
                return context.get_dummy_value()
            head = builder.udiv(builder.and_(builder.neg(address), const(CACHE_LINE - 1)), const(size))
            odd = builder.icmp_unsigned("!=", builder.and_(address, const(size - 1)), const(0))
            head = builder.select(builder.or_(odd, builder.icmp_unsigned(">", head, count)), count, head)
            lines = builder.udiv(builder.sub(count, head), const(lanes))
            tail = builder.add(head, builder.mul(lines, const(lanes)))
            plain(const(0), head)
            nontemporal = builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)])
            with cgutils.for_range_slice(builder, head, tail, const(lanes), intp) as (k, _):
                line = builder.load(builder.bitcast(builder.gep(source, [k]), line_ty.as_pointer()), align=size)
                stored = builder.store(line, builder.bitcast(builder.gep(target, [k]), line_ty.as_pointer()),
                                       align=CACHE_LINE)
                stored.set_metadata("nontemporal", nontemporal)
            plain(tail, count)
            return context.get_dummy_value()

        return types.void(src, dst, start, n), codegen

    @intrinsic
    def store_fence(typingctx):
        """Order the non-temporal stores of `stream_copy` before every later
        store (``sfence``): another thread that sees a later store sees them.
        Nothing on a machine without `_config.STREAM_STORES`."""

        def codegen(context, builder, sig, args):
            if STREAM_STORES:
                fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), []),
                                                    "llvm.x86.sse.sfence")
                builder.call(fn, [])
            return context.get_dummy_value()

        return types.void(), codegen

    @intrinsic
    def wide_vectors(typingctx):
        """Ask LLVM to vectorize the calling function's loops with vectors of
        `_config.VECTOR_BITS` bits (nothing when it is 0).

        Sets the function attribute ``"prefer-vector-width"``, as clang's
        ``-mprefer-vector-width`` does, and ``noinline``: the loop vectorizer
        runs after inlining, with the attributes of the function the loops
        end up in, so the caller must stay a function of its own. Call it
        once, in a function that runs long enough for a call to be free (a
        group of tiles)."""

        def codegen(context, builder, sig, args):
            if VECTOR_BITS:
                attributes = builder.function.attributes
                # llvmlite's add() accepts only attributes it knows by name
                set.add(attributes, f'"prefer-vector-width"="{VECTOR_BITS}"')
                attributes.discard("alwaysinline")
                attributes.add("noinline")
            return context.get_dummy_value()

        return types.void(), codegen

    @intrinsic
    def index_as_float(typingctx, like, k):
        """The integer ``k`` as a float of ``like``'s dtype (``like`` is an
        array), for 0 <= k < 2**51 (float64) or 2**24 (float32); other k give
        unspecified results.

        AVX2 has no vector conversion from int64, and LLVM's ``sitofp`` of a
        tile's labels took one scalar conversion a lane. So float64 goes
        through the bits of 2**52 (`_small_int_as_f64`); float32 converts the
        low 32 bits.
        """
        if not isinstance(like, types.Array) or not isinstance(like.dtype, types.Float) or not isinstance(k, types.Integer):
            return None
        dtype = like.dtype

        def codegen(context, builder, sig, args):
            bits = context.cast(builder, args[1], k, types.int64)
            if dtype == types.float32:
                return builder.sitofp(builder.trunc(bits, ir.IntType(32)), ir.FloatType())
            return _small_int_as_f64(builder, bits, 0)

        return dtype(like, k), codegen

    @intrinsic
    def stack_empty(typingctx, like, size):
        """An uninitialised 1-D array of ``size`` (a literal int) elements of
        ``like``'s dtype (``like`` is an array or a scalar), on the stack of
        the function that calls this.

        Scratch without a heap allocation: the memory lives in the calling
        function's frame (the entry block's ``alloca``, so once per call even
        inside a loop) and must not escape it.
        """
        if not isinstance(size, types.IntegerLiteral) or not isinstance(like, (types.Array, types.Number)):
            return None
        n = size.literal_value
        dtype = like.dtype if isinstance(like, types.Array) else like
        arrty = types.Array(dtype, 1, "C")

        def codegen(context, builder, sig, args):
            llty = context.get_data_type(dtype)
            data = cgutils.alloca_once(builder, llty, size=n)
            ary = context.make_array(arrty)(context, builder)
            itemsize = context.get_abi_sizeof(llty)
            intp = context.get_value_type(types.intp)
            populate_array(
                ary,
                data=data,
                shape=[ir.Constant(intp, n)],
                strides=[ir.Constant(intp, itemsize)],
                itemsize=ir.Constant(intp, itemsize),
                meminfo=None,
            )
            return ary._getvalue()

        return arrty(like, size), codegen

    @intrinsic
    def borrowed(typingctx, arr):
        """``arr`` as a view without a reference count.

        Every compiled call that takes an array updates its reference count
        on entry and exit, an atomic add on the memory shared by all the
        views of a buffer, and Numba's pruning leaves many of these in
        place (a group of rows called with a dozen arrays cost about 0.16
        us, most of a one-row call from @njit code). A view returned here
        has no memory info, so those updates are skipped: it must not
        outlive the call it is made in, and that call must keep ``arr``
        alive (a kernel keeps its arguments). Numba's alias analysis is told
        that the view aliases ``arr`` (below); without that, writes through
        it inside ``prange`` were removed as dead. It follows a direct
        assignment, not a tuple unpacking: assign each view on its own.
        """
        if not isinstance(arr, types.Array):
            return None

        def codegen(context, builder, sig, args):
            src = context.make_array(arr)(context, builder, value=args[0])
            view = context.make_array(arr)(context, builder)
            populate_array(view, data=src.data, shape=src.shape, strides=src.strides, itemsize=src.itemsize, meminfo=None)
            return view._getvalue()

        return arr(arr), codegen

    @intrinsic
    def borrowed_row(typingctx, arr):
        """A 1-D C-contiguous ``arr`` as a (1, n) view, without a reference
        count (as `borrowed`). ``arr.reshape((1, n))`` calls into Numba's
        runtime to work out the strides, about 0.05 us of a one-sample call."""
        if not isinstance(arr, types.Array) or arr.ndim != 1 or arr.layout != "C":
            return None
        rowty = arr.copy(ndim=2, layout="C")

        def codegen(context, builder, sig, args):
            src = context.make_array(arr)(context, builder, value=args[0])
            view = context.make_array(rowty)(context, builder)
            one = ir.Constant(src.nitems.type, 1)
            n = builder.extract_value(src.shape, 0)
            row_bytes = builder.mul(n, src.itemsize)
            populate_array(
                view, data=src.data, shape=[one, n], strides=[row_bytes, src.itemsize], itemsize=src.itemsize,
                meminfo=None,
            )
            return view._getvalue()

        return rowty(arr), codegen

    @intrinsic
    def borrowed_rows(typingctx, arr, n_cols):
        """A 1-D C-contiguous ``arr`` as a (len // n_cols, n_cols) view, without
        a reference count (as `borrowed`): scratch from `stack_empty` seen as
        rows. ``n_cols`` must be positive."""
        if not isinstance(arr, types.Array) or arr.ndim != 1 or arr.layout != "C" or not isinstance(n_cols, types.Integer):
            return None
        rowsty = arr.copy(ndim=2, layout="C")

        def codegen(context, builder, sig, args):
            src = context.make_array(arr)(context, builder, value=args[0])
            view = context.make_array(rowsty)(context, builder)
            cols = context.cast(builder, args[1], sig.args[1], types.intp)
            rows = builder.udiv(builder.extract_value(src.shape, 0), cols)
            populate_array(
                view, data=src.data, shape=[rows, cols], strides=[builder.mul(cols, src.itemsize), src.itemsize],
                itemsize=src.itemsize, meminfo=None,
            )
            return view._getvalue()

        return rowsty(arr, n_cols), codegen

    def _borrowed_aliases(lhs, args, alias_map, arg_aliases):
        ir_utils._add_alias(lhs, args[0].name, alias_map, arg_aliases)

    ir_utils.alias_func_extensions[("borrowed", __name__)] = _borrowed_aliases
    ir_utils.alias_func_extensions[("borrowed_row", __name__)] = _borrowed_aliases
    ir_utils.alias_func_extensions[("borrowed_rows", __name__)] = _borrowed_aliases

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

    def prefetch_read(arr, offset):
        """A hint without effect on results: nothing to do."""

    def prefetch_write(arr, offset):
        """A hint without effect on results: nothing to do."""

    def borrowed_rows(arr, n_cols):
        """A 1-D ``arr`` as a (len // n_cols, n_cols) view."""
        return arr[: arr.shape[0] // n_cols * n_cols].reshape((-1, n_cols))

    def stream_copy(src, dst, start, n):
        """``dst.flat[start + k] = src[k]`` for k < n."""
        dst.reshape(-1)[start : start + n] = src.reshape(-1)[:n]

    def store_fence():
        """Store ordering is the interpreter's: nothing to do."""

    def wide_vectors():
        """A code generation hint: nothing to do."""

    def index_as_float(like, k):
        """The integer ``k`` as a float of ``like``'s dtype."""
        return like.dtype.type(k)

    def stack_empty(like, size):
        """An uninitialised 1-D array of ``size`` elements of ``like``'s dtype."""
        return np.empty(size, np.asarray(like).dtype)

    def borrowed(arr):
        """``arr`` itself (reference counts are compiled code's)."""
        return arr

    def borrowed_row(arr):
        """A 1-D ``arr`` as a (1, n) view."""
        return arr.reshape((1, arr.shape[0]))

    def frexp_parts(x):
        """(f, e) with x = f * 2**e and f in [0.5, 1), for a positive normal x."""
        f, e = math.frexp(float(x))
        return type(x)(f), type(x)(e)


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


@njit(**_DIV_OPTS)
def _tanh_f32(x):
    """Cephes ``tanhf``: an odd polynomial below 0.625, else 1 - 2 / (exp(2|x|) + 1)."""
    a = x if x >= np.float32(0.0) else -x
    z = a * a
    p = np.float32(-5.70498872745e-3)
    p = p * z + np.float32(2.06390887954e-2)
    p = p * z - np.float32(5.37397155531e-2)
    p = p * z + np.float32(1.33314422036e-1)
    p = p * z - np.float32(3.33332819422e-1)
    small = p * z * x + x  # odd: keeps the sign, -0.0 included
    e = _exp_nonpositive_f32(np.float32(-2.0) * a)  # exp(-2|x|) in (0, 1]: no overflow
    large = (np.float32(1.0) - e) / (np.float32(1.0) + e)
    large = large if x >= np.float32(0.0) else -large
    t = small if a < np.float32(0.625) else large
    return t if x == x else x


@njit(**_DIV_OPTS)
def _tanh_f64(x):
    """Cephes ``tanh``: x + x^3 P(x^2) / Q(x^2) below 0.625, else 1 - 2 / (exp(2|x|) + 1)."""
    a = x if x >= 0.0 else -x
    z = a * a
    p = -9.64399179425052238628e-1
    p = p * z - 9.92877231001918586564e1
    p = p * z - 1.61468768441708447952e3
    q = z + 1.12811678491632931402e2
    q = q * z + 2.23548839060100448583e3
    q = q * z + 4.84406305325125486048e3
    small = x + x * z * (p / q)
    e = _exp_nonpositive_f64(-2.0 * a)
    large = (1.0 - e) / (1.0 + e)
    large = large if x >= 0.0 else -large
    t = small if a < 0.625 else large
    return t if x == x else x


@njit(**_EXP_OPTS)
def _log_f32(x):
    """Cephes ``logf``: log(f) + e ln2 with x = f 2**e, f in [sqrt(1/2), sqrt(2))."""
    f, e = frexp_parts(x)
    small = f < np.float32(0.70710678118654752440)
    e = e - np.float32(1.0) if small else e
    z = (f + f if small else f) - np.float32(1.0)
    zz = z * z
    p = np.float32(7.0376836292e-2)
    p = p * z - np.float32(1.1514610310e-1)
    p = p * z + np.float32(1.1676998740e-1)
    p = p * z - np.float32(1.2420140846e-1)
    p = p * z + np.float32(1.4249322787e-1)
    p = p * z - np.float32(1.6668057665e-1)
    p = p * z + np.float32(2.0000714765e-1)
    p = p * z - np.float32(2.4999993993e-1)
    p = p * z + np.float32(3.3333331174e-1)
    y = p * z * zz + e * np.float32(-2.12194440e-4) - np.float32(0.5) * zz
    return (z + y) + e * np.float32(0.693359375)


@njit(**_EXP_OPTS)
def _log_f64(x):
    """Cephes ``log``: log(1+z) = z - z**2/2 + z**3 P(z)/Q(z), plus e ln2."""
    f, e = frexp_parts(x)
    small = f < 0.70710678118654752440
    e = e - 1.0 if small else e
    z = (f + f if small else f) - 1.0
    zz = z * z
    p = 1.01875663804580931796e-4
    p = p * z + 4.97494994976747001425e-1
    p = p * z + 4.70579119878881725854e0
    p = p * z + 1.44989225341610930846e1
    p = p * z + 1.79368678507819816313e1
    p = p * z + 7.70838733755885391666e0
    q = z + 1.12873587189167450590e1
    q = q * z + 4.52279145837532221105e1
    q = q * z + 8.29875266912776603211e1
    q = q * z + 7.11544750618563894466e1
    q = q * z + 2.31251620126765340583e1
    y = z * (zz * p / q) - e * 2.121944400546905827679e-4 - 0.5 * zz
    return (z + y) + e * 0.693359375


@njit(**_EXP_OPTS)
def _log_sum_f32(s):
    return _log_f32(s) if s == s else s


@njit(**_EXP_OPTS)
def _log_sum_f64(s):
    return _log_f64(s) if s == s else s


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


log_sum = _by_float_type(
    "log_sum",
    _log_sum_f32,
    _log_sum_f64,
    """log(s) for a sum of shifted exps, s in [1, C] or NaN: vectorizable in a loop.

    After the max shift a row's sum of exps is at least 1 (the max's own
    term) and at most C, so no zero, negative, subnormal or infinite input
    reaches it; NaN stays NaN. Relative error about 1e-7 (float32) and
    2e-16 (float64) (tests/test_fastmath.py).
    """,
)


fast_tanh = _by_float_type(
    "fast_tanh",
    _tanh_f32,
    _tanh_f64,
    """tanh(x) for a float32 or float64 scalar, vectorizable in a loop (for ``softcap``).

    libm's tanh is a scalar call of about 11 ns on this machine, which made a
    soft-capped row cost ten times an uncapped one. Relative error about
    2e-7 (float32) and 3e-16 (float64) (tests/test_fastmath.py); +-inf give
    +-1 and NaN stays NaN.
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
