"""The public functions called from user @njit code, against the Python API
(itself checked against the float64 reference in test_cross_entropy.py)."""

import functools
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from numba import njit, prange
from numba.core.errors import TypingError

import fastxent as fx
from reference import cross_entropy_with_grad as xent_reference

pytestmark = pytest.mark.skipif(
    os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="overloads only exist in compiled code"
)


@functools.cache
def compiled(reduction, parallel=False):
    """User functions calling every cross-entropy entry point with keywords."""

    @njit(parallel=parallel)
    def fused(logits, target, weight, ignore_index, label_smoothing, grad):
        return fx.cross_entropy_with_grad(
            logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing, grad_out=grad,
        )

    @njit(parallel=parallel)
    def loss(logits, target, weight, ignore_index, label_smoothing):
        return fx.cross_entropy(
            logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing,
        )

    @njit(parallel=parallel)
    def grad_only(logits, target, weight, ignore_index, label_smoothing):
        return fx.cross_entropy_grad(
            logits, target, weight=weight, ignore_index=ignore_index, reduction=reduction,
            label_smoothing=label_smoothing,
        )

    return fused, loss, grad_only


def case(rng, dtype, kind, n, c, weighted, ignore):
    logits = (rng.standard_normal((n, c)) * 3).astype(dtype)
    weight = (rng.random(c) + 0.5).astype(dtype) if weighted else None
    if kind == "labels":
        target = rng.integers(0, c, n)
        if ignore and n > 1:
            target[::3] = ignore
    else:
        target = rng.dirichlet(np.ones(c), n).astype(dtype)
    return logits, target, weight


# Each case compiles user functions for one combination of types (a few
# seconds each: Numba links the kernels into every caller), so the grid is
# a chosen set rather than a full product. Row counts vary inside a case.
BATCH_CASES = [
    # dtype, kind, reduction, weighted, ignore_index, label_smoothing, all three entry points
    (np.float64, "labels", "mean", True, 1, 0.2, True),
    (np.float64, "labels", "sum", False, -100, 0.0, False),
    (np.float64, "labels", "none", True, 2, 0.0, False),
    (np.float32, "labels", "mean", False, 0, 0.1, False),
    (np.float32, "probs", "none", True, -100, 0.3, True),
    (np.float64, "probs", "mean", False, -100, 0.0, False),
]


