"""Golub–Kahan–Lanczos and Lanczos steps (solvers/krylov.py) against dense references:
orthonormal bases, the projected matrix equals ``U^H A V`` / ``Q^H A Q`` (bidiagonal /
tridiagonal), breakdowns on invariant subspaces, the product count in the state, and the
steps under ``jax.jit``."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jacspec as js
from _helpers import from_numpy, make_matrix, to_numpy
from jacspec.solvers import krylov, ritz
from jacspec.solvers.krylov import KrylovState
from jacspec.solvers.problem import Problem


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


# ------------------------------------------------------------- steps against dense
# Fixed shapes (JAX compiles each new shape once); hypothesis draws the spectra and seeds.
M_, N_ = 9, 7
KINDS = st.sampled_from(["random", "clustered", "rankdef", "zero"])
# Each example checks every step of a full basis: a few examples are enough.
STEP_EXAMPLES = min(8, settings().max_examples)


def _problem(A: np.ndarray, backend: str, dtype: str) -> Problem:
    return Problem.of(js.aslinearoperator(from_numpy(A, backend, dtype)))


def _advance(p: Problem, alg, s: KrylovState, n: int) -> KrylovState:
    for _ in range(n):
        s = alg.step(p, s)
    return s


def _steps(p: Problem, alg, n: int, v0=None) -> KrylovState:
    """``n`` steps from ``v0`` (random if None) into a basis of the full size."""
    return _advance(p, alg, krylov.init(p, v0, p.n_in, two_sided=alg.two_sided), n)


def _rows(s: KrylovState, j: int):
    """The filled basis rows as NumPy ``(j, size)`` arrays, the first problem's."""
    V = to_numpy(s.V)[0, :j]
    U = None if s.U is None else to_numpy(s.U)[0, :j]
    return V, U


def _orthonormal(X: np.ndarray, tol: float) -> None:
    np.testing.assert_allclose(X @ X.conj().T, np.eye(len(X)), atol=tol)


def _tols(p: Problem, A: np.ndarray) -> tuple[float, float]:
    """(orthogonality, relation) tolerances: rounding for CGS2 orthogonality; a
    remainder below the breakdown threshold (``bd_rtol`` of ``||A||``) may be dropped."""
    return 100 * p.eps, 10 * p.bd_rtol * max(np.linalg.norm(A, 2), 1.0)


def _matrix(kind: str, seed: int, m: int, n: int) -> np.ndarray:
    A = make_matrix(m, n, kind, seed)
    return A / max(np.abs(A).max(), 1.0)  # entries of order one: float32 keeps its bits


@settings(max_examples=STEP_EXAMPLES)
@given(kind=KINDS, seed=st.integers(0, 2**16))
def test_gkl_steps_give_u_h_a_v(backend, dtype, kind, seed):
    """After every Golub–Kahan–Lanczos step: both bases orthonormal, ``M = U^H A V``
    (the coefficients kept by the reorthogonalization), ``A V = U M``; upper bidiagonal
    where no breakdown happened; after a full basis, ``M`` has the singular values of
    ``A``."""
    A = _matrix(kind, seed, M_, N_).astype(dtype).astype(np.float64)
    p = _problem(A, backend, dtype)
    ortho, rel = _tols(p, A)
    s = krylov.init(p, None, N_, two_sided=True)
    for j in range(1, N_ + 1):
        s = krylov.gkl_step(p, s)
        assert s.j == j
        V, U = _rows(s, j)
        M = to_numpy(ritz.gkl_matrix(p, s))[0][:j, :j]
        _orthonormal(V, ortho)
        _orthonormal(U, ortho)
        np.testing.assert_allclose(M, U.conj() @ A @ V.T, atol=rel)
        np.testing.assert_allclose(A @ V.T, U.T @ M, atol=rel)
    assert int(p.host_int(s.count)) == 2 * N_ - 1  # the last step takes no adjoint product
    np.testing.assert_allclose(np.linalg.svd(M, compute_uv=False),
                               np.linalg.svd(A, compute_uv=False), atol=rel)
    if kind in ("random", "clustered"):  # no breakdown: bidiagonal up to rounding
        off = M - np.triu(np.tril(M, 1))
        assert np.abs(off).max() <= rel


