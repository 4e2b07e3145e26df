"""Time and memory of `fastxent.linear_cross_entropy` against its peers.

``python benchmarks/scripts/linear_costs.py [--rows 2048] [--features 512] [--classes 32000]``

Forward and backward of a linear head's cross-entropy, giving the loss,
grad_input and grad_linear_weight, float32:

- fastxent, chunked (default chunk size; and --chunks to try others);
- NumPy matmuls + fastxent in place on the full logits (unchunked);
- PyTorch ``x @ W.T`` + ``F.cross_entropy`` + ``backward()``;
- PyTorch ``F.linear_cross_entropy(..., options=LinearCrossEntropyOptions())`` (chunked).

Times: medians of interleaved rounds in this process. Memory: each method
runs once in a fresh process (after a warm-up on a tiny problem), which
reports its peak resident-memory growth during the call, gradient outputs
included, and the part beyond them as a fraction of the logits' size.
"""

import argparse
import json
import subprocess
import sys
import time

import numpy as np


def make(n, d, v):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, d), dtype=np.float32)
    w = rng.standard_normal((v, d), dtype=np.float32) * np.float32(0.05)
    y = rng.integers(0, v, n)
    return x, w, y


def contenders(x, w, y, chunks, fresh_outputs=False):
    """name -> a function running forward and backward once. With
    ``fresh_outputs`` every method allocates its gradient outputs, as
    PyTorch's backward does (for the memory measurement)."""
    import fastxent
    from fastxent import linear_cross_entropy

    def outputs():
        return (None, None) if fresh_outputs else (gx, gw)

    gx, gw = np.empty_like(x), np.empty_like(w)
    found = {}
    for c in chunks:
        name = "fastxent" if c is None else f"fastxent chunk {c}"
        found[name] = lambda c=c: linear_cross_entropy(x, w, y, chunk_size=c, grad_input_out=outputs()[0],
                                                       grad_weight_out=outputs()[1])

    def unchunked():
        logits = x @ w.T
        fastxent.cross_entropy_with_grad(logits, y, grad_out=logits)
        out_x, out_w = outputs()
        np.matmul(logits, w, out=out_x)
        np.matmul(logits.T, x, out=out_w)

    found["numpy + fastxent, unchunked"] = unchunked
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return found
    xt, wt, yt = torch.from_numpy(x).requires_grad_(), torch.from_numpy(w).requires_grad_(), torch.from_numpy(y)

    def torch_plain():
        xt.grad = wt.grad = None
        F.cross_entropy(xt @ wt.T, yt).backward()

    found["torch matmul + F.cross_entropy"] = torch_plain
    options = getattr(F, "LinearCrossEntropyOptions", None) or getattr(torch.nn, "LinearCrossEntropyOptions", None)
    if hasattr(F, "linear_cross_entropy"):
        if options is None:
            import importlib

            for mod in ("torch.nn.functional", "torch.nn.modules.loss", "torch.nn"):
                options = getattr(importlib.import_module(mod), "LinearCrossEntropyOptions", None) or options

        def torch_chunked():
            xt.grad = wt.grad = None
            F.linear_cross_entropy(xt, wt, yt, options=options() if options else None).backward()

        found["torch F.linear_cross_entropy" + ("" if options else " (no options class found)")] = torch_chunked
    return found


def peak_growth(args, name):
    """Run contender ``name`` once in a fresh process: its peak resident-memory growth in MiB
    (gradient outputs included), after a warm-up on a tiny problem (compilation, BLAS buffers)."""
    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {json.dumps(sys.path[0])})\n"
        "import linear_costs as m\n"
        f"small = m.contenders(*m.make(64, 16, 300), {args.chunk_list!r}, fresh_outputs=True)\n"
        f"small[{name!r}]()\n"
        f"x, w, y = m.make({args.rows}, {args.features}, {args.classes})\n"
        f"f = m.contenders(x, w, y, {args.chunk_list!r}, fresh_outputs=True)[{name!r}]\n"
        "import gc; gc.collect()\n"
        "print(json.dumps(m.run_and_measure(f)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _status_kib(field):
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_and_measure(f):
    """Peak RSS growth (MiB) while f() runs: the kernel's high-water mark is reset first (Linux)."""
    before = _status_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current RSS
    result = f()  # noqa: F841 - outputs stay alive until measured
    return (_status_kib("VmHWM") - before) / 1024


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--features", type=int, default=512)
    parser.add_argument("--classes", type=int, default=32000)
    parser.add_argument("--chunks", type=int, nargs="*", default=[256])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--only", nargs="*", default=None,
                        help="run only these methods (e.g. fastxent), for shapes where the others need gigabytes")
    parser.add_argument("--max-beyond", type=float, default=None,
                        help="exit with an error if fastxent's memory beyond its outputs exceeds this fraction "
                             "of the logits")
    args = parser.parse_args()
    args.chunk_list = [None] + args.chunks
    x, w, y = make(args.rows, args.features, args.classes)
    found = contenders(x, w, y, args.chunk_list)
    if args.only is not None:
        found = {k: f for k, f in found.items() if k in args.only}
    for f in found.values():
        f()  # warm-up: compilation, first-touch of buffers
    times = {k: [] for k in found}
    for _ in range(args.repeats):
        for k, f in found.items():
            t = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t)
    logits_mib = args.rows * args.classes * 4 / 2**20
    outputs_mib = (x.nbytes + w.nbytes) / 2**20
    base_name = "numpy + fastxent, unchunked" if "numpy + fastxent, unchunked" in times else next(iter(times))
    base = float(np.median(times[base_name]))
    print(f"N = {args.rows}, D = {args.features}, V = {args.classes}, float32; logits {logits_mib:.1f} MiB; "
          f"medians of {args.repeats} interleaved rounds")
    print(f"peak growth: resident memory over the inputs, gradient outputs ({outputs_mib:.1f} MiB) included; "
          "'beyond' leaves them out")
    print(f"{'method':40s} {'time ms':>9s} {'/ ' + base_name[:9]:>11s} {'peak growth MiB':>16s} "
          f"{'beyond / logits':>16s}")
    too_much = []
    for k in found:
        med = float(np.median(times[k]))
        mem = "" if args.no_memory else peak_growth(args, k)
        mem_s = "" if mem == "" else f"{mem:16.1f} {(mem - outputs_mib) / logits_mib:16.3f}"
        print(f"{k:40s} {med * 1e3:9.1f} {med / base:11.2f} {mem_s}")
        if mem != "" and k == "fastxent" and args.max_beyond is not None:
            if (mem - outputs_mib) / logits_mib > args.max_beyond:
                too_much.append(k)
    if too_much:
        sys.exit(f"memory beyond the outputs above {args.max_beyond} of the logits: {too_much}")


if __name__ == "__main__":
    main()
