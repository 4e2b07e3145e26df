"""The public functions inside user ``@njit`` code.

``fastxent.cross_entropy`` and its siblings (api.py) are plain Python
functions. This module gives each one a Numba overload, so that the same
call, keywords included, compiles inside a user's ``@njit`` function:

    @njit
    def step(logits, labels, grad):
        return fastxent.cross_entropy_with_grad(logits, labels, grad_out=grad)

The overloads run the serial kernels (safe inside the user's own
``prange``), accept 1-D logits (one sample) as well as 2-D ones, and
allocate nothing when the output buffers are given. What they check, and
how, differs from the Python API where compiled code forces it:

- types are checked when the caller compiles (``TypingError`` naming the
  argument); arrays must already have the logits' dtype, nothing is
  converted;
- ``reduction`` must be a string constant, since "none" returns an array
  and "mean"/"sum" a scalar;
- shapes, label range and ``label_smoothing`` are checked at run time
  (``ValueError``, before anything is written);
- ``grad_out`` (``out`` of `cross_entropy_grad`) may be the logits array
  itself (in-place mode, recognised by its data pointer); a partial overlap
  with the inputs is not detected.
"""

import functools
import hashlib

import numpy as np
from llvmlite import binding as llvm_binding
from numba import njit, types
from numba.core import cgutils
from numba.core.errors import TypingError
from numba.extending import intrinsic, overload

from . import _config, api, kernels
from ._fastmath import borrowed, borrowed_row, cast_like, stack_empty

_OVERLOAD = dict(jit_options=_config.NJIT_API, prefer_literal=True)


# --------------------------------------------------------------------------
# Typing-time checks: they run when the caller compiles.
# --------------------------------------------------------------------------


def _absent(arg):
    return arg is None or isinstance(arg, (types.NoneType, types.Omitted))


def _constant(arg, name, allowed):
    """The compile-time value of a string option (a literal, or omitted)."""
    if isinstance(arg, types.Omitted):
        value = arg.value
    elif isinstance(arg, types.StringLiteral):
        value = arg.literal_value
    elif isinstance(arg, str):
        value = arg
    else:
        raise TypingError(f"{name} must be a string constant at the call site (one of {allowed}), got {arg}")
    if value not in allowed:
        raise TypingError(f"{name} must be one of {allowed}, got {value!r}")
    return value


def _check_logits(logits, name="logits"):
    if not isinstance(logits, types.Array) or logits.ndim not in (1, 2):
        raise TypingError(f"{name} must be a 1-D or 2-D array, got {logits}")
    if logits.dtype not in (types.float32, types.float64):
        raise TypingError(f"{name} must be float32 or float64, got {logits.dtype}")


def _check_array(arr, name, logits, ndim, writable=False):
    """``arr`` is an array of the logits' dtype with ``ndim`` dimensions (or absent)."""
    if _absent(arr):
        return
    if not isinstance(arr, types.Array) or arr.ndim != ndim:
        raise TypingError(f"{name} must be a {ndim}-D array of the logits' dtype {logits.dtype}, got {arr}")
    if arr.dtype != logits.dtype:
        raise TypingError(f"{name} must have the logits' dtype {logits.dtype}, got {arr.dtype}")
    if writable and not arr.mutable:
        raise TypingError(f"{name} is read-only")


def _target_kind(logits, target):
    """"label" (one integer), "labels" (an integer array) or "probs"; TypingError otherwise."""
    if logits.ndim == 1 and isinstance(target, types.Integer):
        return "label"
    if isinstance(target, types.Array) and isinstance(target.dtype, types.Integer):
        if target.ndim == 1 and logits.ndim == 2:
            return "labels"
    elif isinstance(target, types.Array) and isinstance(target.dtype, types.Float):
        _check_array(target, "target", logits, logits.ndim)
        return "probs"
    want = "an integer" if logits.ndim == 1 else "a 1-D integer array"
    raise TypingError(
        f"target must be {want} (class indices) or a float array of the logits' shape and dtype "
        f"(probabilities), got {target}"
    )


def _check_options(logits, weight, ignore_index, label_smoothing):
    _check_array(weight, "weight", logits, 1)
    if not isinstance(ignore_index, (types.Integer, types.Omitted, int)):
        raise TypingError(f"ignore_index must be an integer, got {ignore_index}")
    if not isinstance(label_smoothing, (types.Number, types.Omitted, float, int)):
        raise TypingError(f"label_smoothing must be a number, got {label_smoothing}")


