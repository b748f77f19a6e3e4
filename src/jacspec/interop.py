"""Conversions: explicit matrices to operators, operators to matrices and to SciPy."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import validate
from .backends import backend_of, host_backend
from .operators import DenseOperator, LinearOperator, ScipyOperator

__all__ = ["aslinearoperator", "dense", "to_scipy", "materialize"]


def aslinearoperator(A: Any) -> LinearOperator:
    """An explicit matrix (or SciPy operator) as a :class:`jacspec.LinearOperator`.

    Parameters
    ----------
    A : array, scipy operator or LinearOperator
        A dense ``(m, n)`` matrix or ``(B, m, n)`` batch of matrices of any backend
        (float32/64 or complex64/128), a :class:`scipy.sparse.linalg.LinearOperator` or
        sparse matrix (numpy backend), or a ``js.LinearOperator`` (returned unchanged).

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse as sp
    >>> import jacspec as js
    >>> js.aslinearoperator(np.eye(3)).shape
    (3, 3)
    >>> js.aslinearoperator(np.zeros((4, 2, 3))).batch_shape
    (4,)
    >>> js.aslinearoperator(sp.eye(5, format="csr")).backend
    'numpy'
    """
    if isinstance(A, LinearOperator):
        return A
    b = backend_of(A)
    if b is not None:
        return DenseOperator(b.as_matrix(A), b)
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    if isinstance(A, spla.LinearOperator) or sp.issparse(A):
        return ScipyOperator(A, host_backend())
    raise TypeError(
        "Expected a 2-D/3-D array (numpy, torch, jax or tensorflow), a SciPy "
        "LinearOperator or sparse matrix, or a js.LinearOperator. "
        f"Received {type(A).__module__}.{type(A).__qualname__}."
    )


def as_operator(op: Any) -> LinearOperator:
    """``op`` itself, or an explicit array wrapped by :func:`aslinearoperator` (the
    solvers' ``op`` argument)."""
    if isinstance(op, LinearOperator):
        return op
    try:
        return aslinearoperator(op)
    except TypeError:
        raise TypeError(
            "Expected op to be a js.LinearOperator (from js.jacobian, js.hessian or "
            "js.aslinearoperator) or an explicit 2-D/3-D array. "
            f"Received {type(op).__module__}.{type(op).__qualname__}."
        ) from None


def _as_operator(op: Any) -> LinearOperator:
    validate.instance(op, LinearOperator, "op", "a js.LinearOperator (see js.aslinearoperator)")
    return op


def materialize(op: LinearOperator, *, grad: bool = False) -> Any:
    """The matrix of ``op`` from ``min(m, n)`` products (internal: ``grad`` selectable)."""
    xp = op.xp
    m, n = op.shape
    size, adjoint = (n, False) if n <= m else (m, True)
    eye = xp.eye(size, dtype=op.dtype, device=op.device)
    if op.batch_shape:
        eye = xp.broadcast_to(eye, op.batch_shape + (size, size))
    if min(m, n) == 0:
        return xp.zeros(op.batch_shape + (m, n), dtype=op.dtype, device=op.device)
    M = op._mm(eye, adjoint=adjoint, grad=grad)
    if adjoint:
        M = xp.matrix_transpose(M)
        if op.is_complex:
            M = xp.conj(M)
    return M


def dense(op: LinearOperator) -> Any:
    """The materialized matrix of ``op``, ``(m, n)`` or ``(B, m, n)``.

    Uses ``min(m, n)`` products: Jacobian-vector products when the input is smaller,
    vector-Jacobian products otherwise, in one block. The result is an array of the
    operator's framework, dtype and device, differentiable in that framework.

    Examples
    --------
    >>> import numpy as np
    >>> import jacspec as js
    >>> A = np.arange(6.0).reshape(2, 3)
    >>> np.array_equal(js.dense(js.aslinearoperator(A).T), A.T)
    True
    """
    op = _as_operator(op)
    M = materialize(op, grad=True)
    b = op.backend_impl
    if not b.is_traced(M) and not b.all_finite(M):
        raise FloatingPointError(f"Materializing {op!r} produced NaN or Inf.")
    return M


def to_scipy(op: LinearOperator) -> Any:
    """A :class:`scipy.sparse.linalg.LinearOperator` view of an unbatched operator.

    Products take and return NumPy arrays (float64, or complex128 for complex
    operators or complex vectors); each one moves its vector to the operator's framework
    and device and the result back. A complex vector on a real operator is applied to its
    real and imaginary parts. Use it to hand jacspec operators to SciPy solvers.

    Examples
    --------
    >>> import numpy as np
    >>> import scipy.sparse.linalg as spla
    >>> import jacspec as js
    >>> A = np.diag([3.0, 2.0, 1.0])
    >>> S = js.to_scipy(js.aslinearoperator(A))
    >>> float(spla.svds(S, k=1, return_singular_vectors=False)[0])
    3.0
    """
    import scipy.sparse.linalg as spla

    op = _as_operator(op)
    validate.unbatched(op, "to_scipy")
    b = op.backend_impl
    out_dtype = np.complex128 if op.is_complex else np.float64

    def apply(V: np.ndarray, adjoint: bool) -> np.ndarray:
        V = np.asarray(V)
        if np.iscomplexobj(V) and not op.is_complex:
            # A real operator maps real and imaginary parts separately (as SciPy's do).
            return apply(V.real, adjoint) + 1j * apply(V.imag, adjoint)
        vec = V.ndim == 1
        block = V.reshape(-1, 1) if vec else V
        xs = b.from_numpy(block, dtype=op.dtype, device=op.device)
        with b.no_grad():
            R = op._mm(xs, adjoint=adjoint, grad=False)
        if not b.all_finite(R):
            raise FloatingPointError(f"A product with {op!r} produced NaN or Inf.")
        out = b.to_numpy(R).astype(out_dtype, copy=False)
        return out[:, 0] if vec else out

    class _JacspecScipyOperator(spla.LinearOperator):
        def __init__(self) -> None:
            super().__init__(dtype=np.dtype(out_dtype), shape=op.shape)

        def _matvec(self, v):
            return apply(v, False)

        def _rmatvec(self, u):
            return apply(u, True)

        def _matmat(self, V):
            return apply(V, False)

        def _rmatmat(self, U):
            return apply(U, True)

        def _adjoint(self):
            return to_scipy(op.H)

    return _JacspecScipyOperator()
