"""The class-major tile path (small C) against the float64 reference.

The kernels take the tile path when C <= TILE_MAX_CLASSES[itemsize] and
there are rows enough for a tile of TILE_ROWS rows to pay (a partial tile
is padded), but for rows of whole ROW_PATH_BLOCK_BYTES blocks where that
is set; these cases sit on both sides of both limits and at tile edges.
"""

import numpy as np
import pytest

import fastxent as fx
from fastxent import _config, kernels
import reference as ref
from conftest import assert_matches_reference, large, tolerances

B = _config.TILE_ROWS

SHAPES = [
    (B, 2),  # exactly one tile
    (B - 1, 5),  # one row short of a tile: one padded tile
    (5, 10),  # too few rows to pay for a tile: the row path
    (3 * B + 7, 10),  # a partial last tile
    (5 * B, "max"),  # the largest C on the tile path (per dtype)
    (2 * B + 1, "max+1"),  # the smallest C on the row path
    (B + 3, 1),  # one class
    (2 * B + 3, "blocks"),  # rows of two ROW_PATH_BLOCK_BYTES blocks: the row path where that is set
]
OPTIONS = [
    {},
    dict(label_smoothing=0.2),
    dict(weight="random", ignore_index=1, label_smoothing=0.1),
    dict(reduction="sum"),
    dict(reduction="none", weight="random"),
]


def resolve(shape, dtype):
    """A shape of SHAPES with the tile limit of ``dtype`` in place of its name."""
    n, c = shape
    cmax = _config.TILE_MAX_CLASSES[np.dtype(dtype).itemsize]
    blocks = 2 * 256 // np.dtype(dtype).itemsize
    return n, {"max": cmax, "max+1": cmax + 1, "blocks": blocks}.get(c, c)