# --------------------------------------------------------------------------
# Kernel calls by symbol
# --------------------------------------------------------------------------
#
# A Numba function that calls another links the callee's LLVM module into
# its own, then optimizes and generates machine code for the whole again.
# The batch kernels are large (tile and row paths, a shuffle block for every
# small C), so every user function calling `cross_entropy_with_grad` paid
# for compiling them once more, and so did each level in between: 11 s for
# a user function on a Zen 4 (the overload's body 6.4 s of it). The
# overloads below call the kernels through `_call_kernel` instead: the
# kernel is compiled once per process (or loaded from fastxent's disk
# cache), its entry point is given to LLVM's JIT linker under a fixed
# symbol, and the caller's module holds only a declaration and a call. The
# kernels' calling convention and exceptions are Numba's own.


def _kernel_symbol(name, argtys, restype):
    """The symbol of ``kernels.<name>`` compiled for ``argtys``: the same in
    every process, so that a caller cached on disk finds it again. It names
    the whole calling convention (arguments and result)."""
    text = repr((name, tuple(str(t) for t in argtys), str(restype)))
    return f"fastxent.kernels.{name}.{hashlib.sha256(text.encode()).hexdigest()[:16]}"


@functools.cache
def _link_kernel(name, argtys):
    """Compile (or load) ``kernels.<name>`` for the tuple of Numba types
    ``argtys`` and register its entry point under `_kernel_symbol`; returns
    (symbol, return type)."""
    kernel = getattr(kernels, name)
    kernel.compile(argtys)
    compiled = kernel.overloads[argtys]
    restype = compiled.signature.return_type
    symbol = _kernel_symbol(name, argtys, restype)
    llvm_binding.add_symbol(symbol, compiled.library.get_pointer_to_function(compiled.fndesc.llvm_func_name))
    return symbol, restype


def _relink_kernel(name, argtys, symbol):
    """The reload hook of a caller cached on disk: Numba runs it before it
    links the caller. The caller then calls the batch kernels installed now
    (its inlined parts stay as they were compiled), unless a kernel's
    result type changed since it was compiled: then it is refused, since a
    call with another result type would corrupt memory."""
    if _link_kernel(name, argtys)[0] != symbol:
        raise RuntimeError(
            f"a function cached on disk calls fastxent.kernels.{name} with a result type this fastxent "
            "version no longer has: delete that function's Numba cache (its __pycache__ *.nbi and *.nbc files)"
        )


def _kernel_name(dispatcher):
    for name, value in vars(kernels).items():
        if value is dispatcher:
            return name
    raise TypingError(f"{dispatcher} is not a kernel of fastxent.kernels")


@intrinsic
def _call_kernel(typingctx, kernel, *argtys):
    """``kernel(*args)`` for a dispatcher of `kernels`, called by symbol
    (see above), not linked into the caller."""
    name = _kernel_name(kernel.dispatcher)
    given = argtys
    argtys = tuple(types.unliteral(t) for t in given)  # the kernels' signatures: as a dispatcher call types them
    symbol, restype = _link_kernel(name, argtys)

    def codegen(context, builder, signature, args):
        context.active_code_library._reload_init.add(functools.partial(_relink_kernel, name, argtys, symbol))
        function = cgutils.get_or_insert_function(
            builder.module, context.call_conv.get_function_type(restype, argtys), symbol
        )
        values = [
            context.cast(builder, value, from_type, to_type)
            for value, from_type, to_type in zip(cgutils.unpack_tuple(builder, args[1], len(given)), given, argtys)
        ]
        status, result = context.call_conv.call_function(builder, function, restype, argtys, values)
        with cgutils.if_unlikely(builder, status.is_error):
            context.call_conv.return_status_propagate(builder, status)
        return result

    return restype(kernel, types.StarArgTuple.from_types(given)), codegen


# --------------------------------------------------------------------------
# Compiled helpers
# --------------------------------------------------------------------------


def _rows(x):
    """The (rows, classes) view the kernels take: (1, C) for 1-D x, x itself for 2-D."""


@overload(_rows, inline="always")
def _rows_typed(x):
    if x.ndim == 2:
        return lambda x: x
    if x.layout == "C":
        return lambda x: borrowed_row(x)
    return lambda x: x[np.newaxis, :]


