"""asv benchmarks, organised by what the users do.

``time_*`` benchmarks compile in ``setup`` (asv runs setup before timing),
so no timed body includes the JIT. ``track_speedup_*`` report ratios of
interleaved medians, which stay comparable across machines; a regression
shows up as a falling ratio.
"""

import subprocess
import sys
import tracemalloc

import numpy as np

import fastxent as fx
from fastxent._timing import evict_caches, fused_kernel_in_cache, interleaved_medians
from fastxent.baseline import numpy_log_softmax, numpy_xent, numpy_xent_with_grad, onehot

from .common import DTYPES, SHAPES, make_inputs

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


class TrainingStep:
    """Loss + gradient of a batch, the training-script user."""

    params = (DTYPES, SHAPES)
    param_names = ["dtype", "shape"]

    def setup(self, dtype, shape):
        self.logits, self.labels, self.probs = make_inputs(dtype, shape)
        self.grad = np.empty_like(self.logits)
        self.scratch = self.logits.copy()
        self.onehot = onehot(self.labels, self.logits.shape[1], self.logits.dtype)
        self.loss_fn = fx.CrossEntropyLoss()
        # compile and warm every path timed below
        self.time_fused_labels(dtype, shape)
        self.time_fused_probs(dtype, shape)
        self.time_fused_inplace(dtype, shape)
        self.time_loss_only(dtype, shape)
        self.time_log_softmax(dtype, shape)
        self.time_class_forward_backward(dtype, shape)

    def time_fused_labels(self, dtype, shape):
        fx.cross_entropy_with_grad(self.logits, self.labels, grad_out=self.grad)

    def time_fused_probs(self, dtype, shape):
        fx.cross_entropy_with_grad(self.logits, self.probs, grad_out=self.grad)

    def time_fused_inplace(self, dtype, shape):
        # re-running on its own output is fine for timing: rows stay finite
        fx.cross_entropy_with_grad(self.scratch, self.labels, grad_out=self.scratch)

    def time_loss_only(self, dtype, shape):
        fx.cross_entropy(self.logits, self.labels)

    def time_log_softmax(self, dtype, shape):
        fx.log_softmax(self.logits, out=self.grad)

    def time_class_forward_backward(self, dtype, shape):
        self.loss_fn(self.logits, self.labels)
        self.loss_fn.backward()

    def time_copy_floor(self, dtype, shape):
        """np.copyto of the logits: the memory-bandwidth floor."""
        np.copyto(self.grad, self.logits)


class NumpyBaseline:
    """The source notes' plain NumPy implementation (one-hot targets)."""

    params = (DTYPES, SHAPES)
    param_names = ["dtype", "shape"]

    def setup(self, dtype, shape):
        self.logits, labels, _ = make_inputs(dtype, shape)
        self.onehot = onehot(labels, self.logits.shape[1], self.logits.dtype)

    def time_numpy_fused(self, dtype, shape):
        numpy_xent_with_grad(self.logits, self.onehot)

    def time_numpy_loss_only(self, dtype, shape):
        numpy_xent(self.logits, self.onehot)

    def time_numpy_log_softmax(self, dtype, shape):
        numpy_log_softmax(self.logits)


class Speedup:
    """Ratios of interleaved medians: how many times faster fastxent is."""

    params = (DTYPES, SHAPES)
    param_names = ["dtype", "shape"]
    unit = "ratio"
    timeout = 600

    def setup(self, dtype, shape):
        self.logits, self.labels, _ = make_inputs(dtype, shape)
        self.onehot = onehot(self.labels, self.logits.shape[1], self.logits.dtype)
        self.grad = np.empty_like(self.logits)
        self.scratch = self.logits.copy()
        fx.cross_entropy_with_grad(self.logits, self.labels, grad_out=self.grad)
        fx.cross_entropy_with_grad(self.scratch, self.labels, grad_out=self.scratch)

    def _fused(self):
        fx.cross_entropy_with_grad(self.logits, self.labels, grad_out=self.grad)

    def track_speedup_vs_numpy(self, dtype, shape):
        t = interleaved_medians({"fx": self._fused, "np": lambda: numpy_xent_with_grad(self.logits, self.onehot)}, rounds=5)
        return t["np"] / t["fx"]

    def track_inplace_over_copy(self, dtype, shape):
        """In-place fused time over np.copyto time (1.0 = the memory floor)."""
        t = interleaved_medians(
            {
                "inplace": lambda: fx.cross_entropy_with_grad(self.scratch, self.labels, grad_out=self.scratch),
                "copy": lambda: np.copyto(self.grad, self.logits),
            },
            rounds=5,
        )
        return t["inplace"] / t["copy"]


