"""Dense solvers: materialize the operator from ``min(m, n)`` products (one block),
then an exact batched SVD / Hermitian eigendecomposition of the framework.

The top singular triplet alone (``k = 1``: spectral norms, penalties) comes from the
Hermitian eigendecomposition of the small Gram matrix ``M M^H`` (or ``M^H M``): several
times cheaper than an SVD of ``M`` for the same accuracy of the top triplet (its
eigenvalue's error is ``eps ||M||^2``, relative ``eps``; only the smaller singular values
lose relative accuracy through a Gram matrix, so ``k > 1`` keeps the SVD)."""

from __future__ import annotations

from typing import Any

from ..interop import materialize
from .context import Context
from .driver import KrylovResult
from .ritz import eig_ritz

Array = Any


def _matrix(ctx: Context) -> tuple[Array, Array | None]:
    """The materialized matrix ``(B, m, n)`` and, inside a compiled piece, the flag of
    :meth:`Context.finite_flag`."""
    M = materialize(ctx.op, grad=False)
    if not ctx.op.batch_shape:
        M = M[None]
    M = ctx.backend.stop_gradient(M)
    if ctx.backend.is_traced(M):
        ctx.traced = True
    return M, ctx.finite_flag(M, what="product (materializing the operator)")


def _exact(values: Array) -> tuple[Array, Array]:
    zero = values * 0
    return zero, zero == 0


def svd_dense(ctx: Context, k: int) -> KrylovResult:
    """Top-``k`` singular triplets of the materialized matrix (``ctx`` not adjointed):
    one compiled piece where the solve is staged (``Context.stage_solve``)."""
    ctx.stage_solve("dense svd", k)
    flag, values, U, V = ctx.stage("svd", _svd_arrays, k)()
    ctx.raise_unless(flag)
    ctx.count += min(ctx.op.shape)
    res, conv = _exact(values)
    return KrylovResult(values, U, V, res, conv, ctx.count)


def _svd_arrays(ctx: Context, k: int) -> tuple[Array | None, Array, Array, Array]:
    xp = ctx.xp
    M, flag = _matrix(ctx)
    if k == 1:
        values, U, V = _top_triplet(ctx, M)
    else:
        U, S, Vh = xp.linalg.svd(M, full_matrices=False)
        values, U, V = S[..., :k], U[..., :k], ctx.H(Vh)[..., :k]
    return flag, values, U, V


def _top_triplet(ctx: Context, M: Array) -> tuple[Array, Array, Array]:
    """``(sigma (B, 1), u (B, m, 1), v (B, n, 1))`` of ``M (B, m, n)`` from the top
    eigenpair of the Gram matrix of its smaller side."""
    xp = ctx.xp
    wide = M.shape[-2] <= M.shape[-1]
    A = ctx.H(M) if not wide else M  # (B, small, large)
    # Scaled by its largest entry, so that squaring neither underflows nor overflows.
    scale = xp.max(xp.max(xp.abs(A), axis=-1), axis=-1)[:, None, None]
    scale = xp.where(scale > 0, scale, xp.ones_like(scale))
    As = A / ctx.cast(scale)
    lam, X = xp.linalg.eigh(As @ ctx.H(As))
    x = X[..., -1:]  # eigh sorts ascending
    top = xp.real(lam[..., -1:]) if ctx.is_complex else lam[..., -1:]  # TF: complex dtype
    sigma = xp.sqrt(xp.clip(top, min=0.0)) * scale[:, 0, :]
    y = ctx.H(A) @ x  # (B, large, 1): sigma times the other singular vector
    # sigma = 0 only for M = 0, where any unit vector is singular: take e_1.
    e1 = xp.astype(xp.arange(int(y.shape[-2]), device=ctx.device) == 0, ctx.dtype)
    pos = sigma[:, None, :] > 0
    safe = xp.where(pos, sigma[:, None, :], xp.ones_like(sigma[:, None, :]))
    y = xp.where(pos, y / ctx.cast(safe), e1[:, None])
    return (sigma, x, y) if wide else (sigma, y, x)


def eig_dense(ctx: Context, k: int, *, which: str) -> KrylovResult:
    """``k`` wanted eigenpairs of the Hermitian part of the materialized matrix (one
    compiled piece where the solve is staged)."""
    ctx.stage_solve("dense eig", k, which)
    flag, values, vectors = ctx.stage("eig", _eig_arrays, k, which)()
    ctx.raise_unless(flag)
    ctx.count += min(ctx.op.shape)
    res, conv = _exact(values)
    return KrylovResult(values, None, vectors, res, conv, ctx.count)


def _eig_arrays(ctx: Context, k: int, which: str) -> tuple[Array | None, Array, Array]:
    M, flag = _matrix(ctx)
    values, vectors, _ = eig_ritz(ctx, (M + ctx.H(M)) / 2, int(M.shape[-1]), which, k)
    return flag, values, vectors