def _weight_or_none(weight, logits):
    """``weight``, or a 0-length array of the logits' dtype (the kernels' "no weights")."""


@overload(_weight_or_none, inline="always")
def _weight_or_none_typed(weight, logits):
    if _absent(weight):
        return lambda weight, logits: _empty_like(logits)
    return lambda weight, logits: weight


def _empty_like(x):
    """A 0-length, writeable 1-D array of x's dtype, without an allocation."""


@overload(_empty_like, inline="always")
def _empty_like_typed(x):
    # A stack array of one element, sliced to none: the kernels take such an
    # array for "no weights" and "no per-row losses" and never index it.
    return lambda x: stack_empty(x, 1)[:0]


def _check_smoothing(label_smoothing):
    """Raise ValueError unless 0 <= label_smoothing <= 1.

    (The helpers here are overloads with ``inline="always"``: an
    ``@njit(inline="always")`` version of this check was measured to
    miscompile the kernel call after it on numba 0.68, dropping the label's
    term from the gradient.)
    """


@overload(_check_smoothing, inline="always")
def _check_smoothing_typed(label_smoothing):
    def impl(label_smoothing):
        if not 0.0 <= label_smoothing <= 1.0:
            raise ValueError("label_smoothing must be in [0, 1]")

    return impl


def _denominator(x, labels, weight, ignore_index):
    """Validate labels; the "mean" denominator (summed weight of the non-ignored rows)."""


@overload(_denominator, inline="always")
def _denominator_typed(x, labels, weight, ignore_index):
    def impl(x, labels, weight, ignore_index):
        if labels.shape[0] != x.shape[0]:
            raise ValueError("labels must have one entry per row of the logits")
        bad, total = _call_kernel(kernels.check_labels_serial, labels, weight, x.shape[1], ignore_index)
        if bad >= 0:
            raise ValueError("a label is outside [0, C) and is not ignore_index")
        return total

    return impl


def _first_label(target):
    """The first class index of a label array (0 for a probability target,
    whose calls never take the one-row branch that asks for it)."""


@overload(_first_label, inline="always")
def _first_label_typed(target):
    if isinstance(target.dtype, types.Integer):
        return lambda target: np.int64(target[0])
    return lambda target: np.int64(0)


def _borrowed_if_array(arg):
    """``arg`` as a `borrowed` view if it is an array (an integer label or None as it is)."""


@overload(_borrowed_if_array, inline="always")
def _borrowed_if_array_typed(arg):
    if isinstance(arg, types.Array):
        return lambda arg: borrowed(arg)
    return lambda arg: arg


def _is_same_array(a, b):
    """True when a and b are the same elements (the in-place mode)."""


@overload(_is_same_array, inline="always")
def _is_same_array_typed(a, b):
    return lambda a, b: a.ctypes.data == b.ctypes.data and a.shape == b.shape


# --------------------------------------------------------------------------
# The overloads
# --------------------------------------------------------------------------