class SpeedupVsTorch(Speedup):
    """Ratio over PyTorch's CPU F.cross_entropy(x, y).backward() on the same memory."""

    def setup(self, dtype, shape):
        if torch is None:
            raise NotImplementedError("torch is not installed")  # asv: skipped
        super().setup(dtype, shape)
        torch.set_num_threads(__import__("numba").get_num_threads())

    def track_speedup_vs_torch(self, dtype, shape):
        tx = torch.from_numpy(self.logits).requires_grad_()
        ty = torch.from_numpy(self.labels)

        def torch_step():
            tx.grad = None
            F.cross_entropy(tx, ty).backward()

        t = interleaved_medians({"fx": self._fused, "torch": torch_step}, rounds=5)
        return t["torch"] / t["fx"]

    # the parent's ratios are not repeated here
    track_speedup_vs_numpy = None
    track_inplace_over_copy = None


class TorchAdapter:
    """The PyTorch training step: fastxent.torch against F.cross_entropy,
    forward and backward on the same leaf tensor, the gradient released at
    the end of each step (as ``optimizer.zero_grad()`` does)."""

    params = (["float32"], ["8192x10", "512x32000"])
    param_names = ["dtype", "shape"]
    timeout = 600

    def setup(self, dtype, shape):
        if torch is None:
            raise NotImplementedError("torch is not installed")  # asv: skipped
        import fastxent.torch as ft

        torch.set_num_threads(__import__("numba").get_num_threads())
        logits, labels, _ = make_inputs(dtype, shape)
        self.x = torch.from_numpy(logits).requires_grad_()
        self.y = torch.from_numpy(labels)
        self.module = ft.CrossEntropyLoss()
        self.function = ft.cross_entropy
        # Compile, and let the serial/parallel dispatch settle on this shape
        # (its first calls time both ways): the first interleaved round read
        # about half the speed-up of the later ones before this warm-up.
        for _ in range(10):
            for loss_fn in (self.module, self.function, F.cross_entropy):
                self._step(loss_fn)

    def _step(self, loss_fn):
        loss_fn(self.x, self.y).backward()
        # Released inside the step, as zero_grad() does in a training loop,
        # so each contender pays for freeing its own gradient.
        self.x.grad = None

    def time_module_step(self, dtype, shape):
        self._step(self.module)

    def track_module_speedup_vs_torch(self, dtype, shape):
        """CrossEntropyLoss, which reuses its gradient buffer across steps."""
        t = interleaved_medians(
            {"fx": lambda: self._step(self.module), "torch": lambda: self._step(F.cross_entropy)}, rounds=7
        )
        return t["torch"] / t["fx"]

    def track_function_speedup_vs_torch(self, dtype, shape):
        """cross_entropy, which allocates a new gradient buffer each call."""
        t = interleaved_medians(
            {"fx": lambda: self._step(self.function), "torch": lambda: self._step(F.cross_entropy)}, rounds=7
        )
        return t["torch"] / t["fx"]

    track_module_speedup_vs_torch.unit = "ratio"
    track_function_speedup_vs_torch.unit = "ratio"


