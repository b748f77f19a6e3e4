"""Results that say the truth: ``k`` values always, honest residuals and converged
flags, budgets, NaN/Inf and empty operators, in every backend (against dense NumPy)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jacspec as js
from _helpers import from_numpy, to_numpy
from jacspec.backends import get_backend


def _examples(backend: str) -> int:
    return {"jax": 4, "tensorflow": 5}.get(backend, 10)


def _matrix(m: int, n: int, seed: int, decay: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = min(m, n)
    U = np.linalg.qr(rng.standard_normal((m, r)))[0]
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    return (U * decay ** np.arange(r)) @ V.T


@pytest.mark.parametrize("method", ["lanczos", "power"])
def test_early_stop_returns_k_descending_values(backend, method):
    """A ``maxiter`` that stops the solver before ``tol`` still gives exactly ``k``
    values, in descending order, none above sigma_max, flagged unconverged."""
    A = _matrix(300, 200, 0, 0.99)
    s_ref = np.linalg.svd(A, compute_uv=False)
    k = 3
    budget = 7 if method == "lanczos" else 6
    with pytest.warns(RuntimeWarning, match="maxiter"):
        res = js.svds(from_numpy(A, backend, "float64"), k=k, method=method,
                      maxiter=budget, tol=1e-10)
    vals = to_numpy(res.values)
    assert vals.shape == (k,)
    assert np.all(np.diff(vals) <= 0)
    assert np.all(vals <= s_ref[0] * (1 + 1e-12))
    assert not np.all(to_numpy(res.converged))
    assert res.num_matvecs <= budget


@pytest.mark.parametrize("method,k,need", [("lanczos", 3, 6), ("power", 2, 4)])
def test_maxiter_below_k_values_is_value_error(backend, method, k, need):
    A = from_numpy(_matrix(30, 20, 1, 0.9), backend, "float64")
    with pytest.raises(ValueError, match=f"maxiter >= {need}"):
        js.svds(A, k=k, method=method, maxiter=need - 1)
    S = from_numpy(np.diag(np.arange(1.0, 11.0)), backend, "float64")
    with pytest.raises(ValueError, match="maxiter >= 3"):
        js.eigsh(S, k=3, method="lanczos", maxiter=2)
    with pytest.raises(ValueError, match="maxiter >= 4"):
        js.eigsh(S, k=3, which="LA", method="power", maxiter=3)


@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("tol", [1e-6, 1e-4])
def test_float32_long_vectors_say_the_truth(backend, k, tol):
    """Long float32 vectors: rounding in the bases reaches ~sqrt(size) eps, above 1e-6.
    ``converged`` means the true relative residual ``||A^T u - s v|| / s_1`` of the
    returned vectors met ``tol`` (else a warning says the dtype limits it), and the
    vectors are unit to the rounding of float32 sums."""
    rng = np.random.default_rng(2)
    A = (rng.standard_normal((60000, 4)) * np.array([3.0, 2.0, 1.0, 0.5])).astype(np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        res = js.svds(from_numpy(A, backend), k=k, method="lanczos", tol=tol,
                      return_vectors=True)
    u = to_numpy(res.left).astype(np.float64)
    v = to_numpy(res.right).astype(np.float64)
    s = to_numpy(res.values).astype(np.float64)
    rounding = 4 * np.sqrt(A.shape[0]) * np.finfo(np.float32).eps  # of float32 sums
    np.testing.assert_allclose(np.linalg.norm(u, axis=0), 1.0, atol=rounding)
    np.testing.assert_allclose(np.linalg.norm(v, axis=0), 1.0, atol=1e-6)
    true = np.linalg.norm(A.astype(np.float64).T @ u - v * s, axis=0) / s[0]
    conv = to_numpy(res.converged)
    assert np.all(true[conv] <= 2 * tol), (true, conv)
    if not np.all(conv):
        assert any("dtype" in str(w.message) for w in caught)
    if tol >= 1e-4:
        assert np.all(conv)  # within what float32 allows: met


def test_any_budget_gives_k_ordered_values_below_the_truth(backend):
    """Hypothesis: for any budget at least the minimum, GKL and Lanczos return ``k``
    values in order that do not exceed the true ones (Ritz values interlace)."""

    @settings(max_examples=_examples(backend))
    @given(m=st.integers(2, 40), n=st.integers(2, 40), seed=st.integers(0, 2**16),
           k=st.integers(1, 3), extra=st.integers(0, 12))
    def check(m, n, seed, k, extra):
        k = min(k, m, n)
        A = _matrix(m, n, seed, 0.8)
        s_ref = np.linalg.svd(A, compute_uv=False)
        S = A.T @ A
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = js.svds(from_numpy(A, backend, "float64"), k=k, method="lanczos",
                          maxiter=2 * k + extra)
            e = js.eigsh(from_numpy(S, backend, "float64"), k=k, which="LA",
                         method="lanczos", maxiter=k + extra)
        vals = to_numpy(res.values)
        assert vals.shape == (k,) and np.all(np.diff(vals) <= 1e-12)
        assert np.all(vals <= s_ref[:k] * (1 + 1e-10) + 1e-12)
        lam = to_numpy(e.values)
        lam_ref = np.sort(np.linalg.eigvalsh(S))[::-1][:k]
        assert lam.shape == (k,) and np.all(np.diff(lam) <= 1e-12)
        assert np.all(lam <= lam_ref * (1 + 1e-10) + 1e-12)

    check()


def test_nan_is_floating_point_error_everywhere(backend):
    A = np.ones((6, 6))
    A[2, 3] = np.nan
    op = js.aslinearoperator(from_numpy(np.eye(6), backend, "float64")) * 1.0
    bad = js.aslinearoperator(from_numpy(np.ones((6, 6)), backend, "float64"))
    nan_op = bad @ js.rowsum_diagonal(op) * float("nan")
    with pytest.raises(FloatingPointError):
        js.aslinearoperator(from_numpy(A, backend, "float64"))
    for call in (
        lambda: js.trace(nan_op, num_probes=6),
        lambda: js.trace(nan_op, num_probes=6, method="hutchinson"),
        lambda: js.frobenius_norm(nan_op, num_probes=3),
        lambda: js.frobenius_norm(nan_op),
        lambda: js.svds(nan_op, method="lanczos"),
        lambda: js.svds(nan_op, method="power"),
        lambda: js.spectral_norm(nan_op),
        lambda: js.eigsh(nan_op, method="lanczos"),
    ):
        with pytest.raises(FloatingPointError):
            call()
    K = np.ones((2, 2, 3, 3))
    K[0, 0, 1, 1] = np.inf
    with pytest.raises(FloatingPointError):
        js.conv.fantastic_four(from_numpy(K, backend, "float64"), layout="OIHW")


def test_nan_in_penalties_is_floating_point_error(autodiff_backend):
    backend = autodiff_backend
    xp = get_backend(backend).xp
    x = from_numpy(np.ones((3, 4)), backend, "float64")
    nan = from_numpy(np.array(np.nan), backend, "float64")

    def f(z):  # a finite output whose derivative is NaN
        return xp.tanh(z) + 0 * nan * xp.sin(z) * 0

    def g(z):
        return xp.tanh(z) * xp.sqrt(z - 2.0 + 0 * nan)

    for penalty in (
        lambda h: js.penalties.spectral(h, x),
        lambda h: js.penalties.spectral(h, x, method="lanczos"),
        lambda h: js.penalties.frobenius(h, x),
        lambda h: js.penalties.gradient_norm(lambda z: xp.sum(h(z), axis=-1), x),
    ):
        for h in (f, g):
            with pytest.raises(FloatingPointError):
                penalty(h)


@pytest.mark.parametrize("shape", [(5, 0), (0, 4)])
def test_empty_operators_are_value_errors(backend, shape):
    op = js.aslinearoperator(from_numpy(np.zeros(shape), backend, "float64"))
    for call in (
        lambda: js.svds(op),
        lambda: js.spectral_norm(op),
        lambda: js.spectral_norm(op, method="power"),
        lambda: js.frobenius_norm(op),
        lambda: js.frobenius_norm(op, num_probes=2),
    ):
        with pytest.raises(ValueError, match="non-empty"):
            call()


def test_empty_output_function_is_value_error(autodiff_backend):
    backend = autodiff_backend
    x = from_numpy(np.ones(4), backend, "float64")
    J = js.jacobian(lambda z: z[:0], x)
    with pytest.raises(ValueError, match="non-empty"):
        js.spectral_norm(J)
    with pytest.raises(ValueError, match="non-empty"):
        js.svds(J)


def test_jax_jit_power_on_a_traced_matrix_uses_the_traced_budget(backend):
    if backend != "jax":
        pytest.skip("jax.jit only")
    import jax
    import jax.numpy as jnp

    seen = []

    def top(M):
        res = js.svds(js.aslinearoperator(M), method="power")
        seen.append(res.num_matvecs)
        return res.values

    M = jnp.asarray(_matrix(8, 6, 3, 0.5))
    val = jax.jit(top)(M)
    assert seen[0] <= 200  # the traced default, compiled as one loop
    np.testing.assert_allclose(float(val[0]), 1.0, rtol=1e-6)


def test_traced_solves_iterate_to_tol(backend):
    """Inside ``jax.jit`` / ``tf.function`` with no ``maxiter``, svds, eigsh and the
    (Lanczos) spectral penalty run until ``tol`` under the framework's while loop."""
    if backend not in ("jax", "tensorflow"):
        pytest.skip("traced solves: jax.jit and tf.function")
    A = _matrix(90, 70, 4, 0.97)
    S = A.T @ A
    s_ref = np.linalg.svd(A, compute_uv=False)
    rng = np.random.default_rng(5)
    W0 = rng.standard_normal((150, 150)) / 13
    x0 = rng.standard_normal((4, 150))
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        compile_ = jax.jit
        tanh = jnp.tanh
    else:
        import tensorflow as tf

        compile_ = tf.function
        tanh = tf.tanh

    def solves(M, Sm, W, x):
        f = lambda z: tanh(z @ W)  # noqa: E731
        return (js.svds(js.aslinearoperator(M), k=2, method="lanczos", tol=1e-9).values,
                js.eigsh(js.aslinearoperator(Sm), k=1, which="LA", method="lanczos",
                         tol=1e-9).values,
                js.penalties.spectral(f, x, method="lanczos", tol=1e-6))

    args = [from_numpy(a, backend, "float64") for a in (A, S, W0, x0)]
    vals, lam, pen = (to_numpy(t) for t in compile_(solves)(*args))
    np.testing.assert_allclose(vals, s_ref[:2], rtol=1e-8)
    np.testing.assert_allclose(lam, s_ref[:1] ** 2, rtol=1e-8)
    J = js.jacobian(lambda z: tanh(z @ args[2]), args[3], batched=True)
    exact = np.linalg.svd(to_numpy(js.dense(J)), compute_uv=False)[:, 0]
    np.testing.assert_allclose(pen, np.mean(exact ** 2), rtol=1e-9)


