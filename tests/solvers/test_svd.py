"""Spectral solvers (svds, eigsh, spectral_norm) against dense NumPy/SciPy references."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg
from hypothesis import given, settings
from hypothesis import strategies as st

import jacspec as js
from _helpers import from_numpy, rtol_for, to_numpy

SPECTRA = ["random", "repeated", "clustered", "rankdef", "zero", "ones", "wide"]


def make_matrix(m: int, n: int, kind: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = min(m, n)
    if kind == "zero":
        return np.zeros((m, n))
    if kind == "ones":
        return np.ones((m, n))
    if kind == "random":
        return rng.standard_normal((m, n))
    U = np.linalg.qr(rng.standard_normal((m, r)))[0]
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    s = np.sort(rng.uniform(0.1, 1.0, r))[::-1]
    if kind == "repeated":
        s[: min(3, r)] = 2.0
    elif kind == "clustered":
        s[: min(3, r)] = 2.0 + 1e-6 * np.arange(min(3, r))[::-1]
    elif kind == "rankdef":
        s[max(1, r // 2):] = 0.0
    elif kind == "wide":
        s = np.logspace(0, -10, r)
    return (U * s) @ V.T


def check_svd(A, res, k, dtype, *, vectors=True):
    s_ref = np.linalg.svd(A, compute_uv=False)
    scale = np.maximum(s_ref[..., :1], 1e-300)
    vals = to_numpy(res.values)
    assert vals.shape == A.shape[:-2] + (k,)
    assert np.all(np.isfinite(vals))
    tol = 20 * rtol_for(dtype)
    assert np.all(np.abs(vals - s_ref[..., :k]) <= tol * scale + 1e-300), (vals, s_ref)
    if vectors:
        L, R = to_numpy(res.left), to_numpy(res.right)
        eye = np.eye(k)
        np.testing.assert_allclose(np.swapaxes(L.conj(), -1, -2) @ L, np.broadcast_to(eye, L.shape[:-2] + (k, k)), atol=tol)
        np.testing.assert_allclose(np.swapaxes(R.conj(), -1, -2) @ R, np.broadcast_to(eye, R.shape[:-2] + (k, k)), atol=tol)
        err = np.abs(A @ R - L * vals[..., None, :]).max(axis=(-2, -1))
        assert np.all(err <= tol * scale[..., 0] * 10 + 1e-300)


def examples(backend: str) -> int:
    """Hypothesis examples per backend: JAX eager compiles every new shape and TF eager
    is slow, so they get fewer (the "ci" profile gives 15 to the others)."""
    return {"jax": 5, "tensorflow": 6}.get(backend, settings().max_examples)


def test_svds_matches_numpy(backend):
    @settings(max_examples=examples(backend))
    @given(
        m=st.integers(1, 14),
        n=st.integers(1, 14),
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


def _eig_ref(w, which, k):
    if which == "LA":
        return np.sort(w)[::-1][:k]
    if which == "SA":
        return np.sort(w)[:k]
    return w[np.argsort(-np.abs(w), kind="stable")][:k]


def test_eigsh_matches_scipy(backend):
    @settings(max_examples=examples(backend))
    @given(
        n=st.integers(1, 14),
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


def test_maxiter_warns(backend):
    A = make_matrix(80, 70, "clustered", seed=7)
    with pytest.warns(RuntimeWarning, match="maxiter"):
        res = js.svds(from_numpy(A, backend), k=2, method="lanczos", maxiter=6)
    assert not bool(np.all(to_numpy(res.converged)))
    assert res.num_matvecs <= 6
    with pytest.warns(RuntimeWarning, match="maxiter"):
        res = js.svds(from_numpy(A, backend), k=1, method="power", maxiter=10)
    assert not bool(np.all(to_numpy(res.converged)))
    with pytest.warns(RuntimeWarning, match="maxiter"):
        res = js.eigsh(from_numpy(A[:70] + A[:70].T, backend), k=2, method="lanczos",
                       maxiter=5)
    assert res.num_matvecs <= 5


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


def test_jax_jit_krylov_hard_cases(backend):
    """Inside ``jax.jit`` the Krylov loops run a fixed budget with hash-based restart
    vectors and in-place buffer writes: breakdowns (rank deficiency, the zero map,
    repeated values) must still give the dense answer, batched and unbatched."""
    if backend != "jax":
        pytest.skip("jax.jit only")
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(11)
    B, m, n = 3, 9, 7
    A = rng.standard_normal((B, m, n))
    A[0] = np.outer(rng.standard_normal(m), rng.standard_normal(n))  # rank 1
    A[1] = 0.0  # the zero map
    U, _, Vt = np.linalg.svd(rng.standard_normal((m, n)), full_matrices=False)
    A[2] = (U * np.array([3.0, 3.0, 3.0, 1.0, 0.5, 1e-3, 0.0])) @ Vt  # repeated top
    Aj = jnp.asarray(A)

    def f(x):
        return jnp.einsum("bmn,bn->bm", Aj, x)

    x = jnp.asarray(rng.standard_normal((B, n)))
    ref = np.linalg.svd(A, compute_uv=False)[:, :3]
    out = jax.jit(lambda x: js.svds(js.jacobian(f, x, batched=True), k=3,
                                    method="lanczos").values)(x)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-10)
    # a budget smaller than the basis (the basis shrinks to it): still a lower bound
    # that has converged for the well-separated top value of the random sample
    C = rng.standard_normal((30, 20))
    g = jax.jit(lambda z: js.svds(js.jacobian(lambda y: jnp.asarray(C) @ y, z), k=1,
                                  method="lanczos", maxiter=30).values)
    top = float(np.linalg.svd(C, compute_uv=False)[0])
    val = float(g(jnp.asarray(rng.standard_normal(20)))[0])
    assert val <= top * (1 + 1e-12) and val > 0.9 * top
    # Hessian with a repeated top eigenvalue (three copies), full budget
    S = np.diag([5.0, 5.0, 5.0, 2.0, -1.0, 0.0])
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    H = Q @ S @ Q.T
    h = jax.jit(lambda z: js.eigsh(js.hessian(lambda y: 0.5 * y @ jnp.asarray(H) @ y, z),
                                   k=3, method="lanczos").values)
    np.testing.assert_allclose(np.asarray(h(jnp.zeros(6))), [5.0, 5.0, 5.0], atol=1e-10)


def test_jax_jit_compiled_steps_with_thick_restarts(backend):
    """Inside ``jax.jit`` the steps between thick restarts run as one ``lax.fori_loop``:
    with a small ``ncv`` and a budget of several restarts (about 7 and 14), GKL and
    Lanczos still reach the dense answer, and the product count is the budget (counted
    per compiled step, not per trace)."""
    if backend != "jax":
        pytest.skip("jax.jit only")
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(5)
    C = rng.standard_normal((40, 30))
    C[:, 0] = C[:, 1]  # rank deficient: a breakdown once the basis spans the range
    ref = np.linalg.svd(C, compute_uv=False)
    counts = []

    def top_sv(z):
        r = js.svds(js.jacobian(lambda y: jnp.asarray(C) @ y, z), k=2, method="lanczos",
                    ncv=8, maxiter=80)
        counts.append(r.num_matvecs)
        return r.values

    out = jax.jit(top_sv)(jnp.asarray(rng.standard_normal(30)))
    np.testing.assert_allclose(np.asarray(out), ref[:2], rtol=1e-9)
    assert counts == [80]
    S = np.concatenate([[4.0, 4.0], np.linspace(-3.0, 3.0, 18)])
    Q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    H = (Q * S) @ Q.T

    def top_ev(z):
        r = js.eigsh(js.hessian(lambda y: 0.5 * y @ jnp.asarray(H) @ y, z), k=2,
                     method="lanczos", ncv=7, maxiter=60)
        counts.append(r.num_matvecs)
        return r.values

    np.testing.assert_allclose(np.asarray(jax.jit(top_ev)(jnp.zeros(20))), [4.0, 4.0],
                               atol=1e-9)
    assert counts[-1] == 60


def test_jax_jit_program_does_not_grow_with_the_budget(backend):
    """Under ``jax.jit`` a fixed budget's restart cycles run as one compiled loop: the
    traced program (top-level equations) is about the same for 40 products (no cycle
    after the first restart) and 400 (about 60 cycles)."""
    if backend != "jax":
        pytest.skip("jax.jit only")
    import jax
    import jax.numpy as jnp

    C = jnp.asarray(np.random.default_rng(5).standard_normal((40, 30)))

    def size(maxiter):
        def top_sv(z):
            J = js.jacobian(lambda y: C @ y, z)
            return js.svds(J, k=2, method="lanczos", ncv=8, maxiter=maxiter).values

        return len(jax.make_jaxpr(top_sv)(jnp.ones(30)).jaxpr.eqns)

    assert size(400) <= size(40) + 5


def test_jax_jit_breakdowns_inside_restart_cycles(backend):
    """Rank 3 with a basis of 6: every cycle of a traced budget breaks down and draws
    restart directions (salted per cycle); GKL and Lanczos still give the dense values."""
    if backend != "jax":
        pytest.skip("jax.jit only")
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(3)
    A = rng.standard_normal((20, 3)) @ rng.standard_normal((3, 15))
    Aj, Sj = jnp.asarray(A), jnp.asarray(A.T @ A)
    sv = jax.jit(lambda z: js.svds(js.jacobian(lambda y: Aj @ y, z), k=2, method="lanczos",
                                   ncv=6, maxiter=70).values)(jnp.ones(15))
    ev = jax.jit(lambda z: js.eigsh(js.hessian(lambda y: 0.5 * y @ Sj @ y, z), k=2,
                                    method="lanczos", ncv=6, maxiter=50).values)(jnp.ones(15))
    ref = np.linalg.svd(A, compute_uv=False)[:2]
    np.testing.assert_allclose(np.asarray(sv), ref, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(ev), ref**2, rtol=1e-10)


def test_large_batch_screens(backend):
    """A batch larger than the probe set of the eager convergence screens
    (``driver.PROBES``), with samples that break down (the zero map, rank one) beside
    slowly converging ones (near-repeated top values): every sample converges to the
    dense answer, GKL and Lanczos, within one basis of products."""
    from jacspec.solvers.driver import PROBES

    rng = np.random.default_rng(8)
    B, m, n = 3 * PROBES, 40, 30
    A = rng.standard_normal((B, m, n))
    A[0] = 0.0
    A[1] = np.outer(rng.standard_normal(m), rng.standard_normal(n))
    for b in range(2, B, 3):  # top two singular values 1 % apart
        U, s, Vt = np.linalg.svd(A[b], full_matrices=False)
        s[1] = 0.99 * s[0]
        A[b] = (U * s) @ Vt
    ref = np.linalg.svd(A, compute_uv=False)[:, 0]
    r = js.svds(from_numpy(A, backend), method="lanczos", tol=1e-10)
    assert bool(np.all(to_numpy(r.converged))) and r.num_matvecs <= 2 * n
    np.testing.assert_allclose(to_numpy(r.values)[:, 0], ref, rtol=1e-9, atol=1e-12)
    S = np.einsum("bmi,bmj->bij", A, A)
    e = js.eigsh(from_numpy(S, backend), method="lanczos", tol=1e-10)
    assert bool(np.all(to_numpy(e.converged))) and e.num_matvecs <= n
    np.testing.assert_allclose(to_numpy(e.values)[:, 0], ref**2, rtol=1e-9, atol=1e-12)


def test_tiny_restart_basis_still_checks(backend):
    """With ``ncv`` below the first scheduled check (2k + 1 + FIRST_CHECK_DELAY), the
    check at every thick restart still runs: the solve converges to the dense answer
    instead of running to ``maxiter``."""
    rng = np.random.default_rng(21)
    A = rng.standard_normal((60, 50))
    ref = np.linalg.svd(A, compute_uv=False)
    evals = np.linalg.eigvalsh(A.T @ A)[::-1]
    for k, ncv in ((1, 4), (2, 6)):
        r = js.svds(from_numpy(A, backend), k=k, method="lanczos", ncv=ncv, tol=1e-8)
        assert bool(np.all(to_numpy(r.converged))) and r.num_matvecs < 400
        np.testing.assert_allclose(to_numpy(r.values), ref[:k], rtol=1e-7)
        e = js.eigsh(from_numpy(A.T @ A, backend), k=k, method="lanczos", ncv=ncv,
                     tol=1e-8)
        assert bool(np.all(to_numpy(e.converged))) and e.num_matvecs < 200
        np.testing.assert_allclose(to_numpy(e.values), evals[:k], rtol=1e-7)


def test_unconverged_warning_points_at_the_call(backend):
    """The maxiter warning names the user's line, not a line inside jacspec."""
    A = np.random.default_rng(2).standard_normal((30, 20))
    for method in ("power", "lanczos"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            js.svds(from_numpy(A, backend), method=method, maxiter=4, tol=1e-14)
        hits = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        assert hits and all(w.filename == __file__ for w in hits), method
