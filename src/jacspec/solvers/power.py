"""Power (block subspace) iteration with Rayleigh–Ritz, batched.

``svd_power`` iterates on ``A^H A`` with a block of ``k`` vectors; ``eig_power`` on a
Hermitian ``A`` (``LM``; ``LA``/``SA`` through a shift by an estimate of the spectral
radius). Convergence comes from the Ritz residuals, as for Lanczos. Power iteration
converges at the rate ``sigma_{k+1} / sigma_k``, which is close to 1 for trained
networks (DESIGN.md): it is offered for comparison and for very cheap steps, not chosen by
``method="auto"``.
"""

from __future__ import annotations

import math
from typing import Any

from .decomp import Context, KrylovResult, _warn_unconverged, select

Array = Any

DEFAULT_MAXITER = 2000
TRACED_MAXITER = 200


def _colnorm(ctx: Context, Z: Array) -> Array:
    """Norms of the columns of ``Z`` (B, s, k): (B, k), real."""
    return ctx.xp.linalg.vector_norm(Z, axis=-2)


def _safe(ctx: Context, nrm: Array) -> Array:
    """``nrm`` plus the smallest normal number: a zero column then stays zero when
    divided by it, and norms more than ``2^24`` (float32; ``2^53`` in float64) times that
    number are unchanged in floating point. One operation, on the hot path of every step."""
    return nrm + ctx.tiny_normal


def _orth(ctx: Context, Z: Array) -> Array:
    if int(Z.shape[-1]) == 1:
        # One vector: a norm, not a (batched LAPACK) QR.
        return Z / ctx.cast(_safe(ctx, _colnorm(ctx, Z)))[:, None, :]
    return ctx.xp.linalg.qr(Z).Q


def _svd_block(ctx: Context, W: Array):
    """``(U, S, Y)`` of a thin SVD of ``W`` (B, s, k); k = 1 without LAPACK."""
    xp = ctx.xp
    if int(W.shape[-1]) == 1:
        S = _colnorm(ctx, W)  # (B, 1)
        return W / ctx.cast(_safe(ctx, S))[:, None, :], S, None
    Uw, S, Yh = xp.linalg.svd(W, full_matrices=False)
    return Uw, S, ctx.H(Yh)


def _stop(ctx: Context, res: Array, bound: Array) -> bool:
    """Whether every residual is within its bound, from one host read (outside a
    trace); raises FloatingPointError for NaN/Inf residuals (a NaN or Inf in a product
    reaches them)."""
    q = ctx.backend.to_float(ctx.xp.max(res - bound))
    if not math.isfinite(q):
        ctx.check_finite(res)  # raises if really non-finite
    return q <= 0


def _start(ctx: Context, k: int, v0: Array | None, maxiter: int | None):
    """The orthonormal start block ``(B, n_in, k)`` and the product limit."""
    V = ctx.start(v0)[..., None]
    if k > 1:
        V = _orth(ctx, ctx.xp.concat([V, ctx.random((ctx.B, ctx.n_in, k - 1))], axis=-1))
    if maxiter is None:
        maxiter = TRACED_MAXITER if ctx.traced else DEFAULT_MAXITER
    return V, maxiter


def _result(ctx: Context, vals: Array, left: Array | None, right: Array, res: Array,
            bound: Array) -> KrylovResult:
    """The result of a power iteration: NaN/Inf in the residuals reported, converged
    where ``res <= bound``, a warning where ``maxiter`` stopped it first."""
    if not ctx.traced:
        ctx.check_finite(res)
    conv = res <= bound
    if not ctx.traced and not ctx.all_true(conv):
        _warn_unconverged("Power iteration", ctx.count)
    return KrylovResult(vals, left, right, res, conv, ctx.count)


def _svd_power_one(ctx: Context, v: Array, tol: float, limit: int) -> KrylovResult:
    """:func:`svd_power` for ``k = 1`` on single vectors ``(B, n)``: the same steps
    without a column axis around every product and norm."""
    while True:
        w = ctx.mv(v)
        s = ctx.norm(w)  # (B,)
        u = w / ctx.cast(_safe(ctx, s))[:, None]
        z = ctx.mv(u, adjoint=True)  # = A^H u ~ s v
        res = ctx.norm(z - v * ctx.cast(s)[:, None])
        bound = tol * s
        if not ctx.traced and _stop(ctx, res, bound):
            break
        if ctx.count + 2 > limit:
            break
        v = z / ctx.cast(_safe(ctx, ctx.norm(z)))[:, None]
    return _result(ctx, s[:, None], u[..., None], v[..., None], res[:, None],
                   bound[:, None])


def svd_power(ctx: Context, k: int, *, tol: float, maxiter: int | None,
              v0: Array | None = None) -> KrylovResult:
    xp = ctx.xp
    V, limit = _start(ctx, k, v0, maxiter)
    if k == 1:
        return _svd_power_one(ctx, V[..., 0], tol, limit)
    out = None
    while True:
        W = ctx.mm(V)  # (B, n_out, k)
        if k > 1:
            ctx.check_finite(W)  # before LAPACK sees it
        Uw, S, Y = _svd_block(ctx, W)
        Z = ctx.mm(Uw, adjoint=True)  # = A^H U ~ V Y S
        Vr = V if Y is None else xp.matmul(V, Y)
        res = _colnorm(ctx, Z - Vr * ctx.cast(S)[:, None, :])
        bound = tol * S[:, :1]
        out = (S, Uw, Vr, res, bound)
        if not ctx.traced and _stop(ctx, res, bound):
            break
        if ctx.count + 2 * k > limit:
            break
        V = _orth(ctx, Z)
    return _result(ctx, *out)


def eig_power(ctx: Context, k: int, *, which: str, tol: float, maxiter: int | None,
              v0: Array | None = None, shift: Array | None = None,
              sign: float = 1.0) -> KrylovResult:
    """Subspace iteration on ``sign * A + shift I`` (``shift`` per sample, (B,)); the
    Ritz values are those of ``A`` itself and ``which`` selects among them."""
    xp = ctx.xp
    V, limit = _start(ctx, k, v0, maxiter)
    out = None
    while True:
        W = ctx.mm(V)  # A V
        if k > 1:
            ctx.check_finite(W)  # before LAPACK sees it
        if k == 1:
            # Rayleigh quotient; no (batched LAPACK) eigh of a 1 x 1 matrix.
            theta = xp.real(xp.sum(ctx.conj(V[..., 0]) * W[..., 0], axis=-1))[:, None]
            vals = theta
            X = V
            R = W - X * ctx.cast(vals)[:, None, :]
        else:
            T = xp.matmul(ctx.H(V), W)
            T = (T + ctx.H(T)) / 2
            theta, S = xp.linalg.eigh(T)
            P = select(ctx, theta, which, k)
            vals = xp.sum(theta[:, :, None] * P, axis=-2)
            Sk = xp.matmul(S, ctx.cast(P))
            X = xp.matmul(V, Sk)
            R = xp.matmul(W, Sk) - X * ctx.cast(vals)[:, None, :]
        res = _colnorm(ctx, R)
        radius = xp.max(xp.abs(theta), axis=-1, keepdims=True)
        bound = tol * radius
        out = (vals, X, res, bound)
        if not ctx.traced and _stop(ctx, res, bound):
            break
        if ctx.count + k > limit:
            break
        Z = W if sign == 1.0 else -W
        if shift is not None:
            Z = Z + ctx.cast(shift)[:, None, None] * V
        V = _orth(ctx, Z)
    vals, X, res, bound = out
    return _result(ctx, vals, None, X, res, bound)
