"""Matrix-free linear operators and their algebra.

Every operator reduces to one internal primitive, :meth:`LinearOperator._mm`, which
applies the operator (or its adjoint) to a block of column vectors of shape
``batch_shape + (n, k)``. The public ``matvec``/``rmatvec``/``matmat`` validate their input
and call it. ``grad=False`` products carry no gradient (solvers iterate with them);
``grad=True`` products are differentiable in the framework's own autodiff (used once, at
the end, for envelope-theorem gradients).

The classes mirror :class:`scipy.sparse.linalg.LinearOperator` (``shape``, ``dtype``,
``matvec``, ``rmatvec``, ``matmat``) and lineax's algebra (sum, scaling, composition,
adjoint as small classes).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Hashable
from typing import Any

from . import validate
from .backends import COMPLEX_DTYPES, HALF_DTYPES, HALF_EPS, Backend, backend_of

__all__ = [
    "LinearOperator",
    "DenseOperator",
    "DiagonalOperator",
    "LinearizationOperator",
    "ScipyOperator",
    "rowsum_diagonal",
]

Array = Any


def _result_dtype(backend: Backend, d1: Any, d2: Any) -> Any:
    n1, n2 = backend.dtype_name(d1), backend.dtype_name(d2)
    if n1 == n2:
        return d1
    order = ["float32", "float64", "complex64", "complex128"]
    if n1 in order and n2 in order:
        hi = max(order.index(n1), order.index(n2))
        name = order[hi]
        if name == "complex64" and "float64" in (n1, n2):
            name = "complex128"
        return backend.dtype_from_name(name)
    return d1


class LinearOperator:
    """A (possibly batched) linear map applied through products only.

    Attributes
    ----------
    shape : tuple of int
        ``(m, n)``: flattened output and input sizes.
    batch_shape : tuple of int
        ``()`` for a single operator, ``(B,)`` for ``B`` independent operators.
    dtype
        The framework's dtype of the products.
    backend : str
        ``"numpy"``, ``"torch"``, ``"jax"`` or ``"tensorflow"``.
    device
        The framework's device of the products.

    Examples
    --------
    >>> import numpy as np
    >>> import jacspec as js
    >>> A = js.aslinearoperator(np.array([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]))
    >>> A.shape
    (3, 2)
    >>> (A @ np.ones(2)).tolist()
    [3.0, 7.0, 11.0]
    >>> (A.T @ np.ones(3)).tolist()
    [9.0, 12.0]
    >>> B = 2 * A - A
    >>> js.dense(B @ A.T).shape
    (3, 3)
    """

    def __init__(
        self,
        shape: tuple[int, int],
        *,
        dtype: Any,
        backend: Backend,
        device: Any = None,
        batch_shape: tuple[int, ...] = (),
    ) -> None:
        self.shape = (int(shape[0]), int(shape[1]))
        self.batch_shape = tuple(int(b) for b in batch_shape)
        self.dtype = dtype
        self._backend = backend
        self.device = device

    # -- metadata --------------------------------------------------------------------
    @property
    def backend(self) -> str:
        """The framework's name: ``"numpy"``, ``"torch"``, ``"jax"`` or ``"tensorflow"``."""
        return self._backend.name

    @property
    def backend_impl(self) -> Backend:
        """The :class:`~jacspec.backends.Backend` adapter of the operator's framework:
        what jacspec's solvers and extensions ask for arrays, products and loops."""
        return self._backend

    @property
    def xp(self) -> Any:
        """The array namespace of the operator's framework."""
        return self._backend.xp

    @property
    def is_complex(self) -> bool:
        return self._backend.dtype_name(self.dtype) in COMPLEX_DTYPES

    @property
    def is_hermitian(self) -> bool:
        """Whether the operator is known to equal its adjoint (Hessians, real diagonals)."""
        return False

    #: How the operator's vectors are split across processes (a
    #: :class:`~jacspec.backends.Sharding`: each process holds its parameters' shards),
    #: or None where every process holds whole vectors.
    sharding: Any = None

    @property
    def traced(self) -> bool:
        """Whether the operator holds traced values (inside ``jax.jit`` or
        ``tf.function``): its solves then run a fixed budget, with no host reads."""
        b = self._backend
        for v in vars(self).values():
            if isinstance(v, LinearOperator):
                if v.traced:
                    return True
            elif b.is_array(v) and b.is_traced(v):
                return True
        return False

    @property
    def product_eps(self) -> float:
        """The unit roundoff of the products: that of :attr:`dtype`, or the coarser one
        of a 16-bit model whose products run in its own dtype (what accuracy a solver
        can reach)."""
        import numpy as np

        name = self._backend.dtype_name(self.dtype)
        own = float(np.finfo({"complex64": "float32", "complex128": "float64"}.get(
            name, name)).eps)
        parts = [v.product_eps for v in vars(self).values() if isinstance(v, LinearOperator)]
        return max([own, getattr(self, "_product_eps", 0.0)] + parts)

    def __repr__(self) -> str:
        batch = f", batch_shape={self.batch_shape}" if self.batch_shape else ""
        return (
            f"<{type(self).__name__} shape={self.shape}{batch} "
            f"dtype={self._backend.dtype_name(self.dtype)} backend={self.backend}>"
        )

    # -- the primitive -----------------------------------------------------------------
    def _mm(self, V: Array, *, adjoint: bool = False, grad: bool = False) -> Array:
        """Apply to ``V`` of shape ``batch_shape + (n, k)`` (``(m, k)`` if ``adjoint``)."""
        raise NotImplementedError  # pragma: no cover - abstract

    def _mv(self, v: Array, *, adjoint: bool = False) -> Array:
        """Apply to single vectors ``batch_shape + (n,)`` without gradient: :meth:`_mm`
        on one column, unless a subclass has a faster path (the solvers' steps)."""
        return self._mm(v[..., None], adjoint=adjoint, grad=False)[..., 0]

    def _staged_form(self) -> tuple[Hashable, Any, Callable[[Any], LinearOperator]] | None:
        """``(key, state, rebuild)`` where the products are one program on some arrays
        (compiled pieces of an eager solve, ``Problem.staging``): ``key`` the
        program's structure, ``state`` the arrays, ``rebuild(state)`` the same operator on
        other (traced) arrays. ``rebuild`` keeps none of this operator's arrays: compiled
        functions are cached by key. None where the operator cannot tell."""
        return None

    def _array_form(self, name: str, key: Hashable
                    ) -> tuple[Hashable, Any, Callable[[Any], LinearOperator]]:
        """:meth:`_staged_form` of an operator whose products read one array, its
        attribute ``name``; ``key``: everything else they depend on."""
        bare = copy.copy(self)
        setattr(bare, name, None)

        def rebuild(a: Array) -> LinearOperator:
            op = copy.copy(bare)
            setattr(op, name, a)
            return op

        return key, getattr(self, name), rebuild

    # -- public products ----------------------------------------------------------------
    def _checked(self, out: Array) -> Array:
        b = self._backend
        if not b.is_traced(out) and not b.all_finite(out):
            raise FloatingPointError(
                f"A product with {self!r} produced NaN or Inf."
            )
        return out

    def matvec(self, v: Array) -> Array:
        """``A v`` for ``v`` of shape ``batch_shape + (n,)``."""
        v = validate.vector(self, v, self.shape[1], block=False)
        return self._checked(self._mm(v[..., None], grad=True)[..., 0])

    def rmatvec(self, u: Array) -> Array:
        """The adjoint product ``A^H u`` for ``u`` of shape ``batch_shape + (m,)``."""
        u = validate.vector(self, u, self.shape[0], block=False)
        return self._checked(self._mm(u[..., None], adjoint=True, grad=True)[..., 0])

    def matmat(self, V: Array) -> Array:
        """``A V`` for ``V`` of shape ``batch_shape + (n, k)``."""
        V = validate.vector(self, V, self.shape[1], block=True)
        return self._checked(self._mm(V, grad=True))

    def rmatmat(self, U: Array) -> Array:
        """``A^H U`` for ``U`` of shape ``batch_shape + (m, k)``."""
        U = validate.vector(self, U, self.shape[0], block=True)
        return self._checked(self._mm(U, adjoint=True, grad=True))

    # -- algebra -------------------------------------------------------------------------
    @property
    def H(self) -> LinearOperator:
        """The adjoint (conjugate transpose) operator."""
        return _AdjointOperator(self)

    @property
    def T(self) -> LinearOperator:
        """The adjoint operator (the transpose, for real operators)."""
        return _AdjointOperator(self)

    def adjoint(self) -> LinearOperator:
        return self.H

    def __matmul__(self, other: Any) -> Any:
        if isinstance(other, LinearOperator):
            return _ProductOperator(self, other)
        if backend_of(other) is None:
            return NotImplemented
        nd = len(other.shape) - len(self.batch_shape)
        return self.matvec(other) if nd == 1 else self.matmat(other)

    def __rmatmul__(self, other: Any) -> Any:
        if isinstance(other, LinearOperator):  # pragma: no cover - handled by __matmul__
            return _ProductOperator(other, self)
        return NotImplemented

    def __add__(self, other: Any) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _SumOperator(self, other, sign=1)

    def __sub__(self, other: Any) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _SumOperator(self, other, sign=-1)

    def __neg__(self) -> LinearOperator:
        return _ScaledOperator(self, -1)

    def __pos__(self) -> LinearOperator:
        return self

    def __mul__(self, c: Any) -> LinearOperator:
        if isinstance(c, LinearOperator):
            return NotImplemented
        return _ScaledOperator(self, c)

    __rmul__ = __mul__

    def __truediv__(self, c: Any) -> LinearOperator:
        if isinstance(c, LinearOperator):
            return NotImplemented
        return _ScaledOperator(self, 1 / c)


