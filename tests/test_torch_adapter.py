"""fastxent.torch against torch.nn.functional.cross_entropy (skipped without torch)."""

import zlib

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
import fastxent.torch as ft  # noqa: E402
from fastxent import api  # noqa: E402

OPTIONS = [
    {},
    dict(reduction="sum"),
    dict(reduction="none"),
    dict(label_smoothing=0.2),
    dict(weight=True),
    dict(weight=True, ignore_index=2, label_smoothing=0.1),
    dict(ignore_index=1, reduction="none", label_smoothing=0.3),
    dict(weight=True, ignore_index=0, reduction="sum"),
]
SHAPES = [(5,), (17, 5), (3, 5, 4), (2, 5, 3, 2)]  # class dim is 1 for 2+ dims, as in PyTorch


def make_case(gen, shape, kind, dtype, opts):
    n_classes = shape[0] if len(shape) == 1 else shape[1]
    opts = dict(opts)
    if opts.get("weight"):
        opts["weight"] = torch.rand(n_classes, generator=gen, dtype=dtype) + 0.5
    x = (torch.randn(shape, generator=gen, dtype=dtype) * 3).requires_grad_()
    if kind == "labels":
        batch = () if len(shape) == 1 else (shape[0],) + shape[2:]
        target = torch.randint(0, n_classes, batch, generator=gen)
        if "ignore_index" in opts and target.numel() > 1:
            target.view(-1)[::3] = opts["ignore_index"]
    else:
        opts.pop("ignore_index", None)
        class_dim = 0 if len(shape) == 1 else 1
        target = torch.softmax(torch.randn(shape, generator=gen, dtype=dtype), dim=class_dim)
    return x, target, opts


def loss_and_grad(fn, x, target, opts, upstream):
    x = x.detach().clone().requires_grad_()
    loss = fn(x, target, **opts)
    loss.backward(upstream if loss.dim() else upstream.reshape(()))
    return loss.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("opts", OPTIONS, ids=str)
def test_loss_and_grad_match_torch(dtype, kind, shape, opts):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{dtype}{kind}{shape}{opts}".encode()))
    x, target, opts = make_case(gen, shape, kind, dtype, opts)
    with torch.no_grad():
        reference = F.cross_entropy(x, target, **opts)
    upstream = torch.randn(reference.shape, generator=gen, dtype=dtype)  # not 1: backward must scale
    want_loss, want_grad = loss_and_grad(F.cross_entropy, x, target, opts, upstream)
    loss, grad = loss_and_grad(ft.cross_entropy, x, target, opts, upstream)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-13)
    tol["equal_nan"] = True  # a mean over ignored rows only is NaN in both
    assert loss.dtype == dtype and loss.shape == want_loss.shape
    torch.testing.assert_close(loss, want_loss, **tol)
    assert grad.dtype == dtype and grad.shape == x.shape
    torch.testing.assert_close(grad, want_grad, **tol)
    with torch.no_grad():  # the loss-only path
        torch.testing.assert_close(ft.cross_entropy(x, target, **opts), want_loss, **tol)


def test_backward_of_a_unit_upstream_gradient_is_the_kernel_gradient():
    x = torch.randn(8, 6, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 6, (8,))
    ft.cross_entropy(x, y).backward()
    want = (torch.softmax(x.detach(), 1) - F.one_hot(y, 6)) / 8
    torch.testing.assert_close(x.grad, want, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("kind", ["labels", "probs"])
@pytest.mark.parametrize("opts", [dict(reduction="none", label_smoothing=0.1), dict(weight=True), dict()], ids=str)
def test_gradcheck(kind, opts):
    gen = torch.Generator().manual_seed(3)
    x, target, opts = make_case(gen, (4, 5, 2), kind, torch.float64, opts)
    assert torch.autograd.gradcheck(lambda z: ft.cross_entropy(z, target, **opts), (x,))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_half_inputs_compute_in_float32(dtype):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(33, 7, generator=gen).to(dtype).requires_grad_()
    y = torch.randint(0, 7, (33,), generator=gen)
    loss = ft.cross_entropy(x, y, label_smoothing=0.1)
    loss.backward()
    x32 = x.detach().float().requires_grad_()
    want = F.cross_entropy(x32, y, label_smoothing=0.1)
    want.backward()
    assert loss.dtype == dtype and x.grad.dtype == dtype
    torch.testing.assert_close(loss, want.to(dtype))
    torch.testing.assert_close(x.grad, x32.grad.to(dtype))


def test_training_loop_matches_torch_loss():
    def train(loss_fn):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(12, 32), torch.nn.ReLU(), torch.nn.Linear(32, 5))
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        gen = torch.Generator().manual_seed(1)
        inputs = torch.randn(256, 12, generator=gen)
        labels = (inputs[:, :5].argmax(1) + (inputs[:, 5] > 1).long()) % 5
        losses = []
        for _ in range(40):
            opt.zero_grad()
            loss = loss_fn(model(inputs), labels)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        return np.array(losses)

    ours = train(ft.CrossEntropyLoss(label_smoothing=0.05))
    theirs = train(torch.nn.CrossEntropyLoss(label_smoothing=0.05))
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)
    assert ours[-1] < 0.5 * ours[0]  # it learns