@pytest.mark.parametrize("dtype,kind,reduction,weighted,ignore,smoothing,every_entry", BATCH_CASES, ids=str)
def test_batch_matches_python_api(dtype, kind, reduction, weighted, ignore, smoothing, every_entry):
    fused, loss_fn, grad_fn = compiled(reduction)
    rtol = 1e-6 if dtype == np.float32 else 1e-14
    for n in (1, 7, 130):  # 130 rows of 5 classes: the tile path for labels
        rng = np.random.default_rng(n)
        logits, target, weight = case(rng, dtype, kind, n, 5, weighted, ignore)
        opts = dict(weight=weight, ignore_index=ignore, reduction=reduction, label_smoothing=smoothing)
        want_loss, want_grad = fx.cross_entropy_with_grad(logits, target, **opts)
        grad = np.full_like(logits, np.nan)
        loss, returned = fused(logits, target, weight, ignore, smoothing, grad)
        assert np.shares_memory(returned, grad)
        np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=rtol)
        np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=rtol)
        if every_entry:
            got = loss_fn(logits, target, weight, ignore, smoothing)
            np.testing.assert_allclose(got, want_loss, rtol=rtol, atol=rtol)
            got = grad_fn(logits, target, weight, ignore, smoothing)
            np.testing.assert_allclose(got, want_grad, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype,reduction", [(np.float64, "mean"), (np.float32, "none"), (np.float64, "sum")], ids=str)
def test_one_sample_matches_the_reference(dtype, reduction):
    fused, loss_fn, _ = compiled(reduction)
    rtol = 2e-6 if dtype == np.float32 else 1e-13
    rng = np.random.default_rng(200)
    for label in (0, 3, -100):
        scores = (rng.standard_normal(6) * 2).astype(dtype)
        weight = (rng.random(6) + 0.5).astype(dtype)
        grad = np.empty_like(scores)
        loss, _ = fused(scores, label, weight, -100, 0.1, grad)
        want_loss, want_grad = xent_reference(
            scores[None].astype(np.float64), np.array([label]), weight=weight.astype(np.float64),
            reduction=reduction, label_smoothing=0.1,
        )
        if reduction == "mean" and label == -100:
            assert np.isnan(loss) and np.isnan(want_loss)
        else:
            np.testing.assert_allclose(loss, np.reshape(want_loss, ()), rtol=rtol, atol=rtol)
        np.testing.assert_allclose(grad, want_grad[0], rtol=rtol, atol=rtol)
        assert np.ndim(loss) == 0 and np.isclose(loss_fn(scores, label, weight, -100, 0.1), loss, equal_nan=True)
    probs = rng.dirichlet(np.ones(6)).astype(dtype)
    loss_p, grad_p = fused(scores, probs, None, -100, 0.0, grad)
    want_p, want_gp = fx.cross_entropy_with_grad(scores[None], probs[None], reduction=reduction)
    np.testing.assert_allclose(loss_p, np.reshape(want_p, ()), rtol=rtol)
    np.testing.assert_allclose(grad_p, want_gp[0], rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype,reduction", [(np.float64, "mean"), (np.float32, "sum"), (np.float64, "none")], ids=str)
def test_a_batch_of_one_row_gives_the_bits_of_the_python_api(dtype, reduction):
    """A (1, C) batch takes the one-sample entry inside njit code; the Python
    API runs the batch kernel on it. Same row helper: the same bits."""
    fused, loss_fn, grad_fn = compiled(reduction)
    rng = np.random.default_rng(201)
    for label, weighted, smoothing in [(3, False, 0.0), (0, True, 0.2), (-100, True, 0.0), (5, False, 0.1)]:
        logits = (rng.standard_normal((1, 6)) * 3).astype(dtype)
        weight = (rng.random(6) + 0.5).astype(dtype) if weighted else None
        labels = np.array([label])
        opts = dict(weight=weight, ignore_index=-100, reduction=reduction, label_smoothing=smoothing)
        with np.errstate(divide="ignore", invalid="ignore"):
            want_loss, want_grad = fx.cross_entropy_with_grad(logits, labels, **opts)
        grad = np.full_like(logits, np.nan)
        loss, _ = fused(logits, labels, weight, -100, smoothing, grad)
        np.testing.assert_array_equal(loss, want_loss)
        np.testing.assert_array_equal(grad, want_grad)
        np.testing.assert_array_equal(loss_fn(logits, labels, weight, -100, smoothing), want_loss)
        np.testing.assert_array_equal(grad_fn(logits, labels, weight, -100, smoothing), want_grad)

    @njit
    def in_place_with_rows(logits, labels, rows):
        return fx.cross_entropy_with_grad(logits, labels, reduction="none", out=rows, grad_out=logits)

    logits = rng.standard_normal((1, 5)).astype(dtype)
    want_loss, want_grad = fx.cross_entropy_with_grad(logits, np.array([4]), reduction="none")
    rows = np.full(1, np.nan, dtype)
    loss, grad = in_place_with_rows(logits, np.array([4]), rows)
    assert np.shares_memory(loss, rows) and np.shares_memory(grad, logits)
    np.testing.assert_array_equal(rows, want_loss)
    np.testing.assert_array_equal(logits, want_grad)
    with pytest.raises(ValueError, match="one entry per row"):
        in_place_with_rows(logits, np.array([4]), np.empty(2, dtype))


def test_a_batch_of_one_row_with_bad_input_raises_before_writing():
    """The one-sample entry of a (1, C) batch checks what the batch path checks."""
    fused, _, _ = compiled("mean")
    logits = np.zeros((1, 4))
    grad = np.full((1, 4), 7.0)
    for bad in (4, -1):
        with pytest.raises(ValueError, match="outside \\[0, C\\)"):
            fused(logits, np.array([bad]), None, -100, 0.0, grad)
    with pytest.raises(ValueError, match="weight"):
        fused(logits, np.array([1]), np.ones(3), -100, 0.0, grad)
    with pytest.raises(ValueError, match="label_smoothing"):
        fused(logits, np.array([1]), None, -100, -0.5, grad)
    assert np.all(grad == 7.0)
    # A buffer with more rows than the logits is refused, not written in its first row.
    two_rows = np.full((2, 4), 7.0)
    with pytest.raises(ValueError, match="grad must have the logits' shape"):
        fused(logits, np.array([1]), None, -100, 0.0, two_rows)
    assert np.all(two_rows == 7.0)
    with pytest.raises(ValueError, match="one entry per row"):
        fused(logits, np.array([1, 2]), None, -100, 0.0, grad)
    assert np.all(grad == 7.0)


def test_one_sample_with_every_option_left_out_matches_the_reference():
    """One row and one integer label, no keyword but the buffer: a policy-gradient step."""

    @njit
    def step(scores, label, grad):
        return fx.cross_entropy_with_grad(scores, label, grad_out=grad)

    rng = np.random.default_rng(201)
    for label in (0, 2, 5):
        scores = rng.standard_normal(6) * 2
        grad = np.empty_like(scores)
        loss, _ = step(scores, label, grad)
        want_loss, want_grad = xent_reference(scores[None], np.array([label]))
        np.testing.assert_allclose(loss, want_loss, rtol=1e-13)
        np.testing.assert_allclose(grad, want_grad[0], rtol=1e-13, atol=1e-16)
        loss_inplace, _ = step(scores, label, scores)  # in place: the same bits
        assert loss_inplace == loss
        np.testing.assert_array_equal(scores, grad)


def test_defaults_in_place_and_buffers_inside_njit():
    @njit
    def step(logits, labels, row_losses):
        in_place = fx.cross_entropy_with_grad(logits, labels, reduction="none", out=row_losses, grad_out=logits)
        return in_place

    rng = np.random.default_rng(5)
    logits = rng.standard_normal((9, 4))
    labels = rng.integers(0, 4, 9)
    want_loss, want_grad = fx.cross_entropy_with_grad(logits, labels, reduction="none")
    rows = np.empty(9)
    loss, grad = step(logits, labels, rows)
    assert np.shares_memory(grad, logits) and np.shares_memory(loss, rows)
    np.testing.assert_allclose(rows, want_loss, rtol=1e-14)
    np.testing.assert_allclose(logits, want_grad, rtol=1e-13, atol=1e-16)

    @njit
    def defaults(logits, labels):
        return fx.cross_entropy(logits, labels), fx.cross_entropy_grad(logits, labels)

    x = rng.standard_normal((6, 3)).astype(np.float32)
    y = rng.integers(0, 3, 6)
    got_loss, got_grad = defaults(x, y)
    np.testing.assert_allclose(got_loss, fx.cross_entropy(x, y), rtol=1e-6)
    np.testing.assert_allclose(got_grad, fx.cross_entropy_grad(x, y), rtol=1e-6)


def test_rowwise_primitives_inside_njit():
    @njit
    def primitives(x, out2d, out1d):
        a = fx.log_softmax(x)
        b = fx.softmax(x, out=out2d)
        c = fx.logsumexp(x, axis=-1, out=out1d)
        d = fx.logsumexp(x[0])
        e = fx.log_softmax(x[1], axis=0)
        return a, b, c, d, e

    x = np.random.default_rng(1).standard_normal((4, 7)) * 10
    out2d, out1d = np.empty_like(x), np.empty(4)
    a, b, c, d, e = primitives(x, out2d, out1d)
    np.testing.assert_allclose(a, fx.log_softmax(x), rtol=1e-14)
    np.testing.assert_allclose(out2d, fx.softmax(x), rtol=1e-14)
    np.testing.assert_allclose(out1d, fx.logsumexp(x), rtol=1e-14)
    assert np.shares_memory(b, out2d) and np.shares_memory(c, out1d)
    np.testing.assert_allclose(d, fx.logsumexp(x[0]), rtol=1e-14)
    np.testing.assert_allclose(e, fx.log_softmax(x[1]), rtol=1e-14)

    @njit
    def empty_axis(x):
        return fx.logsumexp(x)

    assert np.all(empty_axis(np.empty((3, 0))) == -np.inf)


def test_inside_a_user_prange_matches_serial_calls():
    @njit(parallel=True)
    def agents(scores, actions, grads):
        losses = np.empty(scores.shape[0])
        for a in prange(scores.shape[0]):
            losses[a], _ = fx.cross_entropy_with_grad(scores[a], actions[a], grad_out=grads[a])
        return losses

    rng = np.random.default_rng(9)
    scores = rng.standard_normal((500, 5))
    actions = rng.integers(0, 5, 500)
    grads = np.empty_like(scores)
    losses = agents(scores, actions, grads)
    want_loss, want_grad = fx.cross_entropy_with_grad(scores, actions, reduction="none")
    np.testing.assert_allclose(losses, want_loss, rtol=1e-14)
    np.testing.assert_allclose(grads, want_grad, rtol=1e-13, atol=1e-16)


def test_bad_values_raise_at_run_time_before_writing():
    fused, loss_fn, _ = compiled("mean")
    logits = np.zeros((3, 4))
    grad = np.full_like(logits, 7.0)
    with pytest.raises(ValueError, match="outside"):
        fused(logits, np.array([0, 4, 1]), None, -100, 0.0, grad)
    with pytest.raises(ValueError, match="outside"):
        fused(logits[0], 9, None, -100, 0.0, grad[0])
    with pytest.raises(ValueError, match="label_smoothing"):
        fused(logits, np.array([0, 1, 1]), None, -100, 1.5, grad)
    with pytest.raises(ValueError, match="one entry per row"):
        fused(logits, np.array([0, 1]), None, -100, 0.0, grad)
    with pytest.raises(ValueError, match="grad must have the logits' shape"):
        fused(logits, np.array([0, 1, 1]), None, -100, 0.0, np.empty((3, 5)))
    with pytest.raises(ValueError, match="weight"):
        fused(logits, np.array([0, 1, 1]), np.ones(3), -100, 0.0, grad)
    assert np.all(grad == 7.0)


def test_bad_types_fail_at_compile_time_naming_the_argument():
    fused, loss_fn, _ = compiled("mean")
    x = np.zeros((3, 4))
    y = np.array([0, 1, 2])
    with pytest.raises(TypingError, match="grad_out must have the logits' dtype"):
        fused(x, y, None, -100, 0.0, np.empty((3, 4), np.float32))
    with pytest.raises(TypingError, match="weight must have the logits' dtype"):
        loss_fn(x, y, np.ones(4, np.float32), -100, 0.0)
    with pytest.raises(TypingError, match="logits must be float32 or float64"):
        loss_fn(np.zeros((3, 4), np.int64), y, None, -100, 0.0)
    with pytest.raises(TypingError, match="target must be"):
        loss_fn(x, np.zeros(3), None, -100, 0.0)
    with pytest.raises(TypingError, match="ignore_index must be an integer"):
        loss_fn(x, y, None, 1.5, 0.0)

    @njit
    def runtime_reduction(x, y, reduction):
        return fx.cross_entropy(x, y, reduction=reduction)

    with pytest.raises(TypingError, match="reduction must be a string constant"):
        runtime_reduction(x, y, "sum")

    @njit
    def unknown_reduction(x, y):
        return fx.cross_entropy(x, y, reduction="avg")

    with pytest.raises(TypingError, match="reduction must be one of"):
        unknown_reduction(x, y)


def test_no_allocation_with_buffers_given():
    """NRT statistics must be switched on before Numba starts: a fresh process.
    Calling a compiled function from Python counts one allocation per array
    argument (its unboxing), so the calls are counted inside a compiled loop:
    101 iterations against 1."""
    script = textwrap.dedent(
        """
        import numpy as np
        from numba import njit
        from numba.core.runtime import rtsys
        import fastxent as fx

        @njit
        def steps(x, y, g, rows, x1, g1, n):
            total = 0.0
            for _ in range(n):
                a = fx.cross_entropy_with_grad(x, y, grad_out=g)[0]
                b = fx.cross_entropy_with_grad(x, y, reduction="none", out=rows, grad_out=g)[0]
                c = fx.cross_entropy_with_grad(x1, 2, grad_out=g1, label_smoothing=0.1)[0]
                d = fx.logsumexp(x1) + fx.cross_entropy(x, y) + fx.cross_entropy_grad(x, y, out=g)[0, 0]
                total += a + b[0] + c + d
            return total

        x = np.random.default_rng(0).standard_normal((40, 10)); y = np.arange(40) % 10
        g, rows, x1 = np.empty_like(x), np.empty(40), x[0].copy()
        g1 = np.empty_like(x1)
        steps(x, y, g, rows, x1, g1, 0)  # compiles, and starts the runtime whose counters we read
        counts = []
        for n in (1, 1, 101):
            before = rtsys.get_allocation_stats().alloc
            steps(x, y, g, rows, x1, g1, n)
            counts.append(rtsys.get_allocation_stats().alloc - before)
        print(counts[1], counts[2])
        """
    )
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    one_call, many_calls = (int(v) for v in result.stdout.split()[-2:])
    assert one_call > 0  # the counter works: the six array arguments are unboxed
    assert many_calls == one_call


def test_temporary_arguments_are_neither_leaked_nor_freed_early():
    """The overloads hand their inputs to the compiled body as views without
    reference counts. Inputs made inside the loop and dropped after the call,
    and outputs the call allocates, must come out with every allocation
    freed and the values of the Python API."""
    script = textwrap.dedent(
        """
        import numpy as np
        from numba import njit
        from numba.core.runtime import rtsys
        import fastxent as fx

        @njit
        def steps(n):
            total = 0.0
            for i in range(n):
                loss, grad = fx.cross_entropy_with_grad(np.full((3, 4), 0.5 * i) + np.arange(4.0),
                                                        np.arange(3) % 4, reduction="none")
                total += loss[1] + grad[2, 0]
                total += fx.cross_entropy_grad(np.arange(4.0).reshape(1, 4), np.array([1]))[0, 1]
                total += fx.cross_entropy(np.arange(8.0).reshape(2, 4) * 0.1, np.array([3, 0]))
                total += fx.log_softmax(np.ones((2, 5)) * i)[1, 1] + fx.softmax(np.arange(5.0))[4]
            return total

        steps(1)
        stats = rtsys.get_allocation_stats()
        got = steps(50)
        after = rtsys.get_allocation_stats()
        print(after.alloc - stats.alloc, after.free - stats.free, after.mi_alloc - stats.mi_alloc,
              after.mi_free - stats.mi_free, repr(got))
        """
    )
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    alloc, free, mi_alloc, mi_free, got = result.stdout.split()[-5:]
    assert int(alloc) > 0 and int(alloc) == int(free)
    assert int(mi_alloc) == int(mi_free)
    want = 0.0
    for i in range(50):
        loss, grad = xent_reference(np.full((3, 4), 0.5 * i) + np.arange(4.0), np.arange(3) % 4, reduction="none")
        want += loss[1] + grad[2, 0]
        _, grad = xent_reference(np.arange(4.0).reshape(1, 4), np.array([1]))
        want += grad[0, 1]
        want += xent_reference(np.arange(8.0).reshape(2, 4) * 0.1, np.array([3, 0]))[0]
        row = np.ones(5) * i
        want += (row - np.log(np.exp(row).sum()))[1] + np.exp(4.0) / np.exp(np.arange(5.0)).sum()
    np.testing.assert_allclose(float(got), want, rtol=1e-12)


def test_a_caller_cached_on_disk_runs_in_a_fresh_process(tmp_path):
    """The overloads call the batch kernels by a symbol that each process
    registers when it types a call (`_njit._call_kernel`). A user function
    loaded from Numba's disk cache is not typed again: its reload hook must
    register the symbols before it is linked, or the process could not run
    it. Two fresh processes: the first compiles and stores the user's
    functions, the second loads them, runs them first of all (no other
    fastxent call before) and must give the reference's values."""
    (tmp_path / "user_module.py").write_text(
        textwrap.dedent(
            """
            import numpy as np
            from numba import njit
            import fastxent as fx

            @njit(cache=True)
            def fused(x, y, g):
                return fx.cross_entropy_with_grad(x, y, label_smoothing=0.1, grad_out=g)[0]

            @njit(cache=True)
            def probs_loss_and_log_softmax(x, p, out):
                return fx.cross_entropy(x, p, reduction="sum") + fx.log_softmax(x, out=out)[0, 0]
            """
        )
    )
    script = textwrap.dedent(
        """
        import numpy as np
        import user_module as m
        rng = np.random.default_rng(0)
        x = rng.standard_normal((300, 10)); y = rng.integers(0, 10, 300); y[::7] = -100
        p = rng.dirichlet(np.ones(10), 300)
        g, out = np.empty_like(x), np.empty_like(x)
        a = m.fused(x, y, g)
        b = m.probs_loss_and_log_softmax(x, p, out)
        hits = sum(f.stats.cache_hits.total() for f in (m.fused, m.probs_loss_and_log_softmax))
        np.save("grad.npy", g)
        print(repr(a), repr(b), hits)
        """
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    runs = []
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                                timeout=600, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        runs.append(result.stdout.split()[-3:])
    assert runs[0][2] == "0" and runs[1][2] == "2"  # compiled, then both loaded from the cache
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 10)); y = rng.integers(0, 10, 300); y[::7] = -100
    p = rng.dirichlet(np.ones(10), 300)
    loss, grad = xent_reference(x, y, label_smoothing=0.1)
    np.testing.assert_allclose(float(runs[1][0]), loss, rtol=1e-12)
    np.testing.assert_allclose(np.load(tmp_path / "grad.npy"), grad, rtol=1e-12, atol=1e-15)
    shifted = x[0] - x[0].max()
    want = xent_reference(x, p, reduction="sum")[0] + shifted[0] - np.log(np.exp(shifted).sum())
    np.testing.assert_allclose(float(runs[1][1]), want, rtol=1e-12)


def test_the_batch_kernels_are_called_not_linked_into_the_caller():
    """The caller's LLVM IR declares the kernel's symbol and holds no copy of
    the kernel: linking the kernels into each caller made every user
    function compile them again (11 s a function against 4 s)."""

    @njit
    def step(x, y, g):
        return fx.cross_entropy_with_grad(x, y, grad_out=g)[0]

    x = np.zeros((3, 4)); y = np.zeros(3, np.int64)
    step(x, y, np.empty_like(x))
    ir = next(iter(step.inspect_llvm().values()))
    declared = [line for line in ir.splitlines() if line.startswith("declare") and "fastxent.kernels." in line]
    assert any("xent_labels_fused_serial" in line for line in declared)
    assert any("check_labels_serial" in line for line in declared)
    defined = [line for line in ir.splitlines() if line.startswith("define")]
    assert defined and not any("xent_labels_fused" in line or "_labels_tiles" in line for line in defined)


def test_a_cached_caller_of_a_kernel_whose_result_type_changed_is_refused():
    """The reload hook of a cached caller compares the symbol it was compiled
    against (which names the kernel's result type) with the installed one."""
    from numba import types

    from fastxent import _njit

    argtys = (types.float64[:, ::1], types.float64[::1])
    symbol, restype = _njit._link_kernel("logsumexp_rows_serial", argtys)
    _njit._relink_kernel("logsumexp_rows_serial", argtys, symbol)  # the installed kernel: accepted
    stale = _njit._kernel_symbol("logsumexp_rows_serial", argtys, types.Tuple((restype, restype)))
    with pytest.raises(RuntimeError, match="delete that function's Numba cache"):
        _njit._relink_kernel("logsumexp_rows_serial", argtys, stale)
