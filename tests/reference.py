"""Slow, obviously-correct float64 references written from the formulas.

Independent of fastxent: it builds the full target matrix q (PyTorch's
definition of weights, ignore_index and label smoothing) and uses
``loss_i = -sum_c q_ic log p_ic`` (with 0 * log 0 = 0) and
``grad_i = sum_c(q_ic) p_i - q_i``.
"""

import numpy as np


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return x - m - np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))


def target_matrix(logits, target, weight, ignore_index, label_smoothing):
    """(x, q, denominator of the mean, ignored rows) for either kind of target, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    n_classes = x.shape[-1]
    x = x.reshape(-1, n_classes)
    n_rows = x.shape[0]
    w = np.ones(n_classes) if weight is None else np.asarray(weight, dtype=np.float64)
    eps = label_smoothing
    target = np.asarray(target)
    if target.dtype.kind in "iu":
        y = target.reshape(-1).astype(np.int64)
        ignored = y == ignore_index
        q = np.zeros((n_rows, n_classes))
        denominator = 0.0
        for i in range(n_rows):
            if y[i] == ignore_index:
                continue
            q[i, y[i]] += (1 - eps) * w[y[i]]
            q[i] += eps / n_classes * w
            denominator += w[y[i]]
    else:
        t = target.astype(np.float64).reshape(n_rows, n_classes)
        q = ((1 - eps) * t + eps / n_classes) * w
        denominator = float(n_rows)
        ignored = np.zeros(n_rows, dtype=bool)
    return x, q, denominator, ignored


def logsumexp(x):
    """log sum exp over the last axis, shifted by the maximum."""
    x = np.asarray(x, dtype=np.float64)
    m = np.max(x, axis=-1)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        return m + np.log(np.sum(np.exp(x - m[..., None]), axis=-1))


def softcapped(x, softcap):
    """(u, du/dx) for u = softcap * tanh(x / softcap); (x, 1) without a cap."""
    x = np.asarray(x, dtype=np.float64)
    if softcap is None:
        return x, np.ones_like(x)
    t = np.tanh(x / softcap)
    return softcap * t, 1.0 - t * t


def cross_entropy_with_grad(logits, target, weight=None, ignore_index=-100, reduction="mean", label_smoothing=0.0,
                            z_loss=0.0, softcap=None):
    """Loss and gradient; with z_loss, ``z_loss * lse(u)**2`` is added to each
    non-ignored row, and with softcap the logits are first ``u = softcap tanh(x / softcap)``."""
    shape = np.shape(logits)
    x, q, denominator, ignored = target_matrix(logits, target, weight, ignore_index, label_smoothing)
    x, dudx = softcapped(x, softcap)
    lp = log_softmax(x)
    lse = logsumexp(x)
    with np.errstate(invalid="ignore", over="ignore"):
        terms = np.where(q != 0, -q * lp, 0.0)
        row = terms.sum(axis=1)
        mass = q.sum(axis=1)
        if z_loss:
            row = row + np.where(ignored, 0.0, z_loss * lse**2)
            mass = mass + np.where(ignored, 0.0, 2.0 * z_loss * lse)
        grad = (mass[:, None] * np.exp(lp) - q) * dudx
    # An ignored row is out of the loss entirely: zero gradient even when its
    # logits are not finite (PyTorch's backward can leak a NaN there).
    grad[ignored] = 0.0
    if reduction == "none":
        return row.reshape(shape[:-1]), grad.reshape(shape)
    if reduction == "sum":
        return row.sum(), grad.reshape(shape)
    with np.errstate(invalid="ignore", divide="ignore"):
        return row.sum() / denominator, (grad / denominator if denominator else grad * 0.0).reshape(shape)
