"""Ritz extraction from a Krylov state: the small projected problem, its top singular
triplets / wanted eigenpairs, their residuals, thick restarts, and the result every
solver method returns (:class:`KrylovResult`).

Two shapes of the small problem: the filled ``J x J`` block (outside a trace, where the
framework allows changing shapes), or the whole fixed-width ``jmax x jmax`` buffer with
its empty part pushed out of the way (a diagonal "sentinel" above every value there, and
a selection of the vectors that live in the filled part), so that frameworks that compile
per shape (JAX) compile once per problem.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from .krylov import KrylovState
from .problem import Problem

Array = Any


class KrylovResult(NamedTuple):
    """Top Ritz values/vectors of a batch of problems (arrays with a leading B), as
    every method returns them (dense: exact, residuals 0)."""

    values: Array  # (B, k) real
    left: Array  # (B, n_out, k) (two-sided) or None
    right: Array  # (B, n_in, k)
    residuals: Array  # (B, k) real
    converged: Array  # (B, k) bool
    num_matvecs: Any  # products per sample (a traced integer in a tol-driven trace)


# ------------------------------------------------------------------ the small problems


def gkl_matrix(p: Problem, s: KrylovState) -> Array:
    """``M = U^H A V``: the filled block (sliced) or the whole buffer."""
    M = p.xp.matrix_transpose(s.C)
    return M[:, :s.j, :s.j] if p.sliced else M


def lanczos_matrix(p: Problem, s: KrylovState) -> Array:
    """``T = Q^H A Q``, Hermitian, from the upper triangle of ``C^T``."""
    xp = p.xp
    T = xp.matrix_transpose(s.C)
    T = T[:, :s.j, :s.j] if p.sliced else T
    J = int(T.shape[-1])
    ar = xp.arange(J, device=p.device)
    upper = T * p.cast(xp.astype(ar[:, None] < ar[None, :], p.real_dtype))
    eye = xp.eye(J, dtype=p.real_dtype, device=p.device)
    diag = xp.real(T) * eye if p.is_complex else T * eye
    return upper + p.H(upper) + p.cast(diag)


def _inactive(p: Problem, J: int, size: int) -> Array:
    """``(size,)`` real: 1 on rows at or beyond ``J`` (the empty part of a buffer)."""
    xp = p.xp
    return xp.astype(xp.arange(size, device=p.device) >= J, p.real_dtype)


def _sentinel(p: Problem, M: Array, J: int) -> Array:
    """``M`` plus, on the empty part of the diagonal, a value above every singular value
    / |eigenvalue| of ``M``: ``2 ||M||_F`` plus its largest entry (1 for a zero ``M``).
    On the scale of ``M``, so that the factorization keeps the accuracy of a tiny
    ``M``'s values; the norm is taken of ``M`` over that entry, so that the squares
    neither overflow nor underflow."""
    xp = p.xp
    scale = _scale(p, M)
    Ms = M / p.cast(scale)
    fro = xp.sqrt(xp.sum(xp.sum(xp.real(p.conj(Ms) * Ms), axis=-1), axis=-1))
    size = int(M.shape[-1])
    eye = xp.eye(size, dtype=p.real_dtype, device=p.device)
    bump = scale * (2 * fro + 1)[:, None, None]
    return M + p.cast(bump * eye * _inactive(p, J, size))


def _pick(p: Problem, key: Array, k: int, weight: Array | None = None) -> Array:
    """One-hot ``(B, size, k)`` of the ``k`` largest keys, descending (ties: first);
    with ``weight``, only among entries whose vectors live in the filled part."""
    xp = p.xp
    if weight is not None:
        floor = xp.min(key, axis=-1, keepdims=True) - 1
        key = xp.where(weight > 0.5, key, floor)
    size = int(key.shape[-1])
    idx = xp.argsort(key, axis=-1, descending=True, stable=True)[..., :k]
    ar = xp.astype(xp.arange(size, device=p.device), idx.dtype)
    return xp.astype(idx[..., None, :] == ar[:, None], p.real_dtype)


def _weights(p: Problem, vecs: Array, J: int) -> Array:
    """Squared norm of each column of ``vecs`` on the filled rows."""
    xp = p.xp
    act = 1 - _inactive(p, J, int(vecs.shape[-2]))
    return xp.sum(xp.real(p.conj(vecs) * vecs) * act[:, None], axis=-2)


def _take(p: Problem, P: Array, X: Array, vals: Array) -> tuple[Array, Array]:
    """The selected columns ``X P`` and values ``vals P``."""
    xp = p.xp
    return xp.sum(vals[:, :, None] * P, axis=-2), xp.matmul(X, p.cast(P))


# ------------------------------------------------------------------ singular triplets


def svd_ritz(p: Problem, M: Array, J: int, k: int):
    """Top-``k`` singular values ``(B, k)`` and the coordinates of their left and right
    vectors ``(B, size, k)`` in the bases (``size`` rows: those of ``M``)."""
    xp = p.xp
    if isinstance(J, int) and int(M.shape[-1]) == J:  # the filled block itself
        if k == 1:
            return top_triplet(p, M)
        X, S, Yh = xp.linalg.svd(M, full_matrices=False)
        return S[:, :k], X[..., :k], p.H(Yh)[..., :k]
    X, S, Yh = xp.linalg.svd(_sentinel(p, M, J), full_matrices=False)
    Y = p.H(Yh)
    P = _pick(p, S, k, _weights(p, Y, J))
    vals, Yk = _take(p, P, Y, S)
    return vals, xp.matmul(X, p.cast(P)), Yk


# The top singular value of a small matrix ``M`` (B, r, c) comes from the Hermitian
# eigendecomposition of the Gram matrix of its rows ``M M^H``: batched ``eigh`` of small
# matrices is several times cheaper than an SVD on CPU, and the top value keeps its
# relative accuracy ``eps`` (only the smaller values lose it through the square, so
# ``k > 1`` takes an SVD). ``M`` is scaled by its largest entry first, so that squaring
# neither underflows nor overflows.


def _scale(p: Problem, M: Array) -> Array:
    """``(B, 1, 1)``: the largest ``|entry|`` of each matrix (1 for a zero matrix)."""
    xp = p.xp
    # one reduction over both axes: two in turn cost 40x more on a transposed M (torch)
    s = xp.max(xp.abs(M), axis=(-2, -1))[:, None, None]
    return xp.where(s > 0, s, xp.ones_like(s))


def gram_eigh(p: Problem, M: Array, *, vectors: bool = True):
    """``(lam, X, scale)``: the eigenvalues (ascending) and, with ``vectors``, the
    eigenvectors of ``(M / scale) (M / scale)^H`` (``scale`` from :func:`_scale`):
    ``scale * sqrt(lam)`` are the singular values of ``M`` (the top one accurately),
    ``X`` its left singular vectors."""
    xp = p.xp
    scale = _scale(p, M)
    Ms = M / p.cast(scale)
    G = xp.matmul(Ms, p.H(Ms))
    if not vectors:
        lam, X = xp.linalg.eigvalsh(G), None
    else:
        lam, X = xp.linalg.eigh(G)
    return (xp.real(lam) if p.is_complex else lam), X, scale


def top_value(p: Problem, lam: Array, scale: Array) -> Array:
    """``(B, 1)``: the top singular value from :func:`gram_eigh`'s ``lam`` and ``scale``."""
    xp = p.xp
    top = lam[:, -1:]
    return xp.sqrt(xp.maximum(top, xp.zeros_like(top))) * scale[:, 0, :]


