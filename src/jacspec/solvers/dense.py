"""Dense solvers: materialize the operator from ``min(m, n)`` products (one block),
then an exact batched SVD / Hermitian eigendecomposition of the framework."""

from __future__ import annotations

from typing import Any

from ..interop import materialize
from .context import Context
from .driver import KrylovResult
from .ritz import eig_ritz

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


def _exact(values: Array) -> tuple[Array, Array]:
    zero = values * 0
    return zero, zero == 0


def svd_dense(ctx: Context, k: int) -> KrylovResult:
    """Top-``k`` singular triplets of the materialized matrix (``ctx`` not adjointed)."""
    xp = ctx.xp
    U, S, Vh = xp.linalg.svd(_matrix(ctx), full_matrices=False)
    values = S[..., :k]
    res, conv = _exact(values)
    return KrylovResult(values, U[..., :k], ctx.H(Vh)[..., :k], res, conv, ctx.count)


def eig_dense(ctx: Context, k: int, *, which: str) -> KrylovResult:
    """``k`` wanted eigenpairs of the Hermitian part of the materialized matrix."""
    M = _matrix(ctx)
    values, vectors, _ = eig_ritz(ctx, (M + ctx.H(M)) / 2, int(M.shape[-1]), which, k)
    res, conv = _exact(values)
    return KrylovResult(values, None, vectors, res, conv, ctx.count)
