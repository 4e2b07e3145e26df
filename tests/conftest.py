import os

import numpy as np
import pytest
from hypothesis import settings

# Under NUMBA_DISABLE_JIT=1 (the coverage run) kernels run as Python: fewer examples.
settings.register_profile("coverage", max_examples=8, deadline=None)
if os.environ.get("NUMBA_DISABLE_JIT") == "1":
    settings.load_profile("coverage")

large = pytest.mark.large

DTYPES = [np.float32, np.float64]


def tolerances(dtype):
    """(rtol, atol) for comparing a result of this dtype with the float64 reference."""
    return (2e-5, 2e-6) if dtype == np.float32 else (1e-11, 1e-13)


def assert_matches_reference(logits, target, dtype, same_bits_in_place=True, **opts):
    """The fused, loss-only and in-place calls against the float64 reference
    (tests/reference.py). With ``same_bits_in_place`` the in-place call must
    give the fused call's bits, else the reference's values to tolerance."""
    import fastxent as fx
    import reference as ref

    rtol, atol = tolerances(dtype)
    want_loss, want_grad = ref.cross_entropy_with_grad(logits, target, **opts)
    loss, grad = fx.cross_entropy_with_grad(logits, target, **opts)
    np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=atol)
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=atol)
    np.testing.assert_allclose(fx.cross_entropy(logits, target, **opts), want_loss, rtol=rtol, atol=atol)
    x = logits.copy()
    loss_inplace, _ = fx.cross_entropy_with_grad(x, target, grad_out=x, **opts)
    if same_bits_in_place:
        np.testing.assert_array_equal(loss_inplace, loss)
        np.testing.assert_array_equal(x, grad)
    else:
        np.testing.assert_allclose(loss_inplace, want_loss, rtol=rtol, atol=atol)
        np.testing.assert_allclose(x, want_grad, rtol=rtol, atol=atol)


@pytest.fixture
def rng():
    return np.random.default_rng(20261128)