def test_inplace_backward_reuses_the_logits_storage():
    gen = torch.Generator().manual_seed(2)
    lin = torch.nn.Linear(6, 9).double()
    h = torch.randn(20, 6, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 9, (20,), generator=gen)
    F.cross_entropy(lin(h), y).backward()
    want = lin.weight.grad.clone()
    lin.zero_grad()
    logits = lin(h)
    storage = logits.data_ptr()
    seen = []
    logits.register_hook(lambda g: seen.append(g.data_ptr()))
    ft.cross_entropy(logits, y, inplace_backward=True).backward()
    assert seen == [storage]
    torch.testing.assert_close(lin.weight.grad, want, rtol=1e-12, atol=1e-14)


def test_inplace_backward_makes_autograd_refuse_other_saved_uses_of_the_logits():
    lin = torch.nn.Linear(4, 3)
    logits = lin(torch.randn(5, 4))
    other = (logits * logits).sum()  # saves logits for its backward
    loss = ft.cross_entropy(logits, torch.zeros(5, dtype=torch.long), inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (loss + other).backward()


def test_inplace_backward_refuses_a_leaf():
    x = torch.randn(3, 4, requires_grad=True)
    before = x.detach().clone()
    with pytest.raises(RuntimeError, match="leaf"):
        ft.cross_entropy(x, torch.zeros(3, dtype=torch.long), inplace_backward=True)
    assert torch.equal(x.detach(), before)


def test_contiguous_input_is_read_without_a_copy_and_no_grad_path_has_no_gradient(monkeypatch):
    calls = []
    real_fused, real_loss = api.cross_entropy_with_grad, api.cross_entropy

    def fused_spy(logits, target, **kw):
        calls.append(("fused", logits))
        return real_fused(logits, target, **kw)

    def loss_spy(logits, target, **kw):
        calls.append(("loss", logits))
        return real_loss(logits, target, **kw)

    monkeypatch.setattr(api, "cross_entropy_with_grad", fused_spy)
    monkeypatch.setattr(api, "cross_entropy", loss_spy)
    x = torch.randn(16, 10, requires_grad=True)
    y = torch.randint(0, 10, (16,))
    ft.cross_entropy(x, y)
    ft.cross_entropy(x.detach(), y)
    with torch.no_grad():
        ft.cross_entropy(x, y)
    assert [kind for kind, _ in calls] == ["fused", "loss", "loss"]
    assert all(np.shares_memory(arr, x.detach().numpy()) for _, arr in calls)


def test_backward_twice_with_retain_graph():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 4, (6,))
    loss = ft.cross_entropy(x, y)
    loss.backward(torch.tensor(0.5, dtype=torch.float64), retain_graph=True)  # scaled: a new tensor
    first = x.grad.clone()
    loss.backward(torch.tensor(0.5, dtype=torch.float64), retain_graph=True)
    torch.testing.assert_close(x.grad, 2 * first)
    loss.backward(retain_graph=True)  # upstream 1: the buffer itself is handed over
    torch.testing.assert_close(x.grad, 4 * first)
    loss.backward()  # recomputed from the kept input
    torch.testing.assert_close(x.grad, 6 * first)
    logits = torch.nn.Linear(4, 4).double()(x.detach())
    loss = ft.cross_entropy(logits, torch.randint(0, 4, (6,)), inplace_backward=True)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="inplace_backward=True"):
        loss.backward()


def test_unit_backward_hands_over_the_buffer_without_a_copy():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    ft.cross_entropy(x, torch.randint(0, 4, (6,))).backward()
    seen = []
    x2 = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    loss = ft.cross_entropy(x2, torch.randint(0, 4, (6,)))
    x2.register_hook(lambda g: seen.append(g.data_ptr()))
    loss.backward()
    assert seen == [x2.grad.data_ptr()]  # the leaf adopted the kernel's buffer


