"""The command line, the timing helper and the NumPy baseline."""

import subprocess
import sys

import numpy as np
import pytest
from conftest import large

from fastxent._timing import IN_CACHE_KERNELS, WARMUP_CALLS, interleaved_medians
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
    assert calls["a"] >= 3 + WARMUP_CALLS and calls["b"] >= 3 + WARMUP_CALLS  # warm-up plus three rounds each


@large
def test_demo_prints_the_worked_example():
    out = subprocess.run([sys.executable, "-m", "fastxent"], capture_output=True, text=True, timeout=300, check=True).stdout
    assert "mean loss  = 2.019" in out
    assert "[-0.464  0.243  0.22 ]" in out
    assert "speed-up" in out


def test_help_lists_the_bench_options(capsys):
    from fastxent.__main__ import main

    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for option in ("--threads", "--quick", "--sweep", "--load"):
        assert option in out


def test_bench_output_is_clean_when_redirected(capsys, monkeypatch):
    import fastxent.__main__ as cli
    import fastxent._timing as timing

    monkeypatch.setattr(cli, "BENCH_GRID", [(np.float32, 64, 10)] * 3)
    monkeypatch.setattr(cli, "SWEEP_ELEMENTS", 4096)
    monkeypatch.setattr(timing, "IN_CACHE_ELEMENTS", 512)  # few elements: the kernels also run as Python in CI
    cli.bench(quick=True)
    cli.bench(quick=True, sweep=True)
    captured = capsys.readouterr()
    assert "\r" not in captured.out and "\r" not in captured.err  # stderr is not a terminal here
    assert "fastxent ms" in captured.out and "copy ms" in captured.out
    table = [line.split() for line in captured.out.splitlines() if line.startswith("float32")]
    # three shapes; the four class counts of the quick sweep from memory; in cache all but C = 32000, of which
    # 4096 elements hold no row
    assert len(table) == 3 + 4 + 3
    assert len([fields for fields in table if len(fields) == 11]) == 4
    assert "held in cache" in captured.out
    in_cache = [fields for fields in table if len(fields) == 7]  # dtype, C and the five kernels
    assert [int(fields[1]) for fields in in_cache] == [2, 10, 128]
    assert all(float(v) > 0 for fields in in_cache for v in fields[2:])  # time ratios


@pytest.mark.parametrize("kind", IN_CACHE_KERNELS)
def test_kernels_in_cache_write_only_the_rows_they_time(monkeypatch, kind):
    import fastxent._timing as timing

    monkeypatch.setattr(timing, "IN_CACHE_ELEMENTS", 4096)  # few rows: the kernels also run as Python in CI
    rng = np.random.default_rng(0)
    classes = 20
    rows = timing.IN_CACHE_ELEMENTS // classes
    x = rng.standard_normal((rows + 50, classes)).astype(np.float32)
    labels = rng.integers(0, classes, x.shape[0])
    probs = rng.random(x.shape).astype(np.float32)
    probs /= probs.sum(axis=1, keepdims=True)
    out = np.full_like(x, np.nan)
    seconds_per_element = timing.kernels_in_cache(x, labels, probs, out, rounds=1, kinds=(kind,))[kind]
    assert seconds_per_element > 0
    assert np.isnan(out[rows:]).all()
    # the rows timed hold that kernel's result on those rows, mean-scaled (float64 references from the formulas)
    expected = {
        "fused": lambda: ref.cross_entropy_with_grad(x[:rows], labels[:rows])[1],
        "log_softmax": lambda: ref.log_softmax(x[:rows]),
        "probs": lambda: ref.cross_entropy_with_grad(x[:rows], probs[:rows])[1],
    }
    if kind == "loss":
        assert np.isnan(out).all()  # writes nothing
    elif kind == "in-place":
        # called again and again on its own output, from a copy of the logits: gradients stay finite and each row of a
        # gradient sums to 0
        assert np.isfinite(out[:rows]).all()
        np.testing.assert_allclose(out[:rows].sum(axis=1), 0.0, atol=1e-6)
    else:
        np.testing.assert_allclose(out[:rows], expected[kind](), rtol=1e-5, atol=1e-6)
