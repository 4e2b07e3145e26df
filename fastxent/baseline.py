"""The plain NumPy implementation from the project's source notes.

fastxent is measured against this (``python -m fastxent``, ``bench``,
asv). It is kept as written there, one-hot targets and all, because it is
the baseline; it is not a reference for correctness: ``-Y * log(softmax)``
gives NaN when a probability underflows to 0 (fastxent computes the
log-softmax directly and does not).
"""

import numpy as np


def numpy_xent_with_grad(logits, onehot):
    """Mean softmax cross-entropy and its gradient, ``(softmax - Y) / N``."""
    n = logits.shape[0]
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    s = e / e.sum(axis=1, keepdims=True)
    loss = np.sum(-onehot * np.log(s)) / n
    grad = (s - onehot) / n
    return loss, grad


def numpy_xent(logits, onehot):
    """Mean softmax cross-entropy only."""
    return numpy_xent_with_grad(logits, onehot)[0]


def numpy_log_softmax(x):
    """``x - max - log(sum(exp(x - max)))`` along the last axis."""
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def onehot(labels, n_classes, dtype):
    """The (N, C) one-hot matrix the baseline takes."""
    y = np.zeros((labels.shape[0], n_classes), dtype=dtype)
    y[np.arange(labels.shape[0]), labels] = 1
    return y