class SimulationCall:
    """Many small calls, the simulation user: from Python and from @njit code."""

    def setup(self):
        from numba import njit

        from fastxent import kernels

        rng = np.random.default_rng(0)
        self.logits = rng.standard_normal((32, 10))
        self.labels = rng.integers(0, 10, 32)
        self.grad = np.empty_like(self.logits)
        self.rows = np.empty(32)

        @njit
        def thousand_steps(logits, labels, grad, rows):
            total = 0.0
            for _ in range(1000):
                total += kernels.xent_labels_fused_serial(logits, labels, kernels.NO_WEIGHT, -100, 0.0, 1 / 32, grad, rows)
            return total

        self.thousand_steps = thousand_steps
        thousand_steps(self.logits, self.labels, self.grad, self.rows)
        thousand_steps(self.logits[:1], self.labels[:1], self.grad[:1], self.rows[:1])
        self.time_python_call()

    def time_python_call(self):
        """One validated fused call of a 32 x 10 batch from Python."""
        fx.cross_entropy_with_grad(self.logits, self.labels, grad_out=self.grad)

    def time_njit_1000_kernel_calls(self):
        """1000 kernel calls on 32 x 10 from user @njit code (divide by 1000)."""
        self.thousand_steps(self.logits, self.labels, self.grad, self.rows)

    def time_njit_1000_single_row_calls(self):
        """1000 kernel calls on one row of 10 from @njit code: the per-call cost (divide by 1000)."""
        self.thousand_steps(self.logits[:1], self.labels[:1], self.grad[:1], self.rows[:1])


class SimulationPublicCall:
    """The per-call cost of the public name from @njit code, next to the raw
    kernel's in `SimulationCall` (a class of its own: its setup compiles)."""

    def setup(self):
        from numba import njit

        rng = np.random.default_rng(0)
        self.logits = rng.standard_normal((1, 10))
        self.labels = rng.integers(0, 10, 1)
        self.grad = np.empty_like(self.logits)

        @njit
        def thousand_steps(logits, labels, grad):
            total = 0.0
            for _ in range(1000):
                loss, _ = fx.cross_entropy_with_grad(logits, labels, grad_out=grad)
                total += loss
            return total

        self.thousand_steps = thousand_steps
        thousand_steps(self.logits, self.labels, self.grad)

    def time_njit_1000_single_row_calls(self):
        """1000 `cross_entropy_with_grad` calls on a (1, 10) batch from @njit code (divide by 1000)."""
        self.thousand_steps(self.logits, self.labels, self.grad)


class Memory:
    """The fused call allocates nothing of the input's size."""

    params = (["float32"], ["512x32000"])
    param_names = ["dtype", "shape"]

    def setup(self, dtype, shape):
        self.logits, self.labels, _ = make_inputs(dtype, shape)
        self.grad = np.empty_like(self.logits)
        self.onehot = onehot(self.labels, self.logits.shape[1], self.logits.dtype)
        fx.cross_entropy_with_grad(self.logits, self.labels, grad_out=self.grad)

    def peakmem_fused_with_buffer(self, dtype, shape):
        fx.cross_entropy_with_grad(self.logits, self.labels, grad_out=self.grad)

    def peakmem_copy_into_buffer(self, dtype, shape):
        """Reference: the inputs and buffer alone (same peak as the fused call)."""
        np.copyto(self.grad, self.logits)

    def peakmem_numpy_baseline(self, dtype, shape):
        numpy_xent_with_grad(self.logits, self.onehot)

    def track_bytes_allocated_by_fused_call(self, dtype, shape):
        """Peak bytes NumPy/Python allocate during one fused call (tracemalloc)."""
        tracemalloc.start()
        fx.cross_entropy_with_grad(self.logits, self.labels, grad_out=self.grad)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        return peak

    track_bytes_allocated_by_fused_call.unit = "bytes"


class Compile:
    """Start-up: a fresh process importing fastxent and making a fused call."""

    timeout = 600

    def timeraw_import_and_first_call_warm_cache(self):
        return """
import numpy as np, fastxent
fastxent.cross_entropy_with_grad(np.zeros((4, 3), np.float32), np.zeros(4, np.int64))
"""

    def timeraw_import_and_first_call_cold_compile(self):
        return """
import os
os.environ["FASTXENT_CACHE"] = "0"
import numpy as np, fastxent
fastxent.cross_entropy_with_grad(np.zeros((4, 3), np.float32), np.zeros(4, np.int64))
"""


