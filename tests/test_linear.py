"""fastxent.linear against the float64 reference on the full logits."""

import warnings

import numpy as np
import pytest

from conftest import DTYPES, tolerances
import reference

from fastxent import LinearCrossEntropyLoss, linear_cross_entropy


def head(rng, dtype, n_rows=37, n_features=9, n_classes=23, batch=None):
    x = rng.normal(size=(batch or (n_rows,)) + (n_features,)).astype(dtype)
    w = (rng.normal(size=(n_classes, n_features)) * 0.7).astype(dtype)
    b = rng.normal(size=n_classes).astype(dtype)
    y = rng.integers(0, n_classes, x.shape[:-1])
    y.reshape(-1)[::4] = -100
    return x, w, b, y


def expected(x, w, b, y, **options):
    """Loss and gradients from the full float64 logits and the reference."""
    x64, w64 = x.astype(np.float64), w.astype(np.float64)
    logits = x64 @ w64.T + (0.0 if b is None else b.astype(np.float64))
    loss, dlogits = reference.cross_entropy_with_grad(logits, y, **options)
    d2 = dlogits.reshape(-1, w.shape[0])
    grads = (d2 @ w64).reshape(x.shape), d2.T @ x64.reshape(-1, w.shape[1])
    return (loss,) + grads + ((d2.sum(axis=0),) if b is not None else ())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("chunk_size", [1, 5, 16, 37, 1000], ids=lambda c: f"chunk{c}")
@pytest.mark.parametrize("options", [{}, {"reduction": "sum", "label_smoothing": 0.2}, {"weight": True},
                                     {"reduction": "none", "ignore_index": 3},
                                     {"z_loss": 0.05, "softcap": 4.0, "weight": True, "label_smoothing": 0.1},
                                     {"z_loss": 0.02, "reduction": "none"}],
                         ids=["mean", "sum-smooth", "weight", "none", "zloss-softcap", "zloss-none"])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_equals_reference_on_full_logits(rng, dtype, chunk_size, options, bias):
    x, w, b, y = head(rng, dtype)
    options = dict(options)
    if options.pop("weight", False):
        options["weight"] = rng.uniform(0.1, 2, w.shape[0]).astype(dtype)
    if "ignore_index" in options:
        y = np.where(y == -100, options["ignore_index"], y)
    b = b if bias else None
    got = linear_cross_entropy(x, w, y, linear_bias=b, chunk_size=chunk_size, **options)
    want = expected(x, w, b, y, **options)

    assert len(got) == len(want)
    rtol, atol = tolerances(dtype)
    for g, e in zip(got, want):
        assert np.shape(g) == np.shape(e) and np.asarray(g).dtype == dtype
        scale = max(1.0, np.abs(e).max())
        np.testing.assert_allclose(g, e, rtol=rtol * 10, atol=atol * 10 * scale)


def test_batch_axes_buffers_and_reuse(rng):
    x, w, b, y = head(rng, np.float32, batch=(3, 11))
    gx, gw, gb = np.empty_like(x), np.empty_like(w), np.empty_like(b)
    out = np.empty((3, 11), np.float32)
    for _ in range(2):  # buffers are overwritten, not accumulated into
        loss, rgx, rgw, rgb = linear_cross_entropy(x, w, y, linear_bias=b, reduction="none", chunk_size=7, out=out,
                                                   grad_input_out=gx, grad_weight_out=gw, grad_bias_out=gb)
    assert loss is out and rgx is gx and rgw is gw and rgb is gb
    want = expected(x, w, b, y, reduction="none")
    for g, e in zip((out, gx, gw, gb), want):
        np.testing.assert_allclose(g, e, rtol=2e-4, atol=2e-5)


@pytest.mark.parametrize("options", [{}, {"z_loss": 0.01, "softcap": 5.0, "label_smoothing": 0.1}], ids=["plain", "llm"])
def test_float64_equals_the_unfused_path_to_1e12(rng, options):
    """The target of the design: matmul, then cross_entropy_with_grad on the full logits."""
    from fastxent import cross_entropy_with_grad

    x, w, b, y = head(rng, np.float64, n_rows=300, n_features=40, n_classes=700)
    loss, gx, gw, gb = linear_cross_entropy(x, w, y, linear_bias=b, chunk_size=64, **options)
    want_loss, dlogits = cross_entropy_with_grad(x @ w.T + b, y, **options)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    for got, want in ((gx, dlogits @ w), (gw, dlogits.T @ x), (gb, dlogits.sum(axis=0))):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * np.abs(want).max())


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_lse_out(rng, softcap):
    x, w, b, y = head(rng, np.float64, batch=(4, 9))
    lse = np.empty((4, 9))
    linear_cross_entropy(x, w, y, linear_bias=b, softcap=softcap, chunk_size=5, lse_out=lse)
    logits = x @ w.T + b
    np.testing.assert_allclose(lse, reference.logsumexp(reference.softcapped(logits, softcap)[0]), rtol=1e-12)
    with pytest.raises(ValueError, match="lse_out overlaps grad_input_out"):
        gx = np.empty_like(x)
        linear_cross_entropy(x, w, y, grad_input_out=gx, lse_out=gx.reshape(-1)[:36].reshape(4, 9))
    with pytest.raises(ValueError, match="z_loss"):
        LinearCrossEntropyLoss(z_loss=-1.0)


