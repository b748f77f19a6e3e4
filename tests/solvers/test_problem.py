"""The solvers' product count: carried in the step states, it is the number of products
the operator took (``num_matvecs``), for every method, start and batch, in every backend;
a Problem is never written to."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest

import jacspec as js
from _helpers import from_numpy
from jacspec.operators import LinearOperator
from jacspec.solvers.problem import Problem


class _Counted(LinearOperator):
    """``inner`` with a tally of the products taken (a column of a block counts once)."""

    def __init__(self, inner: LinearOperator) -> None:
        super().__init__(inner.shape, dtype=inner.dtype, backend=inner.backend_impl,
                         device=inner.device, batch_shape=inner.batch_shape)
        self.inner, self.products = inner, 0

    @property
    def is_hermitian(self) -> bool:
        return self.inner.is_hermitian

    def _mm(self, V, *, adjoint=False, grad=False):
        self.products += int(V.shape[-1])
        return self.inner._mm(V, adjoint=adjoint, grad=grad)

    def _mv(self, v, *, adjoint=False):
        self.products += 1
        return self.inner._mv(v, adjoint=adjoint)


def _op(backend: str, A: np.ndarray) -> _Counted:
    return _Counted(js.aslinearoperator(from_numpy(A, backend, "float64")))


def _spectrum_matrix(m: int, n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    r = min(m, n)
    U = np.linalg.qr(rng.standard_normal((m, r)))[0]
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    return (U * 0.9 ** np.arange(r)) @ V.T


@pytest.mark.parametrize("method,k,maxiter", [("lanczos", 1, None), ("lanczos", 3, None),
                                              ("lanczos", 2, 9), ("power", 2, None),
                                              ("dense", 2, None)])
# the wide operator is the tall one's shape transposed: iterating on its adjoint, the
# solve takes the tall one's shapes, and eager JAX reuses its compiled operations
@pytest.mark.parametrize("shape", [(60, 40), (40, 60)])
def test_svds_counts_the_products_taken(backend, method, k, maxiter, shape):
    """Wide operators iterate on the adjoint; a ``v0`` there costs one product more."""
    A = _spectrum_matrix(*shape)
    for v0 in (None, np.ones(shape[1])):
        op = _op(backend, A)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # maxiter stops short
            res = js.svds(op, k=k, method=method, maxiter=maxiter, tol=1e-8,
                          v0=None if v0 is None else from_numpy(v0, backend, "float64"))
        assert res.num_matvecs == op.products


@pytest.mark.parametrize("method,which", [("lanczos", "LM"), ("lanczos", "SA"),
                                          ("power", "LM"), ("power", "LA")])
def test_eigsh_counts_the_products_taken(backend, method, which):
    """``LA`` / ``SA`` power iteration runs twice (a spectral radius estimate first):
    both runs count."""
    rng = np.random.default_rng(1)
    Q = np.linalg.qr(rng.standard_normal((40, 40)))[0]
    A = (Q * np.linspace(-3.0, 5.0, 40)) @ Q.T
    op = _op(backend, A)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = js.eigsh(op, k=2, which=which, method=method, tol=1e-6, maxiter=400)
    assert res.num_matvecs == op.products


def test_batched_svds_counts_once_per_product(backend):
    """A batched product advances all problems: it counts once."""
    A = np.stack([_spectrum_matrix(30, 20, s) for s in range(3)])
    op = _op(backend, A)
    res = js.svds(op, k=2, method="lanczos")
    assert res.num_matvecs == op.products


def test_a_problem_is_never_written_to(backend):
    p = Problem.of(js.aslinearoperator(from_numpy(np.eye(3), backend, "float64")))
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.seed = 1  # type: ignore[misc]
    assert p.with_tol(1e-3).bd_rtol == 1e-3 and p.bd_rtol < 1e-3


# ------------------------------------------------------------ vectors sharded across processes


class _TwoEqualShards(LinearOperator):
    """``blockdiag(A, A)`` as two processes would hold it if both held the same part
    ``v`` of every vector ``[v; v]``: products act on the local part, and the sum over
    the two processes of a partial reduction is twice this process's. A solver that
    skips a reduction (a local norm) computes with the wrong scale and fails here."""

    def __init__(self, A: np.ndarray) -> None:
        from jacspec.backends import Sharding, get_backend

        n = A.shape[0]
        super().__init__((2 * n, 2 * n), dtype=A.dtype, backend=get_backend("numpy"))
        self.A = A
        self.sharding = Sharding(local_n=n, rank=0, sum=lambda x: 2 * x)

    @property
    def is_hermitian(self) -> bool:
        return True

    def _mm(self, V, *, adjoint=False, grad=False):
        return self.A @ V


def test_sharded_vectors_reduce_every_inner_product():
    rng = np.random.default_rng(0)
    n = 60  # the Krylov spaces stay far below n (the part [v; v] spans n dimensions)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * np.r_[3.0, 2.5, np.linspace(-1.0, 1.0, n - 2)]) @ Q.T
    op, plain = _TwoEqualShards(A), js.aslinearoperator(A)
    top = np.linalg.eigvalsh(A)[::-1][:2]
    res = js.eigsh(op, k=2, which="LA", method="lanczos", tol=1e-10, return_vectors=True)
    np.testing.assert_allclose(res.values, top, rtol=1e-10)
    assert res.vectors.shape == (n, 2)  # the local part; its global norm is one
    np.testing.assert_allclose(2 * res.vectors.T @ res.vectors, np.eye(2), atol=1e-10)
    np.testing.assert_allclose(js.eigsh(op, k=1, method="power", tol=1e-8).values, [3.0],
                               rtol=1e-6)
    # the same draws as one process (rank 0): every probe is [z; z]
    np.testing.assert_allclose(js.trace(op, num_probes=5, method="hutchinson", seed=1),
                               2 * js.trace(plain, num_probes=5, method="hutchinson", seed=1),
                               rtol=1e-12)
    sd, ref = (js.spectral_density(o, num_probes=3, num_steps=8, seed=2) for o in (op, plain))
    for q in (1, 2, 3):
        np.testing.assert_allclose(sd.moment(q), ref.moment(q), rtol=1e-10)
    assert np.isfinite(js.trace(op, num_probes=6, seed=3))  # Hutch++: SVQB sketch
    with pytest.raises(ValueError, match="sharded"):
        js.eigsh(op, k=1, method="dense")
    with pytest.raises(ValueError, match=r"\(60,\)"):
        op @ np.ones(2 * n)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sharded_orthonormal_basis_of_a_rank_deficient_block(dtype):
    """Hutch++ sketches of a low-rank Hessian are rank-deficient: the sharded basis
    spans their range with orthonormal columns (and zero columns for the rest), with no
    Cholesky failure or NaN."""
    from jacspec.solvers.problem import Problem

    rng = np.random.default_rng(4)
    n, k, r = 40, 6, 3
    X = (rng.standard_normal((n, r)) @ rng.standard_normal((r, k))).astype(dtype)
    X[:, 4] = 0.0
    p = Problem.of(_TwoEqualShards(np.eye(n, dtype=dtype)))
    Q = p.orthonormal(X[None])[0]
    assert np.all(np.isfinite(Q))
    tol = 50 * np.finfo(dtype).eps
    G = 2 * Q.T @ Q  # the summed Gram matrix: identity on the kept columns, zero otherwise
    kept = np.diag(G) > 0.5
    assert kept.sum() == r
    np.testing.assert_allclose(G, np.diag(kept.astype(dtype)), atol=tol)
    P = 2 * Q @ Q.T  # the projector onto the range of X (each process holds [v; v])
    np.testing.assert_allclose(P @ X, X, atol=tol * np.abs(X).max() * k)
