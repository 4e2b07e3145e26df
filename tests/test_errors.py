"""Bad input: the exception type, its message, and nothing modified."""

import numpy as np
import pytest

import fastxent as fx

FUNCS = [fx.cross_entropy, fx.cross_entropy_grad, fx.cross_entropy_with_grad]


def good():
    return np.arange(12, dtype=np.float64).reshape(4, 3) / 7, np.array([0, 2, 1, 0])


CASES = [
    # (logits, target, kwargs, exception, message)
    (np.zeros((4, 0)), np.zeros(4, np.int64), {}, ValueError, "at least one class"),
    (np.zeros((4, 3), np.int64), np.zeros(4, np.int64), {}, TypeError, "float32 or float64"),
    (np.zeros((4, 3), np.float16), np.zeros(4, np.int64), {}, TypeError, "float32 or float64"),
    (np.zeros((4, 3), bool), np.zeros(4, np.int64), {}, TypeError, "float32 or float64"),
    (np.float64(1.0), np.int64(0), {}, ValueError, "0-d"),
    ("abc", np.zeros(4, np.int64), {}, TypeError, "float32 or float64"),
    (None, np.zeros(4, np.int64), {}, TypeError, "float32 or float64"),
    (np.zeros((4, 3)), np.zeros(5, np.int64), {}, ValueError, r"logits.shape\[:-1\]"),
    (np.zeros((4, 3)), np.zeros((4, 3), np.int64), {}, ValueError, r"logits.shape\[:-1\]"),
    (np.zeros((4, 3)), np.zeros((4, 4)), {}, ValueError, "probability target must have"),
    (np.zeros((4, 3)), np.zeros(4, bool), {}, TypeError, "target must be integer"),
    (np.zeros((4, 3)), np.array(["a"] * 4), {}, TypeError, "target must be integer"),
    (np.zeros((4, 3)), np.array([0, 1, 3, 0]), {}, ValueError, r"label 3 at index \(2,\) is outside \[0, 3\)"),
    (np.zeros((4, 3)), np.array([0, -1, 0, 0]), {}, ValueError, r"label -1 at index \(1,\)"),
    (np.zeros((2, 2, 3)), np.array([[0, 1], [2**40, 0]]), {}, ValueError, r"at index \(1, 0\)"),
    (np.zeros((4, 3)), np.array([0, 1, -100, 0]), dict(ignore_index=-1), ValueError, "not ignore_index"),
    (np.zeros((4, 3)), np.array([0, 2**64 - 1, 0, 1], np.uint64), {}, ValueError,
     r"label 18446744073709551615 at index \(1,\) is outside \[0, 3\) and is not ignore_index \(-100\)"),
    (np.zeros((4, 3)), np.zeros(4, np.int64), dict(reduction="avg"), ValueError, "reduction must be one of"),
    (np.zeros((4, 3)), np.zeros(4, np.int64), dict(reduction=None), ValueError, "reduction must be one of"),
    (np.zeros((4, 3)), np.zeros(4, np.int64), dict(label_smoothing=1.5), ValueError, r"\[0, 1\]"),
    (np.zeros((4, 3)), np.zeros(4, np.int64), dict(label_smoothing=-0.1), ValueError, r"\[0, 1\]"),
    (np.zeros((4, 3)), np.zeros(4, np.int64), dict(label_smoothing=float("nan")), ValueError, r"\[0, 1\]"),
    (np.zeros((4, 3)), np.zeros(4, np.int64), dict(label_smoothing="x"), TypeError, "label_smoothing must be"),
    (np.zeros((4, 3)), np.zeros(4, np.int64), dict(ignore_index=1.5), TypeError, "ignore_index must be an integer"),
    (np.zeros((4, 3)), np.zeros(4, np.int64), dict(weight=np.ones(4)), ValueError, r"weight must have shape \(3,\)"),
    (np.zeros((4, 3)), np.zeros(4, np.int64), dict(weight=np.ones((1, 3))), ValueError, "weight must have shape"),
    (np.zeros((4, 3)), np.zeros(4, np.int64), dict(weight=np.array(["a"] * 3)), TypeError, "weight must be"),
]