def _cross_entropy_body(logits, target, weight, ignore_index, label_smoothing, out, reduction, returns, grad_out):
    """The compiled body shared by the three cross-entropy overloads, chosen at typing time
    (after checking the argument types; ``reduction`` as the caller passed it).

    ``returns``: "loss", "grad" or "both". The kernel is chosen by target
    kind (labels or probabilities) and mode (loss only, fused, in place).
    Every branch below tests a constant fixed here, so Numba compiles only
    the branches this call uses.
    """
    reduction = _constant(reduction, "reduction", api._REDUCTIONS)
    _check_options(logits, weight, ignore_index, label_smoothing)
    _check_logits(logits)
    kind = _target_kind(logits, target)
    one_row = logits.ndim == 1
    with_loss = returns != "grad"
    with_grad = returns != "loss"
    want_rows = reduction == "none" and with_loss
    if want_rows:
        if one_row and not _absent(out):
            raise TypingError("out is not accepted for 1-D logits with reduction='none' (the loss is a scalar)")
        _check_array(out, "out", logits, 1, writable=True)
    elif not _absent(out):
        raise TypingError(f"out is only valid with reduction='none', got reduction={reduction!r}")
    _check_array(grad_out, "grad_out" if with_loss else "out", logits, logits.ndim, writable=True)
    one_label = kind == "label"
    label_array = kind == "labels"
    labels = kind != "probs"
    mean = reduction == "mean"
    given_rows = not _absent(out)
    given_grad = not _absent(grad_out)
    rows_on_stack = want_rows and one_row
    rows_allocated = want_rows and not one_row and not given_rows
    return_both = returns == "both"
    return_grad = returns == "grad"
    dtype = np.float32 if logits.dtype == types.float32 else np.float64
    if labels:
        fused = kernels.xent_labels_fused_serial
        fused_inplace = kernels.xent_labels_fused_inplace_serial
        loss_only = kernels.xent_labels_loss_serial
    else:
        fused = kernels.xent_probs_fused_serial
        fused_inplace = kernels.xent_probs_fused_inplace_serial
        loss_only = kernels.xent_probs_loss_serial

    weighted = not _absent(weight)
    batched = not one_label  # a 2-D call, or a 1-D sample with a probability target

    def body(logits, target, weight, ignore_index, label_smoothing, out, grad_out):
        # The inputs arrive as borrowed views (see `_fastmath.borrowed` and
        # the overloads below); the outputs are borrowed where a kernel
        # takes them, so the compiled calls below update no reference counts.
        x = _rows(logits)
        w = _weight_or_none(weight, x)
        ignore_index = np.int64(ignore_index)  # not a literal: one kernel signature, shared with the API
        _check_smoothing(label_smoothing)
        if with_grad:
            if given_grad:
                grad = grad_out
            else:
                grad = np.empty_like(logits)
        else:
            grad = logits  # not returned
        inplace = _is_same_array(grad, logits)
        total = 0.0
        denominator = 1.0
        # One sample's scores and its class, or a batch of one row and one
        # label: the one-row kernel, without the batch kernels' setup (the
        # same bits; about half the cost of a batch call).
        use_row = one_label
        label = np.int64(0)
        if one_label:
            label = np.int64(target)
        if batched:
            if label_array:
                y = target
            else:
                y = _rows(target)
            if rows_on_stack:
                row_loss = stack_empty(x, 1)  # in this frame: lives through the kernel call
            elif rows_allocated:
                row_loss = np.empty(x.shape[0], dtype)
            elif given_rows:
                row_loss = out
            else:
                row_loss = _empty_like(x)
            if label_array:
                if x.shape[0] == 1 and y.shape[0] == 1:
                    use_row = True
                    label = _first_label(y)
        if use_row:
            # The one-row kernel is inlined here once, for both kinds of
            # call, with its checks written out: a second inlined copy of
            # `kernels.xent_label_row` in this body, or the checks moved
            # into an @njit helper, made the one-sample gradient lose its
            # target term (a Numba inlining problem; the tests of one-row
            # gradients catch it).
            if label != ignore_index and (label < 0 or label >= x.shape[1]):
                raise ValueError("the label is outside [0, C) and is not ignore_index")
            if mean:
                if label == ignore_index:
                    denominator = 0.0
                elif weighted:
                    denominator = float(w[label])
            grad_view = borrowed(_rows(grad))
            if batched:
                row_loss_view = borrowed(row_loss)
                kernels._check_row_loss(x, row_loss_view)
            row = kernels.xent_label_row(x, label, w, ignore_index, label_smoothing, 1.0 / denominator, grad_view,
                                         with_grad, inplace)
            total = float(row)
            if batched:
                if row_loss.shape[0] != 0:
                    row_loss[0] = row
        elif batched:
            if labels:
                denominator = _denominator(x, y, w, ignore_index)
            else:
                denominator = float(x.shape[0])
            if not mean:
                denominator = 1.0
            scale = 1.0 / denominator
            if with_grad and labels:
                if inplace:
                    total = _call_kernel(fused_inplace, x, y, w, ignore_index, label_smoothing, scale, row_loss)
                else:
                    total = _call_kernel(fused, x, y, w, ignore_index, label_smoothing, scale, _rows(grad), row_loss)
            elif with_grad:
                if inplace:
                    total = _call_kernel(fused_inplace, x, y, w, label_smoothing, scale, row_loss)
                else:
                    total = _call_kernel(fused, x, y, w, label_smoothing, scale, _rows(grad), row_loss)
            elif labels:
                total = _call_kernel(loss_only, x, y, w, ignore_index, label_smoothing, row_loss)
            else:
                total = _call_kernel(loss_only, x, y, w, label_smoothing, row_loss)
            if rows_on_stack:
                total = float(row_loss[0])
        if want_rows and not one_row:
            loss = row_loss
        elif want_rows:
            loss = cast_like(x, total)
        else:
            loss = cast_like(x, total / denominator)
        if return_both:
            return loss, grad
        if return_grad:
            return grad
        return loss

    return njit(**_config.NJIT_API)(body)


