"""``eigsh`` (solvers/eig.py) against dense SciPy references: every ``which``, every
method, hard spectra, float32 and float64, batched."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

import jacspec as js
from _helpers import DIMS, from_numpy, make_matrix, rtol_for, solver_examples, to_numpy


def _eig_ref(w, which, k):
    if which == "LA":
        return np.sort(w)[::-1][:k]
    if which == "SA":
        return np.sort(w)[:k]
    return w[np.argsort(-np.abs(w), kind="stable")][:k]



def test_eigsh_matches_scipy(backend):
    @settings(max_examples=solver_examples(backend))
    @given(
        n=st.sampled_from(DIMS),  # eager JAX compiles per shape: a few shapes, reused
        kind=st.sampled_from(["random", "repeated", "clustered", "rankdef", "zero", "ones"]),
        which=st.sampled_from(["LM", "LA", "SA"]),
        dtype=st.sampled_from(["float32", "float64"]),
        method=st.sampled_from(["lanczos", "dense"]),
        data=st.data(),
    )
    def run(n, kind, which, dtype, method, data):
        A = make_matrix(n, n, kind, seed=n)
        if kind in ("repeated", "clustered", "rankdef"):
            Q = np.linalg.qr(np.random.default_rng(n).standard_normal((n, n)))[0]
            d = np.linalg.svd(A, compute_uv=False) * np.where(np.arange(n) % 2, -1.0, 1.0)
            if kind != "rankdef":
                d[: min(3, n)] = np.abs(d[: min(3, n)])
            A = (Q * d) @ Q.T
        A = (A + A.T) / 2
        A = A.astype(dtype).astype(np.float64)
        k = data.draw(st.integers(1, n))
        w = scipy.linalg.eigh(A, eigvals_only=True)
        res = js.eigsh(from_numpy(A, backend, dtype), k=k, which=which, method=method,
                       return_vectors=True)
        vals = to_numpy(res.values)
        scale = max(np.abs(w).max(), 1e-300)
        tol = 20 * rtol_for(dtype)
        ref = _eig_ref(w, which, k)
        vals_cmp = vals
        if which == "LM":  # ties in magnitude may come in either order
            np.testing.assert_allclose(np.abs(vals_cmp), np.abs(ref), atol=tol * scale + 1e-300)
        else:
            np.testing.assert_allclose(vals_cmp, ref, atol=tol * scale + 1e-300)
        X = to_numpy(res.vectors)
        np.testing.assert_allclose(X.T @ X, np.eye(k), atol=tol)
        np.testing.assert_allclose(A @ X, X * vals, atol=10 * tol * scale + 1e-300)

    run()



@pytest.mark.parametrize("which", ["LM", "LA", "SA"])
def test_eigsh_power_and_batched(backend, which):
    rng = np.random.default_rng(5)
    Q = np.linalg.qr(rng.standard_normal((3, 10, 10)))[0]
    d = np.array([5.0, -4.0, 2.0, 1.0, 0.5, -0.5, 0.2, 0.1, -0.1, 0.0])
    A = (Q * d) @ np.swapaxes(Q, -1, -2)
    for method in ["power", "lanczos", "dense"]:
        res = js.eigsh(from_numpy(A, backend), k=2, which=which, method=method)
        ref = _eig_ref(d, which, 2)
        np.testing.assert_allclose(to_numpy(res.values), np.broadcast_to(ref, (3, 2)),
                                   atol=1e-6)


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_power_with_budget_under_trace(backend, which):
    """``method="power"`` with ``LA``/``SA`` and a ``maxiter`` inside ``jax.jit`` /
    ``tf.function``: the spectral-radius estimate leaves most of the budget to the
    wanted end (it once took all of it: an unconverged, wrong value)."""
    if backend not in ("jax", "tensorflow"):
        pytest.skip("traced solves: jax.jit and tf.function")
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((8, 8)))[0]
    d = np.array([5.0, 1.0, 0.5, 0.2, -0.5, -1.0, -2.0, -6.0])
    A = (Q * d) @ Q.T
    ref = _eig_ref(d, which, 1)
    if backend == "jax":
        import jax

        compile_ = jax.jit
    else:
        import tensorflow as tf

        compile_ = tf.function
    res = compile_(lambda A: js.eigsh(A, k=1, which=which, method="power", maxiter=80))(
        from_numpy(A, backend, "float64"))
    assert bool(to_numpy(res.converged).all())
    np.testing.assert_allclose(to_numpy(res.values), ref, rtol=1e-6)
