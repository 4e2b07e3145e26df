"""z_loss, softcap and lse_out against the float64 reference, finite
differences and PyTorch autograd of the same formulas."""

import numpy as np
import pytest
from conftest import DTYPES, tolerances

import fastxent as fx
import reference as ref
from fastxent import kernels

OPTIONS = [
    dict(z_loss=0.05),
    dict(softcap=4.0),
    dict(z_loss=0.02, softcap=3.0, label_smoothing=0.1),
    dict(z_loss=0.1, softcap=2.5, weight="random", ignore_index=2, reduction="sum"),
    dict(z_loss=0.01, weight="random", label_smoothing=0.3, reduction="none"),
    dict(softcap=6.0, reduction="none", ignore_index=-100),
]


def case(rng, shape, dtype, options):
    options = dict(options)
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    y = rng.integers(0, shape[-1], shape[:-1])
    ignore_index = options.setdefault("ignore_index", -100)
    y.reshape(-1)[::5] = ignore_index
    if options.get("weight") == "random":
        options["weight"] = rng.uniform(0.2, 2.0, shape[-1]).astype(dtype)
    return x, y, options


def assert_close(dtype, got, want):
    rtol, atol = tolerances(dtype)
    np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(40, 3), (70, 37), (9, 300), (3, 5, 17)], ids=str)
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()))
def test_against_reference(rng, dtype, shape, options):
    x, y, options = case(rng, shape, dtype, options)
    want_loss, want_grad = ref.cross_entropy_with_grad(x, y, **options)
    want_lse = ref.logsumexp(ref.softcapped(x, options.get("softcap"))[0])
    lse = np.full(shape[:-1], np.nan, dtype)
    x_before = x.copy()

    loss, grad = fx.cross_entropy_with_grad(x, y, lse_out=lse, **options)
    assert_close(dtype, loss, want_loss)
    assert_close(dtype, grad, want_grad)
    assert_close(dtype, lse, want_lse)  # ignored rows included
    assert np.array_equal(x, x_before)

    assert_close(dtype, fx.cross_entropy(x, y, **options), want_loss)
    assert_close(dtype, fx.cross_entropy_grad(x, y, **options), want_grad)

    inplace = x.copy()
    loss_inplace, _ = fx.cross_entropy_with_grad(inplace, y, grad_out=inplace, **options)
    assert np.array_equal(inplace, grad) and np.array_equal(loss_inplace, loss)


@pytest.mark.parametrize("dtype", DTYPES)
def test_loss_object(rng, dtype):
    x, y, options = case(rng, (50, 12), dtype, dict(z_loss=0.03, softcap=5.0, label_smoothing=0.1))
    loss_fn = fx.CrossEntropyLoss(**options)
    lse = np.empty(50, dtype)
    loss = loss_fn(x, y, lse_out=lse)
    want_loss, want_grad = ref.cross_entropy_with_grad(x, y, **options)
    assert_close(dtype, loss, want_loss)
    assert_close(dtype, loss_fn.backward(), want_grad)
    assert_close(dtype, lse, ref.logsumexp(ref.softcapped(x, 5.0)[0]))
    assert "z_loss=0.03" in repr(loss_fn)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n_classes", [5, 200])
def test_lse_alone_changes_nothing_else(rng, dtype, n_classes):
    """lse_out runs the option kernels: the loss and gradient stay those of the default call
    (the same bits on the row path, C > TILE_MAX_CLASSES[itemsize]; to rounding on the tile path)."""
    x, y, options = case(rng, (300, n_classes), dtype, dict(label_smoothing=0.2))
    lse = np.empty(300, dtype)
    loss, grad = fx.cross_entropy_with_grad(x, y, lse_out=lse, **options)
    default_loss, default_grad = fx.cross_entropy_with_grad(x, y, **options)
    if n_classes > fx._config.TILE_MAX_CLASSES[np.dtype(dtype).itemsize]:
        assert loss == default_loss and np.array_equal(grad, default_grad)
    else:
        assert_close(dtype, grad, default_grad.astype(np.float64))
        assert_close(dtype, loss, float(default_loss))
    assert_close(dtype, lse, ref.logsumexp(x))


def test_zero_z_loss_and_no_cap_run_the_default_kernels(rng, monkeypatch):
    """Defaults stay bit for bit: z_loss=0 and softcap=None never reach the option kernels."""
    calls = []

    def recorder(name):
        def kernel(*args):
            calls.append(name)
            return 0.0
        return kernel

    monkeypatch.setattr(fx.api, "_FUSED_EXT", {False: (recorder("fused"),) * 2, True: (recorder("inplace"),) * 2})
    monkeypatch.setattr(fx.api, "_LOSS_ONLY_EXT", (recorder("loss"),) * 2)
    x, y, _ = case(rng, (64, 10), np.float32, {})
    fx.cross_entropy_with_grad(x, y, z_loss=0.0, softcap=None)
    fx.cross_entropy(x, y, z_loss=0)
    fx.cross_entropy_grad(x, y, out=x)
    fx.CrossEntropyLoss(z_loss=0.0)(x, y)
    assert calls == []
    fx.cross_entropy(x, y, z_loss=1e-4)
    fx.cross_entropy_with_grad(x, y, softcap=1.0)
    fx.cross_entropy_grad(x, y, out=x, lse_out=np.empty(64, np.float32))
    assert calls == ["loss", "fused", "inplace"]


@pytest.mark.parametrize("options", [dict(z_loss=0.07), dict(softcap=2.0), dict(z_loss=0.05, softcap=3.0,
                                                                               label_smoothing=0.2, weight="random")],
                         ids=["z", "cap", "both"])
