"""Method dispatch shared by ``svds``, ``eigsh``, ``spectral_norm`` and the penalties:
batched solves without gradient, with the method already validated."""

from __future__ import annotations

from typing import Any

from .. import validate as V
from ..operators import LinearOperator
from .dense import eig_dense, svd_dense
from .driver import krylov_solve
from .krylov import GKL, LANCZOS, min_products
from .power import eig_power_step, power_init, power_solve, svd_power_step
from .problem import Problem
from .ritz import KrylovResult

Array = Any

# ``method="auto"``: dense when materializing (min(m, n) products in ONE block, then a
# LAPACK-class factorization) costs less than the sequential products Lanczos is
# expected to need; a block product costs several times less per column than a Krylov
# step (measured by ``jacspec bench``, row "auto/best").
AUTO_EXPECTED_STEPS = 20
AUTO_BLOCK_ADVANTAGE = 2.0
AUTO_BLOCK_ADVANTAGE_SVD = 3.0


def auto_is_dense(shape: tuple[int, int], k: int, products_per_step: int) -> bool:
    """The ``method="auto"`` rule: dense iff
    ``min(m, n) <= c * products_per_step * max(2k + 1, k + 20)`` with ``c = 3`` for the
    SVD (``products_per_step = 2``) and ``c = 2`` otherwise (for ``svds`` with ``k = 1``:
    ``min(m, n) <= 126``; for ``eigsh``: ``n <= 42``)."""
    c = AUTO_BLOCK_ADVANTAGE_SVD if products_per_step == 2 else AUTO_BLOCK_ADVANTAGE
    return min(shape) <= c * products_per_step * max(2 * k + 1, k + AUTO_EXPECTED_STEPS)


def resolve_method(method: str, op: LinearOperator, k: int, *, hermitian: bool) -> str:
    if op.sharding is not None:  # vectors sharded across processes: never materialized
        if method == "dense":
            raise ValueError(
                "Expected method 'lanczos' or 'power' for an operator whose vectors are "
                "sharded across processes (method='dense' would gather the whole "
                "operator). Received method='dense'.")
        return "lanczos" if method == "auto" else method
    if method != "auto":
        return method
    return "dense" if auto_is_dense(op.shape, k, 1 if hermitian else 2) else "lanczos"


def required_products(op: LinearOperator, k: int, method: str, *, which: str | None = None
                      ) -> int:
    """The fewest products that produce ``k`` values with ``method`` (``which`` given
    for ``eigsh``): a smaller ``maxiter`` is a ValueError."""
    r = min(op.shape)
    if method == "dense":
        return 1
    if which is None:  # svds
        return min_products(GKL, k, r) if method == "lanczos" else 2 * k
    if method == "lanczos":
        return min_products(LANCZOS, k, r)
    return k if which == "LM" else k + 1


def check_budget(op: LinearOperator, k: int, method: str, maxiter: int | None, *,
                 which: str | None = None) -> None:
    if maxiter is None:
        return
    V.budget(maxiter, required_products(op, k, method, which=which), method, k)


def solve_svd(op: LinearOperator, k: int, *, method: str, tol: float, maxiter: int | None,
              v0: Array | None, seed: int | None, ncv: int | None = None,
              vectors: bool = True, u0: Array | None = None, mix_start: bool = True
              ) -> KrylovResult:
    """Batched (leading B) top-``k`` singular triplets of ``op``, no gradient. ``v0``
    (right) or ``u0`` (left, ``batch_shape + (m,)``) start the iteration, with a random
    direction unless ``mix_start`` is False (see ``Problem.start``)."""
    m, n = op.shape
    if method == "dense":
        return svd_dense(Problem.of(op, seed=seed), k)
    adjoint = m < n  # iterate from the smaller side: the basis fills in min(m, n) steps
    p = Problem.of(op, adjoint=adjoint, seed=seed, mix_start=mix_start)
    start, count = None, 0
    if v0 is not None:
        start = v0 if op.batch_shape else v0[None]
        if adjoint:
            start, count = p.mv(start, adjoint=True), 1  # A v0 in R^m
    elif u0 is not None:
        start = u0 if op.batch_shape else u0[None]
        if not adjoint:
            start, count = p.mv(start, adjoint=True), 1  # A^H u0 in R^n
    if method == "lanczos":
        out = krylov_solve(p, GKL, k, tol=tol, maxiter=maxiter, v0=start, ncv=ncv,
                           vectors=vectors, count=count)
    else:
        s = power_init(p, k, start, two_sided=True, count=count)
        out = power_solve(p, svd_power_step, s, k, maxiter, 2, static=(tol,))
    if adjoint:
        out = out._replace(left=out.right, right=out.left)
    return out


def solve_eig(op: LinearOperator, k: int, *, which: str, method: str, tol: float,
              maxiter: int | None, v0: Array | None, seed: int | None,
              ncv: int | None = None) -> KrylovResult:
    """Batched ``k`` wanted eigenpairs of the Hermitian ``op``, no gradient (a start
    ``v0`` gets a random direction: see ``Problem.start``)."""
    p = Problem.of(op, seed=seed, mix_start=True)
    if method == "dense":
        return eig_dense(p, k, which=which)
    start = None
    if v0 is not None:
        start = v0 if op.batch_shape else v0[None]
    if method == "lanczos":
        return krylov_solve(p, LANCZOS, k, tol=tol, maxiter=maxiter, v0=start, ncv=ncv,
                            which=which)

    def run(kk, wh, tl, limit, shift=None, sign=1.0, warn=True, count=0, draw=1):
        s = power_init(p, kk, start, two_sided=False, count=count, draw=draw)
        return power_solve(p, eig_power_step, s, kk, limit, 1, static=(tl, wh, sign),
                           args=(shift,), warn=warn)

    if which == "LM":
        return run(k, "LM", tol, maxiter)
    # LA / SA: iterate on +-A + rho I, rho an estimate of the spectral radius, so that the
    # wanted end of the spectrum dominates.
    # Inside a trace a run takes its whole budget (fixed steps): the rough estimate gets a
    # quarter of it, the wanted end the rest.
    budget = None if maxiter is None else max(1, maxiter // 4) if p.traced else maxiter - k
    est = run(1, "LM", 1e-2, budget, warn=False)
    rho = p.xp.abs(est.values[:, 0]) * 1.1
    rest = None if maxiter is None else max(maxiter - est.num_matvecs, k)
    return run(k, which, tol, rest, rho, 1.0 if which == "LA" else -1.0,
               count=est.num_matvecs, draw=2)
