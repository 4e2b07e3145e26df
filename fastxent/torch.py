"""PyTorch adapter: `cross_entropy` and `CrossEntropyLoss` under autograd.

Same signature and semantics as ``torch.nn.functional.cross_entropy`` and
``torch.nn.CrossEntropyLoss``, computed by fastxent's fused kernel: the
forward pass computes the loss and the gradient together, and the backward
pass only scales that gradient by ``grad_output``.

Requires the optional extra ``[torch]``; ``import fastxent`` never imports
torch. CPU tensors only.

Memory and copies
-----------------
- Contiguous float32/float64 inputs whose class dimension is the last one,
  (N, C) and (C,), are read in place through ``Tensor.numpy()``; the
  gradient gets one buffer of the input's size. With
  ``inplace_backward=True`` the gradient overwrites the input's storage
  instead, as flash-attn's option of that name does.
- Inputs of shape (N, C, d1, ...) have their class dimension moved last:
  that copy is unavoidable for a row-wise kernel, and the gradient is then
  computed in place in the copy, so there is no second buffer.
- float16 and bfloat16 inputs are converted to float32 (a copy, which again
  holds the gradient) and the gradient is returned in the input's dtype.
- An input that does not require grad (or ``torch.no_grad()``) runs the
  loss-only kernel: no gradient buffer at all.
- ``loss.backward()`` (an upstream gradient of 1 on a reduced loss) hands
  the gradient buffer itself to autograd, without a copy. A second backward
  through the same graph (``retain_graph=True``, ``gradcheck``) recomputes
  the gradient from the input, which is why the input is kept until the
  graph is freed; with ``inplace_backward=True`` it raises instead.

Errors
------
Errors on bad input follow PyTorch's classes where PyTorch has one:
``RuntimeError`` for devices, dtypes and double backward, ``ValueError``
for shapes and options. A class index outside ``[0, C)`` that is not
``ignore_index`` raises ``ValueError`` (PyTorch raises ``IndexError`` or a
device-side assert).

torch.compile
-------------
The forward pass calls Numba kernels, which TorchDynamo cannot trace.
`cross_entropy` is marked ``torch.compiler.disable``: a compiled model that
uses this loss gets one graph break at the loss call, compiles the rest
and gives the same results (tested with the ``aot_eager`` backend; the
default ``inductor`` backend also works).
"""

import sys

import numpy as np
import torch
from torch import nn

from . import api

__all__ = ["cross_entropy", "CrossEntropyLoss"]

_NATIVE = (torch.float32, torch.float64)
_WIDENED = (torch.float16, torch.bfloat16)  # computed in float32


def _reduction_name(size_average, reduce, reduction):
    """PyTorch's deprecated size_average/reduce arguments, mapped as PyTorch maps them."""
    if size_average is None and reduce is None:
        return reduction
    from torch.nn import _reduction

    return _reduction.legacy_get_string(size_average, reduce)