def test_gradient_against_finite_differences(rng, options):
    x, y, options = case(rng, (6, 7), np.float64, options)
    _, grad = fx.cross_entropy_with_grad(x, y, **options)
    h = 1e-6
    numeric = np.empty_like(x)
    for idx in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (fx.cross_entropy(up, y, **options) - fx.cross_entropy(down, y, **options)) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


def test_against_torch_autograd_of_the_formula(rng):
    torch = pytest.importorskip("torch")
    x, y, options = case(rng, (40, 33), np.float64, dict(z_loss=0.02, softcap=5.0, label_smoothing=0.1,
                                                          weight="random"))
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.tensor(y)
    u = options["softcap"] * torch.tanh(xt / options["softcap"])
    ce = torch.nn.functional.cross_entropy(u, yt, weight=torch.tensor(options["weight"]), reduction="sum",
                                           label_smoothing=0.1)
    kept = yt != -100
    z_term = options["z_loss"] * (torch.logsumexp(u, dim=1)[kept] ** 2).sum()
    denominator = torch.tensor(options["weight"])[yt[kept]].sum()
    loss_t = (ce + z_term) / denominator  # the z-loss shares the mean's denominator
    loss_t.backward()
    loss, grad = fx.cross_entropy_with_grad(x, y, **options)
    np.testing.assert_allclose(loss, loss_t.item(), rtol=1e-12)
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_logits(dtype):
    x = np.array([[0.0, -np.inf, 2.0], [np.nan, 1.0, 0.0], [np.inf, 1.0, 0.0], [-np.inf, -np.inf, -np.inf]], dtype)
    y = np.array([1, 0, 0, 2])
    # Capped, -inf is -softcap and +inf is +softcap: every row is finite but the NaN one.
    loss, grad = fx.cross_entropy_with_grad(x, y, softcap=2.0, z_loss=0.1, reduction="none")
    want_loss, want_grad = ref.cross_entropy_with_grad(x, y, softcap=2.0, z_loss=0.1, reduction="none")
    finite = [0, 2, 3]
    assert_close(dtype, loss[finite], want_loss[finite])
    assert_close(dtype, grad[finite], want_grad[finite])
    assert np.isnan(loss[1]) and np.isnan(grad[1]).all()
    # Uncapped, the z-loss keeps the default semantics: a NaN or all -inf row is
    # NaN, and a target at -inf costs inf.
    loss, _ = fx.cross_entropy_with_grad(x, y, z_loss=0.1, reduction="none")
    default = fx.cross_entropy(x, y, reduction="none")
    assert np.isnan(loss[1]) and np.isnan(loss[3]) and loss[0] == np.inf
    assert np.array_equal(np.isnan(loss), np.isnan(default)) and np.array_equal(np.isinf(loss), np.isinf(default))


@pytest.mark.parametrize("n_rows", [0, 1, 64, 700])
def test_parallel_and_serial_twins_agree_bitwise(rng, n_rows):
    x, y, _ = case(rng, (n_rows, 40), np.float32, {})
    args = (y, kernels.NO_WEIGHT, -100, 0.1, 0.05, 3.0, 1.0 / max(n_rows, 1))
    results = []
    for kernel in (kernels.xent_labels_fused_ext, kernels.xent_labels_fused_ext_serial):
        grad, rows, lse = np.empty_like(x), np.empty(n_rows, np.float32), np.empty(n_rows, np.float32)
        total = kernel(x, *args, grad, rows, lse)
        results.append((total, grad, rows, lse))
    (t0, *a0), (t1, *a1) = results
    assert t0 == t1 and all(np.array_equal(p, q) for p, q in zip(a0, a1))


def test_bad_input_raises_and_writes_nothing(rng):
    x, y, _ = case(rng, (8, 6), np.float32, {})
    grad = np.full_like(x, 7.0)
    lse = np.full(8, 7.0, np.float32)
    for options, error, match in [
        (dict(z_loss=-0.1), ValueError, "z_loss must be finite and >= 0"),
        (dict(z_loss=np.inf), ValueError, "z_loss"),
        (dict(z_loss="big"), TypeError, "z_loss must be a number"),
        (dict(softcap=0.0), ValueError, "softcap must be finite and > 0"),
        (dict(softcap=-1.0), ValueError, "softcap"),
        (dict(softcap=np.nan), ValueError, "softcap"),
        (dict(softcap=[1.0]), TypeError, "softcap must be a number or None"),
        (dict(lse_out=np.empty(7, np.float32)), ValueError, "lse_out must have shape"),
        (dict(lse_out=np.empty(8, np.float64)), TypeError, "lse_out must have dtype"),
        (dict(lse_out=x.reshape(-1)[:8]), ValueError, "lse_out overlaps logits"),
    ]:
        with pytest.raises(error, match=match):
            fx.cross_entropy_with_grad(x, y, grad_out=grad, **options)
        assert np.all(grad == 7.0) and np.all(lse == 7.0)
    with pytest.raises(ValueError, match="lse_out overlaps grad_out"):
        fx.cross_entropy_with_grad(x, y, grad_out=grad, lse_out=grad.reshape(-1)[:8])
    probs = np.full((8, 6), 1 / 6, np.float32)
    for options in (dict(z_loss=0.1), dict(softcap=2.0), dict(lse_out=lse)):
        with pytest.raises(TypeError, match="class-index targets"):
            fx.cross_entropy_with_grad(x, probs, grad_out=grad, **options)
    assert np.all(grad == 7.0) and np.all(lse == 7.0)
    with pytest.raises(ValueError, match="softcap"):
        fx.CrossEntropyLoss(softcap=0)
    with pytest.raises(ValueError, match="softcap must be finite"):
        kernels.xent_labels_loss_ext(x, y, kernels.NO_WEIGHT, -100, 0.0, 0.0, -1.0, np.empty(0, np.float32), lse)
