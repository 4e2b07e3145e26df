"""fastxent: fused, numerically stable softmax cross-entropy for the CPU.

Public API: `cross_entropy`, `cross_entropy_grad`, `cross_entropy_with_grad`,
`log_softmax`, `softmax`, `logsumexp`, `CrossEntropyLoss`,
`linear_cross_entropy`, `LinearCrossEntropyLoss`, and the
njit-callable kernel layer `fastxent.kernels`.
"""

from . import _njit, kernels  # noqa: F401 (_njit: the public names inside @njit code)
from .api import cross_entropy, cross_entropy_grad, cross_entropy_with_grad, log_softmax, logsumexp, softmax
from .linear import LinearCrossEntropyLoss, linear_cross_entropy
from .loss import CrossEntropyLoss

__version__ = "0.1.0"

__all__ = [
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "log_softmax",
    "softmax",
    "logsumexp",
    "CrossEntropyLoss",
    "linear_cross_entropy",
    "LinearCrossEntropyLoss",
    "kernels",
]
