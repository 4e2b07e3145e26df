"""A NumPy MLP on scikit-learn's bundled digits, trained with fastxent.CrossEntropyLoss.

64 pixels -> 128 tanh units -> 10 classes, plain minibatch SGD written in
NumPy. The loss object computes the loss and its gradient with respect to
the logits in one fused call into buffers it reuses, so the training loop
allocates nothing for the loss. The same step with a straightforward NumPy
loss (log-softmax, mean negative log-likelihood, softmax minus one-hot) is
timed for comparison.

    pip install scikit-learn            # the digits data; matplotlib optional (loss curve PNG)
    python examples/train_numpy_mlp.py
    python examples/train_numpy_mlp.py --fast
"""

import argparse
import time

import numpy as np

import fastxent


def numpy_loss_and_grad(logits, labels):
    """The reference step in plain NumPy: mean cross-entropy and its gradient."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    n = logits.shape[0]
    loss = -log_probs[np.arange(n), labels].mean()
    grad = np.exp(log_probs)
    grad[np.arange(n), labels] -= 1.0
    return loss, grad / n


def median_seconds(fn, repeats=200):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(fast=False, plot=True):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    x_train, x_test, y_train, y_test = train_test_split(x, digits.target, test_size=0.25, random_state=0)
    rng = np.random.default_rng(0)
    w1 = (rng.standard_normal((64, 128)) / 8).astype(np.float32)
    b1 = np.zeros(128, np.float32)
    w2 = (rng.standard_normal((128, 10)) / 11).astype(np.float32)
    b2 = np.zeros(10, np.float32)
    loss_fn = fastxent.CrossEntropyLoss()
    epochs, batch, lr = (8, 64, 0.2) if fast else (40, 64, 0.2)
    curve = []
    for _ in range(epochs):
        order = rng.permutation(len(x_train))
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            xb, yb = x_train[idx], y_train[idx]
            hidden = np.tanh(xb @ w1 + b1)
            logits = hidden @ w2 + b2
            curve.append(float(loss_fn(logits, yb)))
            dlogits = loss_fn.backward()
            dhidden = (dlogits @ w2.T) * (1 - hidden**2)
            w2 -= lr * hidden.T @ dlogits
            b2 -= lr * dlogits.sum(axis=0)
            w1 -= lr * xb.T @ dhidden
            b1 -= lr * dhidden.sum(axis=0)
    predictions = (np.tanh(x_test @ w1 + b1) @ w2 + b2).argmax(axis=1)
    accuracy = float((predictions == y_test).mean())

    logits = np.tanh(x_train[:batch] @ w1 + b1) @ w2 + b2
    labels = y_train[:batch]
    ours = median_seconds(lambda: (loss_fn(logits, labels), loss_fn.backward()))
    plain = median_seconds(lambda: numpy_loss_and_grad(logits, labels))
    assert np.allclose(loss_fn(logits, labels), numpy_loss_and_grad(logits, labels)[0], rtol=1e-5)

    print(f"{epochs} epochs, {len(curve)} steps; loss {np.mean(curve[:10]):.3f} -> {np.mean(curve[-10:]):.3f}")
    print(f"test accuracy: {accuracy:.3f} on {len(y_test)} held-out digits")
    print(f"loss + gradient per step ({batch} x 10): fastxent {ours * 1e6:.1f} us, "
          f"plain NumPy {plain * 1e6:.1f} us ({plain / ours:.1f}x)")
    if plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("matplotlib not installed: no loss curve plot")
        else:
            plt.plot(curve)
            plt.xlabel("step")
            plt.ylabel("training loss")
            plt.savefig("numpy_mlp_loss.png", dpi=100)
            print("loss curve saved to numpy_mlp_loss.png")
    return dict(accuracy=accuracy, first_loss=float(np.mean(curve[:10])), last_loss=float(np.mean(curve[-10:])),
                speedup=plain / ours)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="fewer epochs")
    main(parser.parse_args().fast)
