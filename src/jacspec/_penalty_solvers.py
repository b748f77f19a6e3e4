"""Fixed-budget inner solvers for the training penalties (internal).

Training penalties need the top singular vectors of a batch of per-sample operators, every
step, at a fixed cost and traceable under ``jax.jit`` / ``tf.function``. These small pure
functions run a fixed number of products of ``op._mv`` (no gradient, no adaptive
stopping, no host synchronization, Python loops that unroll under a trace) and return the
top left/right singular vector estimates ``(u, v)`` of every operator in the batch.

- :func:`batched_power`: power iteration on ``A^T A`` (Johansson et al. 2022).
- :func:`batched_lanczos`: Golub–Kahan–Lanczos bidiagonalization with full
  reorthogonalization, then the SVD of the small bidiagonal matrix (Cui et al. 2022 use
  batched Lanczos per sample with a fixed small number of steps).

Both work for unbatched operators too (batch shape ``()``). The returned vectors carry no
gradient; the penalties differentiate ``A^T u`` once afterwards (envelope argument).
"""

from __future__ import annotations

from typing import Any

from .operators import LinearOperator

Array = Any


def _normalize(xp: Any, w: Array) -> tuple[Array, Array]:
    """``(w / ||w||, ||w||)`` along the last axis; exact zeros stay zero (no NaN)."""
    nrm = xp.linalg.vector_norm(w, axis=-1)
    safe = xp.where(nrm > 0, nrm, xp.ones_like(nrm))
    return w / safe[..., None], nrm


def _apply(op: LinearOperator, w: Array, *, adjoint: bool) -> Array:
    return op._mv(w, adjoint=adjoint)


def _start_vector(op: LinearOperator, seed: int | None) -> Array:
    b = op._backend
    v = b.normal(op.batch_shape + (op.shape[1],), dtype=op.dtype, device=op.device, seed=seed)
    return _normalize(op.xp, v)[0]


def _orthogonalize(xp: Any, w: Array, basis: list[Array]) -> Array:
    """Remove from ``w`` its components along the orthonormal ``basis`` (twice: CGS2)."""
    if not basis:
        return w
    Q = xp.stack(basis, axis=-1)  # batch + (size, j)
    for _ in range(2):
        coef = xp.sum(Q * w[..., :, None], axis=-2)  # batch + (j,)
        w = w - xp.sum(Q * coef[..., None, :], axis=-1)
    return w


def batched_power(op: LinearOperator, num_matvecs: int, *, seed: int | None = 0
                  ) -> tuple[Array, Array]:
    """Top singular vectors by power iteration with ``num_matvecs`` products.

    Starting from a random unit ``v``: ``u = A v / ||A v||``, then alternately
    ``v = A^T u / ||.||`` and ``u = A v / ||.||`` while the budget lasts (the last
    product is always with ``A``, so ``u`` is the freshest estimate).

    Returns
    -------
    u, v : arrays
        ``batch + (m,)`` and ``batch + (n,)``, unit norm (zero for a zero operator).
    """
    xp = op.xp
    with op._backend.no_grad():
        v = _start_vector(op, seed)
        u, _ = _normalize(xp, _apply(op, v, adjoint=False))
        for _ in range((max(int(num_matvecs), 1) - 1) // 2):
            v, _ = _normalize(xp, _apply(op, u, adjoint=True))
            u, _ = _normalize(xp, _apply(op, v, adjoint=False))
    b = op._backend
    return b.stop_gradient(u), b.stop_gradient(v)


def batched_lanczos(op: LinearOperator, num_matvecs: int, *, seed: int | None = 0
                    ) -> tuple[Array, Array]:
    """Top singular vectors by Golub–Kahan–Lanczos with ``num_matvecs`` products.

    ``k = (num_matvecs + 1) // 2`` bidiagonalization steps (capped at ``min(m, n)``),
    ``A V_k = U_k B_k`` with full reorthogonalization of both bases, then the top singular
    pair ``(p, q)`` of the ``k x k`` upper-bidiagonal ``B_k`` gives ``u = U_k p`` and
    ``v = V_k q``. Breakdown (an invariant subspace) leaves zero columns, which is harmless:
    the small SVD ignores them.

    Returns
    -------
    u, v : arrays
        ``batch + (m,)`` and ``batch + (n,)``, unit norm (zero for a zero operator).
    """
    xp = op.xp
    m, n = op.shape
    k = max(1, min((max(int(num_matvecs), 1) + 1) // 2, m, n))
    with op._backend.no_grad():
        v = _start_vector(op, seed)
        Vs: list[Array] = [v]
        Us: list[Array] = []
        alphas: list[Array] = []
        betas: list[Array] = []
        u, alpha = _normalize(xp, _apply(op, v, adjoint=False))
        Us.append(u)
        alphas.append(alpha)
        for _ in range(k - 1):
            r = _apply(op, Us[-1], adjoint=True) - alphas[-1][..., None] * Vs[-1]
            r = _orthogonalize(xp, r, Vs)
            v, beta = _normalize(xp, r)
            p = _apply(op, v, adjoint=False) - beta[..., None] * Us[-1]
            p = _orthogonalize(xp, p, Us)
            u, alpha = _normalize(xp, p)
            Vs.append(v)
            Us.append(u)
            betas.append(beta)
            alphas.append(alpha)
        if k == 1:
            u, v = Us[0], Vs[0]
        else:
            zero = xp.zeros_like(alphas[0])
            rows = []
            for i in range(k):
                row = [zero] * k
                row[i] = alphas[i]
                if i + 1 < k:
                    row[i + 1] = betas[i]
                rows.append(xp.stack(row, axis=-1))
            Bk = xp.stack(rows, axis=-2)  # batch + (k, k)
            P, _, Qh = xp.linalg.svd(Bk)
            U = xp.stack(Us, axis=-1)  # batch + (m, k)
            V = xp.stack(Vs, axis=-1)  # batch + (n, k)
            u = xp.sum(U * P[..., None, :, 0], axis=-1)
            v = xp.sum(V * Qh[..., None, 0, :], axis=-1)
    b = op._backend
    return b.stop_gradient(u), b.stop_gradient(v)
