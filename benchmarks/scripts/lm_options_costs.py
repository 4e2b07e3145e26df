"""What z_loss, softcap and lse_out cost, relative to the default call.

``python benchmarks/scripts/lm_options_costs.py [--elements 8388608] [--rounds 15]``

For each class count and dtype, `cross_entropy_with_grad` into a
preallocated gradient with no option, with each option alone and with all
three, and `linear_cross_entropy` (N = 1024, D = 512, V = 32000) with and
without ``z_loss`` and ``softcap``. Every time is the median of rounds in
which the contenders run interleaved in this process; the table gives each
one over the default call's median.
"""

import argparse
import time

import numpy as np

import fastxent


def median_ratios(calls, rounds):
    """name -> median time / median time of the first call, from interleaved rounds."""
    times = {name: [] for name in calls}
    for _ in range(3):
        for call in calls.values():
            call()
    for _ in range(rounds):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(t)) for name, t in times.items()}
    first = next(iter(medians.values()))
    return {name: m / first for name, m in medians.items()}, first


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--elements", type=int, default=1 << 23)
    parser.add_argument("--rounds", type=int, default=15)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    names = ["default", "z_loss", "softcap", "lse_out", "all three"]
    print(f"cross_entropy_with_grad, {args.elements} elements, time / default (default in ms)")
    print("| dtype | C | default ms | " + " | ".join(names[1:]) + " |")
    print("|---|---|---|" + "---|" * (len(names) - 1))
    for dtype in (np.float32, np.float64):
        for n_classes in (10, 100, 1000, 32000):
            n_rows = args.elements // n_classes
            x = rng.standard_normal((n_rows, n_classes)).astype(dtype)
            y = rng.integers(0, n_classes, n_rows)
            grad, lse = np.empty_like(x), np.empty(n_rows, dtype)
            calls = {
                "default": lambda: fastxent.cross_entropy_with_grad(x, y, grad_out=grad),
                "z_loss": lambda: fastxent.cross_entropy_with_grad(x, y, grad_out=grad, z_loss=1e-4),
                "softcap": lambda: fastxent.cross_entropy_with_grad(x, y, grad_out=grad, softcap=30.0),
                "lse_out": lambda: fastxent.cross_entropy_with_grad(x, y, grad_out=grad, lse_out=lse),
                "all three": lambda: fastxent.cross_entropy_with_grad(x, y, grad_out=grad, z_loss=1e-4,
                                                                      softcap=30.0, lse_out=lse),
            }
            ratios, base = median_ratios(calls, args.rounds)
            print(f"| {np.dtype(dtype).name} | {n_classes} | {base * 1e3:.2f} | "
                  + " | ".join(f"{ratios[n]:.2f}" for n in names[1:]) + " |")

    n, d, v = 1024, 512, 32000
    h = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((v, d), dtype=np.float32) * np.float32(0.05)
    y = rng.integers(0, v, n)
    gx, gw = np.empty_like(h), np.empty_like(w)
    calls = {
        "default": lambda: fastxent.linear_cross_entropy(h, w, y, grad_input_out=gx, grad_weight_out=gw),
        "z_loss + softcap": lambda: fastxent.linear_cross_entropy(h, w, y, grad_input_out=gx, grad_weight_out=gw,
                                                                  z_loss=1e-4, softcap=30.0),
    }
    ratios, base = median_ratios(calls, max(3, args.rounds // 3))
    print(f"\nlinear_cross_entropy {n}x{d} -> {v}, float32: default {base * 1e3:.0f} ms; "
          f"z_loss + softcap / default = {ratios['z_loss + softcap']:.3f}")


if __name__ == "__main__":
    main()
