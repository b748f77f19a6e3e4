"""Argument checks of the public functions: each public function validates its
arguments in one step, here, before any product (as SciPy's ``_iv`` functions do); a
check that several functions share is written once.

Errors follow SPEC's rules: ``TypeError`` for a wrong kind of object (a NumPy array
where autodiff is needed, a non-array, a non-callable), ``ValueError`` for shapes,
sizes and values.
"""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from .backends import Backend, backend_of, collection_leaves, infer_backend, plain_collection
from .operators import LinearOperator

METHODS = ("auto", "dense", "lanczos", "power")
WHICH = ("LM", "LA", "SA")
TRACE_METHODS = ("hutch++", "hutchinson")
PROBES = ("rademacher", "gaussian")


def as_operator(op: Any) -> LinearOperator:
    """``op`` itself, or an explicit array wrapped by :func:`jacspec.aslinearoperator`."""
    if isinstance(op, LinearOperator):
        return op
    from .interop import aslinearoperator

    try:
        return aslinearoperator(op)
    except TypeError:
        raise TypeError(
            "Expected op to be a js.LinearOperator (from js.jacobian, js.hessian or "
            "js.aslinearoperator) or an explicit 2-D/3-D array. "
            f"Received {type(op).__module__}.{type(op).__qualname__}."
        ) from None


def choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"Expected {name} to be one of {', '.join(repr(a) for a in allowed)}. "
            f"Received {value!r}."
        )
    return value


def check_k(k: Any, op: LinearOperator) -> int:
    limit = min(op.shape)
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise TypeError(f"Expected k to be an int. Received {type(k).__name__}.")
    k = int(k)
    if k < 1 or k > limit:
        raise ValueError(
            f"Expected 1 <= k <= min(m, n) = {limit} for an operator of shape {op.shape}. "
            f"Received k={k}."
        )
    return k


def real_dtype_name(op: LinearOperator) -> str:
    name = op.backend_impl.dtype_name(op.dtype)
    return {"complex64": "float32", "complex128": "float64"}.get(name, name)


def default_tol(op: LinearOperator) -> float:
    """``sqrt(eps)`` of the operator's dtype; a few units of the products' roundoff for a
    16-bit model (whose products are coarser than that)."""
    return max(float(np.sqrt(np.finfo(real_dtype_name(op)).eps)), 8.0 * op.product_eps)


def check_tol(tol: Any, op: LinearOperator | None = None) -> float | None:
    """A relative accuracy: a real ``0 < tol < 1``; ``None`` is the default
    ``sqrt(eps)`` of ``op``'s dtype (stays ``None`` without ``op``)."""
    if tol is None:
        return None if op is None else default_tol(op)
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real):
        raise TypeError(f"Expected tol to be a positive float or None. Received {tol!r}.")
    tol = float(tol)
    if not 0 < tol < 1:
        raise ValueError(f"Expected 0 < tol < 1 (a relative accuracy). Received tol={tol!r}.")
    return tol


def check_maxiter(maxiter: Any) -> int | None:
    if maxiter is None:
        return None
    if isinstance(maxiter, bool) or not isinstance(maxiter, numbers.Integral):
        raise TypeError(f"Expected maxiter to be a positive int or None. Received {maxiter!r}.")
    if int(maxiter) < 1:
        raise ValueError(f"Expected maxiter >= 1 (a cap on products). Received {maxiter}.")
    return int(maxiter)


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"Expected {name} to be an int. Received {value!r}.")
    if int(value) < minimum:
        raise ValueError(f"Expected {name} >= {minimum}. Received {name}={value}.")
    return int(value)


def check_seed(seed: Any) -> int | None:
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"Expected seed to be an int or None. Received {seed!r}.")
    return int(seed)


def check_v0(v0: Any, op: LinearOperator) -> Any:
    """A start vector of shape ``batch_shape + (n,)`` in the op's framework and dtype."""
    if v0 is None:
        return None
    return op._check_vector(v0, op.shape[1], block=False)


def as_count(n: Any) -> Any:
    """A product count as a Python int; inside a tol-driven trace it is a traced integer
    (the number of steps is known only when the program runs)."""
    return int(n) if isinstance(n, (int, np.integer)) else n


