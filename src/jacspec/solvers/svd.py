"""``js.svds`` and ``js.spectral_norm``: top singular values of (batched) operators."""

from __future__ import annotations

from typing import Any, NamedTuple

from ..operators import LinearOperator
from . import _validate as V
from .decomp import Context, KrylovResult, svd_lanczos
from .dense import svd_dense
from .power import svd_power

Array = Any

# ``method="auto"``: dense when materializing (min(m, n) products, taken as ONE block
# product, then a LAPACK-class factorization) costs less than the Krylov products Lanczos
# is expected to need. Block products are several times cheaper per column than the
# sequential products of a Krylov loop, hence the factor (measured by
# ``jacspec.bench.rows``, row "auto vs best").
AUTO_EXPECTED_STEPS = 20
AUTO_BLOCK_ADVANTAGE = 2.0
# For the SVD (two products per step, a materialization from the smaller side) the
# measured crossover on square maps R^s -> R^s (``jacspec bench``, row "auto/best", torch
# CPU) lies near s = 128 (dense and Lanczos equal there; dense 2x faster at s = 64,
# Lanczos 2.5x faster at s = 256).
AUTO_BLOCK_ADVANTAGE_SVD = 3.0


def expected_krylov_products(k: int, products_per_step: int) -> int:
    """Products a Lanczos-type solver typically needs for ``k`` values at ``sqrt(eps)``."""
    return products_per_step * max(2 * k + 1, k + AUTO_EXPECTED_STEPS)


def auto_is_dense(shape: tuple[int, int], k: int, products_per_step: int) -> bool:
    """The ``method="auto"`` rule: dense iff
    ``min(m, n) <= c * products_per_step * max(2k + 1, k + 20)`` with ``c = 3`` for the
    SVD (``products_per_step = 2``) and ``c = 2`` otherwise (for ``svds`` with ``k = 1``:
    ``min(m, n) <= 126``; for ``eigsh``: ``n <= 42``)."""
    c = AUTO_BLOCK_ADVANTAGE_SVD if products_per_step == 2 else AUTO_BLOCK_ADVANTAGE
    return min(shape) <= c * expected_krylov_products(k, products_per_step)


class SVDResult(NamedTuple):
    """Result of :func:`jacspec.svds`.

    Attributes
    ----------
    values : array
        Singular values, descending, ``(k,)`` or ``(B, k)``.
    left, right : array or None
        Left ``(m, k)``/``(B, m, k)`` and right ``(n, k)``/``(B, n, k)`` singular
        vectors (orthonormal columns) when ``return_vectors=True``, else ``None``.
    converged : array of bool
        One flag per value: its Ritz residual met ``tol``.
    num_matvecs : int
        Operator products spent (per sample: a batched product counts once).
    residuals : array
        Ritz residuals ``||A^H u - sigma v||`` (0 for ``method="dense"``).
    """

    values: Any
    left: Any
    right: Any
    converged: Any
    num_matvecs: int
    residuals: Any


def _squeeze(op: LinearOperator, x: Array | None) -> Array | None:
    if x is None or op.batch_shape:
        return x
    return x[0]


def _solve_svd(op: LinearOperator, k: int, *, method: str, tol: float,
               maxiter: int | None, v0: Array | None, seed: int | None,
               ncv: int | None = None, vectors: bool = True) -> KrylovResult:
    """Batched (leading B) top-k triplets of ``op``, no gradient. ``method`` resolved."""
    m, n = op.shape
    if method == "dense":
        return svd_dense(Context(op, seed=seed), k)
    adjoint = m < n  # iterate from the smaller side: the basis fills in min(m, n) steps
    ctx = Context(op, adjoint=adjoint, seed=seed)
    start = None
    if v0 is not None:
        start = v0 if op.batch_shape else v0[None]
        if adjoint:
            start = ctx.mv(start, adjoint=True)  # A v0 in R^m
    if method == "lanczos":
        out = svd_lanczos(ctx, k, tol=tol, maxiter=maxiter, v0=start, ncv=ncv,
                          vectors=vectors)
    else:
        out = svd_power(ctx, k, tol=tol, maxiter=maxiter, v0=start)
    if adjoint:
        out = out._replace(left=out.right, right=out.left)
    return out


