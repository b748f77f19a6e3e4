"""Power (block subspace) iteration with Rayleigh–Ritz, batched, as steps.

A step (:func:`svd_power_step` on ``A^H A``, :func:`eig_power_step` on a Hermitian
``A``) takes the orthonormal block ``V`` of a :class:`PowerState` to its Ritz estimates
and the next block; :func:`power_solve` runs steps until the Ritz residuals meet ``tol``
(one host read a step) or, inside a trace, a fixed number of them as one compiled loop.
Power iteration converges at the rate ``sigma_{k+1} / sigma_k``, which is close to 1 for
trained networks: it is offered for comparison and for very cheap steps, not chosen by
``method="auto"``.

A warm start (``v0``, where ``Problem.mix_start``) widens the block by one random
column, and every column must converge: any singular or eigenvector is a fixed point of
the iteration, so a start along a lower vector (two directions that swapped since the
last solve) would otherwise be accepted; the random column, kept orthogonal to the
others, converges to the missed top one. The result is the block's top ``k``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from .problem import Problem, warn_unconverged
from .ritz import KrylovResult, eig_ritz

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
    count: Any  # products taken so far, per sample


def _colnorm(p: Problem, Z: Array) -> Array:
    return p.col_norms(Z)


def _unit(p: Problem, Z: Array) -> Array:
    """Columns over their norms plus the smallest normal number: a zero column stays
    zero, and norms above ``2^24`` (float32) times that number are unchanged."""
    return Z / p.cast(_colnorm(p, Z) + p.tiny_normal)[:, None, :]


def _orth(p: Problem, Z: Array) -> Array:
    return _unit(p, Z) if int(Z.shape[-1]) == 1 else p.orthonormal(Z)


def power_init(p: Problem, k: int, v0: Array | None, *, two_sided: bool, count: Any = 0,
               draw: int = 1) -> PowerState:
    """The orthonormal start block (``v0`` as its first column, then random columns: one
    more than ``k`` after a warm start; draws ``draw`` and ``draw + 1``) and empty
    estimates, after ``count`` products: one compiled piece where the solve is staged
    (eager JAX would otherwise compile each of its operations)."""
    q = p.staging("power init", k, two_sided, draw)
    if not q.staged:
        return _init(p, k, two_sided, draw, v0, count)
    s = q.stage("power init", _init, k, two_sided, draw)(v0, q.counter(count))
    return s._replace(count=count)


def _init(p: Problem, k: int, two_sided: bool, draw: int, v0: Array | None,
          count: Any) -> PowerState:
    """:func:`power_init`'s arrays."""
    V = p.start(v0, draw)
    k = k + (v0 is not None and p.mix_start)
    if two_sided and k == 1:  # single vectors (see PowerState)
        zero = p.zeros((p.B,), real=True)
        return PowerState(V, zero, p.zeros((p.B, p.local_out), axis=-1), V, zero, zero, count)
    V = V[..., None]
    if k > 1:
        rest = p.random((p.B, p.local_in, k - 1), draw + 1, axis=-2)
        V = _orth(p, p.xp.concat([V, rest], axis=-1))
    zeros = p.zeros((p.B, k), real=True)
    left = p.zeros((p.B, p.local_out, k), axis=-2) if two_sided else None
    return PowerState(V, zeros, left, V, zeros, zeros[:, :1], count)


def svd_power_step(p: Problem, s: PowerState, tol: float) -> PowerState:
    """``W = A V``, its thin SVD ``U S Y^H`` (``k = 1``: a norm), ``Z = A^H U``; the
    residuals ``||Z - V Y S||``; the next block is ``Z`` orthonormalized."""
    xp = p.xp
    V = s.V
    if len(V.shape) == 2:  # k = 1: single vectors (see PowerState)
        w = p.mv(V)
        S = p.norm(w)
        U = p.scaled(w, S + p.tiny_normal)
        z = p.mv(U, adjoint=True)  # = A^H u ~ s v
        res = p.norm(z - V * p.column(p.cast(S)))
        v = p.scaled(z, p.norm(z) + p.tiny_normal)
        return PowerState(v, S, U, V, res, tol * S, s.count + 2)
    W = p.mm(V)
    p.check_finite(W)  # before LAPACK sees it
    U, S, Yh = xp.linalg.svd(W, full_matrices=False)
    Z = p.mm(U, adjoint=True)
    Vr = xp.matmul(V, p.H(Yh))
    res = _colnorm(p, Z - Vr * p.cast(S)[:, None, :])
    k = int(V.shape[-1])
    return PowerState(_orth(p, Z), S, U, Vr, res, tol * S[:, :1], s.count + 2 * k)


