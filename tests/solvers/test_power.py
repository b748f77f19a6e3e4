"""Power iteration (solvers/power.py) against dense NumPy references."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js
from _helpers import check_svd, from_numpy, to_numpy


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_power_matches_numpy(backend, dtype):
    rng = np.random.default_rng(1)
    U = np.linalg.qr(rng.standard_normal((20, 12)))[0]
    V = np.linalg.qr(rng.standard_normal((12, 12)))[0]
    s = np.array([4.0, 2.0, 1.0] + [0.5] * 9)
    A = ((U * s) @ V.T).astype(dtype).astype(np.float64)
    res = js.svds(from_numpy(A, backend, dtype), k=2, method="power", return_vectors=True)
    assert bool(np.all(to_numpy(res.converged)))
    check_svd(A, res, 2, dtype)
