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


@pytest.fixture
def rng():
    return np.random.default_rng(20261128)
