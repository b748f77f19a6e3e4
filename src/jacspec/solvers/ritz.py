"""Ritz extraction from a Krylov state: the small projected problem, its top singular
triplets / wanted eigenpairs, their residuals, and thick restarts.

Two shapes of the small problem: the filled ``J x J`` block (outside a trace, where the
framework allows changing shapes), or the whole fixed-width ``jmax x jmax`` buffer with
its empty part pushed out of the way (a diagonal "sentinel" above every value there, and
a selection of the vectors that live in the filled part), so that frameworks that compile
per shape (JAX) compile once per problem.
"""

from __future__ import annotations

import math
from typing import Any

from .context import Context
from .krylov import KrylovState

Array = Any


# ------------------------------------------------------------------ the small problems


def gkl_matrix(ctx: Context, s: KrylovState) -> Array:
    """``M = U^H A V``: the filled block (sliced) or the whole buffer."""
    M = ctx.xp.matrix_transpose(s.C)
    return M[:, :s.j, :s.j] if ctx.sliced else M


def lanczos_matrix(ctx: Context, s: KrylovState) -> Array:
    """``T = Q^H A Q``, Hermitian, from the upper triangle of ``C^T``."""
    xp = ctx.xp
    T = xp.matrix_transpose(s.C)
    T = T[:, :s.j, :s.j] if ctx.sliced else T
    J = int(T.shape[-1])
    ar = xp.arange(J, device=ctx.device)
    upper = T * ctx.cast(xp.astype(ar[:, None] < ar[None, :], ctx.real_dtype))
    eye = xp.eye(J, dtype=ctx.real_dtype, device=ctx.device)
    diag = xp.real(T) * eye if ctx.is_complex else T * eye
    return upper + ctx.H(upper) + ctx.cast(diag)


def _inactive(ctx: Context, J: int, size: int) -> Array:
    """``(size,)`` real: 1 on rows at or beyond ``J`` (the empty part of a buffer)."""
    xp = ctx.xp
    return xp.astype(xp.arange(size, device=ctx.device) >= J, ctx.real_dtype)


def _sentinel(ctx: Context, M: Array, J: int) -> Array:
    """``M`` plus, on the empty part of the diagonal, a value above every singular value
    / |eigenvalue| of ``M`` (2 ||M||_F + 1)."""
    xp = ctx.xp
    fro = xp.sqrt(xp.sum(xp.sum(xp.real(ctx.conj(M) * M), axis=-1), axis=-1))
    size = int(M.shape[-1])
    eye = xp.eye(size, dtype=ctx.real_dtype, device=ctx.device)
    return M + ctx.cast((2 * fro + 1)[:, None, None] * eye * _inactive(ctx, J, size))


def _pick(ctx: Context, key: Array, k: int, weight: Array | None = None) -> Array:
    """One-hot ``(B, size, k)`` of the ``k`` largest keys, descending (ties: first);
    with ``weight``, only among entries whose vectors live in the filled part."""
    xp = ctx.xp
    if weight is not None:
        floor = xp.min(key, axis=-1, keepdims=True) - 1
        key = xp.where(weight > 0.5, key, floor)
    size = int(key.shape[-1])
    idx = xp.argsort(key, axis=-1, descending=True, stable=True)[..., :k]
    ar = xp.astype(xp.arange(size, device=ctx.device), idx.dtype)
    return xp.astype(idx[..., None, :] == ar[:, None], ctx.real_dtype)


def _weights(ctx: Context, vecs: Array, J: int) -> Array:
    """Squared norm of each column of ``vecs`` on the filled rows."""
    xp = ctx.xp
    act = 1 - _inactive(ctx, J, int(vecs.shape[-2]))
    return xp.sum(xp.real(ctx.conj(vecs) * vecs) * act[:, None], axis=-2)


def _take(ctx: Context, P: Array, X: Array, vals: Array) -> tuple[Array, Array]:
    """The selected columns ``X P`` and values ``vals P``."""
    xp = ctx.xp
    return xp.sum(vals[:, :, None] * P, axis=-2), xp.matmul(X, ctx.cast(P))


# ------------------------------------------------------------------ singular triplets