def make(rng, shape, dtype, opts):
    n, c = shape = resolve(shape, dtype)
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    labels = rng.integers(0, c, n)
    labels[rng.random(n) < 0.1] = opts.get("ignore_index", -100)
    if opts.get("weight") == "random":
        opts = dict(opts, weight=(rng.random(c) + 0.5).astype(dtype))
    return logits, labels, opts


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("opts", OPTIONS)
def test_tile_path_matches_reference(rng, dtype, shape, opts):
    logits, labels, opts = make(rng, shape, dtype, opts)
    assert_matches_reference(logits, labels, dtype, same_bits_in_place=False, **opts)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_rows_of_whole_blocks_follow_the_configured_path(dtype):
    """Inside the tile limits, rows whose bytes are whole ROW_PATH_BLOCK_BYTES
    blocks (two or more) take the row path when that is set, the tiles otherwise."""
    itemsize = np.dtype(dtype).itemsize
    block = _config.ROW_PATH_BLOCK_BYTES
    c = 2 * (block or 256) // itemsize
    assert c <= _config.TILE_MAX_CLASSES[itemsize]
    tiled, _, _ = kernels._groups(np.zeros((4 * B, c), dtype), True)
    assert tiled == (block == 0)
    for other in (c - 1, c // 2):  # not whole blocks, or a single one: the tiles
        tiled, _, _ = kernels._groups(np.zeros((4 * B, other), dtype), True)
        assert tiled


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_non_finite_and_bad_rows_inside_a_tile(rng, dtype, label_smoothing):
    n, c = 2 * B + 5, 7
    logits = rng.standard_normal((n, c)).astype(dtype)
    labels = rng.integers(0, c, n)
    logits[3, 2] = np.nan  # a NaN row in the first tile
    logits[B + 1, :] = -np.inf  # an all -inf row in the second
    logits[B + 2, 0] = -np.inf  # a masked class
    labels[B + 3] = -100  # an ignored row with NaN logits
    logits[B + 3, 1] = np.nan
    labels[B + 4] = -100  # ignored rows with a +inf logit and with all -inf
    logits[B + 4, 5] = np.inf
    labels[B + 5] = -100
    logits[B + 5, :] = -np.inf
    labels[2 * B + 1] = 50  # a bad label in the last, partial tile
    grad = np.empty_like(logits)
    rows = np.empty(n, dtype)
    kernels.xent_labels_fused(logits, labels, logits[0, :0], -100, label_smoothing, 1.0, grad, rows)
    good = np.ones(n, bool)
    good[[3, B + 1, B + 3, B + 4, B + 5, 2 * B + 1]] = False
    want_rows, want_grad = ref.cross_entropy_with_grad(logits[good], labels[good], reduction="none",
                                                       label_smoothing=label_smoothing)
    rtol, atol = tolerances(dtype)
    np.testing.assert_allclose(rows[good], want_rows, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad[good], want_grad, rtol=rtol, atol=atol)
    for bad in (3, B + 1, 2 * B + 1):
        assert np.isnan(rows[bad]) and np.isnan(grad[bad]).all()
    for ignored in (B + 3, B + 4, B + 5):
        assert rows[ignored] == 0 and (grad[ignored] == 0).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_two_class_tiles_on_every_pair_of_special_values(dtype):
    """Two-class tiles take one exp a row (`kernels._tile_sum_exps`): every
    pair of ordinary and special logits, with either label or ignored, in
    whole and partial tiles, against the reference and the twins."""
    import scipy.special as sp

    values = [0.0, -0.0, 1.5, -2.0, 80.0, -1e30, 1e30, np.inf, -np.inf, np.nan]
    pairs = np.array([(a, b) for a in values for b in values], dtype)
    logits = np.concatenate([pairs, pairs, pairs])  # 300 rows: four whole tiles and a partial one
    labels = np.repeat([0, 1, -100], len(pairs))
    rtol, atol = tolerances(dtype)
    with np.errstate(all="ignore"):
        for label_smoothing in (0.0, 0.2):
            want_rows, want_grad = ref.cross_entropy_with_grad(logits, labels, reduction="none",
                                                               label_smoothing=label_smoothing)
            rows, grad = fx.cross_entropy_with_grad(logits, labels, reduction="none", label_smoothing=label_smoothing)
            np.testing.assert_allclose(rows.astype(np.float64), want_rows, rtol=rtol, atol=atol)
            np.testing.assert_allclose(grad.astype(np.float64), want_grad, rtol=rtol, atol=atol)
            serial, serial_rows = np.empty_like(logits), np.empty(len(labels), dtype)
            kernels.xent_labels_fused_serial(logits, labels, logits[0, :0], -100, label_smoothing, 1.0, serial,
                                             serial_rows)
            np.testing.assert_array_equal(serial, grad)
            np.testing.assert_array_equal(serial_rows, rows)
            target = np.eye(2, dtype=dtype)[np.maximum(labels[: 2 * len(pairs)], 0)]
            rows, grad = fx.cross_entropy_with_grad(logits[: 2 * len(pairs)], target, reduction="none",
                                                    label_smoothing=label_smoothing)
            np.testing.assert_allclose(rows.astype(np.float64), want_rows[: 2 * len(pairs)], rtol=rtol, atol=atol)
            np.testing.assert_allclose(grad.astype(np.float64), want_grad[: 2 * len(pairs)], rtol=rtol, atol=atol)
        posinf = (logits == np.inf).any(axis=1)  # NaN rows here, where scipy gives log_softmax -inf
        for func, want in ((fx.log_softmax, sp.log_softmax), (fx.softmax, sp.softmax)):
            got = func(logits)
            np.testing.assert_allclose(got[~posinf], want(logits[~posinf].astype(np.float64), axis=-1), rtol=rtol,
                                       atol=atol)
            assert np.isnan(got[posinf]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_total_without_per_row_losses(rng, dtype):
    """An empty row_loss: nothing stored, the same total."""
    logits, labels, _ = make(rng, (3 * B + 2, 6), dtype, {})
    rows = np.empty(labels.shape[0], dtype)
    grad, grad2 = np.empty_like(logits), np.empty_like(logits)
    total = kernels.xent_labels_fused(logits, labels, kernels.NO_WEIGHT, -100, 0.1, 1.0, grad, rows)
    total2 = kernels.xent_labels_fused(logits, labels, kernels.NO_WEIGHT, -100, 0.1, 1.0, grad2, rows[:0])
    assert total == total2
    np.testing.assert_array_equal(grad, grad2)
    np.testing.assert_allclose(total, rows.astype(np.float64).sum(), rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_softmax_primitives_on_both_paths(rng, dtype, shape):
    """log_softmax and softmax take the same tile/row split, at the same edges."""
    import scipy.special as sp

    x = (rng.standard_normal(resolve(shape, dtype)) * 10).astype(dtype)
    rtol, atol = tolerances(dtype)
    for func, want in ((fx.log_softmax, sp.log_softmax), (fx.softmax, sp.softmax)):
        expected = want(x.astype(np.float64), axis=-1)
        got = func(x)
        np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
        inplace = x.copy()
        assert func(inplace, out=inplace) is inplace
        np.testing.assert_array_equal(inplace, got)  # out may be x: the same bits
        name = "log_softmax_rows" if func is fx.log_softmax else "softmax_rows"
        serial = np.empty_like(x)
        getattr(kernels, name + "_serial")(x, serial)
        np.testing.assert_array_equal(serial, got)  # the twins agree bit for bit


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_primitives_non_finite_rows_inside_a_tile(rng, dtype):
    n, c = 2 * B + 5, 7
    x = rng.standard_normal((n, c)).astype(dtype)
    x[3, 2] = np.nan  # NaN row
    x[B + 1, :] = -np.inf  # no finite max: NaN, as on the row path
    x[B + 2, 0] = -np.inf  # a masked class: probability 0
    x[2 * B + 1, 4] = np.inf  # +inf: NaN, as on the row path
    for func in (fx.log_softmax, fx.softmax):
        got = func(x)
        for bad in (3, B + 1, 2 * B + 1):
            assert np.isnan(got[bad]).all()
    assert fx.softmax(x)[B + 2, 0] == 0.0 and fx.log_softmax(x)[B + 2, 0] == -np.inf
    good = np.ones(n, bool)
    good[[3, B + 1, 2 * B + 1]] = False
    np.testing.assert_allclose(fx.softmax(x)[good].sum(axis=1), 1.0, rtol=1e-6)


def make_probs(rng, shape, dtype, opts):
    """`make` with a probability target (zero for about a fifth of the classes) in place of the labels."""
    logits, _, opts = make(rng, shape, dtype, {k: v for k, v in opts.items() if k != "ignore_index"})
    target = rng.random(logits.shape)
    target[rng.random(logits.shape) < 0.2] = 0.0  # zero-probability classes
    target = (target / np.maximum(target.sum(axis=1, keepdims=True), 1e-300)).astype(dtype)
    return logits, target, opts


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("opts", OPTIONS)
def test_probability_targets_on_both_paths(rng, dtype, shape, opts):
    """Probability targets take the same tile/row split. Label smoothing gives
    the padding lanes of a partial tile a target mass: their loss must not count."""
    logits, target, opts = make_probs(rng, shape, dtype, opts)
    assert_matches_reference(logits, target, dtype, **opts)  # in place: the same bits


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_probability_targets_non_finite_rows_inside_a_tile(rng, dtype):
    n, c = 2 * B + 5, 7
    logits, target, _ = make_probs(rng, (n, c), dtype, {})
    logits[3, 2] = np.nan  # a NaN row in the first tile
    logits[B + 1, :] = -np.inf  # no finite max
    logits[B + 2, 0] = -np.inf  # a masked class with zero target: costs nothing
    target[B + 2, 0] = 0.0
    target[B + 4] = 0.0  # a row with no target mass: loss 0
    for k, args in enumerate([(np.empty_like(logits),), ()]):
        rows = np.empty(n, dtype)
        weight = logits[0, :0]
        if args:
            kernels.xent_probs_fused(logits, target, weight, 0.0, 1.0, args[0], rows)
            serial = np.empty_like(logits)
            serial_rows = np.empty(n, dtype)
            kernels.xent_probs_fused_serial(logits, target, weight, 0.0, 1.0, serial, serial_rows)
            np.testing.assert_array_equal(serial, args[0])  # the twins agree bit for bit
            np.testing.assert_array_equal(serial_rows, rows)
        else:
            kernels.xent_probs_loss(logits, target, weight, 0.0, rows)
        good = np.ones(n, bool)
        good[[3, B + 1]] = False
        want_rows, want_grad = ref.cross_entropy_with_grad(logits[good], target[good], reduction="none")
        rtol, atol = tolerances(dtype)
        np.testing.assert_allclose(rows[good], want_rows, rtol=rtol, atol=atol)
        assert np.isnan(rows[3]) and np.isnan(rows[B + 1])
        assert rows[B + 4] == 0
        if args:
            np.testing.assert_allclose(args[0][good], want_grad, rtol=rtol, atol=atol)
            assert np.isnan(args[0][3]).all()


@large
@pytest.mark.parametrize("dtype,n_classes", [(np.float32, 16), (np.float32, 100), (np.float64, 8), (np.float64, 40)])
def test_streamed_outputs_are_the_plain_stores_bits(rng, dtype, n_classes):
    """Outputs of STREAM_MIN_BYTES or more from tiles of STREAM_MIN_TILE_BYTES
    or more are written by non-temporal stores (`_config.STREAM_MIN_BYTES`).
    Calls on such outputs, at several alignments of the output buffer, give
    the bits of calls on slices of rows too small to stream, and write
    nothing outside their output."""
    itemsize = np.dtype(dtype).itemsize
    assert B * n_classes * itemsize >= _config.STREAM_MIN_TILE_BYTES
    n = _config.STREAM_MIN_BYTES // (n_classes * itemsize) + 3 * B + 5  # a partial last tile
    chunk = _config.STREAM_MIN_BYTES // 4 // (n_classes * itemsize)  # rows of the calls that do not stream
    x = (rng.standard_normal((n, n_classes)) * 3).astype(dtype)
    labels = rng.integers(0, n_classes, n)
    labels[rng.random(n) < 0.1] = -100
    probs = rng.random((n, n_classes)).astype(dtype)
    probs /= probs.sum(axis=1, keepdims=True)
    calls = {
        "labels": lambda rows, out: fx.cross_entropy_with_grad(x[rows], labels[rows], reduction="sum", grad_out=out),
        "probabilities": lambda rows, out: fx.cross_entropy_with_grad(x[rows], probs[rows], reduction="sum",
                                                                      grad_out=out),
        "log_softmax": lambda rows, out: fx.log_softmax(x[rows], out=out),
        "softmax": lambda rows, out: fx.softmax(x[rows], out=out),
    }
    for name, call in calls.items():
        want = np.empty_like(x)
        for r0 in range(0, n, chunk):
            call(slice(r0, r0 + chunk), want[r0 : r0 + chunk])
        for offset in (0, 1, 3, 8):  # element offsets from a 64-byte boundary, or near one
            buffer = np.full(x.size + 32, 7.0, dtype)
            at = offset + (-buffer.ctypes.data // itemsize) % (64 // itemsize)
            out = buffer[at : at + x.size].reshape(x.shape)
            call(slice(None), out)
            np.testing.assert_array_equal(out, want, err_msg=f"{name}, offset {offset}")
            assert (buffer[:at] == 7.0).all() and (buffer[at + x.size :] == 7.0).all(), name


_WIDTH_CASES = """
import sys
import numpy as np
import fastxent as fx

def outputs():
    rng = np.random.default_rng(7)
    found = {}
    for dtype in (np.float32, np.float64):
        for c in (2, 5, 10, 32):
            n = 3 * 64 + 9  # a partial last tile
            x = (rng.standard_normal((n, c)) * 4).astype(dtype)
            x[5, 1] = np.nan  # a NaN row inside a tile
            x[70, :] = -np.inf
            labels = rng.integers(0, c, n)
            labels[::7] = -100
            weight = rng.random(c).astype(dtype)
            probs = rng.random((n, c)).astype(dtype)
            probs /= probs.sum(axis=1, keepdims=True)
            key = f"{np.dtype(dtype).name}-{c}-"
            for name, kw in (("plain", {}), ("options", dict(weight=weight, label_smoothing=0.1))):
                loss, grad = fx.cross_entropy_with_grad(x, labels, reduction="none", **kw)
                found[key + name + "-loss"], found[key + name + "-grad"] = loss, grad
            found[key + "loss-only"] = np.asarray(fx.cross_entropy(x, labels, reduction="sum"))
            loss, grad = fx.cross_entropy_with_grad(x, probs, reduction="none")
            found[key + "probs-loss"], found[key + "probs-grad"] = loss, grad
            found[key + "log_softmax"] = fx.log_softmax(x)
            found[key + "softmax"] = fx.softmax(x)
    return found

if __name__ == "__main__":
    np.savez(sys.argv[1], **outputs())
"""


@large
def test_the_vector_width_changes_no_bits(tmp_path):
    """The tile kernels ask LLVM for `_config.VECTOR_BITS`-bit vectors, and
    every tile loop is lane-wise (one row a lane, sums over classes in
    order), so kernels compiled with LLVM's own choice of width give the
    same bits: loss, gradient, options, probability targets, the softmax
    primitives, NaN and -inf rows and a partial tile included."""
    import os
    import subprocess
    import sys

    script = tmp_path / "width_cases.py"
    script.write_text(_WIDTH_CASES)
    here = {}
    exec(compile(_WIDTH_CASES, str(script), "exec"), here)
    want = here["outputs"]()
    other = "0" if _config.VECTOR_BITS else "512"
    env = dict(os.environ, FASTXENT_VECTOR_BITS=other)
    result = subprocess.run([sys.executable, str(script), str(tmp_path / "other.npz")], capture_output=True,
                            text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stderr
    got = np.load(tmp_path / "other.npz")
    assert sorted(got.files) == sorted(want)
    for key, value in want.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
