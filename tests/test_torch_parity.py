"""Agreement with torch.nn.functional.cross_entropy (skipped without torch)."""

import numpy as np
import pytest

import fastxent as fx

torch = pytest.importorskip("torch")
F = torch.nn.functional


def torch_loss_and_grad(logits, target, **opts):
    x = torch.tensor(logits, requires_grad=True)
    t = torch.tensor(target)
    if "weight" in opts and opts["weight"] is not None:
        opts = dict(opts, weight=torch.tensor(opts["weight"], dtype=x.dtype))
    # torch wants the class axis at dim 1
    xm = x if x.ndim <= 2 else x.movedim(-1, 1)
    tm = t if (t.ndim == x.ndim - 1 or t.ndim <= 2) else t.movedim(-1, 1)
    loss = F.cross_entropy(xm, tm, **opts)
    loss.sum().backward()
    out = loss.detach().numpy()
    if out.ndim and x.ndim > 2:
        out = out.reshape(logits.shape[:-1])
    return out, x.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("shape", [(17, 5), (3, 4, 7)])
@pytest.mark.parametrize(
    "opts",
    [
        {},
        dict(reduction="sum"),
        dict(reduction="none", label_smoothing=0.2),
        dict(weight=True, label_smoothing=0.1),
        dict(weight=True, ignore_index=2, reduction="mean"),
        dict(ignore_index=1, label_smoothing=0.3, reduction="none"),
    ],
    ids=str,
)
def test_matches_torch(rng, dtype, kind, shape, opts):
    opts = dict(opts)
    if opts.get("weight"):
        opts["weight"] = (rng.random(shape[-1]) + 0.5).astype(dtype)
    logits = (rng.standard_normal(shape) * 3).astype(dtype)
    if kind == "labels":
        target = rng.integers(0, shape[-1], shape[:-1])
    else:
        opts.pop("ignore_index", None)
        target = rng.dirichlet(np.ones(shape[-1]), shape[:-1]).astype(dtype)
    want_loss, want_grad = torch_loss_and_grad(logits, target, **opts)
    loss, grad = fx.cross_entropy_with_grad(logits, target, **opts)
    rtol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=rtol)


def test_all_ignored_and_empty_like_torch():
    logits = np.ones((3, 4))
    labels = np.full(3, -100)
    want_loss, want_grad = torch_loss_and_grad(logits, labels)
    loss, grad = fx.cross_entropy_with_grad(logits, labels)
    assert np.isnan(loss) and np.isnan(want_loss)
    np.testing.assert_array_equal(grad, want_grad)
    assert fx.cross_entropy(logits, labels, reduction="sum") == torch_loss_and_grad(logits, labels, reduction="sum")[0]


def test_tensor_requiring_grad_gets_a_pointer_to_the_torch_entry_point():
    x = torch.zeros(3, 4, requires_grad=True)
    with pytest.raises(TypeError, match="fastxent.torch.cross_entropy"):
        fx.cross_entropy(x, torch.zeros(3, dtype=torch.long))
    loss = fx.cross_entropy(x.detach(), torch.zeros(3, dtype=torch.long))  # a plain tensor converts
    np.testing.assert_allclose(loss, np.log(4), rtol=1e-6)