class NjitCompile:
    """A user @njit function calling `cross_entropy_with_grad`, compiled in a
    fresh process: fastxent's kernels come from its disk cache (``setup``
    runs the same code once to fill it), the user's function is not cached.
    4.5 s on a Zen 4 with the kernels called by symbol (`_njit._call_kernel`),
    10.6 s when they were linked into each caller."""

    timeout = 600
    CODE = """
import numpy as np, fastxent
from numba import njit

@njit
def step(x, y, g):
    return fastxent.cross_entropy_with_grad(x, y, grad_out=g)[0]

x = np.zeros((4, 10)); step(x, np.zeros(4, np.int64), np.empty_like(x))
"""

    def setup(self):
        subprocess.run([sys.executable, "-c", self.CODE], check=True, timeout=600)

    def timeraw_njit_caller_compile(self):
        return self.CODE


class ClassSweep:
    """Class counts from 2 to 32000 at 8M elements, the size the performance
    targets are set at and `python -m fastxent bench --sweep` measures, as
    ratios to ``np.copyto`` of the logits (1.0 = the memory floor for an
    out-of-place gradient), and scikit-learn's fused loss over fastxent's.
    Every timed call starts with the caches emptied (`evict_caches`).

    At 2M elements the copy is not the memory floor: its output (8 or 16
    MB) stays in a 32 MiB last-level cache as dirty lines and is written
    back after the timing, while the fused call streams its gradient to
    memory. Interleaved in one process (Zen 4, 2 threads, fused / copy at
    2M -> 8M): float32 C = 2 8.6 -> 3.0, C = 10 6.0-9.6 -> 2.1-2.4,
    float64 C = 2 3.3 -> 2.5, C = 10 3.6 -> 2.8."""

    params = (DTYPES, [2, 10, 32, 128, 1000, 32000])
    param_names = ["dtype", "classes"]
    unit = "ratio"
    timeout = 600
    ELEMENTS = 1 << 23

    def setup(self, dtype, classes):
        n = self.ELEMENTS // classes
        rng = np.random.default_rng(0)
        self.logits = rng.standard_normal((n, classes)).astype(dtype)
        self.labels = rng.integers(0, classes, n)
        self.grad = np.empty_like(self.logits)
        self.scratch = self.logits.copy()
        self.probs = np.abs(self.logits) / np.abs(self.logits).sum(axis=1, keepdims=True)
        self._fused()
        self._inplace()
        self._probs()
        fx.cross_entropy(self.logits, self.labels)
        fx.log_softmax(self.logits, out=self.grad)

    def _fused(self):
        fx.cross_entropy_with_grad(self.logits, self.labels, grad_out=self.grad)

    def _inplace(self):
        fx.cross_entropy_with_grad(self.scratch, self.labels, grad_out=self.scratch)

    def _probs(self):
        fx.cross_entropy_with_grad(self.logits, self.probs, grad_out=self.grad)

    def _over_copy(self, func):
        t = interleaved_medians({"f": func, "copy": lambda: np.copyto(self.grad, self.logits)}, rounds=7,
                                before=evict_caches)
        return t["f"] / t["copy"]

    def track_fused_over_copy(self, dtype, classes):
        return self._over_copy(self._fused)

    def track_inplace_over_copy(self, dtype, classes):
        return self._over_copy(self._inplace)

    def track_loss_only_over_copy(self, dtype, classes):
        return self._over_copy(lambda: fx.cross_entropy(self.logits, self.labels))

    def track_probs_over_copy(self, dtype, classes):
        """Probability targets, fused (they read a second array of the logits' size)."""
        return self._over_copy(self._probs)

    def track_log_softmax_over_copy(self, dtype, classes):
        return self._over_copy(lambda: fx.log_softmax(self.logits, out=self.grad))

    def track_kernel_in_cache_over_copy(self, dtype, classes):
        """The fused kernel's arithmetic: its time per element on a problem
        held in cache (`fused_kernel_in_cache`) over the copy's per element
        from memory. Above a fused target, only cheaper arithmetic helps."""
        copy = interleaved_medians({"copy": lambda: np.copyto(self.grad, self.logits)}, rounds=7,
                                   before=evict_caches)["copy"]
        return fused_kernel_in_cache(self.logits, self.labels, self.grad, rounds=7) / (copy / self.logits.size)

    def track_sklearn_over_fused(self, dtype, classes):
        """scikit-learn HalfMultinomialLoss.loss_gradient time over fastxent's fused time."""
        try:
            from sklearn._loss.loss import HalfMultinomialLoss
        except ImportError:
            raise NotImplementedError("scikit-learn is not installed")  # asv: skipped
        import numba

        loss = HalfMultinomialLoss(n_classes=classes)
        y = self.labels.astype(self.logits.dtype)
        loss_out = np.empty(self.logits.shape[0], self.logits.dtype)
        grad_out = np.empty_like(self.logits)
        threads = numba.get_num_threads()

        def sklearn_step():
            loss.loss_gradient(y, self.logits, loss_out=loss_out, gradient_out=grad_out, n_threads=threads)

        t = interleaved_medians({"fx": self._fused, "sk": sklearn_step}, rounds=7, before=evict_caches)
        return t["sk"] / t["fx"]