@pytest.mark.parametrize("func", FUNCS)
@pytest.mark.parametrize("logits,target,kwargs,exc,msg", CASES)
def test_bad_arguments(func, logits, target, kwargs, exc, msg):
    with pytest.raises(exc, match=msg):
        func(logits, target, **kwargs)


def test_class_rejects_bad_options_at_construction():
    with pytest.raises(ValueError, match="reduction"):
        fx.CrossEntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        fx.CrossEntropyLoss(label_smoothing=2)


def test_backward_before_forward():
    with pytest.raises(RuntimeError, match="before forward"):
        fx.CrossEntropyLoss().backward()


def test_failed_forward_leaves_no_stale_gradient():
    loss_fn = fx.CrossEntropyLoss()
    logits, labels = good()
    loss_fn(logits, labels)
    with pytest.raises(ValueError):
        loss_fn(logits, labels + 5)
    # the previous gradient is still there and still right
    np.testing.assert_allclose(loss_fn.backward(), fx.cross_entropy_grad(logits, labels))


def test_lists_are_accepted_as_array_likes():
    logits, labels = good()
    assert fx.cross_entropy(logits.tolist(), labels.tolist()) == fx.cross_entropy(logits, labels)


def _buffer_cases(logits):
    ro = np.zeros_like(logits)
    ro.flags.writeable = False
    return [
        (np.zeros((4, 4)), ValueError, "shape"),
        (np.zeros((4, 3), np.float32), TypeError, "dtype"),
        (np.zeros((3, 4)).T, ValueError, "C-contiguous"),
        (ro, ValueError, "read-only"),
        ([[0.0] * 3] * 4, TypeError, "numpy.ndarray"),
    ]


@pytest.mark.parametrize("case", range(5))
def test_bad_gradient_buffers_leave_everything_untouched(case):
    logits, labels = good()
    before = logits.copy()
    buf, exc, msg = _buffer_cases(logits)[case]
    snapshot = np.array(buf, copy=True)
    with pytest.raises(exc, match=msg):
        fx.cross_entropy_with_grad(logits, labels, grad_out=buf)
    with pytest.raises(exc, match=msg):
        fx.cross_entropy_grad(logits, labels, out=buf)
    np.testing.assert_array_equal(logits, before)
    np.testing.assert_array_equal(np.asarray(buf), snapshot)


def test_bad_loss_buffers():
    logits, labels = good()
    with pytest.raises(ValueError, match="only valid with reduction='none'"):
        fx.cross_entropy(logits, labels, out=np.zeros(4))
    with pytest.raises(ValueError, match="shape"):
        fx.cross_entropy(logits, labels, reduction="none", out=np.zeros(5))
    with pytest.raises(TypeError, match="dtype"):
        fx.cross_entropy(logits, labels, reduction="none", out=np.zeros(4, np.float32))


def test_invalid_label_error_leaves_buffers_untouched():
    logits, labels = good()
    grad = np.full_like(logits, 7.0)
    rows = np.full(4, 7.0)
    labels[3] = 9
    with pytest.raises(ValueError, match="label 9"):
        fx.cross_entropy_with_grad(logits, labels, reduction="none", out=rows, grad_out=grad)
    assert np.all(grad == 7.0) and np.all(rows == 7.0)


def test_overlapping_buffers_are_rejected():
    logits, _ = good()
    probs = np.full((4, 3), 1 / 3)
    with pytest.raises(ValueError, match="overlaps target"):
        fx.cross_entropy_with_grad(logits, probs, grad_out=probs)
    big = np.zeros((5, 3))
    with pytest.raises(ValueError, match="overlaps logits"):
        fx.cross_entropy_with_grad(big[:4], probs, grad_out=big[1:])
    rows = np.zeros(4)
    with pytest.raises(ValueError, match="overlaps"):
        fx.cross_entropy(rows.reshape(4, 1), np.zeros(4, np.int64), reduction="none", out=rows)



