"""fastxent.dask against the in-memory API and the float64 reference
(skipped when dask is not installed)."""

import numpy as np
import pytest

from conftest import DTYPES, tolerances
import reference

da = pytest.importorskip("dask.array")
import fastxent  # noqa: E402
from fastxent import dask as fdask  # noqa: E402

UNEVEN = ((7, 150, 1, 90, 52),)  # 300 rows in uneven blocks


def problem(dtype, rng, n_rows=300, n_classes=11):
    x = (rng.normal(size=(n_rows, n_classes)) * 3).astype(dtype)
    y = rng.integers(0, n_classes, n_rows)
    y[:120][rng.random(120) < 0.7] = -100  # the first blocks are mostly ignored rows
    w = rng.uniform(0.2, 2.0, n_classes).astype(dtype)
    return x, y, w


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("options", [{}, {"weight": True}, {"label_smoothing": 0.2, "weight": True}],
                         ids=["plain", "weight", "smoothing-weight"])
def test_uneven_chunks_equal_in_memory(rng, dtype, reduction, options):
    x, y, w = problem(dtype, rng)
    options = {**options, "weight": w} if options.get("weight") else options
    lazy = fdask.cross_entropy(da.from_array(x, chunks=UNEVEN + ((11,),)), da.from_array(y, chunks=(100,)),
                               reduction=reduction, **options)
    assert isinstance(lazy, da.Array)
    got = lazy.compute()
    expected = fastxent.cross_entropy(x, y, reduction=reduction, **options)
    ref, _ = reference.cross_entropy_with_grad(x, y, reduction=reduction, **options)

    assert got.dtype == dtype and got.shape == np.shape(expected)
    np.testing.assert_allclose(got, expected, rtol=1e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(got, ref, *tolerances(dtype))


def test_mean_is_not_a_mean_of_block_means(rng):
    x, y, _ = problem(np.float64, rng)
    got = fdask.cross_entropy(da.from_array(x, chunks=(60, 11)), y).compute()
    block_means = [fastxent.cross_entropy(x[i:i + 60], y[i:i + 60]) for i in range(0, 300, 60)]
    ref, _ = reference.cross_entropy_with_grad(x, y)
    assert abs(got - ref) <= 1e-12 * abs(ref)
    assert abs(np.mean(block_means) - ref) > 1e-3


def test_batch_axes_and_probability_targets(rng):
    x = rng.normal(size=(6, 50, 9))
    t = rng.dirichlet(np.ones(9), (6, 50))
    lazy = fdask.cross_entropy(da.from_array(x, chunks=(4, 17, 9)), t, label_smoothing=0.1)
    ref, _ = reference.cross_entropy_with_grad(x, t, label_smoothing=0.1)
    np.testing.assert_allclose(lazy.compute(), ref, rtol=1e-12)
    rows = fdask.cross_entropy(da.from_array(x, chunks=(4, 17, 9)), t, reduction="none").compute()
    np.testing.assert_allclose(rows, reference.cross_entropy_with_grad(x, t, reduction="none")[0], rtol=1e-12)


def test_threaded_blocks_large_enough_for_parallel_kernels(rng):
    # blocks of 4096 x 16 run concurrently in dask's thread pool: at most one
    # parallel kernel at a time, the others on their serial twins
    x = rng.normal(size=(32768, 16)).astype(np.float32)
    y = rng.integers(0, 16, 32768)
    got = fdask.cross_entropy(da.from_array(x, chunks=(4096, 16)), y).compute(scheduler="threads", num_workers=4)
    np.testing.assert_allclose(got, fastxent.cross_entropy(x, y), rtol=1e-6)


def test_local_cluster_with_two_workers(rng):
    distributed = pytest.importorskip("distributed")
    x, y, w = problem(np.float64, rng)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            lazy = fdask.cross_entropy(da.from_array(x, chunks=UNEVEN + ((11,),)), y, weight=w)
            got = client.compute(lazy).result()
            rows = client.compute(fdask.cross_entropy(da.from_array(x, chunks=(77, 11)), y, reduction="none")).result()
    np.testing.assert_allclose(got, fastxent.cross_entropy(x, y, weight=w), rtol=1e-13)
    np.testing.assert_allclose(rows, fastxent.cross_entropy(x, y, reduction="none"), rtol=1e-13)


def test_errors(rng):
    x, y, _ = problem(np.float32, rng)
    with pytest.raises(ValueError, match="class axis of logits must be in one chunk"):
        fdask.cross_entropy(da.from_array(x, chunks=(100, 5)), y)
    with pytest.raises(ValueError, match="shape logits.shape"):
        fdask.cross_entropy(da.from_array(x, chunks=(100, 11)), y[:-1])
    with pytest.raises(TypeError, match="float32 or float64"):
        fdask.cross_entropy(da.from_array(x.astype(np.int32), chunks=(100, 11)), y)
    with pytest.raises(ValueError, match="reduction"):
        fdask.cross_entropy(da.from_array(x, chunks=(100, 11)), y, reduction="avg")
    with pytest.raises(ValueError, match="weight must have shape"):
        fdask.cross_entropy(da.from_array(x, chunks=(100, 11)), y, weight=np.ones(3))
    bad = y.copy()
    bad[205] = 11
    lazy = fdask.cross_entropy(da.from_array(x, chunks=(100, 11)), bad)
    with pytest.raises(ValueError, match=r"label 11 at index \(5,\).*within the block at \[200, 300\)"):
        lazy.compute()