def svds(op: Any, k: int = 1, *, method: str = "auto", tol: float | None = None,
         maxiter: int | None = None, v0: Array | None = None, seed: int | None = 0,
         return_vectors: bool = False, ncv: int | None = None) -> SVDResult:
    """Top-``k`` singular values (and vectors) of a (batched) linear operator.

    Parameters
    ----------
    op : LinearOperator or array
        An operator of shape ``(m, n)`` (batched: ``batch_shape == (B,)``), e.g. from
        :func:`jacspec.jacobian`; an explicit 2-D/3-D array is wrapped by
        :func:`jacspec.aslinearoperator`.
    k : int
        Number of singular values, ``1 <= k <= min(m, n)``.
    method : {"auto", "dense", "lanczos", "power"}
        ``"dense"`` materializes the operator (``min(m, n)`` products in one block) and
        takes an exact SVD; ``"lanczos"`` is Golub–Kahan–Lanczos bidiagonalization with
        full reorthogonalization (twice), breakdown restarts and thick restarts (for
        ``k >= 2``, one check restart with a random vector after the first convergence,
        so that every copy of a repeated value is found); ``"power"`` is block power iteration on ``A^H A``. ``"auto"`` picks dense when
        ``min(m, n) <= 3 * 2 * max(2k + 1, k + 20)`` (126 for ``k = 1``), the point
        below which one block of ``min(m, n)`` products costs less than the ~``2 (k + 20)``
        sequential products of Lanczos; Lanczos otherwise.
    tol : float, optional
        Relative accuracy: a triplet is converged when its Ritz residual
        ``||A^H u - sigma v||`` is at most ``tol * sigma_1``. Default ``sqrt(eps)`` of the
        dtype (about 1.5e-8 in float64, 3.5e-4 in float32).
    maxiter : int, optional
        Cap on operator products (per sample). Default: 2000 (power), unbounded for
        Lanczos (which stops at the latest when its basis spans the smaller space). Under
        ``jax.jit`` no data-dependent stopping is possible: a fixed ``maxiter`` products
        run (default: one basis of ``max(2k + 1, k + 32)`` vectors for Lanczos, 200 for
        power).
    v0 : array, optional
        Start vector of shape ``batch_shape + (n,)``; default: random from ``seed``.
    seed : int or None
        Seed of the random start and restart vectors.
    return_vectors : bool
        Also return the singular vectors.
    ncv : int, optional
        Lanczos basis size at which a thick restart happens (default
        ``max(2k + 1, k + 32)``).

    Returns
    -------
    SVDResult
        ``values`` (descending), ``left``, ``right``, ``converged``, ``num_matvecs``,
        ``residuals``; arrays of the operator's framework.

    Raises
    ------
    ValueError
        For ``k`` outside ``[1, min(m, n)]``, ``tol <= 0`` or an unknown method.
    FloatingPointError
        When a product produces NaN or Inf.

    Warns
    -----
    RuntimeWarning
        When ``maxiter`` stops the solver before ``tol`` is met (the affected
        ``converged`` entries are False).

    Examples
    --------
    >>> import numpy as np
    >>> import jacspec as js
    >>> A = np.diag([3.0, 2.0, 1.0, 0.5])
    >>> res = js.svds(A, k=2, method="lanczos")
    >>> np.round(res.values, 6).tolist()
    [3.0, 2.0]
    >>> bool(res.converged.all())
    True
    >>> js.svds(np.ones((3, 5)), return_vectors=True).right.shape
    (5, 1)
    """
    op = V.as_operator(op)
    method = V.choice(method, V.METHODS, "method")
    k, tol, maxiter, seed, v0, ncv = V.check_common(op, k, tol, maxiter, seed, v0, ncv)
    if method == "auto":
        method = "dense" if auto_is_dense(op.shape, k, 2) else "lanczos"
    with op._backend.no_grad():
        out = _solve_svd(op, k, method=method, tol=tol, maxiter=maxiter, v0=v0, seed=seed,
                         ncv=ncv, vectors=return_vectors)
    return SVDResult(
        values=_squeeze(op, out.values),
        left=_squeeze(op, out.left) if return_vectors else None,
        right=_squeeze(op, out.right) if return_vectors else None,
        converged=_squeeze(op, out.converged),
        num_matvecs=int(out.num_matvecs),
        residuals=_squeeze(op, out.residuals),
    )