def top_triplet(p: Problem, M: Array, X: Array | None = None):
    """The top singular triplet ``(sigma (B, 1), x (B, r, 1), y (B, c, 1))`` of ``M``
    from the eigenvectors ``X`` of :func:`gram_eigh` (computed where not given): ``x``
    the top one, ``y = M^H x / ||M^H x||`` (``e_0`` where ``M^H x = 0``, i.e. ``M = 0``,
    where any unit vector is singular), ``sigma = ||M^H x||``."""
    xp = p.xp
    if X is None:
        _, X, scale = gram_eigh(p, M)
    else:
        scale = _scale(p, M)
    x = X[..., -1:]
    y = xp.matmul(p.H(M / p.cast(scale)), x)
    S = p.norm(y[..., 0])[:, None]
    e0 = p.cast(xp.astype(xp.arange(int(M.shape[-1]), device=p.device) == 0,
                          p.real_dtype))
    y = xp.where(S[:, :, None] > 0,
                 y / p.cast(xp.where(S > 0, S, xp.ones_like(S)))[:, :, None],
                 e0[None, :, None])
    return S * scale[:, 0, :], x, y


def svd_screen(p: Problem, M: Array, beta: Array, k: int, tol: float):
    """A cheap convergence screen of the filled block: the top ``k`` eigenpairs of
    :func:`gram_eigh` give the singular values and the left vectors whose last entries
    give the Ritz residuals. Returns ``(residuals, tol * sigma_1, eigenvectors)``."""
    xp = p.xp
    J = int(M.shape[-1])
    lam, X, scale = gram_eigh(p, M)
    res = beta[:, None] * xp.abs(X[:, J - 1, J - k:])
    return res, tol * top_value(p, lam, scale), X


# ------------------------------------------------------------------ eigenpairs

_KEYS = {"LM": lambda xp, t: xp.abs(t), "LA": lambda xp, t: t, "SA": lambda xp, t: -t}


