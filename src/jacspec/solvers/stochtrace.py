"""Stochastic trace and Frobenius-norm estimators (``js.trace``, ``js.frobenius_norm``).

All products are taken with gradients on (``grad=True``), so the estimates are
differentiable in the framework's own autodiff; random probes never carry gradients.
"""

from __future__ import annotations

from typing import Any

from .. import validate as V
from ..interop import as_operator, materialize
from .problem import Problem

Array = Any


def _probes(pr: Problem, size: int, p: int, kind: str, draw: int) -> Array:
    """``(B, size, p)`` probes with ``E[z z^H] = I``: Rademacher or standard normal
    (the ``draw``-th draw of the seed)."""
    xp = pr.xp
    G = pr.random((pr.B, size, p), draw, axis=-2)
    if kind == "gaussian":
        return G
    if pr.is_complex:
        G = xp.real(G)
    one = xp.ones_like(G)
    Z = xp.where(G >= 0, one, -one)
    return pr.cast(Z)


def _apply(pr: Problem, V_: Array, *, adjoint: bool = False) -> Array:
    """Differentiable product of the (batch-of-one) operator with ``(B, size, p)``."""
    op = pr.op
    if pr.batched:
        return op._mm(V_, adjoint=adjoint, grad=True)
    return op._mm(V_[0], adjoint=adjoint, grad=True)[None]


def _colsum_dot(pr: Problem, Z: Array, AZ: Array) -> Array:
    """``sum_j z_j^H A z_j`` per sample, (B,)."""
    return pr.dot_sum(Z, AZ)


def hutchinson(pr: Problem, p: int, kind: str) -> Array:
    Z = _probes(pr, pr.local_in, p, kind, 1)
    return _colsum_dot(pr, Z, _apply(pr, Z)) / p


def hutchpp(pr: Problem, p: int, kind: str) -> Array:
    """Hutch++ (Meyer, Musco, Musco, Woodruff 2021): exact trace on a sketched range,
    Hutchinson on the deflated rest; ``p`` products in total (``p // 3`` for the sketch,
    ``p // 3`` for the range, the rest for the probes)."""
    xp = pr.xp
    s = p // 3
    g = p - 2 * s
    b = pr.backend
    S = _probes(pr, pr.local_in, s, kind, 1)
    with b.no_grad():
        AS = b.stop_gradient(pr.op._mm(S if pr.batched else S[0], grad=False))
    if not pr.batched:
        AS = AS[None]
    Q = b.stop_gradient(pr.orthonormal(AS))  # (B, n, s)
    t_range = _colsum_dot(pr, Q, _apply(pr, Q))
    G = _probes(pr, pr.local_in, g, kind, 2)
    G = G - xp.matmul(Q, pr.gram(Q, G))
    t_rest = _colsum_dot(pr, G, _apply(pr, G)) / g
    return t_range + t_rest


def trace(op: Any, *, num_probes: int = 30, method: str = "hutch++", seed: int | None = 0,
          probes: str = "rademacher") -> Array:
    """Unbiased stochastic estimate of the trace of a square (batched) operator.

    Parameters
    ----------
    op : LinearOperator or array
        A square operator ``(n, n)`` (batched: ``(B,)`` traces).
    num_probes : int
        Operator products spent in total (at least 3 for ``"hutch++"``).
    method : {"hutch++", "hutchinson"}
        ``"hutchinson"``: the mean of ``z^H A z`` over random probes ``z``;
        ``"hutch++"`` (Meyer et al. 2021): the exact trace on a sketch of ``A``'s range
        plus Hutchinson on the rest; lower variance at equal products when the spectrum
        decays. Both are unbiased.
    seed : int or None
        Seed of the probes.
    probes : {"rademacher", "gaussian"}
        Distribution of the probe entries.

    Returns
    -------
    array
        ``()`` or ``(B,)``, differentiable, of the operator's framework and dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import jacspec as js
    >>> A = np.diag(np.arange(1.0, 11.0))
    >>> round(float(js.trace(A, num_probes=30)), 6)  # rank 10 < 30 // 3 sketch: exact
    55.0
    >>> est = js.trace(A, num_probes=12, method="hutchinson")
    >>> bool(abs(float(est) - 55.0) < 20)
    True
    """
    op = as_operator(op)
    V.check_nonempty(op)
    V.check_square(op, "trace")
    method = V.choice(method, V.TRACE_METHODS, "method")
    probes = V.choice(probes, V.PROBES, "probes")
    seed = V.check_seed(seed)
    p = V.check_positive_int(num_probes, "num_probes", minimum=3 if method == "hutch++" else 1)
    pr = Problem.of(op, seed=seed)
    out = hutchpp(pr, p, probes) if method == "hutch++" else hutchinson(pr, p, probes)
    pr.check_finite(out)
    return out if op.batch_shape else out[0]


def frobenius_norm(op: Any, *, num_probes: int | None = None, seed: int | None = 0) -> Array:
    """Frobenius norm ``||op||_F``: exact, or the random-projection estimate.

    Parameters
    ----------
    op : LinearOperator or array
        A (batched) operator ``(m, n)``.
    num_probes : int, optional
        ``None`` (default): exact, from ``min(m, n)`` products in one block. Otherwise
        the estimate of Hoffman, Roberts and Yaida (2019): ``sqrt(m * mean ||A^H v||^2)``
        over ``num_probes`` vectors ``v`` uniform on the unit sphere of the output space
        (vector-Jacobian products); its square is unbiased for ``||op||_F^2``.
    seed : int or None
        Seed of the projections.

    Returns
    -------
    array
        ``()`` or ``(B,)``, real, differentiable, of the operator's framework.

    Examples
    --------
    >>> import numpy as np
    >>> import jacspec as js
    >>> A = np.array([[3.0, 0.0], [0.0, 4.0]])
    >>> float(js.frobenius_norm(A))
    5.0
    >>> bool(abs(float(js.frobenius_norm(A, num_probes=2000)) - 5.0) < 0.25)
    True
    """
    op = as_operator(op)
    V.check_nonempty(op)
    seed = V.check_seed(seed)
    xp = op.xp
    pr = Problem.of(op, seed=seed)
    if num_probes is None:
        M = materialize(op, grad=True)
        if not op.backend_impl.is_traced(M) and not op.backend_impl.all_finite(M):
            raise FloatingPointError(f"Materializing {op!r} produced NaN or Inf.")
        sq = xp.real(pr.conj(M) * M)
        return xp.sqrt(xp.sum(xp.sum(sq, axis=-1), axis=-1))
    p = V.check_positive_int(num_probes, "num_probes")
    m = op.shape[0]
    G = pr.random((pr.B, m, p), axis=-2)
    G = G / pr.cast(xp.linalg.vector_norm(G, axis=-2, keepdims=True))
    R = _apply(pr, G, adjoint=True)  # (B, n, p)
    sq = xp.sum(xp.sum(xp.real(pr.conj(R) * R), axis=-1), axis=-1) * (m / p)
    pr.check_finite(sq)
    out = xp.sqrt(sq)
    return out if op.batch_shape else out[0]
