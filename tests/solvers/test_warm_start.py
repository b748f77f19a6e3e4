"""Warm starts (``v0``) never cost exactness: a start along the second singular (or
eigen) vector, with a tiny component along the top one (as after two directions swapped
between training steps), still gives the top value, in every solver that takes ``v0``,
eagerly and inside ``jax.jit`` / ``tf.function``."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js
from _helpers import from_numpy, to_numpy

N = 60
TOL = 1e-3  # the penalty's default: loose enough to stop at the second value


def swapped(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``(A, S, U, V)``: a square ``A = U diag(s) V^T`` with ``s = 2, 1.9`` then a bulk
    up to 1.8, and the symmetric ``S = U diag(s) U^T``."""
    rng = np.random.default_rng(seed)
    U = np.linalg.qr(rng.standard_normal((N, N)))[0]
    V = np.linalg.qr(rng.standard_normal((N, N)))[0]
    s = np.concatenate([[2.0, 1.9], np.linspace(1.8, 0.01, N - 2)])
    return (U * s) @ V.T, (U * s) @ U.T, U, V


def start(Q: np.ndarray) -> np.ndarray:
    """Along the second column, ``1e-4`` along the first."""
    return Q[:, 1] + 1e-4 * Q[:, 0]


def traced(backend: str, fn):
    """``fn`` compiled by the framework (``jax.jit``, ``tf.function``)."""
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn)
    return None


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("seed", [1, 2])
def test_svds_and_eigsh_from_the_second_vector(backend, method, seed):
    A, S, U, V = swapped(seed)
    res = js.svds(from_numpy(A, backend), 1, method=method, tol=TOL,
                  v0=from_numpy(start(V), backend))
    np.testing.assert_allclose(to_numpy(res.values), [2.0], rtol=3 * TOL)
    assert bool(to_numpy(res.converged).all())
    for which, top in [("LM", 2.0), ("LA", 2.0)]:
        res = js.eigsh(from_numpy(S, backend), 1, which=which, method=method, tol=TOL,
                       v0=from_numpy(start(U), backend))
        np.testing.assert_allclose(to_numpy(res.values), [top], rtol=3 * TOL)


def test_good_warm_start_is_not_dearer(backend):
    """From (almost) the top vector a warm start takes no more products than a random one."""
    A, _, _, V = swapped(0)
    Ab = from_numpy(A, backend)
    warm = js.svds(Ab, 1, method="lanczos", tol=TOL, v0=from_numpy(V[:, 0], backend))
    cold = js.svds(Ab, 1, method="lanczos", tol=TOL)
    np.testing.assert_allclose(to_numpy(warm.values), [2.0], rtol=TOL)
    assert warm.num_matvecs <= cold.num_matvecs


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_penalty_from_the_second_vector(autodiff_backend, method):
    backend = autodiff_backend
    A, _, U, _ = swapped(1)
    xp = js.backends.get_backend(backend).xp
    W = from_numpy(A, backend)
    x = from_numpy(np.ones((3, N)), backend)
    u0 = from_numpy(np.tile(start(U), (3, 1)), backend)

    def penalty(x, u0):
        f = lambda z: xp.matmul(z, xp.matrix_transpose(W))  # noqa: E731
        return js.penalties.spectral(f, x, v0=u0, method=method, tol=TOL)

    runs = [penalty] + ([traced(backend, penalty)] if backend != "torch" else [])
    for run in runs:
        np.testing.assert_allclose(float(to_numpy(run(x, u0))), 4.0, rtol=3 * TOL)