def test_more_aliasing_is_rejected():
    logits, labels = good()
    # grad_out overlapping the weight
    base = np.ones(12)
    with pytest.raises(ValueError, match="overlaps weight"):
        fx.cross_entropy_with_grad(logits, labels, weight=base[:3], grad_out=base.reshape(4, 3))
    assert np.all(base == 1)
    weight = np.ones(3)
    # grad_out overlapping out
    buf = np.zeros(16)
    with pytest.raises(ValueError, match="overlaps out"):
        fx.cross_entropy_with_grad(logits, labels, reduction="none", out=buf[:4], grad_out=buf[:12].reshape(4, 3))
    # out overlapping the weight
    with pytest.raises(ValueError, match="overlaps weight"):
        fx.cross_entropy(np.zeros((3, 3)), np.zeros(3, np.int64), weight=weight, reduction="none", out=weight)


@pytest.mark.parametrize(
    "logits,target,exc,msg",
    [
        (np.zeros((4, 3)), None, TypeError, "target must be integer"),
        (np.zeros((4, 3)), np.int64(1), ValueError, r"logits.shape\[:-1\]"),
        (np.zeros((4, 3)), 1.5, ValueError, "probability target must have"),
        ([[True, False]], np.zeros(1, np.int64), TypeError, "float32 or float64"),
        (np.zeros((4, 3)), np.zeros((4, 3), np.complex128), TypeError, "target must be integer"),
    ],
)
def test_more_bad_types(logits, target, exc, msg):
    with pytest.raises(exc, match=msg):
        fx.cross_entropy(logits, target)


def test_bool_weight_rejected():
    logits, labels = good()
    with pytest.raises(TypeError, match="weight must be"):
        fx.cross_entropy(logits, labels, weight=np.ones(3, bool))


def test_byte_swapped_inputs_are_accepted(rng):
    logits = rng.standard_normal((5, 4))
    labels = rng.integers(0, 4, 5)
    want = fx.cross_entropy_with_grad(logits, labels)
    got = fx.cross_entropy_with_grad(logits.astype(">f8"), labels.astype(">i8"))
    assert got[1].dtype == np.float64 and got[1].dtype.isnative
    np.testing.assert_array_equal(got[0], want[0])
    np.testing.assert_array_equal(got[1], want[1])


class TensorRequiringGrad:
    """Stands in for a torch.Tensor with requires_grad=True (torch is optional)."""

    requires_grad = True

    def __init__(self, data):
        self.data = data

    def detach(self):
        return self.data

    def __array__(self, dtype=None, copy=None):
        raise AssertionError("must not be converted")


@pytest.mark.parametrize("which", ["logits", "target"])
def test_tensor_requiring_grad_points_to_the_torch_entry_point(which):
    logits, labels = good()
    args = [logits, labels.astype(np.float64)[:, None] * np.ones(3)]
    args[which == "target"] = TensorRequiringGrad(args[which == "target"])
    with pytest.raises(TypeError, match=rf"{which} is a tensor that requires grad: use fastxent.torch.cross_entropy"):
        fx.cross_entropy_with_grad(*args)


@pytest.mark.parametrize("n, c", [(5000, 2), (300, 300)])  # tiles, rows
@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_reduced_loss_names_the_first_bad_label(n, c, reduction):
    """The reduced loss of unweighted labels checks them only once the
    kernel's total is NaN: the error still names the first bad label, also
    beside NaN logits, and a NaN from the logits alone is a result."""
    rng = np.random.default_rng(3)
    logits = rng.standard_normal((n, c))
    labels = rng.integers(0, c, n)
    labels[rng.random(n) < 0.1] = -100
    logits[7, 0] = np.nan
    labels[7] = 0
    assert np.isnan(fx.cross_entropy(logits, labels, reduction=reduction))
    labels[n - 2] = -5
    labels[n - 40] = c
    with pytest.raises(ValueError, match=rf"label {c} at index \({n - 40},\) is outside \[0, {c}\)"):
        fx.cross_entropy(logits, labels, reduction=reduction)
    logits[7, 0] = 0.0
    with pytest.raises(ValueError, match=rf"label {c} at index \({n - 40},\)"):
        fx.cross_entropy(logits, labels, reduction=reduction)
    with pytest.raises(ValueError, match=rf"label {c} at index \(0, {n - 40}\)"):
        fx.cross_entropy(logits[None], labels[None], reduction=reduction)
