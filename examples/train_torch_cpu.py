"""The digits MLP in PyTorch, trained once with fastxent.torch.CrossEntropyLoss
and once with torch.nn.CrossEntropyLoss from the same initial weights.

Prints how closely the two loss curves agree and how much faster the loss
step (forward and backward of the loss alone) is with fastxent, at the
training batch and at a language-model-like shape (512 x 32000).

    pip install torch==2.13.0 scikit-learn
    python examples/train_torch_cpu.py
    python examples/train_torch_cpu.py --fast
"""

import argparse
import time

import numpy as np
import torch

import fastxent.torch as ft


def train(loss_fn, x_train, y_train, epochs, batch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(), torch.nn.Linear(128, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    generator = torch.Generator().manual_seed(1)
    curve = []
    for _ in range(epochs):
        order = torch.randperm(len(x_train), generator=generator)
        for start in range(0, len(order), batch):
            idx = order[start : start + batch]
            optimizer.zero_grad()
            loss = loss_fn(model(x_train[idx]), y_train[idx])
            loss.backward()
            optimizer.step()
            curve.append(loss.item())
    return model, np.array(curve)


def loss_step_seconds(loss_fn, logits, labels, repeats):
    """Median time of the loss's forward and backward on a leaf tensor."""
    x = logits.clone().requires_grad_()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        loss_fn(x, labels).backward()
        x.grad = None  # released, as zero_grad() does
        times.append(time.perf_counter() - start)
    return float(np.median(times[1:]))


def main(fast=False):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.tensor(digits.data / 16.0, dtype=torch.float32)
    y = torch.tensor(digits.target)
    x_train, x_test, y_train, y_test = train_test_split(x, y, test_size=0.25, random_state=0)
    epochs, batch = (8, 64) if fast else (40, 64)
    ours_model, ours = train(ft.CrossEntropyLoss(), x_train, y_train, epochs, batch)
    _, theirs = train(torch.nn.CrossEntropyLoss(), x_train, y_train, epochs, batch)
    with torch.no_grad():
        accuracy = float((ours_model(x_test).argmax(1) == y_test).float().mean())
    max_rel = float(np.max(np.abs(ours - theirs) / np.abs(theirs)))
    print(f"{len(ours)} steps; loss {ours[:10].mean():.3f} -> {ours[-10:].mean():.3f}; test accuracy {accuracy:.3f}")
    print(f"loss curves, fastxent vs PyTorch: largest relative difference {max_rel:.1e}")

    speedups = {}
    for n, c in [(batch, 10), (512, 32000)]:
        logits = torch.randn(n, c)
        labels = torch.randint(0, c, (n,))
        repeats = 5 if fast and c > 1000 else 50
        # interleaved rounds, medians
        fx_times, torch_times = [], []
        ours_fn, theirs_fn = ft.CrossEntropyLoss(), torch.nn.CrossEntropyLoss()
        for _ in range(3):
            fx_times.append(loss_step_seconds(ours_fn, logits, labels, repeats))
            torch_times.append(loss_step_seconds(theirs_fn, logits, labels, repeats))
        ratio = np.median(torch_times) / np.median(fx_times)
        speedups[f"{n}x{c}"] = float(ratio)
        print(f"loss step {n} x {c}: fastxent {np.median(fx_times) * 1e3:.3f} ms, "
              f"PyTorch {np.median(torch_times) * 1e3:.3f} ms ({ratio:.1f}x)")
    return dict(max_rel=max_rel, accuracy=accuracy, first=float(ours[:10].mean()), last=float(ours[-10:].mean()),
                speedups=speedups)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="fewer epochs and timing rounds")
    main(parser.parse_args().fast)