@settings(max_examples=STEP_EXAMPLES)
@given(kind=KINDS, seed=st.integers(0, 2**16))
def test_lanczos_steps_give_q_h_a_q(backend, dtype, kind, seed):
    """After every Lanczos step: the basis orthonormal, ``T = Q^H A Q``, ``A Q = Q T +
    beta q e^T``; tridiagonal where no breakdown happened; after a full basis, ``T`` has
    the eigenvalues of ``A``."""
    G = _matrix(kind, seed, N_, N_)
    A = ((G + G.T) / 2).astype(dtype).astype(np.float64)
    p = _problem(A, backend, dtype)
    ortho, rel = _tols(p, A)
    s = krylov.init(p, None, N_, two_sided=False)
    for j in range(1, N_ + 1):
        s = krylov.lanczos_step(p, s)
        Q, _ = _rows(s, j)
        T = to_numpy(ritz.lanczos_matrix(p, s))[0][:j, :j]
        np.testing.assert_allclose(T, T.T)
        _orthonormal(Q, ortho)
        np.testing.assert_allclose(T, Q @ A @ Q.T, atol=rel)
        if j < N_:  # the next vector and its coupling close the relation
            q, beta = to_numpy(s.v)[0], float(to_numpy(s.beta)[0])
            np.testing.assert_allclose(np.linalg.norm(q), 1.0, atol=ortho)
            np.testing.assert_allclose(Q @ q, np.zeros(j), atol=ortho)
            resid = np.outer(q, np.eye(j)[-1]) * beta
            np.testing.assert_allclose(A @ Q.T, Q.T @ T + resid, atol=rel)
    assert int(p.host_int(s.count)) == N_
    np.testing.assert_allclose(np.linalg.eigvalsh(T), np.linalg.eigvalsh(A), atol=rel)
    if kind in ("random", "clustered"):
        assert np.abs(T - np.triu(np.tril(T, 1), -1)).max() <= rel


def _invariant_pair(backend: str, dtype: str):
    """A symmetric ``(N_, N_)`` matrix and a start vector in the span of two of its
    eigenvectors (an invariant subspace), batched with a generic start."""
    rng = np.random.default_rng(5)
    Q = np.linalg.qr(rng.standard_normal((N_, N_)))[0]
    d = np.array([3.0, -2.0, 1.5, 1.0, 0.5, 0.25, -0.1])
    A = (Q * d) @ Q.T
    v0 = np.stack([Q[:, 0] + Q[:, 1], rng.standard_normal(N_)])
    op = js.aslinearoperator(from_numpy(np.stack([A, A]), backend, dtype))
    return A, d, Problem.of(op), from_numpy(v0, backend, dtype)


def test_lanczos_breakdown_on_an_invariant_subspace(backend, dtype):
    """A start in a two-dimensional invariant subspace: the second step finds nothing
    new (coupling 0), the next vector is a fresh direction orthogonal to the basis, the
    run of the problem starts again at row 2 (``fresh_from``, ``last_break``); the other
    problem of the batch goes on undisturbed; the small matrix holds the two
    eigenvalues exactly."""
    A, d, p, v0 = _invariant_pair(backend, dtype)
    s = _steps(p, krylov.LANCZOS, 2, v0)
    beta = to_numpy(s.beta)
    assert beta[0] == 0.0 and beta[1] > 0.01
    np.testing.assert_array_equal(to_numpy(s.fresh_from), [2.0, 0.0])
    np.testing.assert_array_equal(to_numpy(s.last_break), [2.0, -2.0])
    Q = to_numpy(s.V)[0, :2]
    q = to_numpy(s.v)[0]
    np.testing.assert_allclose(np.linalg.norm(q), 1.0, rtol=100 * p.eps)
    np.testing.assert_allclose(Q @ q, [0.0, 0.0], atol=100 * p.eps)
    T = to_numpy(ritz.lanczos_matrix(p, s))[0][:2, :2]
    np.testing.assert_allclose(np.linalg.eigvalsh(T), np.sort(d[:2]), rtol=100 * p.eps)
    # the steps go on from the fresh direction: the basis stays orthonormal, T = Q^H A Q
    s = _advance(p, krylov.LANCZOS, s, N_ - 2)
    Q = to_numpy(s.V)[0]
    _orthonormal(Q, 100 * p.eps)
    T = to_numpy(ritz.lanczos_matrix(p, s))[0]
    np.testing.assert_allclose(np.linalg.eigvalsh(T), np.sort(d), atol=1e3 * p.eps)