def check_nonempty(op: LinearOperator) -> None:
    """An operator with an empty side has no spectrum."""
    if min(op.shape) == 0:
        raise ValueError(
            f"Expected an operator with non-empty input and output. Received shape "
            f"{op.shape}."
        )


def check_square(op: LinearOperator, what: str) -> None:
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"Expected a square operator for {what}. Received shape {op.shape}.")


def check_common(op: LinearOperator, k: int, tol: Any, maxiter: Any, seed: Any, v0: Any,
                 ncv: Any) -> tuple[int, float, int | None, int | None, Any, int | None]:
    """The checks ``svds`` and ``eigsh`` share, in order; returns the cleaned values
    ``(k, tol, maxiter, seed, v0, ncv)``."""
    check_nonempty(op)
    k = check_k(k, op)
    tol = check_tol(tol, op)
    maxiter = check_maxiter(maxiter)
    seed = check_seed(seed)
    v0 = check_v0(v0, op)
    if ncv is not None:
        ncv = check_positive_int(ncv, "ncv", minimum=k + 1)
    return k, tol, maxiter, seed, v0, ncv


# ------------------------------------------------------------- points of autodiff


def check_callable(f: Any, name: str = "f") -> None:
    if not callable(f):
        raise TypeError(f"Expected {name} to be callable. Received {type(f).__name__}.")


def autodiff_backend(x: Any, what: str = "x", *, why: str = "",
                     collections: bool = False) -> tuple[Backend, Any]:
    """The backend of ``x``, an array of a framework with automatic differentiation
    (torch, jax, tensorflow), and ``x`` itself (with ``collections``: also a non-empty
    parameter collection of such arrays, ``named_parameters()`` materialized). ``why``:
    what needs the autodiff, for the message about NumPy."""
    b = backend_of(x)
    if b is None and collections and not isinstance(x, (str, bytes)):
        x = _materialize(x)
        leaves = collection_leaves(x)
        if leaves and all(backend_of(v) is not None for v in leaves):
            b = infer_backend(*leaves, what=f"the parameters in {what}")
    if b is None:
        kinds = ", or a non-empty collection of such arrays" if collections else ""
        raise TypeError(
            f"Expected {what} to be an array of torch, jax or tensorflow{kinds}. "
            f"Received {type(x).__module__}.{type(x).__qualname__}."
        )
    if not b.has_autodiff:
        raise TypeError(
            f"Expected {what} to be a torch, jax or tensorflow array: NumPy has no "
            f"automatic differentiation{', so ' + why if why else ''}. Received a numpy "
            "array."
        )
    return b, x


def point(x: Any) -> tuple[Backend, Any]:
    """The backend of the point ``x`` of a Jacobian or Hessian (an array or a parameter
    collection, materialized) and ``x``."""
    b, x = autodiff_backend(
        x, why="js.jacobian / js.hessian cannot differentiate f. Convert x (and f) to "
        "one of torch, jax or tensorflow, or pass an explicit matrix to "
        "js.aslinearoperator", collections=True)
    if not b.is_array(x) and not b.is_param_collection(x):
        raise TypeError(
            "Expected x to be an array or a collection (list, tuple, dict) of "
            f"{b.name} arrays. Received {type(x).__name__}."
        )
    return b, x


def batch(x: Any, what: str = "x", *, axis_name: str = "B") -> int:
    """The size of ``x``'s leading batch axis, which must exist and be non-empty."""
    if len(x.shape) == 0:
        raise ValueError(f"Expected {what} with a leading batch axis, shape ({axis_name}, "
                         "...). Received shape ().")
    n = int(x.shape[0])
    if n == 0:
        raise ValueError(f"Expected a non-empty batch. Received {what} of shape "
                         f"{tuple(x.shape)}.")
    return n


def _materialize(x: Any) -> Any:
    """``named_parameters()`` iterators and lists of ``(name, tensor)`` become dicts, a
    framework's parameter container (torch ``ParameterList``) its list or dict."""
    x = plain_collection(x)
    if hasattr(x, "__next__") and hasattr(x, "__iter__"):
        x = list(x)
    if isinstance(x, list) and x and all(
        isinstance(t, tuple) and len(t) == 2 and isinstance(t[0], str) for t in x
    ):
        return dict(x)
    return x
