"""Krylov decompositions as steps: Golub–Kahan–Lanczos (GKL) and symmetric Lanczos.

A decomposition is an explicit state (:class:`KrylovState`, fixed-width buffers and the
product count) and a pure step function: ``gkl_step(problem, state)`` /
``lanczos_step(problem, state)`` add one basis vector (one or two products) to every
problem of the batch. :class:`Krylov` names a decomposition for the driver
(:data:`GKL`, :data:`LANCZOS`), with its cost (:func:`min_products`). :func:`decompose`
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
(``Problem.row_coefs`` / ``Backend.sub_matmul``): several times faster on CPU than
batched matrix-vector products with the vector on the right. Outside a trace, where the
framework allows changing shapes, a step works on the filled rows only (a view).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .problem import Problem

Array = Any

# How far (relative) a remainder's norm must clear the breakdown test for the host's
# read to stand for the device's test (see ``_clearly_whole``).
HOST_MARGIN = 1.01


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
    count : int or array
        Products taken so far, per sample (an array inside compiled code); breakdown
        restart directions are seeded by it.
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
    count: Any


def init(p: Problem, v0: Array | None, jmax: int, *, two_sided: bool, count: Any = 0
         ) -> KrylovState:
    """An empty decomposition with start vector ``v0`` (``(B, n_in)``; random if None),
    after ``count`` products."""
    B = p.B
    zeros = p.zeros((B,), real=True)
    return KrylovState(
        j=0,
        V=p.zeros((B, jmax, p.local_in), axis=-1),
        U=p.zeros((B, jmax, p.local_out), axis=-1) if two_sided else None,
        C=p.zeros((B, jmax, jmax)),
        v=p.start(v0),
        beta=zeros,
        scale=zeros,
        fresh_from=zeros,
        last_break=zeros - 2,
        count=count,
    )


def gkl_step(p: Problem, s: KrylovState) -> KrylovState:
    """One Golub–Kahan–Lanczos step: ``A v`` against the left basis (row ``j`` of ``C``
    and of ``U``), then ``A^H u`` against the right basis (the next ``v``, ``beta``).
    The last step of a full basis takes no adjoint product."""
    j, count = s.j, s.count + 1
    V = p.backend.set_row(s.V, j, s.v)
    u, c, alpha, scale, bd_u = orthogonalize(p, s.U, j, p.mv(s.v), s.scale, count)
    U = p.backend.set_row(s.U, j, u)
    C = _put_coefs(p, s.C, j, c, alpha)
    if isinstance(j, int) and j + 1 >= p.n_in:  # the basis is full: A V = U M exactly
        return s._replace(j=j + 1, V=V, U=U, C=C, beta=p.zeros((p.B,), real=True),
                          scale=scale, count=count)
    w, count = p.mv(u, adjoint=True), count + 1
    # The scale is ||A v|| (u-steps); ||A^H u|| adds nothing a breakdown is judged by.
    v, _, beta, scale, bd_v = orthogonalize(p, V, j + 1, w, scale, count, track=False,
                                            coefs=False)
    fresh_from, last_break = _note_breakdowns(p, s, bd_v, j + 1, bd_u)
    return KrylovState(j + 1, V, U, C, v, beta, scale, fresh_from, last_break, count)


def lanczos_step(p: Problem, s: KrylovState) -> KrylovState:
    """One symmetric Lanczos step: ``A v`` against the basis including ``v`` itself
    (row ``j`` of ``C``), the remainder is the next ``v``."""
    j, count = s.j, s.count + 1
    V = p.backend.set_row(s.V, j, s.v)
    q, c, beta, scale, bd = orthogonalize(p, V, j + 1, p.mv(s.v), s.scale, count)
    C = _put_coefs(p, s.C, j, c, None)
    fresh_from, last_break = _note_breakdowns(p, s, bd, j + 1, None)
    return KrylovState(j + 1, V, None, C, q, beta, scale, fresh_from, last_break, count)


class Krylov(NamedTuple):
    """A decomposition as the driver sees it: its name (in warnings), step, products a
    step, and whether it builds a left basis too."""

    name: str
    step: Callable[[Problem, KrylovState], KrylovState]
    per_step: int
    two_sided: bool


GKL = Krylov("Golub-Kahan-Lanczos", gkl_step, 2, True)
LANCZOS = Krylov("Lanczos", lanczos_step, 1, False)


def min_products(alg: Krylov, k: int, r: int) -> int:
    """Products that produce ``k`` Ritz values of an operator whose smaller side is
    ``r``: ``k`` steps (GKL's last step of a full basis takes one product)."""
    return k * alg.per_step - (1 if alg.two_sided and k == r else 0)


def decompose(p: Problem, step: Callable[[Problem, KrylovState], KrylovState],
              s: KrylovState, num_steps: int, per_step: int) -> KrylovState:
    """``num_steps`` steps of ``step`` (``per_step`` products each) under
    :meth:`Problem.loop`: one compiled loop inside a trace."""
    if num_steps <= 0:
        return s
    j0 = s.j

    def body(i: Any, c: KrylovState) -> KrylovState:
        # a compiled loop carries no Python step count: j comes from the loop index
        return step(p, c._replace(j=j0 + i))._replace(j=None)

    out = p.loop(body, s._replace(j=None), num_steps, per_step)
    return out._replace(j=j0 + num_steps)


# ------------------------------------------------------------------ orthogonalization


def orthogonalize(p: Problem, Q: Array, j: Any, w: Array, scale: Array, count: Any, *,
                  track: bool = True, coefs: bool = True):
    """``w`` (B, s) orthogonalized against rows ``[0, j)`` of ``Q`` (B, jmax, s).

    Classical Gram–Schmidt, twice. Where the remainder is at rounding level relative to
    ``scale`` (a breakdown: ``w`` lies in the span of the basis), a
    random vector orthogonalized against the basis replaces it and the coupling is 0
    (seeded by ``count``, the products taken so far).
    Returns ``(q, coefs, coupling, scale, broke)``; ``broke`` is ``None`` where no
    problem broke down outside a trace (then nothing needs masking); ``coefs`` is
    ``None`` unless asked for.
    """
    xp, b = p.xp, p.backend
    rows = p.backend.leading_rows(Q, j) if p.sliced else Q
    if track:
        scale = xp.maximum(scale, p.norm(w))
    w, c = _project_out(p, rows, w, coefs)
    nrm = p.norm(w)
    if not p.traced and _clearly_whole(p, nrm, scale):
        return p.scaled(w, nrm), c, nrm, scale, None
    # an infinite product (or one whose norm overflows) is no invariant subspace: it
    # must reach the checks, not a restart; NaN onward (w / inf would be a silent zero).
    # inf - inf is NaN, x - x is 0 for finite x: two operations, and NaN is no breakdown.
    nrm = nrm + (nrm - nrm)
    bd = nrm * (1.0 / p.bd_rtol) <= scale

    def keep():
        return p.scaled(w, nrm), nrm, bd if p.traced else None

    def repair():
        r, _ = _project_out(p, rows, p.restart_vector(int(w.shape[-1]), count))
        q = xp.where(bd[:, None], r, w)
        n2 = p.norm(q)
        q = q / p.cast(xp.where(n2 > 0, n2, xp.ones_like(n2)))[:, None]
        return q, xp.where(bd, xp.zeros_like(nrm), nrm), bd

    q, coupling, broke = b.cond(xp.any(bd), repair, keep)
    return q, c, coupling, scale, broke


def check_restart(p: Problem, s: KrylovState, force: Array) -> KrylovState:
    """The check restart of the problems ``force`` ``(B,)`` marks: their next vector
    becomes a generic direction orthogonal to their basis, with coupling 0 (a breakdown
    at row ``j``, where their next run begins). The vector it replaces lies outside the
    basis and takes no product: its coupling times the last entry of a converged Ritz
    vector is within ``tol``, the residual the restart leaves uncounted."""
    xp = p.xp
    rows = p.backend.leading_rows(s.V, s.j) if p.sliced else s.V
    r, _ = _project_out(p, rows, p.restart_vector(int(s.v.shape[-1]), s.count))
    n = p.norm(r)
    r = r / p.cast(xp.where(n > 0, n, xp.ones_like(n)))[:, None]
    fresh_from, last_break = _note_breakdowns(p, s, force, s.j, None)
    return s._replace(v=xp.where(force[:, None], r, s.v),
                      beta=xp.where(force, xp.zeros_like(s.beta), s.beta),
                      fresh_from=fresh_from, last_break=last_break)


def _clearly_whole(p: Problem, nrm: Array, scale: Array) -> bool:
    """Outside a trace: whether every remainder is finite and clear of the breakdown
    test by a margin, read on the host (two small transfers where the test on the
    device takes nine small operations, each a dispatch in an eager framework). The
    margin covers the rounding of half-precision dtypes: where it says so, the device's
    test finds no breakdown either; otherwise that test decides."""
    n = p.backend.to_numpy(nrm).astype(np.float64)
    s = p.backend.to_numpy(scale).astype(np.float64)
    return bool(np.all(n < math.inf) and np.all(n * (1.0 / p.bd_rtol) > s * HOST_MARGIN))


def _project_out(p: Problem, rows: Array, w: Array, coefs: bool = False
                 ) -> tuple[Array, Array | None]:
    """``(w - rows^H c, c)`` with ``c`` the coefficients of ``w`` along the rows, CGS2
    (``c`` is ``None`` unless ``coefs``)."""
    b = p.backend
    if int(rows.shape[-2]) == 0:
        return w, p.zeros((p.B, 0)) if coefs else None
    w = p.column(w)
    c1 = p.row_coefs(w, rows)
    w = b.sub_matmul(w, c1, rows)
    c2 = p.row_coefs(w, rows)
    w = b.sub_matmul(w, c2, rows)
    return p.xp.squeeze(w, axis=1), p.xp.squeeze(c1 + c2, axis=1) if coefs else None


def _put_coefs(p: Problem, C: Array, j: Any, c: Array, alpha: Array | None) -> Array:
    """Row ``j`` of ``C``: the coefficients ``c`` (and, for GKL, ``alpha`` at ``j``)."""
    b, xp = p.backend, p.xp
    jmax = int(C.shape[-1])
    if int(c.shape[-1]) < jmax:  # the filled part only (sliced): write pieces
        C = b.set_row(C, j, c)
        return C if alpha is None else b.set_row(C, j, p.column(p.cast(alpha)), start=j)
    if alpha is not None:
        hot = xp.astype(xp.arange(jmax, device=p.device) == j, p.real_dtype)
        c = c + p.cast(alpha[:, None] * hot)
    return b.set_row(C, j, c)


def _note_breakdowns(p: Problem, s: KrylovState, bd: Array | None, row: Any,
                     other: Array | None) -> tuple[Array, Array]:
    """Track where each problem's breakdown-free run began. A breakdown at ``row``
    (the restart vector's row) starts a new run unless the previous row was one too (a
    null space being swept) or the other half-step broke down as well (``other``)."""
    if bd is None:
        return s.fresh_from, s.last_break
    row = p.real(row)
    new_run = bd & (s.last_break != row - 1)
    if other is not None:
        new_run = new_run & ~other
    here = p.xp.zeros_like(s.fresh_from) + row
    return (p.xp.where(new_run, here, s.fresh_from), p.xp.where(bd, here, s.last_break))