def eig_ritz(p: Problem, T: Array, J: int, which: str, k: int):
    """The ``k`` wanted Ritz values ``(B, k)`` (ordered by ``which``), the coordinates
    of their vectors ``(B, size, k)`` and the spectral radius estimate ``(B, 1)``."""
    xp = p.xp
    key = _KEYS[which]
    if isinstance(J, int) and int(T.shape[-1]) == J:
        theta, S = xp.linalg.eigh(T)
        vals, vecs = _take(p, _pick(p, key(xp, theta), k), S, theta)
        return vals, vecs, xp.max(xp.abs(theta), axis=-1, keepdims=True)
    theta, S = xp.linalg.eigh(_sentinel(p, T, J))
    w = _weights(p, S, J)
    vals, vecs = _take(p, _pick(p, key(xp, theta), k, w), S, theta)
    act = xp.where(w > 0.5, xp.abs(theta), xp.zeros_like(theta))
    return vals, vecs, xp.max(act, axis=-1, keepdims=True)


def eig_screen(p: Problem, T: Array, beta: Array, which: str, tol: float):
    """For ``k = 1``: residuals of the wanted Ritz value (ties count with their largest
    residual), ``tol`` times the spectral radius, and a mask of the wanted entries."""
    xp = p.xp
    J = int(T.shape[-1])
    theta, S = xp.linalg.eigh(T)
    key = _KEYS[which](xp, theta)
    wanted = key >= xp.max(key, axis=-1, keepdims=True)
    res = beta[:, None] * xp.abs(S[:, J - 1, :])
    return res, tol * xp.max(xp.abs(theta), axis=-1, keepdims=True), wanted


def last_row_residuals(p: Problem, X: Array, J: int, beta: Array) -> Array:
    """Ritz residuals ``beta * |x[J - 1]|`` of coordinate vectors ``X`` (B, size, k)."""
    return beta[:, None] * p.xp.abs(X[:, J - 1, :])


def worst_ratio(p: Problem, res: Array, ref: Array, mask: Array | None = None) -> float:
    """``max(res / ref)`` as one host read: at most 1 iff every (unmasked) value has
    converged. ``mask`` False entries count as converged (0), ``inf`` marks a problem
    that may not stop yet."""
    return p.backend.to_float(max_ratio(p, res, ref, mask))


def max_ratio(p: Problem, res: Array, ref: Array, mask: Array | None = None) -> Array:
    """:func:`worst_ratio` as a 0-d array (no host read)."""
    xp = p.xp
    ratio = res / (ref + p.tiny_normal)
    if mask is not None:
        ratio = xp.where(mask, ratio, xp.zeros_like(ratio))
    return xp.max(ratio)


# ------------------------------------------------------------------ thick restarts


def _shrink(p: Problem, X: Array, basis: Array, jmax: int) -> Array:
    """New basis rows ``X^T basis`` (keep of them), zero rows up to ``jmax``."""
    xp = p.xp
    rows = xp.matmul(xp.matrix_transpose(X), basis)
    pad = p.zeros((p.B, jmax - int(X.shape[-1]), int(basis.shape[-1])), axis=-1)
    return xp.concat([rows, pad], axis=-2)


def _diagonal(p: Problem, d: Array, jmax: int) -> Array:
    xp = p.xp
    keep = int(d.shape[-1])
    d = xp.concat([d, p.zeros((p.B, jmax - keep), real=True)], axis=-1)
    return p.cast(d[:, :, None] * xp.eye(jmax, dtype=p.real_dtype, device=p.device))


def gkl_restart(p: Problem, s: KrylovState, keep: int) -> KrylovState:
    """Keep the top ``keep`` Ritz triplets of a full basis: they become the bases and
    their values the projected matrix; the next step adds the coupling."""
    jmax = int(s.C.shape[-1])
    S, X, Y = svd_ritz(p, p.xp.matrix_transpose(s.C), jmax, keep)
    return _renumbered(s, keep, jmax)._replace(
        V=_shrink(p, Y, s.V, jmax), U=_shrink(p, X, s.U, jmax),
        C=_diagonal(p, S, jmax))


def lanczos_restart(p: Problem, s: KrylovState, keep: int, which: str) -> KrylovState:
    """Keep the ``keep`` wanted Ritz pairs of a full basis (see :func:`gkl_restart`)."""
    jmax = int(s.C.shape[-1])
    vals, S, _ = eig_ritz(p, lanczos_matrix(p, s._replace(j=jmax)), jmax, which, keep)
    return _renumbered(s, keep, jmax)._replace(V=_shrink(p, S, s.V, jmax),
                                               C=_diagonal(p, vals, jmax))


def _renumbered(s: KrylovState, keep: int, jmax: int) -> KrylovState:
    """Rows are renumbered by a restart: the breakdown bookkeeping moves with them (a run
    keeps its length)."""
    return s._replace(j=keep, fresh_from=s.fresh_from - (jmax - keep),
                      last_break=s.last_break - (jmax - keep))


def finite_or_raise(p: Problem, q: float, M: Array) -> float:
    """``q`` itself; a NaN ratio comes from NaN/Inf in the products, reported as such."""
    if math.isnan(q):
        p.check_finite(M)
    return q