class _AdjointOperator(LinearOperator):
    def __init__(self, op: LinearOperator) -> None:
        super().__init__(
            (op.shape[1], op.shape[0]),
            dtype=op.dtype,
            backend=op.backend_impl,
            device=op.device,
            batch_shape=op.batch_shape,
        )
        self.op = op

    @property
    def is_hermitian(self) -> bool:
        return self.op.is_hermitian

    @property
    def H(self) -> LinearOperator:
        return self.op

    T = H

    def _mm(self, V, *, adjoint=False, grad=False):
        return self.op._mm(V, adjoint=not adjoint, grad=grad)


class _BroadcastOperator(LinearOperator):
    """An unbatched operator applied to every member of a batch of vectors."""

    def __init__(self, op: LinearOperator, batch_shape: tuple[int, ...]) -> None:
        super().__init__(op.shape, dtype=op.dtype, backend=op.backend_impl, device=op.device,
                         batch_shape=batch_shape)
        self.op = op

    @property
    def is_hermitian(self) -> bool:
        return self.op.is_hermitian

    def _mm(self, V, *, adjoint=False, grad=False):
        xp = self.xp
        B, size, k = V.shape[0], V.shape[1], V.shape[2]
        W = xp.reshape(xp.permute_dims(V, (1, 0, 2)), (size, B * k))
        R = self.op._mm(W, adjoint=adjoint, grad=grad)
        out = R.shape[0]
        return xp.permute_dims(xp.reshape(R, (out, B, k)), (1, 0, 2))