def _check_tensors(input, target, weight, inplace_backward):
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"cross_entropy(): input must be a torch.Tensor, got {type(input).__name__}")
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"cross_entropy(): target must be a torch.Tensor, got {type(target).__name__}")
    if input.device.type != "cpu":
        raise RuntimeError(
            f"fastxent.torch.cross_entropy runs on the CPU only; input is on {input.device}. "
            "Use torch.nn.functional.cross_entropy for other devices."
        )
    for name, other in (("target", target), ("weight", weight)):
        if other is not None and other.device != input.device:
            raise RuntimeError(
                f"Expected all tensors to be on the same device, but found at least two devices, "
                f"{input.device} and {other.device} ({name})"
            )
    if input.dtype not in _NATIVE + _WIDENED:
        raise RuntimeError(
            f"cross_entropy(): expected a floating-point input (float16, bfloat16, float32 or float64), "
            f"got {input.dtype}"
        )
    if input.dim() == 0:
        raise ValueError("cross_entropy(): input must have at least one dimension (the classes), got a 0-d tensor")
    if target.is_floating_point():
        if target.shape != input.shape:
            raise ValueError(
                f"cross_entropy(): probability target must have the input's shape {tuple(input.shape)}, "
                f"got {tuple(target.shape)}"
            )
        if target.requires_grad:
            raise RuntimeError(
                "fastxent.torch.cross_entropy does not compute gradients with respect to a probability target; "
                "use torch.nn.functional.cross_entropy, or pass target.detach()"
            )
    elif target.dtype in (torch.bool,) or target.is_complex():
        raise RuntimeError(f"cross_entropy(): target must hold class indices or probabilities, got {target.dtype}")
    else:
        want = (input.shape[0],) + tuple(input.shape[2:]) if input.dim() >= 2 else ()
        if tuple(target.shape) != want:
            if input.dim() >= 2 and target.dim() >= 1 and target.shape[0] != input.shape[0]:
                raise ValueError(
                    f"Expected input batch_size ({input.shape[0]}) to match target batch_size ({target.shape[0]})."
                )
            raise ValueError(
                f"cross_entropy(): class-index target must have shape {want} for input of shape "
                f"{tuple(input.shape)}, got {tuple(target.shape)}"
            )
    if weight is not None and weight.requires_grad:
        raise RuntimeError(
            "fastxent.torch.cross_entropy does not compute gradients with respect to weight "
            "(nor does torch.nn.functional.cross_entropy); pass weight.detach()"
        )
    if inplace_backward and input.requires_grad and input.is_leaf:
        raise RuntimeError(
            "inplace_backward=True would overwrite a leaf tensor that requires grad (the logits must be "
            "computed, e.g. by a Linear layer); use inplace_backward=False"
        )


def _class_dim_last(t):
    """PyTorch's layout (N, C, d1, ...) to the kernels' (N, d1, ..., C); (N, C) and (C,) stay."""
    return t.movedim(1, -1) if t.dim() > 2 else t


def _class_dim_back(t, ndim):
    return t.movedim(-1, 1) if ndim > 2 else t


def _as_numpy(t, dtype):
    """A NumPy view of ``t`` in ``dtype`` when possible, else a private contiguous copy.

    Returns (array, copied).
    """
    t = t.detach()
    if t.dtype != dtype:
        t = t.to(dtype)
        copied = True
    else:
        copied = not t.is_contiguous()
    return t.contiguous().numpy(), copied


def _numpy_target(target, compute_dtype):
    target = _class_dim_last(target.detach()) if target.is_floating_point() else target.detach()
    if target.is_floating_point():
        return _as_numpy(target, compute_dtype)[0]
    return target.contiguous().numpy()


def _options(weight, compute_dtype, ignore_index, reduction, label_smoothing):
    return dict(
        weight=None if weight is None else _as_numpy(weight, compute_dtype)[0],
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
    )


def _fused(input, target, weight, ignore_index, reduction, label_smoothing, inplace_backward, grad_buffer=None):
    """One fused kernel call: (loss as a tensor, gradient as a tensor in the kernels' layout, input overwritten?)."""
    compute_dtype = input.dtype if input.dtype in _NATIVE else torch.float32
    logits, copied = _as_numpy(_class_dim_last(input), compute_dtype)
    opts = _options(weight, compute_dtype, ignore_index, reduction, label_smoothing)
    if copied or inplace_backward:
        grad = logits  # a private copy, or the caller allowed its storage to be reused
    elif grad_buffer is not None and grad_buffer.shape == logits.shape and grad_buffer.dtype == logits.dtype:
        grad = grad_buffer
    else:
        grad = np.empty_like(logits)
    out = np.empty(logits.shape[:-1], dtype=logits.dtype) if reduction == "none" else None
    loss, _ = api.cross_entropy_with_grad(
        logits, _numpy_target(target, compute_dtype), out=out, grad_out=grad, **opts
    )
    return torch.as_tensor(loss).to(input.dtype), torch.from_numpy(grad), inplace_backward and not copied


