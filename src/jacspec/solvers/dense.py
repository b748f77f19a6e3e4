"""Dense solvers: materialize the operator from ``min(m, n)`` products, then an exact
batched SVD / Hermitian eigendecomposition of the framework."""

from __future__ import annotations

from typing import Any

from ..interop import materialize
from .decomp import Context, KrylovResult, select

Array = Any


def _matrix(ctx: Context) -> Array:
    M = materialize(ctx.op, grad=False)
    ctx.count += min(ctx.op.shape)
    if not ctx.op.batch_shape:
        M = M[None]
    M = ctx.backend.stop_gradient(M)
    if ctx.backend.is_traced(M):
        ctx.traced = True
    ctx.check_finite(M, "product (materializing the operator)")
    return M


def _done(ctx: Context, values: Array) -> tuple[Array, Array]:
    xp = ctx.xp
    res = xp.zeros_like(values)
    return res, res == 0


def svd_dense(ctx: Context, k: int) -> KrylovResult:
    """Top-``k`` singular triplets of the materialized matrix (``ctx`` not adjointed)."""
    xp = ctx.xp
    M = _matrix(ctx)
    U, S, Vh = xp.linalg.svd(M, full_matrices=False)
    values = S[..., :k]
    res, conv = _done(ctx, values)
    right = ctx.H(Vh)[..., :k]
    return KrylovResult(values, U[..., :k], right, res, conv, ctx.count)


def eig_dense(ctx: Context, k: int, *, which: str) -> KrylovResult:
    """``k`` wanted eigenpairs of the Hermitian part of the materialized matrix."""
    xp = ctx.xp
    M = _matrix(ctx)
    M = (M + ctx.H(M)) / 2
    theta, S = xp.linalg.eigh(M)
    P = select(ctx, theta, which, k)
    values = xp.sum(theta[:, :, None] * P, axis=-2)
    vectors = xp.matmul(S, ctx.cast(P))
    res, conv = _done(ctx, values)
    return KrylovResult(values, None, vectors, res, conv, ctx.count)
