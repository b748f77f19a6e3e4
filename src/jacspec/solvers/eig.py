"""``js.eigsh``: extreme eigenpairs of Hermitian (batched) operators such as Hessians."""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import validate as V
from ..interop import as_operator
from .solve import check_budget, resolve_method, solve_eig
from .svd import squeeze

Array = Any


class EighResult(NamedTuple):
    """Result of :func:`jacspec.eigsh`.

    Attributes
    ----------
    values : array
        ``(k,)`` or ``(B, k)``: ``LM`` by descending magnitude, ``LA`` descending,
        ``SA`` ascending.
    vectors : array or None
        Orthonormal eigenvectors ``(n, k)``/``(B, n, k)`` when ``return_vectors``.
    converged : array of bool
        One flag per value.
    num_matvecs : int
        Operator products spent (per sample).
    residuals : array
        Ritz residuals ``||A x - lambda x||`` (0 for ``method="dense"``).
    """

    values: Any
    vectors: Any
    converged: Any
    num_matvecs: int
    residuals: Any


def eigsh(op: Any, k: int = 1, *, which: str = "LM", method: str = "auto",
          tol: float | None = None, maxiter: int | None = None, v0: Array | None = None,
          seed: int | None = 0, return_vectors: bool = False,
          ncv: int | None = None) -> EighResult:
    """``k`` extreme eigenvalues (and vectors) of a Hermitian (batched) operator.

    The operator is assumed Hermitian (Hessians from :func:`jacspec.hessian`, ``A^H A``,
    symmetric matrices); only products with it are taken.

    Parameters
    ----------
    op : LinearOperator or array
        A square operator ``(n, n)`` (batched: ``batch_shape == (B,)``).
    k : int
        Number of eigenvalues, ``1 <= k <= n``.
    which : {"LM", "LA", "SA"}
        Largest magnitude, largest algebraic, smallest algebraic.
    method : {"auto", "dense", "lanczos", "power"}
        ``"lanczos"``: symmetric Lanczos with full reorthogonalization (twice),
        breakdown restarts and thick restarts (one product per step; for ``k >= 2``
        one check restart after the first convergence finds every copy of a repeated
        eigenvalue); ``"dense"``:
        materialize and ``eigh``; ``"power"``: block subspace iteration (``LA``/``SA``
        through a shift by an estimate of the spectral radius). ``"auto"``: dense when
        ``n <= 2 * max(2k + 1, k + 20)``, Lanczos otherwise.
    tol : float, optional
        Relative accuracy: a pair is converged when ``||A x - lambda x||`` is at most
        ``tol * max |lambda|``. Default ``sqrt(eps)`` of the dtype.
    maxiter : int, optional
        Cap on products (see :func:`jacspec.svds`).
    v0 : array, optional
        Start vector ``batch_shape + (n,)`` (a warm start, with a random direction
        added as in :func:`jacspec.svds`).
    seed : int or None
        Seed of the random start and restart vectors.
    return_vectors : bool
        Also return the eigenvectors.
    ncv : int, optional
        Lanczos basis size at which a thick restart happens.

    Returns
    -------
    EighResult

    Examples
    --------
    >>> import numpy as np
    >>> import jacspec as js
    >>> A = np.diag([-4.0, 1.0, 2.0, 3.0])
    >>> js.eigsh(A, k=2, method="lanczos").values.round(6).tolist()
    [-4.0, 3.0]
    >>> js.eigsh(A, k=2, which="LA", method="lanczos").values.round(6).tolist()
    [3.0, 2.0]
    >>> js.eigsh(A, which="SA", method="dense").values.round(6).tolist()
    [-4.0]
    """
    op = as_operator(op)
    V.check_square(op, "eigsh")
    which = V.choice(which, V.WHICH, "which")
    method = V.choice(method, V.METHODS, "method")
    k, tol, maxiter, seed, v0, ncv = V.check_common(op, k, tol, maxiter, seed, v0, ncv)
    method = resolve_method(method, op, k, hermitian=True)
    check_budget(op, k, method, maxiter, which=which)
    with op.backend_impl.no_grad():
        out = solve_eig(op, k, which=which, method=method, tol=tol, maxiter=maxiter,
                        v0=v0, seed=seed, ncv=ncv)
    return EighResult(
        values=squeeze(op, out.values),
        vectors=squeeze(op, out.right) if return_vectors else None,
        converged=squeeze(op, out.converged),
        num_matvecs=V.as_count(out.num_matvecs),
        residuals=squeeze(op, out.residuals),
    )
