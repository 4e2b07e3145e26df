"""The MPI examples in their fast mode, on every rank (run under mpiexec)."""

import importlib.util
import os
from pathlib import Path

import pytest

if not any(k in os.environ for k in ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")):
    pytest.skip("MPI tests run under mpiexec -n 2 or -n 3", allow_module_level=True)
pytest.importorskip("mpi4py.MPI")

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_data_parallel_example_matches_one_process():
    result = load("mpi_data_parallel").main(fast=True)
    assert result["grad_error"] < 1e-12  # the ranks' slices add up to the single-process gradient
    assert result["last"] < 0.6 * result["first"]
    assert result["naive_error"] > 0.05  # and the per-rank mean would have been wrong


def test_vocab_parallel_example_matches_one_process():
    result = load("mpi_vocab_parallel").main(fast=True)
    assert result["loss_error"] < 1e-5 and result["grad_error"] < 1e-5  # float32
    assert result["last"] < 0.7 * result["first"]