class _LinearHeadProblem:
    """A language-model head at the shape of the linear head's targets
    (float32, N = 2048, D = 512, V = 32000: logits of 250 MiB, about a
    second a call), and its two paths: `linear_cross_entropy` and the
    unchunked NumPy-matmul + fastxent path."""

    timeout = 600
    N, D, V = 2048, 512, 32000

    def _make(self):
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((self.N, self.D), dtype=np.float32)
        self.w = rng.standard_normal((self.V, self.D), dtype=np.float32) * np.float32(0.05)
        self.y = rng.integers(0, self.V, self.N)
        self.grad_x, self.grad_w = np.empty_like(self.x), np.empty_like(self.w)

    def _chunked(self, **options):
        fx.linear_cross_entropy(self.x, self.w, self.y, grad_input_out=self.grad_x, grad_weight_out=self.grad_w,
                                **options)

    def _unchunked(self):
        logits = self.x @ self.w.T
        fx.cross_entropy_with_grad(logits, self.y, grad_out=logits)
        np.matmul(logits, self.w, out=self.grad_x)
        np.matmul(logits.T, self.x, out=self.grad_w)


class LinearHead(_LinearHeadProblem):
    """Time of the chunked head, and its ratio to the unchunked path."""

    def setup(self):
        self._make()
        for _ in range(2):  # compilation, scratch slabs, the dispatch's first choice per slab shape
            self._chunked()
            self._unchunked()
        self._chunked(z_loss=1e-4, softcap=30.0)  # loads the option kernels

    def time_linear_cross_entropy(self):
        self._chunked()

    def time_linear_cross_entropy_z_loss_softcap(self):
        self._chunked(z_loss=1e-4, softcap=30.0)

    def track_chunked_over_unchunked(self):
        """Time of the chunked head over the unchunked path (target: at most 1.15)."""
        t = interleaved_medians({"chunked": self._chunked, "unchunked": self._unchunked}, rounds=5)
        return t["chunked"] / t["unchunked"]

    track_chunked_over_unchunked.unit = "ratio"


class LinearHeadMemory(_LinearHeadProblem):
    """Peak memory of each path. asv's peak covers setup as well, so setup
    compiles on a tiny head and runs neither path at full size."""

    def setup(self):
        rng = np.random.default_rng(1)
        x, w = rng.standard_normal((8, 4), dtype=np.float32), rng.standard_normal((16, 4), dtype=np.float32)
        y = rng.integers(0, 16, 8)
        fx.linear_cross_entropy(x, w, y)
        fx.cross_entropy_with_grad(x @ w.T, y)
        self._make()

    def peakmem_linear_cross_entropy(self):
        self._chunked()

    def peakmem_unchunked(self):
        self._unchunked()
