"""Trace and Frobenius-norm estimators: exactness, unbiasedness, variance, errors."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js
from _helpers import from_numpy, to_numpy

TRIALS = 400  # independent estimates, as a batch of copies of one matrix


def rotated(n: int, decay: float, seed: int = 0) -> np.ndarray:
    """A non-diagonal symmetric PSD matrix with eigenvalues decay**i."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    return (Q * decay ** np.arange(n)) @ Q.T


def _within_3se(est: np.ndarray, truth: float) -> None:
    se = est.std(ddof=1) / np.sqrt(est.size)
    assert abs(est.mean() - truth) <= 3 * se + 1e-12, (est.mean(), truth, se)


@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
@pytest.mark.parametrize("probes", ["rademacher", "gaussian"])
def test_trace_unbiased(backend, method, probes):
    A = rotated(16, 0.8)
    batch = from_numpy(np.broadcast_to(A, (TRIALS, 16, 16)).copy(), backend)
    est = to_numpy(js.trace(batch, num_probes=6, method=method, probes=probes, seed=1))
    assert est.shape == (TRIALS,)
    _within_3se(est, np.trace(A))


def test_hutchpp_lower_variance(backend):
    A = rotated(30, 0.7, seed=2)
    batch = from_numpy(np.broadcast_to(A, (TRIALS, 30, 30)).copy(), backend)
    v_h = to_numpy(js.trace(batch, num_probes=9, method="hutchinson", seed=3)).var()
    v_pp = to_numpy(js.trace(batch, num_probes=9, method="hutch++", seed=3)).var()
    assert v_pp < v_h


def test_trace_unbatched_and_dtype(backend, dtype):
    A = rotated(8, 0.5)
    t = js.trace(from_numpy(A, backend, dtype), num_probes=30)  # sketch of 10 >= rank 8
    assert to_numpy(t).shape == ()
    tol = 1e-4 if dtype == "float32" else 1e-10
    assert abs(float(to_numpy(t)) - np.trace(A)) < tol


def test_frobenius_exact(backend, dtype):
    rng = np.random.default_rng(4)
    A = rng.standard_normal((3, 7, 5))
    ref = np.linalg.norm(A, axis=(-2, -1))
    out = to_numpy(js.frobenius_norm(from_numpy(A, backend, dtype)))
    np.testing.assert_allclose(out, ref, rtol=1e-5 if dtype == "float32" else 1e-12)
    z = to_numpy(js.frobenius_norm(from_numpy(np.zeros((4, 3)), backend)))
    assert z == 0.0


def test_frobenius_random_projection_unbiased(backend):
    rng = np.random.default_rng(5)
    A = rng.standard_normal((12, 9))
    A = np.linalg.qr(rng.standard_normal((12, 12)))[0] @ A  # rotated, non-diagonal
    batch = from_numpy(np.broadcast_to(A, (TRIALS, 12, 9)).copy(), backend)
    est = to_numpy(js.frobenius_norm(batch, num_probes=3, seed=6))
    _within_3se(est**2, np.linalg.norm(A) ** 2)


def test_frobenius_gradient(autodiff_backend):
    rng = np.random.default_rng(7)
    W = rng.standard_normal((4, 6))
    x = rng.standard_normal(6)
    if autodiff_backend == "torch":
        import torch

        Wt = torch.tensor(W, requires_grad=True)
        js.frobenius_norm(js.jacobian(lambda z: Wt @ z, torch.tensor(x))).backward()
        g = Wt.grad.numpy()
    elif autodiff_backend == "jax":
        import jax
        import jax.numpy as jnp

        g = np.asarray(jax.grad(lambda Wj: js.frobenius_norm(
            js.jacobian(lambda z: Wj @ z, jnp.asarray(x))))(jnp.asarray(W)))
    else:
        import tensorflow as tf

        Wv = tf.Variable(W)
        with tf.GradientTape() as tape:
            out = js.frobenius_norm(js.jacobian(lambda z: tf.linalg.matvec(Wv, z),
                                                tf.constant(x)))
        g = tape.gradient(out, Wv).numpy()
    np.testing.assert_allclose(g, W / np.linalg.norm(W), atol=1e-10)


def test_estimator_errors(backend):
    A = from_numpy(np.ones((3, 4)), backend)
    with pytest.raises(ValueError, match="square"):
        js.trace(A)
    S = from_numpy(np.eye(4), backend)
    with pytest.raises(ValueError, match="'hutchinson'"):
        js.trace(S, method="girard")
    with pytest.raises(ValueError, match="num_probes"):
        js.trace(S, num_probes=2)
    with pytest.raises(ValueError, match="num_probes"):
        js.frobenius_norm(A, num_probes=0)
    with pytest.raises(TypeError):
        js.trace("not an operator")
