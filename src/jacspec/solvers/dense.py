"""Dense solvers: materialize the operator from ``min(m, n)`` products (one block),
then an exact batched SVD / Hermitian eigendecomposition of the framework.

The top singular triplet alone (``k = 1``: spectral norms, penalties) comes from the
Gram matrix of the smaller side (:func:`.ritz.top_triplet`): several times cheaper than
an SVD of ``M`` for the same accuracy of the top triplet."""

from __future__ import annotations

from typing import Any

from ..interop import materialize
from .problem import Problem
from .ritz import KrylovResult, eig_ritz, top_triplet

Array = Any


def _matrix(p: Problem) -> tuple[Array, Array | None]:
    """The materialized matrix ``(B, m, n)`` and, inside a compiled piece, the flag of
    :meth:`Problem.finite_flag`."""
    M = materialize(p.op, grad=False)
    if not p.op.batch_shape:
        M = M[None]
    M = p.backend.stop_gradient(M)
    return M, p.finite_flag(M, what="product (materializing the operator)")


def _exact(values: Array) -> tuple[Array, Array]:
    zero = values * 0
    return zero, zero == 0


def svd_dense(p: Problem, k: int) -> KrylovResult:
    """Top-``k`` singular triplets of the materialized matrix (``p`` not adjointed):
    one compiled piece where the solve is staged (``Problem.staging``)."""
    p = p.staging("dense svd", k)
    flag, values, U, V = p.stage("svd", _svd_arrays, k)()
    p.raise_unless(flag)
    res, conv = _exact(values)
    return KrylovResult(values, U, V, res, conv, min(p.op.shape))


def _svd_arrays(p: Problem, k: int) -> tuple[Array | None, Array, Array, Array]:
    xp = p.xp
    M, flag = _matrix(p)
    if k == 1:
        values, U, V = _top_triplet(p, M)
    else:
        U, S, Vh = xp.linalg.svd(M, full_matrices=False)
        values, U, V = S[..., :k], U[..., :k], p.H(Vh)[..., :k]
    return flag, values, U, V


def _top_triplet(p: Problem, M: Array) -> tuple[Array, Array, Array]:
    """``(sigma (B, 1), u (B, m, 1), v (B, n, 1))`` of ``M (B, m, n)`` from the Gram
    matrix of its smaller side."""
    wide = M.shape[-2] <= M.shape[-1]
    sigma, x, y = top_triplet(p, M if wide else p.H(M))
    return (sigma, x, y) if wide else (sigma, y, x)


def eig_dense(p: Problem, k: int, *, which: str) -> KrylovResult:
    """``k`` wanted eigenpairs of the Hermitian part of the materialized matrix (one
    compiled piece where the solve is staged)."""
    p = p.staging("dense eig", k, which)
    flag, values, vectors = p.stage("eig", _eig_arrays, k, which)()
    p.raise_unless(flag)
    res, conv = _exact(values)
    return KrylovResult(values, None, vectors, res, conv, min(p.op.shape))


def _eig_arrays(p: Problem, k: int, which: str) -> tuple[Array | None, Array, Array]:
    M, flag = _matrix(p)
    values, vectors, _ = eig_ritz(p, (M + p.H(M)) / 2, int(M.shape[-1]), which, k)
    return flag, values, vectors