def _lift(op: LinearOperator, batch_shape: tuple[int, ...]) -> LinearOperator:
    return op if op.batch_shape == batch_shape else _BroadcastOperator(op, batch_shape)


class _SumOperator(LinearOperator):
    def __init__(self, a: LinearOperator, b: LinearOperator, *, sign: int) -> None:
        batch = validate.operator_sum(a, b)
        super().__init__(a.shape, dtype=_result_dtype(a.backend_impl, a.dtype, b.dtype),
                         backend=a.backend_impl, device=a.device, batch_shape=batch)
        self.a, self.b, self.sign = _lift(a, batch), _lift(b, batch), sign

    @property
    def is_hermitian(self) -> bool:
        return self.a.is_hermitian and self.b.is_hermitian

    def _mm(self, V, *, adjoint=False, grad=False):
        ra = self.a._mm(V, adjoint=adjoint, grad=grad)
        rb = self.b._mm(V, adjoint=adjoint, grad=grad)
        return ra + rb if self.sign > 0 else ra - rb


class _ScaledOperator(LinearOperator):
    def __init__(self, op: LinearOperator, c: Any) -> None:
        validate.scale(op, c)
        dtype = op.dtype
        if isinstance(c, complex) and not op.is_complex:
            name = "complex128" if op.backend_impl.dtype_name(op.dtype) == "float64" else "complex64"
            dtype = op.backend_impl.dtype_from_name(name)
        super().__init__(op.shape, dtype=dtype, backend=op.backend_impl, device=op.device,
                         batch_shape=op.batch_shape)
        self.op, self.c = op, c

    @property
    def is_hermitian(self) -> bool:
        return self.op.is_hermitian and not isinstance(self.c, complex)

    def _mm(self, V, *, adjoint=False, grad=False):
        c = self.c
        if not isinstance(c, (int, float, complex)):
            c = c if grad else self._backend.stop_gradient(c)
            if adjoint and self.is_complex:
                c = self.xp.conj(c)
        elif adjoint and isinstance(c, complex):
            c = c.conjugate()
        if isinstance(c, complex) and not self.op.is_complex:
            V = self.xp.astype(V, self.dtype)
            return c * self.xp.astype(self.op._mm(V, adjoint=adjoint, grad=grad), self.dtype)
        return c * self.op._mm(V, adjoint=adjoint, grad=grad)


