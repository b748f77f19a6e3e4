"""Power (block subspace) iteration with Rayleigh–Ritz, batched, as steps.

A step (:func:`svd_power_step` on ``A^H A``, :func:`eig_power_step` on a Hermitian
``A``) takes the orthonormal block ``V`` of a :class:`PowerState` to its Ritz estimates
and the next block; :func:`power_solve` runs steps until the Ritz residuals meet ``tol``
(one host read a step) or, inside a trace, a fixed number of them as one compiled loop.
Power iteration converges at the rate ``sigma_{k+1} / sigma_k``, which is close to 1 for
trained networks: it is offered for comparison and for very cheap steps, not chosen by
``method="auto"``.

A warm start (``v0``, where ``Context.mix_start``) widens the block by one random
column, and every column must converge: any singular or eigenvector is a fixed point of the iteration, so a start
along a lower vector (two directions that swapped since the last solve) would otherwise
be accepted; the random column, kept orthogonal to the others, converges to the missed
top one. The result is the block's top ``k``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from .context import Context, warn_unconverged
from .driver import KrylovResult
from .ritz import eig_ritz

Array = Any

DEFAULT_MAXITER = 2000
TRACED_MAXITER = 200


class PowerState(NamedTuple):
    """The block of the next step and the Ritz estimates of the last one. For ``k = 1``
    (SVD) the vectors have no column axis and the values none either (``(B,)``): a
    single-vector iteration spends no operations on adding and dropping it."""

    V: Array  # (B, n_in, k) orthonormal columns (k + 1 after a warm start)
    values: Array  # (B, k) real
    left: Array | None  # (B, n_out, k) (SVD) or None
    right: Array  # (B, n_in, k)
    residuals: Array  # (B, k) real
    bound: Array  # (B, 1): tol times the largest estimate


def _colnorm(ctx: Context, Z: Array) -> Array:
    return ctx.xp.linalg.vector_norm(Z, axis=-2)


def _unit(ctx: Context, Z: Array) -> Array:
    """Columns over their norms plus the smallest normal number: a zero column stays
    zero, and norms above ``2^24`` (float32) times that number are unchanged."""
    return Z / ctx.cast(_colnorm(ctx, Z) + ctx.tiny_normal)[:, None, :]


def _orth(ctx: Context, Z: Array) -> Array:
    return _unit(ctx, Z) if int(Z.shape[-1]) == 1 else ctx.xp.linalg.qr(Z).Q


def power_init(ctx: Context, k: int, v0: Array | None, *, two_sided: bool) -> PowerState:
    """The orthonormal start block (``v0`` as its first column, then random columns: one
    more than ``k`` after a warm start) and empty estimates."""
    V = ctx.start(v0)
    k = k + (v0 is not None and ctx.mix_start)
    if two_sided and k == 1:  # single vectors (see PowerState)
        zero = ctx.zeros((ctx.B,), real=True)
        return PowerState(V, zero, ctx.zeros((ctx.B, ctx.n_out)), V, zero, zero)
    V = V[..., None]
    if k > 1:
        V = _orth(ctx, ctx.xp.concat([V, ctx.random((ctx.B, ctx.n_in, k - 1))], axis=-1))
    zeros = ctx.zeros((ctx.B, k), real=True)
    left = ctx.zeros((ctx.B, ctx.n_out, k)) if two_sided else None
    return PowerState(V, zeros, left, V, zeros, zeros[:, :1])


def svd_power_step(ctx: Context, s: PowerState, tol: float) -> PowerState:
    """``W = A V``, its thin SVD ``U S Y^H`` (``k = 1``: a norm), ``Z = A^H U``; the
    residuals ``||Z - V Y S||``; the next block is ``Z`` orthonormalized."""
    xp = ctx.xp
    V = s.V
    if len(V.shape) == 2:  # k = 1: single vectors (see PowerState)
        w = ctx.mv(V)
        S = ctx.norm(w)
        U = w / ctx.cast(S + ctx.tiny_normal)[:, None]
        z = ctx.mv(U, adjoint=True)  # = A^H u ~ s v
        res = ctx.norm(z - V * ctx.cast(S)[:, None])
        v = z / ctx.cast(ctx.norm(z) + ctx.tiny_normal)[:, None]
        return PowerState(v, S, U, V, res, tol * S)
    W = ctx.mm(V)
    ctx.check_finite(W)  # before LAPACK sees it
    U, S, Yh = xp.linalg.svd(W, full_matrices=False)
    Z = ctx.mm(U, adjoint=True)
    Vr = xp.matmul(V, ctx.H(Yh))
    res = _colnorm(ctx, Z - Vr * ctx.cast(S)[:, None, :])
    return PowerState(_orth(ctx, Z), S, U, Vr, res, tol * S[:, :1])


def eig_power_step(ctx: Context, s: PowerState, tol: float, which: str,
                   sign: float = 1.0, shift: Array | None = None) -> PowerState:
    """Subspace iteration on ``sign * A + shift I`` (``shift`` per problem); the Ritz
    values are those of ``A`` itself, selected by ``which``."""
    xp = ctx.xp
    V = s.V
    W = ctx.mm(V)
    k = int(V.shape[-1])
    if k == 1:  # the Rayleigh quotient; no eigh of a 1 x 1 matrix
        vals = xp.real(xp.sum(ctx.conj(V[..., 0]) * W[..., 0], axis=-1))[:, None]
        X, WX, radius = V, W, xp.abs(vals)
    else:
        ctx.check_finite(W)
        T = xp.matmul(ctx.H(V), W)
        vals, S, radius = eig_ritz(ctx, (T + ctx.H(T)) / 2, k, which, k)
        X, WX = xp.matmul(V, S), xp.matmul(W, S)
    res = _colnorm(ctx, WX - X * ctx.cast(vals)[:, None, :])
    Z = W if sign == 1.0 else -W
    if shift is not None:
        Z = Z + ctx.cast(shift)[:, None, None] * V
    return PowerState(_orth(ctx, Z), vals, None, X, res, tol * radius)


def power_solve(ctx: Context, step: Callable[..., PowerState], s: PowerState, k: int,
                maxiter: int | None, per_column: int, *, static: tuple = (),
                args: tuple = (), warn: bool = True) -> KrylovResult:
    """Steps ``step(ctx, s, *static, *args)`` until every residual is within its bound,
    at most ``maxiter`` products (default 2000; 200 inside a trace, where they run as
    one compiled loop); a step takes ``per_column`` products per column of the block.
    Returns the top ``k``. In a staged solve (``Context.stage``) the whole loop is one
    compiled piece that stops where the plain loop would."""
    per_step = per_column * (1 if len(s.V.shape) == 2 else int(s.V.shape[-1]))
    if maxiter is None:
        maxiter = TRACED_MAXITER if ctx.traced else DEFAULT_MAXITER
    if ctx.traced:
        s = _columns(ctx.loop(lambda i, c: step(ctx, c, *static, *args), s,
                              max(1, maxiter // per_step), per_step), k)
        return KrylovResult(s.values, s.left, s.right, s.residuals,
                            s.residuals <= s.bound, ctx.count)
    ctx.stage_solve("power", step, static, maxiter, per_step)
    if ctx.staged:
        s, n, q = ctx.stage("power", _power_loop, step, static, maxiter, per_step)(s, args)
        ctx.count += per_step * int(ctx.backend.to_float(n))
        if not math.isfinite(ctx.backend.to_float(q)):
            ctx.check_finite(s.residuals)
    else:
        start = ctx.count
        while True:
            s = step(ctx, s, *static, *args)
            if _stop(ctx, s.residuals, s.bound) or ctx.count - start + per_step > maxiter:
                break
    ctx.check_finite(s.residuals)
    s = _columns(s, k)
    conv = s.residuals <= s.bound
    if warn and not ctx.backend.all_true(conv):
        warn_unconverged("Power iteration", ctx.count)
    return KrylovResult(s.values, s.left, s.right, s.residuals, conv, ctx.count)


def _power_loop(ctx: Context, step: Callable[..., PowerState], static: tuple, maxiter: int,
                per_step: int, s: PowerState, args: tuple):
    """The plain loop of :func:`power_solve` as one compiled piece: steps until the
    plain loop's stop (every residual within its bound, non-finite residuals, or the
    product budget). Returns ``(state, steps, max(residual - bound))``."""
    xp = ctx.xp
    room = maxiter // per_step  # steps the budget allows (at least one runs)

    def body(c: tuple) -> tuple:
        st, n = step(ctx, c[0], *static, *args), c[1] + 1
        return st, n, xp.max(st.residuals - st.bound)

    def more(c: tuple) -> Any:
        q = c[2]
        stop = (q <= 0) | (~xp.isfinite(q) & ~xp.all(xp.isfinite(c[0].residuals)))
        return (c[1] == 0) | (~stop & (c[1] < room))

    zero = xp.arange(1, device=ctx.device)[0] * 0
    return ctx.backend.while_loop(more, body, (s, zero, xp.max(s.residuals - s.bound)))


def _columns(s: PowerState, k: int) -> PowerState:
    """The top ``k`` of the block (a single-vector state with the column axes of a block
    of one)."""
    if len(s.values.shape) == 2:
        left = None if s.left is None else s.left[..., :k]
        return PowerState(s.V[..., :k], s.values[:, :k], left, s.right[..., :k],
                          s.residuals[:, :k], s.bound)
    return PowerState(s.V[..., None], s.values[:, None], s.left[..., None],
                      s.right[..., None], s.residuals[:, None], s.bound[:, None])


def _stop(ctx: Context, res: Array, bound: Array) -> bool:
    """Whether every residual is within its bound (one host read); NaN/Inf in a product
    reaches the residuals and is reported."""
    q = ctx.backend.to_float(ctx.xp.max(res - bound))
    if not math.isfinite(q):
        ctx.check_finite(res)
    return q <= 0