class _FusedCrossEntropy(torch.autograd.Function):
    """Forward computes loss and gradient in one kernel call; backward scales the gradient."""

    @staticmethod
    def forward(ctx, input, target, weight, ignore_index, reduction, label_smoothing, inplace_backward, grad_buffer):
        loss, grad, overwritten = _fused(input, target, weight, ignore_index, reduction, label_smoothing,
                                         inplace_backward, grad_buffer)
        if overwritten:
            # The input's values are gone: make autograd refuse any other
            # use of them saved for a backward pass, instead of reading
            # the gradient in their place.
            torch.autograd.graph.increment_version(input)
        else:
            # Kept (by reference, no copy) to recompute the gradient if the
            # buffer was handed over and a second backward comes.
            ctx.save_for_backward(input)
        ctx.grad = grad  # not in save_for_backward: it may be the input's storage
        ctx.recompute = None if overwritten else (target, weight, ignore_index, reduction, label_smoothing)
        ctx.input_dtype = input.dtype
        ctx.input_dim = input.dim()
        ctx.reduction = reduction
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "fastxent.torch.cross_entropy does not support double backward (create_graph=True); "
                "use torch.nn.functional.cross_entropy for higher-order gradients"
            )
        grad = ctx.grad
        if grad is None:  # a second backward (retain_graph=True) after the buffer was handed over
            if ctx.recompute is None:
                raise RuntimeError(
                    "fastxent.torch.cross_entropy: a second backward through a loss computed with "
                    "inplace_backward=True is not possible (its logits were overwritten by the gradient); "
                    "use inplace_backward=False"
                )
            (input,) = ctx.saved_tensors
            grad = _fused(input, *ctx.recompute, False)[1]
        if ctx.reduction == "none":
            scale = grad_output.to(grad.dtype)
            scale = scale.reshape(grad.shape[:-1] + (1,))
            grad = grad * scale
        elif grad_output.item() != 1.0:
            grad = grad * grad_output.to(grad.dtype)
        else:
            # loss.backward() passes 1: the gradient is ready. Give the
            # buffer away (keeping no reference) so that autograd can adopt
            # it as a leaf's .grad instead of copying it.
            ctx.grad = None
        grad = _class_dim_back(grad, ctx.input_dim)
        if grad.dtype != ctx.input_dtype:
            grad = grad.to(ctx.input_dtype)
        return grad, None, None, None, None, None, None, None


def _loss_only(input, target, weight, ignore_index, reduction, label_smoothing):
    compute_dtype = input.dtype if input.dtype in _NATIVE else torch.float32
    logits, _ = _as_numpy(_class_dim_last(input), compute_dtype)
    opts = _options(weight, compute_dtype, ignore_index, reduction, label_smoothing)
    loss = api.cross_entropy(logits, _numpy_target(target, compute_dtype), **opts)
    return torch.as_tensor(loss).to(input.dtype)


def cross_entropy(
    input,
    target,
    weight=None,
    size_average=None,
    ignore_index=-100,
    reduce=None,
    reduction="mean",
    label_smoothing=0.0,
    *,
    inplace_backward=False,
):
    """``torch.nn.functional.cross_entropy``, computed by fastxent's fused kernel.

    Parameters
    ----------
    input : Tensor, shape (C,), (N, C) or (N, C, d1, ...)
        Unnormalized scores on the CPU; the class dimension is 1 for inputs
        of two or more dimensions, as in PyTorch. float32 or float64, or
        float16/bfloat16 (computed in float32).
    target : Tensor
        Class indices of shape (), (N,) or (N, d1, ...), or probabilities of
        the input's shape.
    weight, size_average, ignore_index, reduce, reduction, label_smoothing
        As in ``torch.nn.functional.cross_entropy``.
    inplace_backward : bool, default False
        Let the gradient overwrite the input's storage (for a contiguous
        float32/float64 input with the classes last, which is the only
        case that would otherwise allocate a gradient buffer). The input
        must not be a leaf, and its values are lost after the forward pass:
        autograd then refuses to run a backward pass that saved them.

    Returns
    -------
    Tensor
        A 0-d loss ("mean", "sum") or the per-element losses ("none"), in
        the input's dtype.
    """
    reduction = _reduction_name(size_average, reduce, reduction)
    return _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, inplace_backward, None)


