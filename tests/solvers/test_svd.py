"""``svds`` and ``spectral_norm`` (solvers/svd.py) against dense NumPy references: hard
spectra, batches, complex operators, bad input, and the gradient of the norm."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

import jacspec as js
from _helpers import (
    DIMS,
    SPECTRA,
    check_svd,
    from_numpy,
    make_matrix,
    solver_examples,
    to_numpy,
)


def test_svds_matches_numpy(backend):
    @settings(max_examples=solver_examples(backend))
    @given(
        m=st.sampled_from(DIMS),  # eager JAX compiles per shape: a few shapes, reused
        n=st.sampled_from(DIMS),
        kind=st.sampled_from(SPECTRA),
        dtype=st.sampled_from(["float32", "float64"]),
        method=st.sampled_from(["lanczos", "dense", "auto"]),
        data=st.data(),
    )
    def run(m, n, kind, dtype, method, data):
        A = make_matrix(m, n, kind, seed=m * 31 + n)
        A = A.astype(dtype).astype(np.float64)
        k = data.draw(st.integers(1, min(m, n)))
        with warnings.catch_warnings():
            warnings.simplefilter("error", RuntimeWarning)
            res = js.svds(from_numpy(A, backend, dtype), k=k, method=method,
                          return_vectors=True)
        assert bool(np.all(to_numpy(res.converged)))
        check_svd(A, res, k, dtype)
        assert res.num_matvecs >= 1

    run()


@pytest.mark.parametrize("kind", ["random", "repeated", "clustered"])
def test_lanczos_restarts_and_clusters(backend, kind):
    A = make_matrix(60, 45, kind, seed=3)
    res = js.svds(from_numpy(A, backend), k=3, method="lanczos", ncv=10, return_vectors=True)
    assert bool(np.all(to_numpy(res.converged)))
    check_svd(A, res, 3, "float64")


def test_batched_matches_per_sample(backend, dtype):
    rng = np.random.default_rng(2)
    A = rng.standard_normal((4, 9, 13))
    A[1] = 0.0  # a zero sample must not poison the others
    A[2] = np.ones((9, 13))
    A = A.astype(dtype).astype(np.float64)
    for method in ["lanczos", "dense", "power"]:
        res = js.svds(from_numpy(A, backend, dtype), k=2, method=method, return_vectors=True,
                      maxiter=4000)
        check_svd(A, res, 2, dtype)
        assert to_numpy(res.converged).shape == (4, 2)


def test_complex(backend):
    if backend == "tensorflow":
        pytest.skip("complex explicit operators are checked in numpy, torch and jax")
    rng = np.random.default_rng(4)
    A = rng.standard_normal((11, 8)) + 1j * rng.standard_normal((11, 8))
    for method in ["lanczos", "dense", "power"]:
        res = js.svds(from_numpy(A, backend), k=3, method=method, return_vectors=True)
        check_svd(A, res, 3, "float64")
        assert to_numpy(res.values).dtype == np.float64
    H = A.conj().T @ A
    w = scipy.linalg.eigh(H, eigvals_only=True)
    res = js.eigsh(from_numpy(H, backend), k=2, which="LA", method="lanczos",
                   return_vectors=True)
    np.testing.assert_allclose(to_numpy(res.values), w[::-1][:2], rtol=1e-8)
    X = to_numpy(res.vectors)
    np.testing.assert_allclose(X.conj().T @ X, np.eye(2), atol=1e-10)


def test_zero_operator_every_method(backend):
    Z = from_numpy(np.zeros((2, 6, 4)), backend)
    for method in ["lanczos", "dense", "power"]:
        res = js.svds(Z, k=2, method=method, return_vectors=True)
        vals = to_numpy(res.values)
        assert np.all(vals == 0.0)
        assert np.all(np.isfinite(to_numpy(res.left)))
        s = js.spectral_norm(Z, method=method)
        assert np.all(to_numpy(s) == 0.0)
        e = js.eigsh(from_numpy(np.zeros((5, 5)), backend), k=2, method=method)
        assert np.all(to_numpy(e.values) == 0.0)


def test_bad_input(backend):
    A = from_numpy(np.ones((4, 3)), backend)
    with pytest.raises(ValueError, match="k"):
        js.svds(A, k=0)
    with pytest.raises(ValueError, match="k"):
        js.svds(A, k=4)
    with pytest.raises(ValueError, match="tol"):
        js.svds(A, tol=0.0)
    with pytest.raises(ValueError, match="'lanczos'"):
        js.svds(A, method="arpack")
    with pytest.raises(ValueError, match="'LA'"):
        js.eigsh(from_numpy(np.eye(3), backend), which="BE")
    with pytest.raises(ValueError, match="square"):
        js.eigsh(A)
    with pytest.raises(ValueError, match="method"):
        js.spectral_norm(A, method="svd")
    with pytest.raises(TypeError):
        js.svds([[1.0, 2.0]])
    with pytest.raises(ValueError, match="shape"):
        js.svds(A, v0=from_numpy(np.ones(4), backend))
    nan = js.aslinearoperator(from_numpy(np.ones((4, 3)), backend)) * from_numpy(
        np.array(np.nan), backend)
    for method in ["lanczos", "dense", "power"]:
        with pytest.raises(FloatingPointError):
            js.svds(nan, method=method)


def test_v0_and_seed(backend):
    A = make_matrix(12, 30, "random", seed=9)
    v0 = from_numpy(np.ones(30), backend)
    s = np.linalg.svd(A, compute_uv=False)
    for v in [v0, None]:
        res = js.svds(from_numpy(A, backend), k=2, method="lanczos", v0=v, seed=None)
        np.testing.assert_allclose(to_numpy(res.values), s[:2], rtol=1e-8)
    r1 = js.svds(from_numpy(A, backend), method="lanczos", seed=3)
    r2 = js.svds(from_numpy(A, backend), method="lanczos", seed=3)
    assert np.array_equal(to_numpy(r1.values), to_numpy(r2.values))


# ------------------------------------------------------------------------ gradients


def _linear(backend, W, x):
    """spectral_norm(jacobian(x -> W x)) and its gradient w.r.t. W, per framework."""
    if backend == "torch":
        import torch

        Wt = torch.tensor(W, requires_grad=True)
        out = []
        for method in ["dense", "lanczos"]:
            Wt.grad = None
            s = js.spectral_norm(js.jacobian(lambda z: Wt @ z, torch.tensor(x)), method=method)
            s.backward()
            out.append((float(s.detach()), Wt.grad.numpy().copy()))
        return out
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        out = []
        for method in ["dense", "lanczos"]:
            def f(Wj, method=method):
                return js.spectral_norm(js.jacobian(lambda z: Wj @ z, jnp.asarray(x)),
                                        method=method)
            s, g = jax.value_and_grad(f)(jnp.asarray(W))
            out.append((float(s), np.asarray(g)))
            s, g = jax.jit(jax.value_and_grad(f))(jnp.asarray(W))
            out.append((float(s), np.asarray(g)))
        return out
    import tensorflow as tf

    Wv = tf.Variable(W)
    out = []
    for method in ["dense", "lanczos"]:
        with tf.GradientTape() as tape:
            s = js.spectral_norm(
                js.jacobian(lambda z: tf.linalg.matvec(Wv, z), tf.constant(x)), method=method)
        out.append((float(s), tape.gradient(s, Wv).numpy()))
    return out


def test_spectral_norm_gradient_linear(autodiff_backend):
    rng = np.random.default_rng(11)
    W = rng.standard_normal((6, 9))
    x = rng.standard_normal(9)
    U, S, Vt = np.linalg.svd(W)
    for s, g in _linear(autodiff_backend, W, x):
        assert abs(s - S[0]) < 1e-10
        np.testing.assert_allclose(g, np.outer(U[:, 0], Vt[0]), atol=1e-8)


def _mlp_numpy_params(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((8, 5)) / 2, rng.standard_normal((4, 8)) / 2


def _mlp_norm(backend, W1, W2, x, method):
    """spectral norm of the input Jacobian of x -> W2 tanh(W1 x), grads w.r.t. x and W1."""
    if backend == "torch":
        import torch

        W1t = torch.tensor(W1, requires_grad=True)
        xt = torch.tensor(x, requires_grad=True)
        s = js.spectral_norm(js.jacobian(lambda z: torch.tensor(W2) @ torch.tanh(W1t @ z), xt),
                             method=method)
        s.backward()
        return float(s.detach()), xt.grad.numpy(), W1t.grad.numpy()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def f(xj, W1j):
            return js.spectral_norm(js.jacobian(lambda z: jnp.asarray(W2) @ jnp.tanh(W1j @ z),
                                                xj), method=method)
        s, (gx, gw) = jax.value_and_grad(f, argnums=(0, 1))(jnp.asarray(x), jnp.asarray(W1))
        return float(s), np.asarray(gx), np.asarray(gw)
    import tensorflow as tf

    W1v = tf.Variable(W1)
    xv = tf.Variable(x)
    with tf.GradientTape() as tape:
        s = js.spectral_norm(js.jacobian(
            lambda z: tf.linalg.matvec(tf.constant(W2), tf.tanh(tf.linalg.matvec(W1v, z))),
            tf.convert_to_tensor(xv)), method=method)
    gx, gw = tape.gradient(s, [xv, W1v])
    return float(s), gx.numpy(), gw.numpy()


def test_spectral_norm_gradient_mlp_finite_differences(autodiff_backend):
    W1, W2 = _mlp_numpy_params()
    x = np.random.default_rng(1).standard_normal(5)

    def ref(x, W1):
        J = W2 @ (np.diag(1 - np.tanh(W1 @ x) ** 2) @ W1)
        return np.linalg.svd(J, compute_uv=False)[0]

    h = 1e-6
    fd_x = np.array([(ref(x + h * e, W1) - ref(x - h * e, W1)) / (2 * h) for e in np.eye(5)])
    E = np.zeros_like(W1)
    E[2, 3] = 1.0
    fd_w = (ref(x, W1 + h * E) - ref(x, W1 - h * E)) / (2 * h)
    for method in ["lanczos", "dense"]:
        s, gx, gw = _mlp_norm(autodiff_backend, W1, W2, x, method)
        assert abs(s - ref(x, W1)) < 1e-10
        np.testing.assert_allclose(gx, fd_x, atol=1e-6)
        assert abs(gw[2, 3] - fd_w) < 1e-6


def test_batched_jacobian_spectral_norms(autodiff_backend):
    W1, W2 = _mlp_numpy_params(2)
    X = np.random.default_rng(3).standard_normal((5, 5))
    refs = []
    for x in X:
        J = W2 @ (np.diag(1 - np.tanh(W1 @ x) ** 2) @ W1)
        refs.append(np.linalg.svd(J, compute_uv=False)[0])
    if autodiff_backend == "torch":
        import torch

        def f(z):
            return torch.tanh(z @ torch.tensor(W1).T) @ torch.tensor(W2).T
    elif autodiff_backend == "jax":
        import jax.numpy as jnp

        def f(z):
            return jnp.tanh(z @ W1.T) @ W2.T
    else:
        import tensorflow as tf

        def f(z):
            return tf.tanh(z @ tf.constant(W1.T)) @ tf.constant(W2.T)
    op = js.jacobian(f, from_numpy(X, autodiff_backend), batched=True)
    for method in ["lanczos", "dense", "power"]:
        s = to_numpy(js.spectral_norm(op, method=method))
        assert s.shape == (5,)
        np.testing.assert_allclose(s, refs, rtol=1e-7)


def test_jax_jit_traceable(backend):
    if backend != "jax":
        pytest.skip("jax.jit only")
    import jax
    import jax.numpy as jnp

    W1, W2 = _mlp_numpy_params(4)

    def f(z):
        return jnp.asarray(W2) @ jnp.tanh(jnp.asarray(W1) @ z)

    x = jnp.asarray(np.random.default_rng(5).standard_normal(5))
    for method in ["auto", "lanczos"]:
        g = jax.jit(lambda x, method=method: js.spectral_norm(js.jacobian(f, x), method=method))
        gg = jax.grad(lambda x, method=method: js.spectral_norm(js.jacobian(f, x),
                                                                method=method))
        ref = float(js.spectral_norm(js.jacobian(f, x), method="dense"))
        assert abs(float(g(x)) - ref) < 1e-8
        np.testing.assert_allclose(np.asarray(jax.jit(gg)(x)), np.asarray(gg(x)), atol=1e-5)
    res = jax.jit(lambda x: js.svds(js.jacobian(f, x), k=2, method="lanczos").values)(x)
    assert res.shape == (2,)
    res = jax.jit(lambda x: js.eigsh(js.hessian(lambda z: jnp.sum(f(z) ** 2), x),
                                     method="lanczos").values)(x)
    assert res.shape == (1,)


def test_hessian_spectral_norm(autodiff_backend):
    rng = np.random.default_rng(6)
    A = rng.standard_normal((7, 7))
    A = A + A.T
    x = from_numpy(rng.standard_normal(7), autodiff_backend)
    Ab = from_numpy(A, autodiff_backend)
    if autodiff_backend == "tensorflow":
        import tensorflow as tf

        def f(z):
            return 0.5 * tf.reduce_sum(z * tf.linalg.matvec(Ab, z))
    else:
        def f(z):
            return 0.5 * (z @ (Ab @ z))
    H = js.hessian(f, x)
    w = np.linalg.eigvalsh(A)
    for method in ["lanczos", "dense", "power"]:
        s = float(js.spectral_norm(H, method=method))
        assert abs(s - np.abs(w).max()) < 1e-7


@pytest.mark.parametrize("k", [2, 3])
def test_lanczos_finds_every_copy_of_a_repeated_top_value(backend, k):
    # Many distinct values below a triple top value: a single Krylov sequence holds one
    # copy of it; the check restart must bring up the others.
    rng = np.random.default_rng(11)
    n = 40
    Q = np.linalg.qr(rng.standard_normal((n, n)))[0]
    P = np.linalg.qr(rng.standard_normal((n + 5, n)))[0]
    d = np.concatenate([[3.0, 3.0, 3.0], np.linspace(2.5, 0.1, n - 3)])
    A = (P * d) @ Q.T  # (45, 40), singular values d
    S = (Q * d) @ Q.T  # symmetric, eigenvalues d
    r = js.svds(from_numpy(A, backend, "float64"), k=k, method="lanczos", return_vectors=True)
    check_svd(A, r, k, "float64")
    e = js.eigsh(from_numpy(S, backend, "float64"), k=k, which="LA", method="lanczos",
                 return_vectors=True)
    np.testing.assert_allclose(to_numpy(e.values), np.full(k, 3.0), rtol=1e-7)
    X = to_numpy(e.vectors)
    np.testing.assert_allclose(X.T @ X, np.eye(k), atol=1e-7)


