"""Krylov decompositions as steps: Golub–Kahan–Lanczos (GKL) and symmetric Lanczos.

A decomposition is an explicit state (:class:`KrylovState`, fixed-width buffers) and a
pure step function: ``gkl_step(ctx, state)`` / ``lanczos_step(ctx, state)`` add one
basis vector (one or two products) to every problem of the batch. :func:`decompose`
runs a number of steps under the backend's loop primitive (``Backend.fori_loop``: a
Python loop by default, ``lax.fori_loop`` in JAX, where the body is traced once).
Everything adaptive (convergence checks, thick restarts, warnings) lives in
:mod:`.driver`; the Ritz extraction in :mod:`.ritz`.

Both decompositions keep the projected matrix generically, from the coefficients of the
full reorthogonalization ("twice is enough" classical Gram–Schmidt): row ``i`` of
``state.C`` holds the coefficients of the ``i``-th product against the basis, i.e.
column ``i`` of ``U^H A V`` (GKL) or ``Q^H A Q`` (Lanczos). A thick restart therefore
needs no special bookkeeping: the kept Ritz vectors become the basis, their Ritz values
the diagonal, and the next steps' coefficients fill in the coupling (an arrowhead).

Bases are stored as rows ``(B, jmax, s)`` and projected with row-vector products
(``Backend.row_coefs`` / ``Backend.sub_matmul``): several times faster on CPU than
batched matrix-vector products with the vector on the right. Outside a trace, where the
framework allows changing shapes, a step works on the filled rows only (a view).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from .context import Context

Array = Any


class KrylovState(NamedTuple):
    """The state of a batch of Krylov decompositions after ``j`` steps.

    Attributes
    ----------
    j : int
        Filled basis rows (a traced integer only inside a compiled loop).
    V : array
        ``(B, jmax, n_in)``: the Lanczos basis, or the right GKL basis, as rows.
    U : array or None
        ``(B, jmax, n_out)``: the left GKL basis (``None`` for Lanczos).
    C : array
        ``(B, jmax, jmax)``: row ``i`` holds the reorthogonalization coefficients of
        the ``i``-th product (the transposed projected matrix; zero beyond ``j``).
    v : array
        ``(B, n_in)``: the next basis vector (unit).
    beta : array
        ``(B,)``: its coupling to the basis (0 after a breakdown); Ritz residuals are
        ``beta`` times the last component of the small problem's vectors.
    scale : array
        ``(B,)``: running estimate of ``||A||``, the reference of the breakdown test.
    fresh_from : array
        ``(B,)``: the row where the current breakdown-free run of each problem began.
    last_break : array
        ``(B,)``: the last row that a breakdown restart wrote (``-2`` if none).
    force : array or None
        ``(B,)`` bool: problems to restart at the next step (check restarts).
    """

    j: Any
    V: Array
    U: Array | None
    C: Array
    v: Array
    beta: Array
    scale: Array
    fresh_from: Array
    last_break: Array
    force: Array | None = None


def init(ctx: Context, v0: Array | None, jmax: int, *, two_sided: bool) -> KrylovState:
    """An empty decomposition with start vector ``v0`` (``(B, n_in)``; random if None)."""
    B = ctx.B
    zeros = ctx.zeros((B,), real=True)
    return KrylovState(
        j=0,
        V=ctx.zeros((B, jmax, ctx.n_in)),
        U=ctx.zeros((B, jmax, ctx.n_out)) if two_sided else None,
        C=ctx.zeros((B, jmax, jmax)),
        v=ctx.start(v0),
        beta=zeros,
        scale=zeros,
        fresh_from=zeros,
        last_break=zeros - 2,
    )


def gkl_step(ctx: Context, s: KrylovState) -> KrylovState:
    """One Golub–Kahan–Lanczos step: ``A v`` against the left basis (row ``j`` of ``C``
    and of ``U``), then ``A^H u`` against the right basis (the next ``v``, ``beta``).
    The last step of a full basis takes no adjoint product."""
    j = s.j
    V = ctx.backend.set_row(s.V, j, s.v)
    u, c, alpha, scale, bd_u = orthogonalize(ctx, s.U, j, ctx.mv(s.v), s.scale, j)
    U = ctx.backend.set_row(s.U, j, u)
    C = _put_coefs(ctx, s.C, j, c, alpha)
    if isinstance(j, int) and j + 1 >= ctx.n_in:  # the basis is full: A V = U M exactly
        return s._replace(j=j + 1, V=V, U=U, C=C, beta=ctx.zeros((ctx.B,), real=True),
                          scale=scale, force=None)
    w = ctx.mv(u, adjoint=True)
    # The scale is ||A v|| (u-steps); ||A^H u|| adds nothing a breakdown is judged by.
    v, _, beta, scale, bd_v = orthogonalize(ctx, V, j + 1, w, scale, j, force=s.force,
                                            track=False)
    fresh_from, last_break = _note_breakdowns(ctx, s, bd_v, j + 1, bd_u)
    return KrylovState(j + 1, V, U, C, v, beta, scale, fresh_from, last_break)


def lanczos_step(ctx: Context, s: KrylovState) -> KrylovState:
    """One symmetric Lanczos step: ``A v`` against the basis including ``v`` itself
    (row ``j`` of ``C``), the remainder is the next ``v``."""
    j = s.j
    V = ctx.backend.set_row(s.V, j, s.v)
    q, c, beta, scale, bd = orthogonalize(ctx, V, j + 1, ctx.mv(s.v), s.scale, j,
                                          force=s.force)
    C = _put_coefs(ctx, s.C, j, c, None)
    fresh_from, last_break = _note_breakdowns(ctx, s, bd, j + 1, None)
    return KrylovState(j + 1, V, None, C, q, beta, scale, fresh_from, last_break)


def decompose(ctx: Context, step: Callable[[Context, KrylovState], KrylovState],
              s: KrylovState, num_steps: int, per_step: int) -> KrylovState:
    """``num_steps`` steps of ``step`` (``per_step`` products each) under
    :meth:`Context.loop`: one compiled loop inside a trace."""
    if num_steps <= 0:
        return s
    j0 = s.j

    def body(i: Any, c: KrylovState) -> KrylovState:
        # a compiled loop carries no Python step count: j comes from the loop index
        return step(ctx, c._replace(j=j0 + i))._replace(j=None)

    out = ctx.loop(body, s._replace(j=None, force=s.force if not ctx.traced else None),
                   num_steps, per_step)
    return out._replace(j=j0 + num_steps)


# ------------------------------------------------------------------ orthogonalization


def orthogonalize(ctx: Context, Q: Array, j: Any, w: Array, scale: Array, step: Any, *,
                  force: Array | None = None, track: bool = True):
    """``w`` (B, s) orthogonalized against rows ``[0, j)`` of ``Q`` (B, jmax, s).

    Classical Gram–Schmidt, twice. Where the remainder is at rounding level relative to
    ``scale`` (a breakdown: ``w`` lies in the span of the basis) or ``force`` says so, a
    random vector orthogonalized against the basis replaces it and the coupling is 0.
    Returns ``(q, coefs, coupling, scale, broke)``; ``broke`` is ``None`` where no
    problem broke down outside a trace (then nothing needs masking).
    """
    xp, b = ctx.xp, ctx.backend
    rows = Q[:, :j] if ctx.sliced else Q
    if track:
        scale = xp.maximum(scale, ctx.norm(w))
    w, c = _project_out(ctx, rows, w)
    nrm = ctx.norm(w)
    bd = nrm * (1.0 / ctx.bd_rtol) <= scale
    if force is not None:
        bd = bd | force

    def keep():
        return w / ctx.cast(nrm)[:, None], nrm, bd if ctx.traced else None

    def repair():
        r, _ = _project_out(ctx, rows, ctx.restart_vector(int(w.shape[-1]), step))
        q = xp.where(bd[:, None], r, w)
        n2 = ctx.norm(q)
        q = q / ctx.cast(xp.where(n2 > 0, n2, xp.ones_like(n2)))[:, None]
        return q, xp.where(bd, xp.zeros_like(nrm), nrm), bd

    q, coupling, broke = b.cond(xp.any(bd), repair, keep)
    return q, c, coupling, scale, broke


def _project_out(ctx: Context, rows: Array, w: Array) -> tuple[Array, Array]:
    """``(w - rows^H c, c)`` with ``c`` the coefficients of ``w`` along the rows, CGS2."""
    b = ctx.backend
    if int(rows.shape[-2]) == 0:
        return w, ctx.zeros((ctx.B, 0))
    RH = ctx.H(rows)
    w = w[:, None, :]
    c1 = b.row_coefs(w, rows, RH)
    w = b.sub_matmul(w, c1, rows)
    c2 = b.row_coefs(w, rows, RH)
    w = b.sub_matmul(w, c2, rows)
    return w[:, 0], (c1 + c2)[:, 0]


def _put_coefs(ctx: Context, C: Array, j: Any, c: Array, alpha: Array | None) -> Array:
    """Row ``j`` of ``C``: the coefficients ``c`` (and, for GKL, ``alpha`` at ``j``)."""
    b, xp = ctx.backend, ctx.xp
    jmax = int(C.shape[-1])
    if int(c.shape[-1]) < jmax:  # the filled part only (sliced): write pieces
        C = b.set_row(C, j, c)
        return C if alpha is None else b.set_row(C, j, ctx.cast(alpha)[:, None], start=j)
    if alpha is not None:
        hot = xp.astype(xp.arange(jmax, device=ctx.device) == j, ctx.real_dtype)
        c = c + ctx.cast(alpha[:, None] * hot)
    return b.set_row(C, j, c)


def _note_breakdowns(ctx: Context, s: KrylovState, bd: Array | None, row: Any,
                     other: Array | None) -> tuple[Array, Array]:
    """Track where each problem's breakdown-free run began. A breakdown at ``row``
    (the restart vector's row) starts a new run unless the previous row was one too (a
    null space being swept) or the other half-step broke down as well (``other``)."""
    if bd is None:
        return s.fresh_from, s.last_break
    row = ctx.real(row)
    new_run = bd & (s.last_break != row - 1)
    if other is not None:
        new_run = new_run & ~other
    here = ctx.xp.zeros_like(s.fresh_from) + row
    return (ctx.xp.where(new_run, here, s.fresh_from), ctx.xp.where(bd, here, s.last_break))