class _ProductOperator(LinearOperator):
    """Composition ``a @ b``: apply ``b`` first."""

    def __init__(self, a: LinearOperator, b: LinearOperator) -> None:
        batch = validate.operator_product(a, b)
        super().__init__((a.shape[0], b.shape[1]),
                         dtype=_result_dtype(a.backend_impl, a.dtype, b.dtype),
                         backend=a.backend_impl, device=a.device, batch_shape=batch)
        self.a, self.b = _lift(a, batch), _lift(b, batch)

    def _mm(self, V, *, adjoint=False, grad=False):
        if adjoint:
            return self.b._mm(self.a._mm(V, adjoint=True, grad=grad), adjoint=True, grad=grad)
        return self.a._mm(self.b._mm(V, grad=grad), grad=grad)


class DenseOperator(LinearOperator):
    """An explicit matrix ``(m, n)`` or batch of matrices ``(B, m, n)``."""

    def __init__(self, A: Array, backend: Backend) -> None:
        shape = validate.matrix(A, backend)
        super().__init__(shape[-2:], dtype=A.dtype, backend=backend,
                         device=backend.device(A), batch_shape=shape[:-2])
        self.A = A

    def _mm(self, V, *, adjoint=False, grad=False):
        xp = self.xp
        A = self.A if grad else self._backend.stop_gradient(self.A)
        if adjoint:
            A = xp.matrix_transpose(A)
            if self.is_complex:
                A = xp.conj(A)
        if not self.is_complex and self._backend.dtype_name(V.dtype) in COMPLEX_DTYPES:
            A = xp.astype(A, V.dtype)
        return xp.matmul(A, V)

    def _staged_form(self):
        return self._array_form("A", ("dense", self.batch_shape, self.shape,
                                      self._backend.dtype_name(self.dtype)))


