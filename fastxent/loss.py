"""`CrossEntropyLoss`: a loss object that owns and reuses its buffers."""

import numpy as np

from . import api


class CrossEntropyLoss:
    """Softmax cross-entropy with a forward/backward interface.

    ``forward`` runs the fused kernel once, computing the loss and the
    gradient together into buffers this object owns; ``backward`` returns
    that gradient. The buffers are reused while the logits' shape and dtype
    stay the same, so a training loop allocates nothing per step.

    Parameters
    ----------
    weight, ignore_index, reduction, label_smoothing, z_loss, softcap
        As in `fastxent.cross_entropy` (PyTorch's semantics for the first four).

    Notes
    -----
    The arrays returned by ``backward`` (and by ``forward`` when
    ``reduction="none"``) are the object's own buffers: the next ``forward``
    overwrites them. Copy them if you need to keep them. One object is not
    meant to be shared between threads; use one per thread.

    Examples
    --------
    >>> loss_fn = CrossEntropyLoss()
    >>> loss = loss_fn(logits, labels)      # doctest: +SKIP
    >>> dlogits = loss_fn.backward()         # doctest: +SKIP
    """

    def __init__(self, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0, z_loss=0.0,
                 softcap=None):
        self.weight = weight
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = z_loss
        self.softcap = softcap
        # Fail at construction, not at the first step, on bad options.
        api.prepare(np.zeros((0, 1)), np.zeros(0, dtype=np.int64), None, ignore_index, reduction, label_smoothing,
                    z_loss, softcap)
        self._grad = None
        self._row_loss = None
        self._has_grad = False

    def _buffers(self, shape, dtype):
        if self._grad is None or self._grad.shape != shape or self._grad.dtype != dtype:
            self._grad = np.empty(shape, dtype=dtype)
            self._row_loss = np.empty(shape[:-1], dtype=dtype)
        return self._grad, self._row_loss

    def forward(self, logits, target, lse_out=None):
        """Loss of ``logits`` against ``target``; also computes the gradient.

        ``lse_out``, optional: a buffer for each row's log-sum-exp, as in
        `fastxent.cross_entropy`.

        Returns
        -------
        numpy scalar ("mean", "sum") or the per-row losses ("none").
        """
        p = api.prepare(logits, target, self.weight, self.ignore_index, self.reduction, self.label_smoothing,
                        self.z_loss, self.softcap)
        lse = api.check_lse_out(p, lse_out, [])
        grad, row_loss = self._buffers(p.shape, p.dtype)
        if lse is not None:
            api.check_no_overlap(lse_out, "lse_out", [("this loss's gradient buffer", grad),
                                                       ("this loss's row-loss buffer", row_loss)])
        self._has_grad = False
        loss = api.fused(p, grad, row_loss.reshape(-1) if p.reduction == "none" else api.NO_ROW_LOSS[p.dtype], lse=lse)
        self._has_grad = True
        return loss

    __call__ = forward

    def backward(self):
        """Gradient of the last forward's loss with respect to its logits.

        Raises
        ------
        RuntimeError
            If ``forward`` has not run yet.
        """
        if not self._has_grad:
            raise RuntimeError("backward() called before forward(): there is no gradient yet")
        return self._grad

    def __repr__(self):
        return (
            f"CrossEntropyLoss(weight={None if self.weight is None else '...'}, ignore_index={self.ignore_index}, "
            f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
            f"softcap={self.softcap})"
        )