def test_dense_top_triplet_at_any_scale(backend):
    """The dense path's top triplet (from the Gram matrix of the smaller side) keeps full
    relative accuracy for entries from 1e-30 to 1e30 in float32 (no underflow or
    overflow of the squares), wide and tall, with clustered top values, and for the
    zero matrix (value 0, unit vectors); against float64 NumPy."""

    @settings(max_examples=_examples(backend), deadline=None)
    @given(m=st.sampled_from([3, 6]), n=st.sampled_from([4, 7]),
           scale=st.sampled_from([0.0, 1e-30, 1e-12, 1.0, 1e15, 1e30]),
           decay=st.sampled_from([1.0, 0.999, 0.5]), seed=st.integers(0, 99))
    def run(m, n, scale, decay, seed):
        A = np.stack([_matrix(m, n, seed + i, decay) for i in range(2)]) * scale
        A = A.astype(np.float32)
        res = js.svds(from_numpy(A, backend), k=1, method="dense", return_vectors=True)
        s = np.linalg.svd(A.astype(np.float64), compute_uv=False)[:, 0]
        got = np.asarray(to_numpy(res.values), dtype=np.float64)[:, 0]
        u = np.asarray(to_numpy(res.left), dtype=np.float64)[..., 0]
        v = np.asarray(to_numpy(res.right), dtype=np.float64)[..., 0]
        np.testing.assert_allclose(np.linalg.norm(u, axis=-1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(v, axis=-1), 1.0, rtol=1e-5)
        if scale == 0.0:
            assert np.all(got == 0)
            return
        np.testing.assert_allclose(got, s, rtol=1e-5)
        # u^T A v is sigma_max: the vectors are the top pair, not just unit vectors
        uav = np.einsum("bi,bij,bj->b", u, A.astype(np.float64), v)
        np.testing.assert_allclose(uav, s, rtol=1e-4)

    run()
