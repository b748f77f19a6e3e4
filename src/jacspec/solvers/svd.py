"""``js.svds`` and ``js.spectral_norm``: top singular values of (batched) operators."""

from __future__ import annotations

from typing import Any, NamedTuple

from .. import validate as V
from ..backends import Backend
from ..interop import as_operator
from ..operators import LinearOperator
from .solve import check_budget, resolve_method, solve_eig, solve_svd

Array = Any


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
        Operator products spent (per sample: a batched product counts once); a traced
        integer inside a tol-driven ``jax.jit`` / ``tf.function`` solve.
    residuals : array
        Ritz residuals ``||A^H u - sigma v||`` (0 for ``method="dense"``); where float
        rounding of long vectors may reach ``tol``, the true residuals of the returned
        vectors (and ``converged`` says whether those met ``tol``).
    """

    values: Any
    left: Any
    right: Any
    converged: Any
    num_matvecs: int
    residuals: Any


def squeeze(op: LinearOperator, x: Array | None) -> Array | None:
    """Drop the batch-of-one axis of an unbatched operator's results."""
    if x is None or op.batch_shape:
        return x
    return x[0]


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
        Lanczos (which stops at the latest when its basis spans the smaller space). It
        must allow ``k`` values: at least ``2k`` products for Lanczos and power (a
        ValueError names the minimum). Inside ``jax.jit`` / ``tf.function``: without
        ``maxiter`` Lanczos still iterates to ``tol`` (under the framework's while loop;
        ``num_matvecs`` is then a traced integer); with it, exactly ``maxiter`` products
        run as one compiled loop; power iteration runs ``maxiter`` (default 200).
    v0 : array, optional
        Start vector of shape ``batch_shape + (n,)`` (a warm start); default: random
        from ``seed``. A warm start never costs exactness: Lanczos starts from ``v0``
        plus a random direction of the same norm, power iteration adds a random
        column to its block, so that a top vector that ``v0`` misses is still found.
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
    op = as_operator(op)
    method = V.choice(method, V.METHODS, "method")
    k, tol, maxiter, seed, v0, ncv = V.check_common(op, k, tol, maxiter, seed, v0, ncv)
    method = resolve_method(method, op, k, hermitian=False)
    check_budget(op, k, method, maxiter)
    with op.backend_impl.no_grad():
        out = solve_svd(op, k, method=method, tol=tol, maxiter=maxiter, v0=v0, seed=seed,
                        ncv=ncv, vectors=return_vectors)
    return SVDResult(
        values=squeeze(op, out.values),
        left=squeeze(op, out.left) if return_vectors else None,
        right=squeeze(op, out.right) if return_vectors else None,
        converged=squeeze(op, out.converged),
        num_matvecs=V.as_count(out.num_matvecs),
        residuals=squeeze(op, out.residuals),
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
    >>> round(s.item(), 6), W.grad.abs().tolist()
    (3.0, [[1.0, 0.0], [0.0, 0.0]])
    """
    op = as_operator(op)
    V.check_nonempty(op)
    method = V.choice(method, V.METHODS, "method")
    tol = V.check_tol(tol, op)
    maxiter = V.check_maxiter(maxiter)
    seed = V.check_seed(seed)
    b, xp = op.backend_impl, op.xp
    batched = bool(op.batch_shape)
    method = resolve_method(method, op, 1, hermitian=op.is_hermitian)
    check_budget(op, 1, method, maxiter, which="LM" if op.is_hermitian else None)
    with b.no_grad():
        if op.is_hermitian:
            out = solve_eig(op, 1, which="LM", method=method, tol=tol, maxiter=maxiter,
                            v0=None, seed=seed)
            x = out.right[..., 0]
            lam = out.values[..., 0]
            one = xp.ones_like(lam)
            sgn = xp.where(lam >= 0, one, -one)
            v = x
            u = x * (xp.astype(sgn, op.dtype) if op.is_complex else sgn)[:, None]
        else:
            out = solve_svd(op, 1, method=method, tol=tol, maxiter=maxiter, v0=None,
                            seed=seed)
            u, v = out.left[..., 0], out.right[..., 0]
    if not batched:
        u, v = u[0], v[0]
    # u^H A v through the adjoint product (A^H u)^H v: reverse mode, the cheaper
    # product with gradients recorded in every framework.
    u = b.stop_gradient(u)
    return envelope(b, op._mm(u[..., None], adjoint=True, grad=True)[..., 0], v)


def envelope(b: Backend, Ahu: Array, v: Array | None = None, value: Array | None = None
             ) -> Array:
    """The top singular value ``sigma = Re(u^H A v)`` of an operator ``A``, with the
    gradient of ``sigma`` (the envelope theorem: ``u v^H`` for a matrix), from
    ``Ahu = A^H u`` (taken with gradients) for its top left singular vector ``u`` held
    constant; the last axis is the vector's.

    ``v``: the right singular vector (held constant); ``None``: ``A^H u / ||A^H u||``,
    the exact partner of ``u`` (no NaN gradient where ``A^H u = 0``). ``value``: the
    value to return instead (a certified bound), with the same gradient.
    """
    xp = b.xp
    if v is None:
        w = b.stop_gradient(Ahu)
        nrm = xp.linalg.vector_norm(w, axis=-1, keepdims=True)
        v = w / xp.where(nrm > 0, nrm, xp.ones_like(nrm))
    v = b.stop_gradient(v)
    if b.dtype_name(Ahu.dtype).startswith("complex"):
        Ahu = xp.conj(Ahu)
    sigma = xp.real(xp.sum(Ahu * v, axis=-1))
    return sigma if value is None else sigma + b.stop_gradient(value - sigma)
