"""Threads, fork, determinism and steady-state memory."""

import os
import subprocess
import sys
import textwrap
import tracemalloc

import numba
import numpy as np
import pytest

import fastxent as fx
from conftest import large

pytestmark = large  # parallel-sized arrays and subprocesses throughout


def available_layers():
    layers = ["workqueue"]
    for name, module in [("omp", "numba.np.ufunc.omppool"), ("tbb", "numba.np.ufunc.tbbpool")]:
        try:
            __import__(module)
            layers.append(name)
        except ImportError:
            pass
    return layers


def run_script(code, layer, timeout=240):
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer, NUMBA_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc.stdout


CONCURRENT = """
import threading
import numpy as np
import fastxent as fx

rng = np.random.default_rng(0)
logits = rng.standard_normal((256, 1000)).astype(np.float32)  # above the parallel threshold
labels = rng.integers(0, 1000, 256)
probs = rng.dirichlet(np.ones(1000), 256).astype(np.float32)
want = [fx.cross_entropy_with_grad(logits, t, label_smoothing=0.1) for t in (labels, probs)]
errors = []

def worker(k):
    try:
        loss_fn = fx.CrossEntropyLoss(label_smoothing=0.1)
        grad = np.empty_like(logits)
        for step in range(25):
            t = (labels, probs)[(k + step) % 2]
            w = want[(k + step) % 2]
            loss, g = fx.cross_entropy_with_grad(logits, t, label_smoothing=0.1, grad_out=grad)
            assert loss == w[0] and np.array_equal(g, w[1]), "function API differs"
            assert loss_fn(logits, t) == w[0] and np.array_equal(loss_fn.backward(), w[1]), "class differs"
    except Exception as e:
        errors.append(repr(e))

threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
for t in threads: t.start()
for t in threads: t.join()
assert not errors, errors
import numba
print("OK", numba.threading_layer())
"""


@pytest.mark.parametrize("layer", available_layers())
def test_eight_threads_at_once(layer):
    assert run_script(CONCURRENT, layer).startswith("OK")


FORK = """
import multiprocessing as mp
import numpy as np
import fastxent as fx

rng = np.random.default_rng(1)
logits = rng.standard_normal((128, 2000))
labels = rng.integers(0, 2000, 128)

def child(seed):
    return fx.cross_entropy_with_grad(logits, labels, label_smoothing=float(seed) / 10)

if __name__ == "__main__":
    parent = [child(s) for s in range(4)]  # the parent runs the parallel kernels first
    with mp.get_context("fork").Pool(2) as pool:
        got = pool.map(child, range(4))
    for (l1, g1), (l2, g2) in zip(parent, got):
        assert l1 == l2 and np.array_equal(g1, g2)
    print("OK")
"""


@pytest.mark.parametrize("layer", available_layers())
def test_fork_after_parallel_use(layer, tmp_path):
    script = tmp_path / "fork_check.py"
    script.write_text(textwrap.dedent(FORK))
    env = dict(os.environ, NUMBA_THREADING_LAYER=layer, NUMBA_NUM_THREADS="2")
    proc = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["labels", "probs"])
def test_bitwise_identical_with_one_and_two_threads(rng, reduction, kind):
    if numba.config.NUMBA_NUM_THREADS < 2:
        pytest.skip("needs 2 threads")
    logits = rng.standard_normal((300, 700)).astype(np.float32)
    target = rng.integers(0, 700, 300) if kind == "labels" else rng.dirichlet(np.ones(700), 300).astype(np.float32)
    opts = dict(reduction=reduction, label_smoothing=0.1, weight=rng.random(700) + 0.5)
    results = {}
    before = numba.get_num_threads()
    try:
        for n in (1, 2):
            numba.set_num_threads(n)
            loss, grad = fx.cross_entropy_with_grad(logits, target, **opts)
            results[n] = (np.array(loss), grad, fx.cross_entropy(logits, target, **opts))
            # the parallel kernel itself, on 1 and 2 threads
            g = np.empty_like(logits)
            rows = np.empty(300, np.float32)
            if kind == "labels":
                t = fx.kernels.xent_labels_fused(logits, target, opts["weight"].astype(np.float32), -100, 0.1, 1.0, g, rows)
            else:
                t = fx.kernels.xent_probs_fused(logits, target, opts["weight"].astype(np.float32), 0.1, 1.0, g, rows)
            results[n] += (t, g, rows)
    finally:
        numba.set_num_threads(before)
    for a, b in zip(results[1], results[2]):
        np.testing.assert_array_equal(a, b)


def test_training_loops_allocate_nothing_of_batch_size(rng):
    logits = rng.standard_normal((256, 4096)).astype(np.float32)  # 4 MiB
    labels = rng.integers(0, 4096, 256)
    probs = rng.dirichlet(np.ones(4096), 256).astype(np.float32)
    grad = np.empty_like(logits)
    loss_fn = fx.CrossEntropyLoss(label_smoothing=0.1)

    def loop():
        for _ in range(10):
            for target in (labels, probs):
                loss_fn(logits, target)
                loss_fn.backward()
                fx.cross_entropy_with_grad(logits, target, grad_out=grad)
                fx.cross_entropy_with_grad(logits, target, reduction="sum", grad_out=grad)

    loop()  # warm-up: compilation, the class's buffers, the row scratch
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        loop()
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"{peak} bytes allocated per loop, batch is {logits.nbytes}"


CACHED_CALL = """
import numpy as np
from fastxent import kernels
x = np.arange(12.0).reshape(3, 4)
out = np.empty(3)
kernels.logsumexp_rows_serial(x, out)
print(out[0])
"""


@pytest.mark.skipif(numba.config.DISABLE_JIT, reason="compiles in fresh processes")
def test_disk_cache_follows_edits_of_the_modules_compiled_in(tmp_path):
    """An edit of _fastmath.py (compiled into every kernel, not its own file)
    makes the cached kernel compile again instead of loading stale code."""
    import shutil

    package = tmp_path / "pkg" / "fastxent"
    shutil.copytree(os.path.dirname(fx.__file__), package, ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(package.parent), NUMBA_CACHE_DIR=str(tmp_path / "cache"),
               NUMBA_DEBUG_CACHE="1", FASTXENT_CACHE="1")

    def saved_kernel():
        proc = subprocess.run([sys.executable, "-c", CACHED_CALL], env=env, capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        lines = [line for line in proc.stdout.splitlines() if "logsumexp_rows_serial" in line]
        assert lines, proc.stdout  # the cache was consulted
        return any("data saved" in line for line in lines)

    assert saved_kernel()  # cold: compiled and saved
    assert not saved_kernel()  # warm: loaded
    with open(package / "_fastmath.py", "a") as f:
        f.write("\n# an edit\n")
    assert saved_kernel()  # compiled again
