"""``python -m fastxent``: the worked example and a quick timing.

``python -m fastxent bench [--threads N] [--quick] [--sweep] [--load N]``:
a table of median times and speed-ups over a grid of shapes and dtypes,
against the plain NumPy implementation and PyTorch's CPU
``F.cross_entropy`` when installed; ``--sweep`` gives the class-count sweep
as ratios to ``np.copyto``, each call timed from memory (the caches emptied
before it); ``--load N`` runs N busy processes beside it.
"""

import argparse
import contextlib
import platform
import subprocess
import sys
import time

import numba
import numpy as np

import fastxent as fx
from fastxent._timing import IN_CACHE_ELEMENTS, IN_CACHE_KERNELS, evict_caches, interleaved_medians, kernels_in_cache
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


SWEEP_CLASSES = [2, 4, 10, 32, 64, 128, 256, 512, 1000, 32000]
SWEEP_ELEMENTS = 1 << 23  # 8M elements: 32 MiB of float32 logits, far beyond the caches


def _progress(text):
    """Progress on stderr, only when it is a terminal (never in redirected output)."""
    if sys.stderr.isatty():
        print(f"  {text:<58}", end="\r", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _busy_processes(count):
    """``count`` processes spinning on the CPU, to measure a loaded machine."""
    procs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL) for _ in range(count)
    ]
    try:
        if procs:
            time.sleep(0.5)  # let the scheduler see them
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def _optional_peers(nthreads):
    try:
        import torch

        torch.set_num_threads(nthreads)
    except ImportError:
        torch = None
    try:
        from sklearn._loss.loss import HalfMultinomialLoss
    except ImportError:
        HalfMultinomialLoss = None
    return torch, HalfMultinomialLoss


def _torch_step(torch, x, labels):
    import torch.nn.functional as F

    tx = torch.from_numpy(x).requires_grad_()
    ty = torch.from_numpy(labels)

    def step():
        tx.grad = None
        F.cross_entropy(tx, ty).backward()

    return step


def _sklearn_step(loss_cls, x, labels, nthreads):
    loss = loss_cls(n_classes=x.shape[1])
    y = labels.astype(x.dtype)
    loss_out = np.empty(x.shape[0], x.dtype)
    grad_out = np.empty_like(x)
    return lambda: loss.loss_gradient(y, x, loss_out=loss_out, gradient_out=grad_out, n_threads=nthreads)


def _shape_table(grid, rounds, torch, nthreads):
    print(
        f"{'dtype':8} {'shape':>12} {'fastxent ms':>12} {'in-place ms':>12} {'NumPy ms':>10} {'PyTorch ms':>11} "
        f"{'copy ms':>9} {'x NumPy':>8} {'x PyTorch':>9} {'in-place/copy':>13}"
    )
    rows = []
    for k, (dtype, n, c) in enumerate(grid):
        _progress(f"[{k + 1}/{len(grid)}] {np.dtype(dtype).name} {n}x{c}")
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
            contenders["torch"] = _torch_step(torch, x, labels)
        t = interleaved_medians(contenders, rounds=rounds)
        tt = t.get("torch", float("nan"))
        print(
            f"{np.dtype(dtype).name:8} {f'{n}x{c}':>12} {t['fastxent'] * 1e3:12.3f} {t['inplace'] * 1e3:12.3f} "
            f"{t['numpy'] * 1e3:10.3f} {tt * 1e3:11.3f} {t['copy'] * 1e3:9.3f} "
            f"{t['numpy'] / t['fastxent']:8.1f} {tt / t['fastxent']:9.1f} {t['inplace'] / t['copy']:13.2f}",
            flush=True,
        )
        rows.append((dtype, n, c, t))
    print(
        "\nx NumPy, x PyTorch: how many times faster fastxent is; in-place/copy: in-place time over np.copyto "
        "of the logits"
    )
    return rows