def test_double_backward_names_the_alternative():
    x = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    loss = ft.cross_entropy(x, torch.randint(0, 4, (6,)))
    with pytest.raises(RuntimeError, match="double backward.*torch.nn.functional.cross_entropy"):
        torch.autograd.grad(loss, x, create_graph=True)


def test_bad_input():
    x = torch.randn(4, 3, requires_grad=True)
    y = torch.tensor([0, 1, 2, 1])
    before = x.detach().clone()
    with pytest.raises(RuntimeError, match="CPU only.*torch.nn.functional.cross_entropy"):
        ft.cross_entropy(torch.empty(4, 3, device="meta"), y)
    with pytest.raises(RuntimeError, match="same device"):
        ft.cross_entropy(x, y.to("meta"))
    with pytest.raises(RuntimeError, match="floating-point input"):
        ft.cross_entropy(torch.ones(4, 3, dtype=torch.long), y)
    with pytest.raises(ValueError, match="batch_size"):
        ft.cross_entropy(x, y[:3])
    with pytest.raises(ValueError, match="probability target"):
        ft.cross_entropy(x, torch.rand(4, 2))
    with pytest.raises(ValueError, match="label 7 at index"):
        ft.cross_entropy(x, torch.tensor([0, 7, 2, 1]))
    with pytest.raises(ValueError, match="reduction"):
        ft.cross_entropy(x, y, reduction="avg")
    with pytest.raises(RuntimeError, match="weight"):
        ft.cross_entropy(x, y, weight=torch.ones(3, requires_grad=True))
    with pytest.raises(RuntimeError, match="probability target"):
        ft.cross_entropy(x, torch.rand(4, 3, requires_grad=True))
    with pytest.raises(ValueError, match="label_smoothing"):
        ft.CrossEntropyLoss(label_smoothing=2.0)
    assert torch.equal(x.detach(), before) and x.grad is None


def test_module_options_and_legacy_arguments():
    w = torch.tensor([1.0, 2.0, 0.5])
    mod = ft.CrossEntropyLoss(weight=w, ignore_index=1, label_smoothing=0.1)
    assert "weight" in dict(mod.named_buffers()) and "label_smoothing=0.1" in repr(mod)
    x = torch.randn(7, 3)
    y = torch.tensor([0, 1, 2, 2, 1, 0, 0])
    torch.testing.assert_close(mod(x, y), F.cross_entropy(x, y, weight=w, ignore_index=1, label_smoothing=0.1))
    assert ft.CrossEntropyLoss(size_average=False).reduction == "sum"
    torch.testing.assert_close(ft.cross_entropy(x, y, reduce=False), F.cross_entropy(x, y, reduction="none"))


def test_torch_compile_runs_with_a_graph_break():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4))
    loss_fn = ft.CrossEntropyLoss()

    def step(inputs, labels):
        return loss_fn(model(inputs), labels)

    compiled = torch.compile(step, backend="aot_eager")
    inputs = torch.randn(32, 8)
    labels = torch.randint(0, 4, (32,))
    explanation = torch._dynamo.explain(step)(inputs, labels)
    # one graph (the model), one break: the loss call, skipped on purpose
    assert explanation.graph_count == 1 and len(explanation.break_reasons) == 1
    assert "torch.compiler.disable" in explanation.break_reasons[0].reason
    loss = compiled(inputs, labels)
    loss.backward()
    got = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    want = F.cross_entropy(model(inputs), labels)
    want.backward()
    torch.testing.assert_close(loss, want)
    for g, p in zip(got, model.parameters()):
        torch.testing.assert_close(g, p.grad)


def test_importing_fastxent_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, fastxent; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_module_reuses_its_gradient_buffer_only_when_released():
    loss_fn = ft.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(32, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, 7, (32,), generator=gen)
    want = F.cross_entropy(x, y)
    (want_grad,) = torch.autograd.grad(want, x)
    pointers = []
    for step in range(3):
        x.grad = None
        loss_fn(x, y).backward()
        torch.testing.assert_close(x.grad, want_grad, rtol=1e-13, atol=1e-15)
        pointers.append(x.grad.data_ptr())
    assert pointers[0] == pointers[1] == pointers[2]  # released each time: one buffer
    kept = x.grad  # the caller keeps the last gradient
    x.grad = None
    loss_fn(x * 2, y).backward()  # a non-leaf input: the gradient flows on
    torch.testing.assert_close(kept, want_grad, rtol=1e-13, atol=1e-15)  # not overwritten
    assert x.grad.data_ptr() != kept.data_ptr()