def svd_ritz(ctx: Context, M: Array, J: int, k: int):
    """Top-``k`` singular values ``(B, k)`` and the coordinates of their left and right
    vectors ``(B, size, k)`` in the bases (``size`` rows: those of ``M``)."""
    xp = ctx.xp
    if isinstance(J, int) and int(M.shape[-1]) == J:  # the filled block itself
        if k == 1:
            return top_triplet(ctx, M, xp.linalg.eigh(xp.matmul(M, ctx.H(M)))[1])
        X, S, Yh = xp.linalg.svd(M, full_matrices=False)
        return S[:, :k], X[..., :k], ctx.H(Yh)[..., :k]
    X, S, Yh = xp.linalg.svd(_sentinel(ctx, M, J), full_matrices=False)
    Y = ctx.H(Yh)
    P = _pick(ctx, S, k, _weights(ctx, Y, J))
    vals, Yk = _take(ctx, P, Y, S)
    return vals, xp.matmul(X, ctx.cast(P)), Yk


def top_triplet(ctx: Context, M: Array, X: Array):
    """The top singular triplet of ``M`` from the eigenvectors ``X`` (ascending) of
    ``M M^H`` (batched ``eigh`` of small matrices is cheaper than an SVD on CPU):
    ``x`` the top eigenvector, ``y = M^H x / ||M^H x||`` (a unit vector where
    ``M^H x = 0``), ``sigma = ||M^H x||``."""
    xp = ctx.xp
    J = int(M.shape[-1])
    x = X[..., J - 1:]
    y = xp.matmul(ctx.H(M), x)
    S = ctx.norm(y[..., 0])[:, None]
    e0 = ctx.cast(xp.astype(xp.arange(J, device=ctx.device) == 0, ctx.real_dtype))
    y = xp.where(S[:, :, None] > 0,
                 y / ctx.cast(xp.where(S > 0, S, xp.ones_like(S)))[:, :, None],
                 e0[None, :, None])
    return S, x, y


def svd_screen(ctx: Context, M: Array, beta: Array, k: int, tol: float):
    """A cheap convergence screen of the filled block: the top ``k`` eigenpairs of
    ``M M^H`` give the singular values and the left vectors whose last entries give the
    Ritz residuals. Returns ``(residuals, tol * sigma_1, eigenvectors)``."""
    xp = ctx.xp
    J = int(M.shape[-1])
    lam, X = xp.linalg.eigh(xp.matmul(M, ctx.H(M)))  # ascending
    top = lam[:, J - 1:]
    res = beta[:, None] * xp.abs(X[:, J - 1, J - k:])
    return res, tol * xp.sqrt(xp.maximum(top, xp.zeros_like(top))), X


# ------------------------------------------------------------------ eigenpairs

_KEYS = {"LM": lambda xp, t: xp.abs(t), "LA": lambda xp, t: t, "SA": lambda xp, t: -t}


def eig_ritz(ctx: Context, T: Array, J: int, which: str, k: int):
    """The ``k`` wanted Ritz values ``(B, k)`` (ordered by ``which``), the coordinates
    of their vectors ``(B, size, k)`` and the spectral radius estimate ``(B, 1)``."""
    xp = ctx.xp
    key = _KEYS[which]
    if isinstance(J, int) and int(T.shape[-1]) == J:
        theta, S = xp.linalg.eigh(T)
        vals, vecs = _take(ctx, _pick(ctx, key(xp, theta), k), S, theta)
        return vals, vecs, xp.max(xp.abs(theta), axis=-1, keepdims=True)
    theta, S = xp.linalg.eigh(_sentinel(ctx, T, J))
    w = _weights(ctx, S, J)
    vals, vecs = _take(ctx, _pick(ctx, key(xp, theta), k, w), S, theta)
    act = xp.where(w > 0.5, xp.abs(theta), xp.zeros_like(theta))
    return vals, vecs, xp.max(act, axis=-1, keepdims=True)