# TorchDynamo would try to trace into the NumPy and Numba calls and break
# the graph several times inside them; one clean break at the call instead.
@torch.compiler.disable
def _cross_entropy(input, target, weight, ignore_index, reduction, label_smoothing, inplace_backward, grad_buffer):
    """`cross_entropy` after the legacy arguments; ``grad_buffer``: a NumPy array for the gradient, or None."""
    _check_tensors(input, target, weight, inplace_backward)
    if input.dim() == 1:  # one sample: (C,) with a 0-d label or a (C,) distribution
        loss = _cross_entropy(input.unsqueeze(0), target.unsqueeze(0), weight, ignore_index, reduction,
                              label_smoothing, inplace_backward, None)
        return loss.squeeze(0) if reduction == "none" else loss
    if torch.is_grad_enabled() and input.requires_grad:
        return _FusedCrossEntropy.apply(
            input, target, weight, ignore_index, reduction, label_smoothing, inplace_backward, grad_buffer
        )
    return _loss_only(input, target, weight, ignore_index, reduction, label_smoothing)


class CrossEntropyLoss(nn.Module):
    """``torch.nn.CrossEntropyLoss``, computed by `fastxent.torch.cross_entropy`.

    Parameters
    ----------
    weight, size_average, ignore_index, reduce, reduction, label_smoothing
        As in ``torch.nn.CrossEntropyLoss``; ``weight`` is registered as a
        buffer, so it follows ``.to()`` and ``state_dict()``.
    inplace_backward : bool, default False
        See `cross_entropy`.

    Notes
    -----
    For a contiguous (N, C) float32/float64 input the module keeps the
    gradient buffer of its last step and reuses it at the next step once
    nothing else holds it: not autograd, not a ``.grad``, not a view in
    your code (its reference count is back to the module's own). A
    training loop then does not allocate, and fault in, a new logits-sized
    buffer each step (measured at 512 x 32000 float32: 9 to 10 ms a step
    with a new buffer, 5 to 6 ms with the reused one). The cost is one
    logits-sized array kept between steps; ``del`` the module to free it.
    """

    def __init__(
        self,
        weight=None,
        size_average=None,
        ignore_index=-100,
        reduce=None,
        reduction="mean",
        label_smoothing=0.0,
        *,
        inplace_backward=False,
    ):
        super().__init__()
        reduction = _reduction_name(size_average, reduce, reduction)
        # Fail at construction, not at the first step, on bad options.
        api.prepare(np.zeros((0, 1)), np.zeros(0, dtype=np.int64), None, ignore_index, reduction, label_smoothing)
        self.register_buffer("weight", weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.inplace_backward = inplace_backward
        # The reference count of the kept buffer when only this module holds
        # it, measured through the same expression that checks it later.
        self._spare = np.empty(0)
        self._free_refs = self._spare_refs()
        self._spare = None

    def _spare_refs(self):
        return sys.getrefcount(self._spare)

    def _gradient_buffer(self, input):
        """The last step's gradient buffer if nothing else holds it, else a new one; None when not needed."""
        if not (
            isinstance(input, torch.Tensor)
            and torch.is_grad_enabled()
            and input.requires_grad
            and input.dim() == 2
            and input.dtype in _NATIVE
            and input.is_contiguous()
            and not self.inplace_backward
        ):
            return None
        shape = tuple(input.shape)
        dtype = np.float32 if input.dtype == torch.float32 else np.float64
        spare = self._spare
        if spare is None or spare.shape != shape or spare.dtype != dtype:
            del spare
            self._spare = np.empty(shape, dtype)
        else:
            del spare
            if self._spare_refs() != self._free_refs:  # still in use somewhere: leave it to its holders
                self._spare = np.empty(shape, dtype)
        return self._spare

    @torch.compiler.disable  # see _cross_entropy
    def forward(self, input, target):
        return _cross_entropy(
            input,
            target,
            self.weight,
            self.ignore_index,
            self.reduction,
            self.label_smoothing,
            self.inplace_backward,
            self._gradient_buffer(input),
        )

    def extra_repr(self):
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}, inplace_backward={self.inplace_backward}"
        )