def test_loss_object(rng):
    x, w, b, y = head(rng, np.float64)
    loss_fn = LinearCrossEntropyLoss(label_smoothing=0.1, chunk_size=8)
    with pytest.raises(RuntimeError, match="before forward"):
        loss_fn.backward()
    loss = loss_fn(x, w, y, linear_bias=b)
    gx, gw, gb = loss_fn.backward()
    want = expected(x, w, b, y, label_smoothing=0.1)
    for g, e in zip((loss, gx, gw, gb), want):
        np.testing.assert_allclose(g, e, rtol=1e-11, atol=1e-13)
    loss_fn(x, w, y, linear_bias=b)
    assert loss_fn.backward()[0] is gx  # the same buffers, reused


def test_no_rows(rng):
    x, w, b, y = head(rng, np.float64, n_rows=0)
    loss, gx, gw, gb = linear_cross_entropy(x, w, y, linear_bias=b)
    assert np.isnan(loss) and gx.shape == (0, 9) and not gw.any() and not gb.any()


def test_errors_leave_buffers_untouched(rng):
    x, w, b, y = head(rng, np.float32)
    gw = np.full_like(w, 5.0)
    bad = y.copy()
    bad[3] = 23
    with pytest.raises(ValueError, match=r"label 23 at index \(3,\)"):
        linear_cross_entropy(x, w, bad, grad_weight_out=gw)
    assert np.all(gw == 5.0)
    with pytest.raises(TypeError, match="class-index targets only"):
        linear_cross_entropy(x, w, np.full((37, 23), 1 / 23, np.float32))
    with pytest.raises(TypeError, match="must agree"):
        linear_cross_entropy(x, w.astype(np.float64), y)
    with pytest.raises(ValueError, match="features"):
        linear_cross_entropy(x[:, :5], w, y)
    with pytest.raises(ValueError, match="linear_bias must have shape"):
        linear_cross_entropy(x, w, y, linear_bias=b[:5])
    with pytest.raises(ValueError, match="chunk_size"):
        linear_cross_entropy(x, w, y, chunk_size=0)
    with pytest.raises(ValueError, match="grad_weight_out must have shape"):
        linear_cross_entropy(x, w, y, grad_weight_out=gw[:5])
    with pytest.raises(ValueError, match="overlaps"):
        linear_cross_entropy(x, w, y, grad_input_out=x)


def test_matches_torch_functional_linear_cross_entropy(rng):
    """PyTorch's own chunked F.linear_cross_entropy (its options class, where present)."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    if not hasattr(F, "linear_cross_entropy"):
        pytest.skip("this PyTorch has no F.linear_cross_entropy")
    x, w, b, y = head(rng, np.float64)
    weight = rng.uniform(0.5, 2.0, w.shape[0])
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    options = getattr(F, "LinearCrossEntropyOptions", None) or getattr(torch.nn, "LinearCrossEntropyOptions", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PyTorch warns when it leaves its chunked path (e.g. for smoothing)
        loss_t = F.linear_cross_entropy(xt, wt, torch.tensor(y), linear_bias=bt, weight=torch.tensor(weight),
                                        ignore_index=-100, options=options() if options else None)
    loss_t.backward()
    loss, gx, gw, gb = linear_cross_entropy(x, w, y, linear_bias=b, weight=weight, chunk_size=6)
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-12)
    for g, t in zip((gx, gw, gb), (xt, wt, bt)):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_matches_torch_linear_cross_entropy(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    x, w, b, y = head(rng, np.float64)
    xt, wt, bt = (torch.tensor(a, requires_grad=True) for a in (x, w, b))
    loss_t = F.cross_entropy(F.linear(xt, wt, bt), torch.tensor(y), label_smoothing=0.1)
    loss_t.backward()
    loss, gx, gw, gb = linear_cross_entropy(x, w, y, linear_bias=b, label_smoothing=0.1, chunk_size=10)
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-12)
    for g, t in zip((gx, gw, gb), (xt, wt, bt)):
        np.testing.assert_allclose(g, t.grad.numpy(), rtol=1e-10, atol=1e-14)
