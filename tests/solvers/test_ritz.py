"""Ritz extraction and thick restarts (solvers/ritz.py) against NumPy's ``svd`` and
``eigh``: the Gram-matrix route to the top singular value (scaled against under- and
overflow), the filled block and the padded fixed-width buffer, every ``which``, and
restarts that keep the Krylov relation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jacspec as js
from _helpers import from_numpy, make_matrix, to_numpy
from jacspec.solvers import krylov, ritz
from jacspec.solvers.problem import Problem

# Fixed shapes (JAX compiles each new shape once); hypothesis draws spectra and seeds.
B, R, C = 2, 6, 5
KINDS = st.sampled_from(["random", "repeated", "clustered", "rankdef", "zero", "ones",
                         "tiny", "huge"])


def _problem(backend: str, dtype: str, shape=(B, R, C)) -> Problem:
    """A problem of the backend and dtype (the Ritz functions take their namespace,
    dtype and batch size from it)."""
    return Problem.of(js.aslinearoperator(from_numpy(np.zeros(shape), backend, dtype)))


def _batch(kind: str, seed: int, r: int = R, c: int = C) -> np.ndarray:
    """``(B, r, c)``: a matrix of the kind, and a random one beside it; ``tiny`` and
    ``huge`` scale a random matrix to where its squares under- or overflow in float32."""
    scale = {"tiny": 1e-30, "huge": 1e30}.get(kind, 1.0)
    base = "random" if scale != 1.0 else kind
    first = make_matrix(r, c, base, seed) * scale
    return np.stack([first, make_matrix(r, c, "random", seed + 1)])


def _eps(dtype: str) -> float:
    return float(np.finfo(dtype).eps)


@given(kind=KINDS, seed=st.integers(0, 2**16))
def test_gram_eigh_gives_the_singular_values(backend, dtype, kind, seed):
    """``scale * sqrt(lam)`` are the singular values: the top one to rounding, the
    others to ``sqrt(eps)`` of it (squaring costs them relative accuracy); ``X`` are
    orthonormal eigenvectors of the scaled Gram matrix."""
    M = _batch(kind, seed).astype(dtype)
    p = _problem(backend, dtype)
    lam, X, scale = ritz.gram_eigh(p, from_numpy(M, backend, dtype))
    lam, X, scale = to_numpy(lam), to_numpy(X), to_numpy(scale)
    ref = np.linalg.svd(M.astype(np.float64), compute_uv=False)[:, ::-1]  # ascending
    top = ref[:, -1:]
    sigma = np.sqrt(np.maximum(lam, 0)) * scale[:, 0]
    eps = _eps(dtype)
    np.testing.assert_allclose(sigma[:, -1:], top, rtol=50 * eps)
    # the Gram matrix of the R rows has R - C more eigenvalues, zero
    assert np.all(np.abs(sigma[:, R - C:] - ref) <= 50 * np.sqrt(eps) * top)
    assert np.all(sigma[:, :R - C] <= 50 * np.sqrt(eps) * top)
    np.testing.assert_allclose(np.swapaxes(X, -1, -2) @ X, np.broadcast_to(np.eye(R), X.shape),
                               atol=50 * eps)
    np.testing.assert_allclose(to_numpy(ritz.top_value(p, from_numpy(lam, backend, dtype),
                                                       from_numpy(scale, backend, dtype))),
                               top, rtol=50 * eps)


@given(kind=KINDS, seed=st.integers(0, 2**16))
def test_top_triplet(backend, dtype, kind, seed):
    """``(sigma, x, y)``: the top singular value, unit ``x`` and ``y`` with
    ``M^H x = sigma y`` and ``M y = sigma x``; ``y = e_0`` for the zero matrix."""
    M = _batch(kind, seed).astype(dtype)
    p = _problem(backend, dtype)
    S, x, y = (to_numpy(a) for a in ritz.top_triplet(p, from_numpy(M, backend, dtype)))
    ref = np.linalg.svd(M.astype(np.float64), compute_uv=False)[:, :1]
    eps = _eps(dtype)
    np.testing.assert_allclose(S, ref, rtol=50 * eps)
    np.testing.assert_allclose(np.linalg.norm(x[..., 0], axis=-1), 1.0, rtol=50 * eps)
    np.testing.assert_allclose(np.linalg.norm(y[..., 0], axis=-1), 1.0, rtol=50 * eps)
    Mh = np.swapaxes(M, -1, -2).astype(np.float64)
    tol = 50 * np.sqrt(eps) * ref[:, :, None]  # vectors of clustered values: sqrt(eps)
    assert np.all(np.abs(Mh @ x - S[:, :, None] * y) <= tol)
    assert np.all(np.abs(M @ y - S[:, :, None] * x) <= tol)
    if kind == "zero":
        np.testing.assert_array_equal(y[0, :, 0], np.eye(C)[0])


def _padded(M: np.ndarray, size: int) -> np.ndarray:
    """``M`` in the top-left corner of a ``(B, size, size)`` buffer of zeros."""
    out = np.zeros(M.shape[:-2] + (size, size), dtype=M.dtype)
    out[..., :M.shape[-2], :M.shape[-1]] = M
    return out


@given(kind=KINDS, seed=st.integers(0, 2**16), k=st.sampled_from([1, 2]),
       padded=st.booleans())
def test_svd_ritz(backend, dtype, kind, seed, k, padded):
    """The top ``k`` singular values and vectors of the filled ``J x J`` block, whether
    given as itself or inside a larger buffer (then the vectors are zero outside it)."""
    J, size = C, C + 2
    M = _batch(kind, seed, J, J).astype(dtype)
    Mb = _padded(M, size) if padded else M
    p = _problem(backend, dtype, (B, Mb.shape[-1], Mb.shape[-1]))
    vals, X, Y = (to_numpy(a) for a in ritz.svd_ritz(p, from_numpy(Mb, backend, dtype), J, k))
    ref = np.linalg.svd(M.astype(np.float64), compute_uv=False)[:, :k]
    eps = _eps(dtype)
    top = np.maximum(ref[:, :1], np.finfo(dtype).tiny)
    assert np.all(np.abs(vals - ref) <= 50 * eps * top)
    assert X.shape == Y.shape == (B, Mb.shape[-1], k)
    if padded:
        np.testing.assert_array_equal(X[:, J:], 0.0)
        np.testing.assert_array_equal(Y[:, J:], 0.0)
    X, Y = X[:, :J].astype(np.float64), Y[:, :J].astype(np.float64)
    eye = np.broadcast_to(np.eye(k), (B, k, k))
    np.testing.assert_allclose(np.swapaxes(Y, -1, -2) @ Y, eye, atol=50 * eps)
    np.testing.assert_allclose(np.swapaxes(X, -1, -2) @ X, eye, atol=50 * eps)
    assert np.all(np.abs(M @ Y - X * vals[:, None, :]) <= 50 * np.sqrt(eps) * top[:, :, None])


def _order(w: np.ndarray, which: str) -> np.ndarray:
    key = {"LM": -np.abs(w), "LA": -w, "SA": w}[which]
    return w[np.argsort(key, kind="stable")]


@given(kind=KINDS, seed=st.integers(0, 2**16), which=st.sampled_from(["LM", "LA", "SA"]),
       padded=st.booleans())
def test_eig_ritz(backend, dtype, kind, seed, which, padded):
    """The ``k`` wanted eigenvalues of the filled block, ordered by ``which``, their
    orthonormal vectors (zero outside the block), and the spectral radius of the block."""
    J, k, size = C, 2, C + 2
    G = _batch(kind, seed, J, J)
    T = ((G + np.swapaxes(G, -1, -2)) / 2).astype(dtype)
    Tb = _padded(T, size) if padded else T
    p = _problem(backend, dtype, (B, Tb.shape[-1], Tb.shape[-1]))
    vals, S, radius = (to_numpy(a) for a in ritz.eig_ritz(p, from_numpy(Tb, backend, dtype),
                                                          J, which, k))
    w = np.linalg.eigvalsh(T.astype(np.float64))
    rad = np.abs(w).max(axis=-1, keepdims=True)
    eps = _eps(dtype)
    tol = 50 * eps * np.maximum(rad, np.finfo(dtype).tiny)
    ref = np.stack([_order(wi, which)[:k] for wi in w])
    if which == "LM":  # equal magnitudes of opposite sign come in either order
        assert np.all(np.abs(np.abs(vals) - np.abs(ref)) <= tol)
    else:
        assert np.all(np.abs(vals - ref) <= tol)
    assert np.all(np.abs(radius - rad) <= tol)
    if padded:
        np.testing.assert_array_equal(S[:, J:], 0.0)
    S = S[:, :J].astype(np.float64)
    np.testing.assert_allclose(np.swapaxes(S, -1, -2) @ S, np.broadcast_to(np.eye(k), (B, k, k)),
                               atol=50 * eps)
    assert np.all(np.abs(T @ S - S * vals[:, None, :]) <= 50 * np.sqrt(eps) * rad[:, :, None])


# ------------------------------------------------------------------ thick restarts

M_, N_, JMAX, KEEP = 9, 7, 5, 3


def _orthonormal_rows(X: np.ndarray, tol: float) -> None:
    np.testing.assert_allclose(X @ X.T, np.eye(len(X)), atol=tol)


@pytest.mark.parametrize("kind", ["random", "rankdef"])
def test_gkl_restart_keeps_the_top_triplets_and_the_relation(backend, dtype, kind):
    """A thick restart of a full GKL basis keeps the top ``keep`` Ritz triplets: the new
    bases are orthonormal, the projected matrix is the diagonal of their values (which
    are the old top values), and the steps after it keep ``M = U^H A V`` (an arrowhead)
    and ``A V = U M``."""
    A = make_matrix(M_, N_, kind, seed=4).astype(dtype).astype(np.float64)
    p = Problem.of(js.aslinearoperator(from_numpy(A, backend, dtype)))
    s = krylov.init(p, None, JMAX, two_sided=True)
    for _ in range(JMAX):
        s = krylov.gkl_step(p, s)
    old = np.linalg.svd(to_numpy(ritz.gkl_matrix(p, s))[0][:JMAX, :JMAX], compute_uv=False)
    r = ritz.gkl_restart(p, s, KEEP)
    assert r.j == KEEP
    np.testing.assert_array_equal(to_numpy(r.fresh_from), to_numpy(s.fresh_from) - (JMAX - KEEP))
    eps, rel = 100 * p.eps, 10 * p.bd_rtol * np.linalg.norm(A, 2)
    np.testing.assert_allclose(np.diag(to_numpy(r.C)[0])[:KEEP], old[:KEEP], atol=rel)
    for j in range(KEEP, JMAX + 1):
        V, U = to_numpy(r.V)[0, :j], to_numpy(r.U)[0, :j]
        M = to_numpy(ritz.gkl_matrix(p, r))[0][:j, :j]
        _orthonormal_rows(V, eps)
        _orthonormal_rows(U, eps)
        np.testing.assert_allclose(M, U @ A @ V.T, atol=rel)
        np.testing.assert_allclose(A @ V.T, U.T @ M, atol=rel)
        if j < JMAX:
            r = krylov.gkl_step(p, r)


@pytest.mark.parametrize("which", ["LA", "SA"])
def test_lanczos_restart_keeps_the_wanted_pairs_and_the_relation(backend, dtype, which):
    """The Lanczos thick restart keeps the ``keep`` wanted Ritz pairs; the steps after it
    keep ``T = Q^H A Q``."""
    rng = np.random.default_rng(8)
    G = rng.standard_normal((N_, N_))
    A = ((G + G.T) / 2).astype(dtype).astype(np.float64)
    p = Problem.of(js.aslinearoperator(from_numpy(A, backend, dtype)))
    s = krylov.init(p, None, JMAX, two_sided=False)
    for _ in range(JMAX):
        s = krylov.lanczos_step(p, s)
    old = _order(np.linalg.eigvalsh(to_numpy(ritz.lanczos_matrix(p, s))[0][:JMAX, :JMAX]),
                 which)
    r = ritz.lanczos_restart(p, s, KEEP, which)
    eps, rel = 100 * p.eps, 10 * p.bd_rtol * np.linalg.norm(A, 2)
    np.testing.assert_allclose(np.diag(to_numpy(r.C)[0])[:KEEP], old[:KEEP], atol=rel)
    for j in range(KEEP, JMAX + 1):
        Q = to_numpy(r.V)[0, :j]
        _orthonormal_rows(Q, eps)
        np.testing.assert_allclose(to_numpy(ritz.lanczos_matrix(p, r))[0][:j, :j],
                                   Q @ A @ Q.T, atol=rel)
        if j < JMAX:
            r = krylov.lanczos_step(p, r)
