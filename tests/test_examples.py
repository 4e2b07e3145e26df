"""The runnable examples, each in its fast mode: they run and do what they claim."""

import importlib.util
import os
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
needs_jit = pytest.mark.skipif(os.environ.get("NUMBA_DISABLE_JIT") == "1", reason="compiled code only")


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@needs_jit
def test_njit_policy_gradient_agents_learn(capsys):
    result = load("njit_policy_gradient").main(fast=True)
    assert result["last"] > result["first"] + 0.5  # from near-random to near-best
    assert result["last"] > 0.9 * result["best"]
    assert result["chose_best"] > 0.8
    assert "agents" in capsys.readouterr().out


def test_numpy_mlp_learns_digits():
    pytest.importorskip("sklearn")
    result = load("train_numpy_mlp").main(fast=True, plot=False)
    assert result["accuracy"] >= 0.9
    assert result["last_loss"] < 0.25 * result["first_loss"]


def test_torch_example_matches_torch_and_learns():
    pytest.importorskip("sklearn")
    pytest.importorskip("torch")
    result = load("train_torch_cpu").main(fast=True)
    assert result["max_rel"] < 1e-4  # the same training run, step for step
    assert result["accuracy"] >= 0.9 and result["last"] < 0.25 * result["first"]
    assert set(result["speedups"]) == {"64x10", "512x32000"}


def test_dask_example_is_exact_on_uneven_blocks():
    pytest.importorskip("dask.array")
    result = load("dask_evaluate").main(fast=True)
    assert abs(result["head_lazy"] - result["head_eager"]) <= 1e-6 * abs(result["head_eager"])
    assert 0 < result["loss"] < 10