class DiagonalOperator(LinearOperator):
    """``D(d)``: the diagonal matrix of a (batch of) vector(s) ``d``.

    ``d`` may be given lazily as a callable ``grad -> d`` so that a diagonal derived from
    another operator (see :func:`jacspec.rowsum_diagonal`) stays differentiable.
    """

    def __init__(self, d: Any, *, size: int, dtype: Any, backend: Backend, device: Any,
                 batch_shape: tuple[int, ...] = ()) -> None:
        super().__init__((size, size), dtype=dtype, backend=backend, device=device,
                         batch_shape=batch_shape)
        self._d = d
        self._cache: dict[bool, Array] = {}

    @property
    def is_hermitian(self) -> bool:
        return not self.is_complex

    def diagonal(self, *, grad: bool = True) -> Array:
        if grad not in self._cache:
            d = self._d(grad) if callable(self._d) else self._d
            if not grad:
                d = self._backend.stop_gradient(d)
            self._cache[grad] = d
        return self._cache[grad]

    def _mm(self, V, *, adjoint=False, grad=False):
        d = self.diagonal(grad=grad)
        if adjoint and self.is_complex:
            d = self.xp.conj(d)
        return d[..., :, None] * V


class LinearizationOperator(LinearOperator):
    """An operator whose products come from an adapter's :class:`Linearization`.

    ``js.jacobian`` and ``js.hessian`` return these; ``matvec`` is a JVP (or HVP) and
    ``rmatvec`` a VJP, each reusing the forward pass.
    """

    def __init__(self, lin: Any, x: Array, backend: Backend, *, kind: str,
                 dtype: Any = None) -> None:
        # f may change precision (float32 inputs, float64 parameters): products take
        # vectors in the dtype of the side they enter and return the wider of the two.
        in_dtype = x.dtype if backend.is_array(x) and kind == "jacobian" else lin.y.dtype
        sides = (in_dtype, lin.y.dtype)  # (input side, output side)
        super().__init__(
            (lin.m, lin.n),
            dtype=solver_dtype(backend, sides, dtype),
            backend=backend,
            device=backend.device(lin.y),
            batch_shape=lin.batch_shape,
        )
        self.lin = lin
        self.kind = kind
        self.x = x
        self._side_dtypes = sides
        self._product_eps = half_eps(backend, sides)

    @property
    def is_hermitian(self) -> bool:
        return self.kind == "hessian"

    @property
    def value(self) -> Array:
        """The function value at the point (``f(x)``)."""
        return self.lin.y

    @property
    def traced(self) -> bool:
        return self._backend.is_traced(self.lin.y) or super().traced

    def _mm(self, V, *, adjoint=False, grad=False):
        enter = self._side_dtypes[1 if adjoint else 0]
        f = self.lin.rmm if adjoint else self.lin.mm
        if self._product_eps:
            return in_16_bits(self.xp, lambda W: f(W, grad), V, enter, self.dtype, axis=-2)
        if V.dtype != enter:
            V = self.xp.astype(V, enter)
        out = f(V, grad)
        return out if out.dtype == self.dtype else self.xp.astype(out, self.dtype)

    def _mv(self, v, *, adjoint=False):
        f = self.lin.rmv if adjoint else self.lin.mv
        if f is None:
            return super()._mv(v, adjoint=adjoint)
        enter = self._side_dtypes[1 if adjoint else 0]
        if self._product_eps:
            return in_16_bits(self.xp, f, v, enter, self.dtype, axis=-1)
        if v.dtype != enter:
            v = self.xp.astype(v, enter)
        out = f(v)
        return out if out.dtype == self.dtype else self.xp.astype(out, self.dtype)

    def _staged_form(self):
        lin = self.lin
        if lin.key is None or lin.state is None:
            return None
        bare = copy.copy(self)
        bare.lin = bare.x = None
        lin_rebuild = lin.rebuild

        def rebuild(state: Any) -> LinearizationOperator:
            op = copy.copy(bare)
            op.lin = lin_rebuild(state)
            return op

        return lin.key, lin.state, rebuild