def _sweep_table(classes, dtypes, rounds, torch, sklearn_loss, nthreads):
    print(f"class-count sweep: {SWEEP_ELEMENTS} elements per problem; every column but the last two is a time over np.copyto")
    print("every timed call starts with the caches emptied (fastxent._timing.evict_caches): times from memory")
    print(
        f"{'dtype':8} {'C':>6} {'rows':>8} {'copy ms':>9} {'fused':>7} {'in-place':>9} {'loss':>7} "
        f"{'log_softmax':>12} {'probs':>7} {'sklearn/fused':>14} {'PyTorch/fused':>14}"
    )
    rows = []
    in_cache = []
    for dtype in dtypes:
        for c in classes:
            n = SWEEP_ELEMENTS // c
            _progress(f"{np.dtype(dtype).name} C={c}")
            rng = np.random.default_rng(0)
            x = rng.standard_normal((n, c)).astype(dtype)
            labels = rng.integers(0, c, n)
            probs = np.abs(x) / np.abs(x).sum(axis=1, keepdims=True)
            buf = np.empty_like(x)
            scratch = x.copy()
            contenders = {
                "copy": lambda: np.copyto(buf, x),
                "fused": lambda: fx.cross_entropy_with_grad(x, labels, grad_out=buf),
                "inplace": lambda: fx.cross_entropy_with_grad(scratch, labels, grad_out=scratch),
                "loss": lambda: fx.cross_entropy(x, labels),
                "log_softmax": lambda: fx.log_softmax(x, out=buf),
                "probs": lambda: fx.cross_entropy_with_grad(x, probs, grad_out=buf),
            }
            if sklearn_loss is not None:
                contenders["sklearn"] = _sklearn_step(sklearn_loss, x, labels, nthreads)
            if torch is not None:
                contenders["torch"] = _torch_step(torch, x, labels)
            t = interleaved_medians(contenders, rounds=rounds, before=evict_caches)
            floor = t["copy"]
            if x.size:
                seconds = kernels_in_cache(x, labels, probs, buf, rounds)
                in_cache.append((dtype, c, {kind: s / (floor / x.size) for kind, s in seconds.items()}))
            print(
                f"{np.dtype(dtype).name:8} {c:6d} {n:8d} {floor * 1e3:9.3f} {t['fused'] / floor:7.2f} "
                f"{t['inplace'] / floor:9.2f} {t['loss'] / floor:7.2f} {t['log_softmax'] / floor:12.2f} "
                f"{t['probs'] / floor:7.2f} {t.get('sklearn', np.nan) / t['fused']:14.1f} "
                f"{t.get('torch', np.nan) / t['fused']:14.1f}",
                flush=True,
            )
            rows.append((dtype, c, t))
    print("\nfused: loss + gradient into a buffer; loss: loss only; probs: probability targets; "
          "sklearn: HalfMultinomialLoss.loss_gradient")
    print(f"\nthe same kernels on {IN_CACHE_ELEMENTS} elements held in cache, called back to back "
          "(fastxent._timing.kernels_in_cache: the parallel kernels alone, without the label check), per element, "
          "over the copy's time per element above: the arithmetic's share of each column")
    print(f"{'dtype':8} {'C':>6} " + " ".join(f"{kind:>{max(7, len(kind))}}" for kind in IN_CACHE_KERNELS))
    for dtype, c, ratios in in_cache:
        print(f"{np.dtype(dtype).name:8} {c:6d} "
              + " ".join(f"{ratios[kind]:{max(7, len(kind))}.2f}" for kind in IN_CACHE_KERNELS))
    return rows


def bench(threads=None, quick=False, load=0, sweep=False):
    if threads:
        numba.set_num_threads(threads)
    nthreads = numba.get_num_threads()
    torch, sklearn_loss = _optional_peers(nthreads)
    print(
        f"fastxent {fx.__version__}, numba {numba.__version__}, numpy {np.__version__}"
        + (f", torch {torch.__version__}" if torch else " (torch not installed)")
    )
    print(f"{platform.processor() or platform.machine()}, {nthreads} threads, python {platform.python_version()}"
          + (f", {load} busy processes beside it" if load else ""))
    print("medians of interleaved rounds\n")
    rounds = 5 if quick else 11
    with _busy_processes(load):
        if sweep:
            classes = [2, 10, 128, 32000] if quick else SWEEP_CLASSES
            return _sweep_table(classes, [np.float32, np.float64], rounds, torch, sklearn_loss, nthreads)
        print("loss + gradient, mean reduction, class-index targets")
        return _shape_table(BENCH_GRID[:3] if quick else BENCH_GRID, rounds, torch, nthreads)


def _add_bench_options(parser):
    parser.add_argument("--threads", type=int, default=None, help="number of threads (numba.set_num_threads)")
    parser.add_argument("--quick", action="store_true", help="fewer shapes and rounds")
    parser.add_argument("--sweep", action="store_true",
                        help="class counts 2 to 32000 at 8M elements, as ratios to np.copyto (with scikit-learn "
                             "and PyTorch columns when installed)")
    parser.add_argument("--load", type=int, default=0, metavar="N",
                        help="run N busy processes beside the benchmark, to measure a loaded machine")


def main(argv=None):
    bench_help = argparse.ArgumentParser(prog="python -m fastxent bench", add_help=False)
    _add_bench_options(bench_help)
    parser = argparse.ArgumentParser(
        prog="python -m fastxent",
        description=__doc__.split("\n")[0],
        epilog="bench options:\n" + bench_help.format_help().split("options:\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command")
    b = sub.add_parser("bench", help="timing tables against NumPy, np.copyto and the peers that are installed")
    _add_bench_options(b)
    args = parser.parse_args(argv)
    if args.command == "bench":
        bench(args.threads, args.quick, args.load, args.sweep)
    else:
        demo()


if __name__ == "__main__":
    main()