def eig_screen(ctx: Context, T: Array, beta: Array, which: str, tol: float):
    """For ``k = 1``: residuals of the wanted Ritz value (ties count with their largest
    residual), ``tol`` times the spectral radius, and a mask of the wanted entries."""
    xp = ctx.xp
    J = int(T.shape[-1])
    theta, S = xp.linalg.eigh(T)
    key = _KEYS[which](xp, theta)
    wanted = key >= xp.max(key, axis=-1, keepdims=True)
    res = beta[:, None] * xp.abs(S[:, J - 1, :])
    return res, tol * xp.max(xp.abs(theta), axis=-1, keepdims=True), wanted


def last_row_residuals(ctx: Context, X: Array, J: int, beta: Array) -> Array:
    """Ritz residuals ``beta * |x[J - 1]|`` of coordinate vectors ``X`` (B, size, k)."""
    return beta[:, None] * ctx.xp.abs(X[:, J - 1, :])


def worst_ratio(ctx: Context, res: Array, ref: Array, mask: Array | None = None) -> float:
    """``max(res / ref)`` as one host read: at most 1 iff every (unmasked) value has
    converged. ``mask`` False entries count as converged (0), ``inf`` marks a problem
    that may not stop yet."""
    return ctx.backend.to_float(max_ratio(ctx, res, ref, mask))


def max_ratio(ctx: Context, res: Array, ref: Array, mask: Array | None = None) -> Array:
    """:func:`worst_ratio` as a 0-d array (no host read)."""
    xp = ctx.xp
    ratio = res / (ref + ctx.tiny_normal)
    if mask is not None:
        ratio = xp.where(mask, ratio, xp.zeros_like(ratio))
    return xp.max(ratio)


# ------------------------------------------------------------------ thick restarts


def _shrink(ctx: Context, X: Array, basis: Array, jmax: int) -> Array:
    """New basis rows ``X^T basis`` (keep of them), zero rows up to ``jmax``."""
    xp = ctx.xp
    rows = xp.matmul(xp.matrix_transpose(X), basis)
    pad = ctx.zeros((ctx.B, jmax - int(X.shape[-1]), int(basis.shape[-1])))
    return xp.concat([rows, pad], axis=-2)


def _diagonal(ctx: Context, d: Array, jmax: int) -> Array:
    xp = ctx.xp
    keep = int(d.shape[-1])
    d = xp.concat([d, ctx.zeros((ctx.B, jmax - keep), real=True)], axis=-1)
    return ctx.cast(d[:, :, None] * xp.eye(jmax, dtype=ctx.real_dtype, device=ctx.device))


def gkl_restart(ctx: Context, s: KrylovState, keep: int) -> KrylovState:
    """Keep the top ``keep`` Ritz triplets of a full basis: they become the bases and
    their values the projected matrix; the next step adds the coupling."""
    jmax = int(s.C.shape[-1])
    S, X, Y = svd_ritz(ctx, ctx.xp.matrix_transpose(s.C), jmax, keep)
    return _renumbered(s, keep, jmax)._replace(
        V=_shrink(ctx, Y, s.V, jmax), U=_shrink(ctx, X, s.U, jmax),
        C=_diagonal(ctx, S, jmax))


def lanczos_restart(ctx: Context, s: KrylovState, keep: int, which: str) -> KrylovState:
    """Keep the ``keep`` wanted Ritz pairs of a full basis (see :func:`gkl_restart`)."""
    jmax = int(s.C.shape[-1])
    vals, S, _ = eig_ritz(ctx, lanczos_matrix(ctx, s._replace(j=jmax)), jmax, which, keep)
    return _renumbered(s, keep, jmax)._replace(V=_shrink(ctx, S, s.V, jmax),
                                               C=_diagonal(ctx, vals, jmax))


def _renumbered(s: KrylovState, keep: int, jmax: int) -> KrylovState:
    """Rows are renumbered by a restart: the breakdown bookkeeping moves with them (a run
    keeps its length)."""
    return s._replace(j=keep, fresh_from=s.fresh_from - (jmax - keep),
                      last_break=s.last_break - (jmax - keep))


def finite_or_raise(ctx: Context, q: float, M: Array) -> float:
    """``q`` itself; a NaN ratio comes from NaN/Inf in the products, reported as such."""
    if math.isnan(q):
        ctx.check_finite(M)
    return q
