"""Power iteration (solvers/power.py) against dense NumPy references, and the product
count its states carry."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js
from _helpers import check_svd, counting_problem, from_numpy, to_numpy
from jacspec.solvers import power


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


@pytest.mark.parametrize("k", [1, 2])
def test_power_counts_what_it_takes(backend, monkeypatch, k):
    """Single vectors (``k = 1``) and blocks: ``num_matvecs`` is the products taken,
    those before the start included; a budget is kept (one step at least)."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((12, 9))
    S = A.T @ A
    for two_sided, M, step, static in ((True, A, power.svd_power_step, (1e-6,)),
                                       (False, S, power.eig_power_step, (1e-6, "LM"))):
        p = counting_problem(M, backend, monkeypatch)
        s = power.power_init(p, k, None, two_sided=two_sided, count=4)
        res = power.power_solve(p, step, s, k, None, 2 if two_sided else 1, static=static)
        assert bool(np.all(to_numpy(res.converged)))
        assert res.num_matvecs == 4 + p.tally[0]
        p.tally[0] = 0
        s = power.power_init(p, k, None, two_sided=two_sided)
        with pytest.warns(RuntimeWarning, match="maxiter"):
            res = power.power_solve(p, step, s, k, 5 * k, 2 if two_sided else 1,
                                    static=(1e-14,) + static[1:])
        assert res.num_matvecs == p.tally[0] <= max(5 * k, 2 * k)