def solver_dtype(backend: Backend, sides: tuple[Any, Any], dtype: Any = None) -> Any:
    """The dtype of an operator whose products take and return ``sides``: the wider of
    the two; float32 where one is 16-bit (the solvers' bases and projections keep
    float32 while the products run in 16 bits); ``dtype`` where the caller asks (float32
    or float64)."""
    if dtype is not None:
        return backend.dtype_from_name(validate.solver_dtype(dtype, backend))
    if any(backend.dtype_name(d) in HALF_DTYPES for d in sides):
        return backend.dtype_from_name("float32")
    return _result_dtype(backend, sides[0], sides[-1])


def half_eps(backend: Backend, dtypes: Any) -> float:
    """The coarsest unit roundoff among 16-bit ``dtypes`` (0.0 where none is 16-bit)."""
    return max([0.0] + [HALF_EPS.get(backend.dtype_name(d), 0.0) for d in dtypes])


def in_16_bits(xp: Any, product: Callable[[Array], Array], V: Array, enter: Any, dtype: Any,
               *, axis: int) -> Array:
    """``product(V)`` run in the 16-bit dtype ``enter`` on vectors scaled to unit norm
    along ``axis`` (their entries then stay in float16's range), returned in ``dtype``
    and scaled back."""
    nrm = xp.linalg.vector_norm(V, axis=axis, keepdims=True)
    nrm = xp.where(nrm > 0, nrm, xp.ones_like(nrm))
    out = product(xp.astype(V / nrm, enter))
    return xp.astype(out, dtype) * xp.astype(nrm, dtype)


class ScipyOperator(LinearOperator):
    """A SciPy ``LinearOperator`` or sparse matrix, as a NumPy-backend operator."""

    def __init__(self, A: Any, backend: Backend) -> None:
        import numpy as np
        import scipy.sparse.linalg as spla

        op = spla.aslinearoperator(A)
        dtype = np.dtype(op.dtype)
        validate.scipy_dtype(dtype)
        super().__init__(op.shape, dtype=dtype, backend=backend, device="cpu")
        self.op = op

    def _mm(self, V, *, adjoint=False, grad=False):
        import numpy as np

        res = self.op.rmatmat(V) if adjoint else self.op.matmat(V)
        return np.asarray(res)


def rowsum_diagonal(op: LinearOperator) -> LinearOperator:
    """The diagonal operator ``D(op @ 1)`` of the row sums of a square operator.

    Cui et al. (2022) use it as the diagonality target: ``op - rowsum_diagonal(op)``
    vanishes exactly when ``op`` is diagonal, so its spectral norm penalizes off-diagonal
    mass. The row sums cost one product and stay differentiable.

    Parameters
    ----------
    op : LinearOperator
        A square (possibly batched) operator.

    Returns
    -------
    LinearOperator
        ``D(op @ 1)``, with the batch shape, dtype and device of ``op``.

    Examples
    --------
    >>> import numpy as np
    >>> import jacspec as js
    >>> A = js.aslinearoperator(np.array([[1.0, 2.0], [3.0, 4.0]]))
    >>> js.dense(js.rowsum_diagonal(A)).tolist()
    [[3.0, 0.0], [0.0, 7.0]]
    >>> js.dense(A - js.rowsum_diagonal(A)).tolist()
    [[-2.0, 2.0], [3.0, -3.0]]
    """
    validate.instance(op, LinearOperator, "op", "a js.LinearOperator")
    validate.check_square(op, "js.rowsum_diagonal")
    n = op.shape[1]
    xp = op.xp

    def rowsums(grad: bool):
        ones = xp.ones(op.batch_shape + (n, 1), dtype=op.dtype, device=op.device)
        return op._mm(ones, grad=grad)[..., 0]

    D = DiagonalOperator(rowsums, size=n, dtype=op.dtype, backend=op.backend_impl,
                         device=op.device, batch_shape=op.batch_shape)
    D.source = op  # its values come from op's products (and are traced where they are)
    return D