@overload(api.cross_entropy, **_OVERLOAD)
def _cross_entropy_njit(
    logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, out=None
):
    body = _cross_entropy_body(logits, target, weight, ignore_index, label_smoothing, out, reduction, "loss", None)

    # The inputs (logits, target, weight) go to the body as borrowed views:
    # the caller holds them through the call, and the body never returns
    # them (it returns `out`, `grad_out` or arrays of its own). Passed as
    # they are, they cost an incref and a decref each in this frame: (1, 10)
    # from @njit code took 0.12-0.14 us that way, 0.09-0.10 us this way (the
    # same in the two overloads below).
    def impl(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, out=None):
        return body(
            borrowed(logits), _borrowed_if_array(target), _borrowed_if_array(weight), ignore_index, label_smoothing,
            out, None,
        )

    return impl


@overload(api.cross_entropy_with_grad, **_OVERLOAD)
def _cross_entropy_with_grad_njit(
    logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, out=None, grad_out=None
):
    body = _cross_entropy_body(logits, target, weight, ignore_index, label_smoothing, out, reduction, "both", grad_out)

    def impl(
        logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, out=None, grad_out=None
    ):
        return body(
            borrowed(logits), _borrowed_if_array(target), _borrowed_if_array(weight), ignore_index, label_smoothing,
            out, grad_out,
        )

    return impl


@overload(api.cross_entropy_grad, **_OVERLOAD)
def _cross_entropy_grad_njit(
    logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, out=None
):
    body = _cross_entropy_body(logits, target, weight, ignore_index, label_smoothing, None, reduction, "grad", out)

    def impl(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, out=None):
        return body(
            borrowed(logits), _borrowed_if_array(target), _borrowed_if_array(weight), ignore_index, label_smoothing,
            None, out,
        )

    return impl


def _rowwise_impl(x, axis, out, kernel, keep_axis):
    _check_logits(x, "x")
    if not isinstance(axis, (types.Integer, types.Omitted, int)):
        raise TypingError(f"axis must be an integer, got {axis}")
    one_row = x.ndim == 1
    if keep_axis:
        _check_array(out, "out", x, x.ndim, writable=True)
    elif one_row and not _absent(out):
        raise TypingError("out is not accepted for 1-D x: the log-sum-exp is a scalar")
    else:
        _check_array(out, "out", x, 1, writable=True)
    given = not _absent(out)
    scalar = one_row and not keep_axis
    dtype = np.float32 if x.dtype == types.float32 else np.float64
    last = x.ndim - 1

    def impl(x, axis=-1, out=None):
        if axis != -1 and axis != last:
            raise ValueError("inside @njit code only the last axis is supported (axis=-1)")
        xr = borrowed(_rows(x))
        if given:
            result = out
        elif keep_axis:
            result = np.empty_like(x)
        elif scalar:
            result = stack_empty(xr, 1)
        else:
            result = np.empty(xr.shape[0], dtype)
        if xr.shape[1] == 0:
            if not keep_axis:
                result[:] = -np.inf  # log-sum-exp of nothing
        elif keep_axis:
            _call_kernel(kernel, xr, borrowed(_rows(result)))
        else:
            _call_kernel(kernel, xr, borrowed(result))
        if scalar:
            return result[0]
        return result

    return impl


@overload(api.log_softmax, **_OVERLOAD)
def _log_softmax_njit(x, axis=-1, out=None):
    return _rowwise_impl(x, axis, out, kernels.log_softmax_rows_serial, keep_axis=True)


@overload(api.softmax, **_OVERLOAD)
def _softmax_njit(x, axis=-1, out=None):
    return _rowwise_impl(x, axis, out, kernels.softmax_rows_serial, keep_axis=True)


@overload(api.logsumexp, **_OVERLOAD)
def _logsumexp_njit(x, axis=-1, out=None):
    return _rowwise_impl(x, axis, out, kernels.logsumexp_rows_serial, keep_axis=False)