def test_lanczos_sweeps_a_null_space(backend, dtype):
    """A rank-two matrix from a start in its range: every step after the second breaks
    down (the fresh directions lie in the null space). One run of breakdowns: the
    problem's breakdown-free run still begins at row 2 (``fresh_from``) while
    ``last_break`` follows the rows; the basis stays orthonormal."""
    rng = np.random.default_rng(7)
    Q = np.linalg.qr(rng.standard_normal((N_, N_)))[0]
    A = (Q[:, :2] * [2.0, -1.0]) @ Q[:, :2].T
    p = _problem(A, backend, dtype)
    s = _steps(p, krylov.LANCZOS, 5, from_numpy((Q[:, 0] + Q[:, 1])[None], backend, dtype))
    assert float(to_numpy(s.beta)[0]) == 0.0
    np.testing.assert_array_equal(to_numpy(s.fresh_from), [2.0])
    np.testing.assert_array_equal(to_numpy(s.last_break), [5.0])
    _orthonormal(to_numpy(s.V)[0, :5], 100 * p.eps)
    T = to_numpy(ritz.lanczos_matrix(p, s))[0][:5, :5]
    np.testing.assert_allclose(np.linalg.eigvalsh(T), [-1.0, 0.0, 0.0, 0.0, 2.0],
                               atol=100 * p.eps)


def test_gkl_breakdown_on_an_invariant_subspace(backend, dtype):
    """GKL from a start in the span of two right singular vectors: the adjoint half of
    the second step finds nothing new (``beta`` 0 at row 2), then a fresh direction."""
    rng = np.random.default_rng(6)
    U = np.linalg.qr(rng.standard_normal((M_, N_)))[0]
    V = np.linalg.qr(rng.standard_normal((N_, N_)))[0]
    s_ = np.array([3.0, 2.0, 1.5, 1.0, 0.5, 0.25, 0.1])
    A = (U * s_) @ V.T
    p = _problem(A, backend, dtype)
    v0 = from_numpy((V[:, 0] + V[:, 1])[None], backend, dtype)
    s = _steps(p, krylov.GKL, 2, v0)
    assert float(to_numpy(s.beta)[0]) == 0.0
    np.testing.assert_array_equal(to_numpy(s.fresh_from), [2.0])
    Vr, Ur = _rows(s, 2)
    np.testing.assert_allclose(np.linalg.svd(to_numpy(ritz.gkl_matrix(p, s))[0][:2, :2],
                                             compute_uv=False), s_[:2], rtol=100 * p.eps)
    np.testing.assert_allclose(Vr @ to_numpy(s.v)[0], [0.0, 0.0], atol=100 * p.eps)


def test_decompose_is_the_steps_and_counts_products(backend):
    """``decompose`` runs the steps one after the other (the same state as stepping by
    hand) and carries the product count: ``per_step`` a step."""
    A = _matrix("random", 3, M_, N_)
    p = _problem(A, backend, "float64")
    for alg in (krylov.GKL, krylov.LANCZOS):
        q = p if alg.two_sided else _problem(A.T @ A, backend, "float64")
        s0 = krylov.init(q, None, 5, two_sided=alg.two_sided, count=3)
        by_hand = _advance(q, alg, s0, 4)
        s = krylov.decompose(q, alg.step, s0, 4, alg.per_step)
        assert s.j == 4 and by_hand.j == 4
        assert int(q.host_int(s.count)) == int(q.host_int(by_hand.count)) == 3 + 4 * alg.per_step
        for a, b in ((s.V, by_hand.V), (s.C, by_hand.C), (s.v, by_hand.v)):
            np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-14)
        assert krylov.decompose(q, alg.step, s0, 0, alg.per_step) is s0


@pytest.mark.parametrize(("alg", "k", "r", "want"), [
    (krylov.GKL, 3, 10, 6), (krylov.GKL, 4, 4, 7), (krylov.LANCZOS, 3, 10, 3),
    (krylov.LANCZOS, 4, 4, 4)])
def test_min_products(alg, k, r, want):
    """``k`` steps; GKL's last step of a full basis takes one product."""
    assert krylov.min_products(alg, k, r) == want


def test_host_breakdown_read_defers_near_the_threshold(backend):
    """Outside a trace the host's read of the remainders' norms stands for the device's
    breakdown test only where every norm is finite and clears the test by the margin;
    near the threshold, and for Inf/NaN, the device's test decides."""
    p = Problem.of(js.aslinearoperator(from_numpy(np.eye(4)[None].repeat(3, 0), backend)))
    scale = from_numpy(np.ones(3), backend)
    edge = p.bd_rtol

    def whole(norms):
        return krylov._clearly_whole(p, from_numpy(np.array(norms), backend), scale)

    assert whole([1.0, 0.5, 100 * edge])
    assert not whole([1.0, 0.5, edge])  # a breakdown
    assert not whole([1.0, 0.5, edge * 1.005])  # within the margin: the device decides
    assert not whole([1.0, np.inf, 1.0]) and not whole([1.0, np.nan, 1.0])