def eig_power_step(p: Problem, s: PowerState, tol: float, which: str,
                   sign: float = 1.0, shift: Array | None = None) -> PowerState:
    """Subspace iteration on ``sign * A + shift I`` (``shift`` per problem); the Ritz
    values are those of ``A`` itself, selected by ``which``."""
    xp = p.xp
    V = s.V
    W = p.mm(V)
    k = int(V.shape[-1])
    if k == 1:  # the Rayleigh quotient; no eigh of a 1 x 1 matrix
        vals = xp.real(p.dot_sum(V, W))[:, None]
        X, WX, radius = V, W, xp.abs(vals)
    else:
        p.check_finite(W)
        T = p.gram(V, W)
        vals, S, radius = eig_ritz(p, (T + p.H(T)) / 2, k, which, k)
        X, WX = xp.matmul(V, S), xp.matmul(W, S)
    res = _colnorm(p, WX - X * p.cast(vals)[:, None, :])
    Z = W if sign == 1.0 else -W
    if shift is not None:
        Z = Z + p.cast(shift)[:, None, None] * V
    return PowerState(_orth(p, Z), vals, None, X, res, tol * radius, s.count + k)


def power_solve(p: Problem, step: Callable[..., PowerState], s: PowerState, k: int,
                maxiter: int | None, per_column: int, *, static: tuple = (),
                args: tuple = (), warn: bool = True) -> KrylovResult:
    """Steps ``step(p, s, *static, *args)`` until every residual is within its bound,
    at most ``maxiter`` products (default 2000; 200 inside a trace, where they run as
    one compiled loop); a step takes ``per_column`` products per column of the block.
    Returns the top ``k``. In a staged solve (``Problem.stage``) the whole loop is one
    compiled piece that stops where the plain loop would."""
    per_step = per_column * (1 if len(s.V.shape) == 2 else int(s.V.shape[-1]))
    if maxiter is None:
        maxiter = TRACED_MAXITER if p.traced else DEFAULT_MAXITER
    if p.traced:
        s = _columns(p.loop(lambda i, c: step(p, c, *static, *args), s,
                            max(1, maxiter // per_step), per_step), k)
        return KrylovResult(s.values, s.left, s.right, s.residuals,
                            s.residuals <= s.bound, s.count)
    p = p.staging("power", step, static, maxiter, per_step)
    if p.staged:
        s, q = p.stage("power", _power_loop, step, static, maxiter, per_step)(s, args)
        if not math.isfinite(p.backend.to_float(q)):
            p.check_finite(s.residuals)
        s = s._replace(count=p.host_int(s.count))
    else:
        start = s.count
        while True:
            s = step(p, s, *static, *args)
            if _stop(p, s.residuals, s.bound) or s.count - start + per_step > maxiter:
                break
    p.check_finite(s.residuals)
    s = _columns(s, k)
    conv = s.residuals <= s.bound
    if warn and not p.backend.all_true(conv):
        warn_unconverged("Power iteration", s.count)
    return KrylovResult(s.values, s.left, s.right, s.residuals, conv, s.count)


def _power_loop(p: Problem, step: Callable[..., PowerState], static: tuple, maxiter: int,
                per_step: int, s: PowerState, args: tuple):
    """The plain loop of :func:`power_solve` as one compiled piece: steps until the
    plain loop's stop (every residual within its bound, non-finite residuals, or the
    product budget). Returns ``(state, max(residual - bound))``."""
    xp = p.xp
    room = maxiter // per_step  # steps the budget allows (at least one runs)

    def body(c: tuple) -> tuple:
        st, n = step(p, c[0], *static, *args), c[1] + 1
        return st, n, xp.max(st.residuals - st.bound)

    def more(c: tuple) -> Any:
        q = c[2]
        stop = (q <= 0) | (~xp.isfinite(q) & ~xp.all(xp.isfinite(c[0].residuals)))
        return (c[1] == 0) | (~stop & (c[1] < room))

    zero = xp.arange(1, device=p.device)[0] * 0
    s, _, q = p.backend.while_loop(more, body, (s, zero, xp.max(s.residuals - s.bound)))
    return s, q


def _columns(s: PowerState, k: int) -> PowerState:
    """The top ``k`` of the block (a single-vector state with the column axes of a block
    of one)."""
    if len(s.values.shape) == 2:
        left = None if s.left is None else s.left[..., :k]
        return PowerState(s.V[..., :k], s.values[:, :k], left, s.right[..., :k],
                          s.residuals[:, :k], s.bound, s.count)
    return PowerState(s.V[..., None], s.values[:, None], s.left[..., None],
                      s.right[..., None], s.residuals[:, None], s.bound[:, None], s.count)


def _stop(p: Problem, res: Array, bound: Array) -> bool:
    """Whether every residual is within its bound (one host read); NaN/Inf in a product
    reaches the residuals and is reported."""
    q = p.backend.to_float(p.xp.max(res - bound))
    if not math.isfinite(q):
        p.check_finite(res)
    return q <= 0
