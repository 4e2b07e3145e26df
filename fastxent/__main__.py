"""``python -m fastxent``: the worked example and a quick timing.

``python -m fastxent bench [--threads N] [--quick]``: a table of median
times and speed-ups over a grid of shapes and dtypes, against the plain
NumPy implementation and PyTorch's CPU ``F.cross_entropy`` when installed.
"""

import argparse
import platform
import sys
import time

import numba
import numpy as np

import fastxent as fx
from fastxent._timing import interleaved_medians
from fastxent.baseline import numpy_xent_with_grad, onehot

BENCH_GRID = [
    (np.float32, 8192, 10),
    (np.float32, 4096, 1000),
    (np.float32, 512, 32000),
    (np.float32, 64, 262144),
    (np.float64, 8192, 10),
    (np.float64, 4096, 1000),
    (np.float64, 512, 32000),
    (np.float32, 32, 10),
]


def demo():
    a = np.array([[2.0, 1.0, 0.1], [0.1, 2.0, 1.9]])
    y = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    t0 = time.perf_counter()
    loss, grad = fx.cross_entropy_with_grad(a, y)
    first_call = time.perf_counter() - t0
    np.set_printoptions(precision=3, suppress=True)
    print("fastxent: fused softmax cross-entropy\n")
    print("A =", a.tolist())
    print("Y =", y.tolist())
    print("softmax(A) =\n", fx.softmax(a))
    print("row losses =", fx.cross_entropy(a, y, reduction="none"))
    print("mean loss  =", f"{loss:.3f}")
    print("gradient (softmax(A) - Y) / N =\n", grad)
    print(f"\n(first call, including loading or compiling the kernels: {first_call:.2f} s)")
    rng = np.random.default_rng(0)
    n, c = 512, 32000
    x = rng.standard_normal((n, c), dtype=np.float32)
    labels = rng.integers(0, c, n)
    y1 = onehot(labels, c, np.float32)
    buf = np.empty_like(x)
    print(f"\nTiming float32 {n} x {c}, loss + gradient, {numba.get_num_threads()} threads ...", flush=True)
    t = interleaved_medians(
        {
            "fastxent": lambda: fx.cross_entropy_with_grad(x, labels, grad_out=buf),
            "numpy": lambda: numpy_xent_with_grad(x, y1),
        },
        rounds=5,
    )
    print(f"  fastxent {t['fastxent'] * 1e3:8.2f} ms")
    print(f"  numpy    {t['numpy'] * 1e3:8.2f} ms")
    print(f"  speed-up {t['numpy'] / t['fastxent']:8.1f}x")


def bench(threads=None, quick=False):
    if threads:
        numba.set_num_threads(threads)
    nthreads = numba.get_num_threads()
    try:
        import torch
        import torch.nn.functional as F

        torch.set_num_threads(nthreads)
    except ImportError:
        torch = None
    print(f"fastxent {fx.__version__}, numba {numba.__version__}, numpy {np.__version__}"
          + (f", torch {torch.__version__}" if torch else " (torch not installed)"))
    print(f"{platform.processor() or platform.machine()}, {nthreads} threads, python {platform.python_version()}")
    print("loss + gradient, mean reduction, class-index targets; medians of interleaved rounds\n")
    header = f"{'dtype':8} {'shape':>14} {'fastxent':>10} {'in-place':>10} {'numpy':>10} {'torch':>10} {'copy':>9} {'x numpy':>8} {'x torch':>8} {'inpl/copy':>9}"
    print(header)
    rows = []
    grid = BENCH_GRID[:3] if quick else BENCH_GRID
    for k, (dtype, n, c) in enumerate(grid):
        print(f"  [{k + 1}/{len(grid)}] {np.dtype(dtype).name} {n}x{c} ...", end="\r", file=sys.stderr, flush=True)
        rng = np.random.default_rng(0)
        x = rng.standard_normal((n, c)).astype(dtype)
        labels = rng.integers(0, c, n)
        buf = np.empty_like(x)
        scratch = x.copy()
        y1 = onehot(labels, c, dtype)
        contenders = {
            "fastxent": lambda: fx.cross_entropy_with_grad(x, labels, grad_out=buf),
            # re-running on its own output is fine for timing: every row stays finite
            "inplace": lambda: fx.cross_entropy_with_grad(scratch, labels, grad_out=scratch),
            "numpy": lambda: numpy_xent_with_grad(x, y1),
            "copy": lambda: np.copyto(buf, x),
        }
        if torch is not None:
            tx = torch.from_numpy(x).requires_grad_()
            ty = torch.from_numpy(labels)

            def torch_step():
                tx.grad = None
                F.cross_entropy(tx, ty).backward()

            contenders["torch"] = torch_step
        t = interleaved_medians(contenders, rounds=5 if quick else 11)
        tt = t.get("torch", float("nan"))
        shape = f"{n}x{c}"
        print(" " * 60, end="\r", file=sys.stderr)
        print(
            f"{np.dtype(dtype).name:8} {shape:>14} {t['fastxent'] * 1e3:9.3f}m {t['inplace'] * 1e3:9.3f}m "
            f"{t['numpy'] * 1e3:9.3f}m {tt * 1e3:9.3f}m {t['copy'] * 1e3:8.3f}m "
            f"{t['numpy'] / t['fastxent']:7.1f}x {tt / t['fastxent']:7.1f}x {t['inplace'] / t['copy']:8.2f}x",
            flush=True,
        )
        rows.append((dtype, n, c, t))
    print("\ntimes in ms; x numpy / x torch: how many times faster fastxent is; inpl/copy: in-place time over np.copyto")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastxent", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    b = sub.add_parser("bench", help="timing table against NumPy (and PyTorch when installed)")
    b.add_argument("--threads", type=int, default=None, help="number of threads (numba.set_num_threads)")
    b.add_argument("--quick", action="store_true", help="three shapes, fewer rounds")
    args = parser.parse_args(argv)
    if args.command == "bench":
        bench(args.threads, args.quick)
    else:
        demo()


if __name__ == "__main__":
    main()