def spectral_norm(op: Any, *, method: str = "auto", tol: float | None = None,
                  maxiter: int | None = None, seed: int | None = 0) -> Array:
    """The largest singular value ``||op||_2``, differentiable.

    Solved without gradients (see :func:`jacspec.svds`; Hermitian operators such as
    Hessians go through :func:`jacspec.eigsh` with ``which="LM"``, one product per
    step), then evaluated once as ``Re(u^H op v)`` with the converged singular vectors
    held constant: by the envelope argument its gradient is the gradient of
    ``sigma_max``, in the framework's own autodiff (torch ``backward``, ``jax.grad``
    also under ``jax.jit``, ``tf.GradientTape``), flowing to ``x`` and to whatever ``f``
    closes over for ``op = js.jacobian(f, x)``.

    Parameters
    ----------
    op : LinearOperator or array
        A (batched) operator.
    method, tol, maxiter, seed
        As in :func:`jacspec.svds`.

    Returns
    -------
    array
        ``()`` (or ``(B,)`` for a batched operator), real, of the operator's framework.

    Examples
    --------
    >>> import torch
    >>> import jacspec as js
    >>> W = torch.tensor([[3.0, 0.0], [0.0, 1.0]], requires_grad=True)
    >>> s = js.spectral_norm(js.jacobian(lambda x: W @ x, torch.ones(2)))
    >>> s.backward()
    >>> round(float(s), 6), W.grad.abs().tolist()
    (3.0, [[1.0, 0.0], [0.0, 0.0]])
    """
    op = V.as_operator(op)
    method = V.choice(method, V.METHODS, "method")
    tol = V.check_tol(tol, op)
    maxiter = V.check_maxiter(maxiter)
    seed = V.check_seed(seed)
    b, xp = op._backend, op.xp
    batched = bool(op.batch_shape)
    with b.no_grad():
        if op.is_hermitian:
            from .eig import _solve_eig

            m_ = method
            if m_ == "auto":
                m_ = "dense" if auto_is_dense(op.shape, 1, 1) else "lanczos"
            out = _solve_eig(op, 1, which="LM", method=m_, tol=tol, maxiter=maxiter,
                             v0=None, seed=seed)
            x = out.right[..., 0]
            lam = out.values[..., 0]
            one = xp.ones_like(lam)
            sgn = xp.where(lam >= 0, one, -one)
            v = x
            u = x * (xp.astype(sgn, op.dtype) if op.is_complex else sgn)[:, None]
        else:
            if method == "auto":
                method = "dense" if auto_is_dense(op.shape, 1, 2) else "lanczos"
            out = _solve_svd(op, 1, method=method, tol=tol, maxiter=maxiter, v0=None,
                             seed=seed)
            u, v = out.left[..., 0], out.right[..., 0]
    u = b.stop_gradient(u)
    v = b.stop_gradient(v)
    if not batched:
        u, v = u[0], v[0]
    Av = op._mm(v[..., None], grad=True)[..., 0]
    if op.is_complex:
        u = xp.conj(u)
    return xp.real(xp.sum(u * Av, axis=-1))
