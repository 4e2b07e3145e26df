"""The command line, the timing helper and the NumPy baseline."""

import subprocess
import sys

import numpy as np
from conftest import large

from fastxent._timing import interleaved_medians
from fastxent.baseline import numpy_log_softmax, numpy_xent, numpy_xent_with_grad, onehot
import reference as ref


def test_baseline_is_the_formula(rng):
    logits = rng.standard_normal((6, 5))
    labels = rng.integers(0, 5, 6)
    y = onehot(labels, 5, np.float64)
    loss, grad = numpy_xent_with_grad(logits, y)
    want_loss, want_grad = ref.cross_entropy_with_grad(logits, labels)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-12, atol=1e-15)
    assert numpy_xent(logits, y) == loss
    np.testing.assert_allclose(numpy_log_softmax(logits), ref.log_softmax(logits), rtol=1e-12)


def test_interleaved_medians():
    calls = {"a": 0, "b": 0}

    def count(name):
        calls[name] += 1

    t = interleaved_medians({"a": lambda: count("a"), "b": lambda: count("b")}, rounds=3)
    assert set(t) == {"a", "b"} and all(v > 0 for v in t.values())
    assert calls["a"] >= 4 and calls["b"] >= 4  # warm-up plus three rounds each


@large
def test_demo_prints_the_worked_example():
    out = subprocess.run([sys.executable, "-m", "fastxent"], capture_output=True, text=True, timeout=300, check=True).stdout
    assert "mean loss  = 2.019" in out
    assert "[-0.464  0.243  0.22 ]" in out
    assert "speed-up" in out
