"""Argument checks of the public functions: each public function validates its
arguments in one step, here, before any product (as SciPy's ``_iv`` functions do); a
check that several functions share is written once.

Errors follow SPEC's rules: ``TypeError`` for a wrong kind of object (a NumPy array
where autodiff is needed, a non-array, a non-callable, arrays of two frameworks),
``ValueError`` for shapes, sizes and values, ``FloatingPointError`` for NaN or Inf in an
input array. Checks of what a computation finds on its way (a product's NaN, a dataset
that changes between passes, a solver that stops short) stay where they happen.

This module sits below the operators (it knows arrays through the ``Backend``
interface only): an operator argument is read through its attributes (the
``Operator`` protocol below), and a check that needs the class (``op`` is a
``js.LinearOperator``) is handed it by its caller.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from .backends import (
    COMPLEX_DTYPES,
    FLOAT_DTYPES,
    HALF_DTYPES,
    Backend,
    backend_of,
    collection_leaves,
    infer_backend,
    plain_collection,
)


class Operator(Protocol):
    """What the checks read of an operator (a ``js.LinearOperator``): this module sits
    below the operators' module."""

    shape: tuple[int, int]
    batch_shape: tuple[int, ...]
    dtype: Any
    product_eps: float
    sharding: Any

    @property
    def backend(self) -> str: ...

    @property
    def backend_impl(self) -> Backend: ...


# ---------------------------------------------------------------- shared kinds


def choice(value: Any, allowed: tuple[str, ...], name: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(
            f"Expected {name} to be one of {', '.join(repr(a) for a in allowed)}. "
            f"Received {value!r}."
        )
    return value


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


def check_callable(f: Any, name: str = "f") -> None:
    if not callable(f):
        raise TypeError(f"Expected {name} to be callable. Received {type(f).__name__}.")


def instance(value: Any, cls: type, name: str, kind: str) -> None:
    """``value`` is a ``cls`` (``kind`` says which, in words, for the message)."""
    if not isinstance(value, cls):
        raise TypeError(
            f"Expected {name} to be {kind}. "
            f"Received {type(value).__module__}.{type(value).__qualname__}."
        )


def flag(value: Any, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"Expected {name} to be a bool. Received {value!r}.")
    return value


def count(value: Any, name: str, *, minimum: int, none: bool = False) -> int | None:
    """A non-negative integer option (``None`` allowed with ``none``); anything else is a
    ``ValueError`` (these options are counts, and a wrong kind of count is a bad value)."""
    if value is None and none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        kind = f"None or an integer >= {minimum}" if none else f"an integer >= {minimum}"
        raise ValueError(f"Expected {name} to be {kind}. Received {value!r}.")
    return int(value)


def finite(b: Backend, x: Any, message: str) -> None:
    """NaN or Inf in an input array is a ``FloatingPointError`` (outside a trace, where
    values are known)."""
    if not b.is_traced(x) and not b.all_finite(x):
        raise FloatingPointError(message)


def sample_shape(shape: Any) -> tuple[int, ...]:
    """The shape of one sample (no batch axis): a non-empty tuple of positive ints."""
    try:
        out = tuple(int(s) for s in shape)
    except TypeError:
        raise ValueError(f"Expected input_shape to be a tuple of ints. Received {shape!r}.") \
            from None
    if not out or min(out) < 1:
        raise ValueError(
            "Expected input_shape to be the non-empty shape of one sample (no batch axis). "
            f"Received {shape!r}."
        )
    return out


# ------------------------------------------- solvers (js.svds, js.eigsh, ...)


METHODS = ("auto", "dense", "lanczos", "power")
WHICH = ("LM", "LA", "SA")
TRACE_METHODS = ("hutch++", "hutchinson")
PROBES = ("rademacher", "gaussian")


def check_k(k: Any, op: Operator) -> int:
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


def real_dtype_name(op: Operator) -> str:
    name = op.backend_impl.dtype_name(op.dtype)
    return {"complex64": "float32", "complex128": "float64"}.get(name, name)


def default_tol(op: Operator) -> float:
    """``sqrt(eps)`` of the operator's dtype; a few units of the products' roundoff for a
    16-bit model (whose products are coarser than that)."""
    return max(float(np.sqrt(np.finfo(real_dtype_name(op)).eps)), 8.0 * op.product_eps)


def check_tol(tol: Any, op: Operator | None = None) -> float | None:
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


def check_v0(v0: Any, op: Operator) -> Any:
    """A start vector of shape ``batch_shape + (n,)`` in the op's framework and dtype."""
    if v0 is None:
        return None
    return vector(op, v0, op.shape[1], block=False)


def as_count(n: Any) -> Any:
    """A product count as a Python int; inside a tol-driven trace it is a traced integer
    (the number of steps is known only when the program runs)."""
    return int(n) if isinstance(n, (int, np.integer)) else n


def check_nonempty(op: Operator) -> None:
    """An operator with an empty side has no spectrum."""
    if min(op.shape) == 0:
        raise ValueError(
            f"Expected an operator with non-empty input and output. Received shape "
            f"{op.shape}."
        )


def check_square(op: Operator, what: str) -> None:
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"Expected a square operator for {what}. Received shape {op.shape}.")


def check_common(op: Operator, k: int, tol: Any, maxiter: Any, seed: Any, v0: Any,
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


def budget(maxiter: int, need: int, method: str, k: int) -> None:
    """A fixed ``maxiter`` that covers what ``method`` needs for ``k`` values."""
    if maxiter < need:
        raise ValueError(
            f"Expected maxiter >= {need}: method={method!r} needs at least {need} "
            f"products for k={k} values. Received maxiter={maxiter}."
        )


def density_width(width: Any) -> float:
    """The width of ``SpectralDensity``'s Gaussian smoothing."""
    w = float(width)
    if not w > 0:
        raise ValueError(f"Expected width > 0. Received {width!r}.")
    return w


def density_grid(grid: Any) -> None:
    if len(grid.shape) != 1:
        raise ValueError(f"Expected a 1-D grid. Received shape {tuple(grid.shape)}.")


def density_unbatched(nodes: Any) -> None:
    if len(nodes.shape) != 2:
        raise ValueError("Expected an unbatched density to plot; index a batched "
                         "one's nodes and weights first.")


# ------------------------------------------------------- operators and products


def vector(op: Operator, v: Any, size: int, *, block: bool) -> Any:
    """``v``, a vector ``batch_shape + (size,)`` (a block ``batch_shape + (size, k)``
    with ``block``) of ``op``'s framework, in ``op``'s dtype; of a sharded operator,
    this process's part of one."""
    b = backend_of(v)
    if b is None:
        raise TypeError(
            f"Expected a {op.backend} array. Received "
            f"{type(v).__module__}.{type(v).__qualname__}."
        )
    if b.name != op.backend:
        raise TypeError(
            f"Expected a {op.backend} array for a {op.backend} operator. "
            f"Received a {b.name} array; arrays from {op.backend} and {b.name} "
            "cannot be mixed."
        )
    if op.sharding is not None:
        size = op.sharding.local_n
    shape = tuple(int(s) for s in v.shape)
    batch_shape = op.batch_shape
    if block:
        ok = len(shape) == len(batch_shape) + 2 and shape[:-1] == batch_shape + (size,)
        expected = f"{batch_shape + (size,) + ('k',)}".replace("'k'", "k")
    else:
        ok = shape == batch_shape + (size,)
        expected = f"{batch_shape + (size,)}"
    if not ok:
        raise ValueError(f"Expected an array of shape {expected}. Received {shape}.")
    impl = op.backend_impl
    name = impl.dtype_name(v.dtype)
    if name not in FLOAT_DTYPES + COMPLEX_DTYPES + HALF_DTYPES:
        raise TypeError(f"Expected a floating-point array. Received dtype {name}.")
    if name != impl.dtype_name(op.dtype):
        v = impl.xp.astype(v, op.dtype)
    return v


def matrix(A: Any, backend: Backend) -> tuple[int, ...]:
    """The shape of an explicit matrix ``(m, n)`` or batch of them ``(B, m, n)``, of a
    real or complex dtype, with finite entries."""
    shape = tuple(int(s) for s in A.shape)
    if len(shape) not in (2, 3):
        raise ValueError(
            "Expected a 2-D matrix (m, n) or a 3-D batch of matrices (B, m, n). "
            f"Received an array of shape {shape}."
        )
    name = backend.dtype_name(A.dtype)
    if name not in FLOAT_DTYPES + COMPLEX_DTYPES:
        raise TypeError(
            "Expected a matrix of dtype float32, float64, complex64 or complex128. "
            f"Received dtype {name}."
        )
    finite(backend, A, "The matrix contains NaN or Inf.")
    return shape


def scipy_dtype(dtype: np.dtype) -> None:
    if dtype.kind not in "fc":
        raise TypeError(
            f"Expected a floating or complex SciPy operator. Received dtype {dtype}."
        )


def solver_dtype(dtype: Any, backend: Backend) -> str:
    """The name of a dtype the solvers may work in (float32 or float64)."""
    name = dtype if isinstance(dtype, str) else backend.dtype_name(dtype)
    if name not in FLOAT_DTYPES:
        raise ValueError(
            "Expected dtype to be float32 or float64 (the dtype the solvers work in). "
            f"Received {dtype!r}."
        )
    return name


def batch_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    """The batch shape of an expression of two operators: equal, or one unbatched."""
    if a == b or not b:
        return a
    if not a:
        return b
    raise ValueError(
        f"Expected operators with the same batch shape (or one unbatched). "
        f"Received batch shapes {a} and {b}."
    )


def _one_framework(a: Operator, b: Operator) -> None:
    if a.backend != b.backend:
        raise TypeError(
            f"Expected operators from a single framework. Received {a.backend} and "
            f"{b.backend} operators in one expression."
        )


def operator_sum(a: Operator, b: Operator) -> tuple[int, ...]:
    """``a + b`` and ``a - b``: one framework, one shape; returns the batch shape."""
    _one_framework(a, b)
    if a.shape != b.shape:
        raise ValueError(
            f"Expected operators of the same shape to add. Received {a.shape} and {b.shape}."
        )
    return batch_shapes(a.batch_shape, b.batch_shape)


def operator_product(a: Operator, b: Operator) -> tuple[int, ...]:
    """``a @ b``: one framework, inner sizes that agree; returns the batch shape."""
    _one_framework(a, b)
    if a.shape[1] != b.shape[0]:
        raise ValueError(
            f"Expected inner sizes to agree for a @ b: a.shape[1] == b.shape[0]. "
            f"Received shapes {a.shape} and {b.shape}."
        )
    return batch_shapes(a.batch_shape, b.batch_shape)


def scale(op: Operator, c: Any) -> None:
    """``c * op``: ``c`` a Python number or a 0-d array of ``op``'s framework."""
    if isinstance(c, (int, float, complex)):
        return
    b = backend_of(c)
    if b is None or len(getattr(c, "shape", ())) != 0:
        raise TypeError(
            "Expected a scalar (a Python number or a 0-d array) to scale an operator. "
            f"Received {type(c).__name__}"
            + (f" of shape {tuple(c.shape)}" if hasattr(c, "shape") else "")
            + "."
        )
    if b.name != op.backend:
        raise TypeError(
            f"Expected a {op.backend} scalar for a {op.backend} operator. "
            f"Received a {b.name} array."
        )


def unbatched(op: Operator, what: str) -> None:
    if op.batch_shape:
        raise ValueError(
            f"Expected an unbatched operator for {what} (batch_shape ()). "
            f"Received batch_shape {op.batch_shape}; index the batch first."
        )


# ------------------------------------------------------------- points of autodiff


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


# ------------------------------------------------------------- jacobian, hessian


HVP_ROUTES = ("auto", "autodiff", "finite_difference")


def hessian_options(*, batched: Any, data: Any, distributed: Any, group: Any, progress: Any,
                    hvp: Any) -> None:
    """The options of ``js.hessian`` that do not depend on the point: a route of
    Hessian products; ``batched`` without ``data``; the dataset flags only with it."""
    choice(hvp, HVP_ROUTES, "hvp")
    if data is not None and batched:
        raise ValueError(
            "Expected batched=False with data=: a dataset Hessian is the Hessian of "
            "the mean loss over all samples. Received batched=True."
        )
    if data is None and (distributed or group is not None or progress):
        raise ValueError(
            "Expected distributed, group and progress only with data= (dataset "
            "operators). Received them without data."
        )


def derivative(f: Any, x: Any) -> tuple[Backend, Any]:
    """``js.jacobian`` / ``js.hessian`` at a point: a callable ``f`` and a point ``x``
    of an autodiff framework; returns :func:`point`'s ``(backend, x)``."""
    check_callable(f)
    return point(x)


# ----------------------------------------------------------------- data= operators


def _reiterable(data: Any) -> None:
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            "Expected data to be a re-iterable collection of batches (a list, a "
            "torch DataLoader, a tf.data.Dataset). Received "
            f"{type(data).__module__}.{type(data).__qualname__}."
        )
    if isinstance(data, Iterator) or iter(data) is data:
        raise TypeError(
            "Expected data to be re-iterable: every product streams the whole dataset "
            f"again. Received a one-shot {type(data).__qualname__} (a generator or "
            "iterator); pass a list of batches, a DataLoader, a tf.data.Dataset, or an "
            "object whose __iter__ starts a new pass."
        )


def dataset(f: Any, loss: Any, params: Any, *, distributed: Any, group: Any,
            progress: Any) -> tuple[Backend, Any]:
    """``js.hessian(..., data=)`` and ``js.ggn``: callables, flags, the point
    ``params``; returns :func:`point`'s ``(backend, params)``. The data itself is read
    (and checked) by :func:`scan`, after the adapter has prepared a distributed one."""
    check_callable(f)
    if loss is not None:
        check_callable(loss, "loss")
    flag(distributed, "distributed")
    flag(progress, "progress")
    if group is not None and not distributed:
        raise ValueError("Expected group only with distributed=True. Received distributed=False.")
    return point(params)


def signature(batch: Any) -> Any:
    """The structure of a batch: containers, keys, and the rank of each array."""
    if isinstance(batch, dict):
        return ("dict", tuple((k, signature(v)) for k, v in batch.items()))
    if isinstance(batch, (list, tuple)):
        return ("sequence", tuple(signature(v) for v in batch))
    if backend_of(batch) is not None:
        return ("array", len(batch.shape))
    return ("object", type(batch).__qualname__)


def _first_array(batch: Any) -> Any:
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for v in batch:
            a = _first_array(v)
            if a is not None:
                return a
        return None
    return batch if backend_of(batch) is not None else None


def batch_size(batch: Any) -> int:
    """The number of samples of a batch: the leading axis of its first array."""
    a = _first_array(batch)
    if a is None or len(a.shape) == 0:
        raise ValueError(
            "Expected each batch to be an array or a (nested) tuple, list or dict of "
            "arrays whose first array has a leading batch axis. Received a batch of "
            f"structure {signature(batch)}."
        )
    return int(a.shape[0])


def structure_error(index: int, got: Any, expected: Any) -> ValueError:
    """A batch whose structure is not the first one's (at the first pass, or later)."""
    return ValueError(
        "Expected every batch to have the structure of the first one "
        f"{expected}. Received batch {index} of structure {got}."
    )


@dataclass(frozen=True)
class DataSummary:
    """What one pass over the data found: its first batch, structure and size."""

    first: Any
    signature: Any
    num_batches: int
    num_samples: int


def scan(data: Any, parts: Callable[[Any], list] | None = None) -> DataSummary:
    """Check ``data`` (re-iterable, non-empty, batches of one structure) in one pass.

    ``parts(batch)`` lists the pieces of a batch that this process holds (a
    distributed batch's per-replica values); by default a batch is one piece.
    """
    _reiterable(data)
    first, sig, num_batches, num_samples = None, None, 0, 0
    for i, batch in enumerate(data):
        pieces = parts(batch) if parts is not None else [batch]
        s = signature(pieces[0])
        if i == 0:
            first, sig = pieces[0], s
        elif s != sig:
            raise structure_error(i, s, sig)
        num_samples += sum(batch_size(p) for p in pieces)
        num_batches += 1
    if num_batches == 0 or num_samples == 0:
        raise ValueError(
            "Expected a non-empty dataset. Received "
            + ("no batches." if num_batches == 0 else f"{num_batches} batches of 0 samples.")
        )
    return DataSummary(first, sig, num_batches, num_samples)


def ggn_batch(summary: DataSummary) -> tuple[Any, Any]:
    """The first batch of ``js.ggn``'s data as ``(inputs, targets)``."""
    first = summary.first
    if not (isinstance(first, (tuple, list)) and len(first) == 2):
        raise ValueError(
            "Expected data to yield (inputs, targets) pairs for js.ggn. Received "
            f"batches of structure {summary.signature}."
        )
    return first[0], first[1]


@contextlib.contextmanager
def scalar_loss(what: str) -> Iterator[None]:
    """Re-raise a non-scalar loss's ValueError (from differentiating the first batch)
    naming the user's function."""
    try:
        yield
    except ValueError as err:
        if "scalar" not in str(err):
            raise
        received = "Received" + str(err).split("Received", 1)[-1]
        raise ValueError(
            f"Expected {what} to return a scalar, the mean loss of the batch. {received}"
        ) from err


# ---------------------------------------------------------------------- penalties


TARGETS = (None, "transpose", "rowsum_diagonal")
DERIVATIVES = ("jacobian", "hessian")
CONV_BOUNDS = ("fantastic_four", "gram")


def penalty_input(f: Any, x: Any, what: str = "x", *, name: str = "f",
                  why: str = "penalties cannot be differentiated") -> Backend:
    """A penalty's function and batch: callable ``f``, an autodiff array ``x`` with a
    non-empty leading batch axis."""
    check_callable(f, name)
    b, _ = autodiff_backend(x, what, why=why)
    batch(x, what)
    return b


def spectral_penalty(f: Any, x: Any, *, target: Any, derivative: Any, method: Any,
                     maxiter: Any, seed: Any) -> tuple[Backend, str, int | None, int | None]:
    """``js.penalties.spectral``'s arguments that come before its operator; returns
    ``(backend, method, maxiter, seed)``. ``tol`` and ``v0`` are checked against the
    operator (:func:`spectral_target`, :func:`check_tol`, :func:`check_v0`)."""
    if target not in TARGETS:
        raise ValueError(
            f"Expected target to be one of None, 'transpose', 'rowsum_diagonal'. "
            f"Received {target!r}."
        )
    if derivative not in DERIVATIVES:
        raise ValueError(
            f"Expected derivative to be 'jacobian' or 'hessian'. Received {derivative!r}."
        )
    method = choice(method, METHODS, "method")
    maxiter = check_maxiter(maxiter)
    seed = check_seed(seed)
    return penalty_input(f, x), method, maxiter, seed


def spectral_target(A: Operator, target: Any, derivative: str) -> None:
    """A target other than None needs a square derivative."""
    if target is not None and A.shape[0] != A.shape[1]:
        raise ValueError(
            f"Expected a square {derivative} (as many outputs as inputs per sample) for "
            f"target={target!r}. Received a {derivative} of shape {A.shape}."
        )


def gradient_norm(loss_fn: Any, x: Any) -> Backend:
    """``js.penalties.gradient_norm``: a callable and an autodiff ``x`` (a scalar, or a
    non-empty batch)."""
    check_callable(loss_fn, "loss_fn")
    b, _ = autodiff_backend(x, why="the gradient norm cannot be differentiated")
    if len(x.shape) >= 1 and int(x.shape[0]) == 0:
        raise ValueError(f"Expected a non-empty x. Received shape {tuple(x.shape)}.")
    return b


def loss_values(shape: tuple[int, ...], batch_size: int) -> None:
    """``loss_fn``'s output: a scalar or one loss per sample (``batch_size`` 0: ``x``
    has no batch axis)."""
    if math.prod(shape) != 1 and not (batch_size > 0 and shape == (batch_size,)):
        raise ValueError(
            "Expected loss_fn to return a scalar or one loss per sample, shape "
            f"({batch_size},). Received output shape {shape}."
        )


# -------------------------------------------------------------------------- slope


def slope(f: Any, X: Any, num_between: Any, batch_size: Any
          ) -> tuple[Backend, int, int, int | None]:
    """``js.slope``: returns the backend, the number of data points, ``num_between``
    and ``batch_size``."""
    check_callable(f)
    b, _ = autodiff_backend(X, "X", why="the slope has no Jacobians")
    N = batch(X, "X", axis_name="N")
    num_between = count(num_between, "num_between", minimum=0)
    if num_between > 0 and N < 2:
        raise ValueError(
            "Expected at least 2 data points to place points between them. "
            f"Received X of shape {tuple(X.shape)} with num_between={num_between}."
        )
    batch_size = count(batch_size, "batch_size", minimum=1, none=True)
    return b, N, num_between, batch_size


def points_kind(kind: Any) -> None:
    """A kind of points of ``SlopeResult`` (None: all of them)."""
    if kind not in (None, "data", "between"):
        raise ValueError(f"Expected kind 'data', 'between' or None. Received {kind!r}.")


# ---------------------------------------------------------------------- js.conv


def conv_weight(weight: Any, layout: str | None, what: str = "weight"
                ) -> tuple[Backend, Any, str]:
    """A 4-D float conv kernel with finite entries and its layout (the framework's own
    when None); returns the backend, the kernel's array (a variable's value read) and
    the layout in capitals."""
    b = infer_backend(weight, what=what)
    shape = tuple(int(s) for s in weight.shape)
    if len(shape) != 4:
        raise ValueError(
            "Expected a 4-D conv weight (c_out, c_in, h, w) in layout OIHW or (h, w, c_in, "
            f"c_out) in layout HWIO. Received a {what} of shape {shape}."
        )
    name = b.dtype_name(weight.dtype)
    if name not in FLOAT_DTYPES:
        raise TypeError(f"Expected a {what} of dtype float32 or float64. Received dtype {name}.")
    if layout is None:
        layout = b.conv_layout
    if not isinstance(layout, str) or sorted(layout.upper()) != sorted("OIHW"):
        raise ValueError(
            "Expected layout to be an arrangement of the letters O, I, H, W such as 'OIHW' "
            f"or 'HWIO', for a 4-D {what}. Received layout={layout!r} for a {what} of "
            f"shape {shape}."
        )
    if any(s == 0 for s in shape):
        raise ValueError(f"Expected a non-empty {what}. Received shape {shape}.")
    weight = b.read(weight)
    finite(b, weight, f"The {what} contains NaN or Inf.")
    return b, weight, layout.upper()


def pair(v: Any, what: str, *, minimum: int) -> tuple[int, int]:
    """An integer ``>= minimum`` or a pair of them, as a pair."""
    def is_int(a: Any) -> bool:
        return isinstance(a, int) and not isinstance(a, bool)

    vals = (v, v) if is_int(v) else v
    ok = isinstance(vals, (tuple, list)) and len(vals) == 2 and all(is_int(a) for a in vals)
    if not ok or min(vals) < minimum:
        raise ValueError(
            f"Expected {what} to be an integer >= {minimum} or a pair of them. Received {v!r}."
        )
    return int(vals[0]), int(vals[1])


def _same(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


_PADDING = ("Expected padding 'same', 'valid', 'circular', an integer, a pair or "
            "((top, bottom), (left, right)). Received padding={!r}.")


def _pads(padding: Any) -> tuple[tuple[int, int], tuple[int, int]]:
    """Explicit zero-padding amounts: ``p``, ``(ph, pw)`` or ``((top, bottom), (left,
    right))``, non-negative."""
    try:
        if isinstance(padding, int) and not isinstance(padding, bool):
            pads = ((padding, padding), (padding, padding))
        elif len(padding) == 2 and all(isinstance(q, int) for q in padding):
            pads = ((padding[0], padding[0]), (padding[1], padding[1]))
        else:
            pads = tuple((int(q[0]), int(q[1])) for q in padding)
            if len(pads) != 2:
                raise ValueError
        pads = tuple((int(a), int(c)) for a, c in pads)
    except (TypeError, ValueError, IndexError):
        raise ValueError(_PADDING.format(padding)) from None
    if min(min(q) for q in pads) < 0:
        raise ValueError(f"Expected non-negative padding. Received padding={padding!r}.")
    return pads  # type: ignore[return-value]


def conv_geometry(kernel_hw: tuple[int, int], input_size: Any, stride: Any, padding: Any,
                  layout_hint: str, wrap: bool = False
                  ) -> tuple[tuple[int, int], tuple[int, int],
                             tuple[tuple[int, int], tuple[int, int]], bool, tuple[int, int]]:
    """A conv's input size, stride and padding, as ``(input_hw, stride, pads, circular,
    output_hw)``. ``"same"`` and ``"circular"`` pad like TensorFlow's ``"same"``;
    explicit amounts wrap around with ``wrap`` (torch ``padding_mode="circular"``)."""
    hw = pair(input_size, "input_size (H, W)", minimum=1)
    st = pair(stride, "stride", minimum=1)
    kh, kw = kernel_hw
    circular = False
    if isinstance(padding, str):
        p = padding.lower()
        if p in ("same", "circular"):
            pads = (_same(hw[0], kh, st[0]), _same(hw[1], kw, st[1]))
            circular = p == "circular"
        elif p == "valid":
            pads = ((0, 0), (0, 0))
        else:
            raise ValueError(_PADDING.format(padding))
    else:
        pads = _pads(padding)
        circular = wrap
    hp = hw[0] + pads[0][0] + pads[0][1]
    wp = hw[1] + pads[1][0] + pads[1][1]
    too_wide = circular and (kh > hw[0] or kw > hw[1] or max(pads[0]) > hw[0]
                             or max(pads[1]) > hw[1])
    if hp < kh or wp < kw or too_wide:
        raise ValueError(
            f"Expected an input at least as large as the kernel ({kh}, {kw}) after padding "
            f"{padding!r}. Received input_size {hw} (padded to {(hp, wp)}); check input_size "
            f"and layout ({layout_hint})."
        )
    out = ((hp - kh) // st[0] + 1, (wp - kw) // st[1] + 1)
    return hw, st, pads, circular, out


def gram_iterations(iterations: Any) -> int:
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(
            f"Expected iterations to be an integer >= 0. Received iterations={iterations!r}."
        )
    return iterations


def conv_layers(layers: list, model: Any, shape: tuple[int, ...]) -> list:
    """``js.conv.layer_report``'s model has a layer to report."""
    if not layers:
        raise ValueError(
            "Expected a model with at least one conv (Conv2d/Conv2D) or dense "
            f"(Linear/Dense) layer. Received a {type(model).__name__} with none, on "
            f"input_shape {shape}."
        )
    return layers


def conv_bound_method(method: Any) -> str:
    if method not in CONV_BOUNDS:
        raise ValueError(
            f"Expected method to be one of {CONV_BOUNDS}. Received method={method!r}."
        )
    return method


# ------------------------------------------------------------------- js.lipschitz


def lipschitz(input_shape: Any, refine_steps: Any, layout: Any, seed: Any, conv: Any
              ) -> tuple[int, ...]:
    """``js.lipschitz``'s options; returns the shape of one sample."""
    shape = sample_shape(input_shape)
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, numbers.Integral) \
            or refine_steps < 0:
        raise ValueError(f"Expected refine_steps to be an int >= 0. Received {refine_steps!r}.")
    if layout not in (None, "NCHW", "NHWC"):
        raise ValueError(
            f"Expected layout None, 'NCHW' or 'NHWC' (the image layout of input_shape). "
            f"Received {layout!r}.")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"Expected seed to be an int. Received {seed!r}.")
    if conv not in ("exact", "gram"):
        raise ValueError(f"Expected conv 'exact' or 'gram'. Received conv={conv!r}.")
    return shape


def lipschitz_data(items: Any, data: Any) -> Iterator[Any]:
    """An iterator over ``js.lipschitz``'s ``data`` (``items``: it, or ``[data]`` for
    one batch)."""
    try:
        return iter(items)
    except TypeError:
        raise TypeError(
            "Expected data to be a batch of inputs, or an iterable of batches or of "
            f"(inputs, targets) pairs. Received {type(data).__name__}.") from None


def lipschitz_batch(b: Backend, item: Any, shape: tuple[int, ...]) -> None:
    """A batch of ``js.lipschitz``'s data: a non-empty array of samples of ``shape``."""
    if not b.is_array(item):
        raise TypeError(
            f"Expected each batch of data to be a {b.name} array (or an (inputs, "
            f"targets) pair). Received {type(item).__name__}.")
    got = tuple(int(s) for s in item.shape[1:])
    if got != shape or int(item.shape[0]) == 0:
        raise ValueError(
            f"Expected batches of data of shape (B, {', '.join(map(str, shape))}) "
            f"with B >= 1, matching input_shape {shape}. Received shape "
            f"{tuple(int(s) for s in item.shape)}.")


def lipschitz_count(count: int) -> None:
    """``js.lipschitz``'s data had a batch."""
    if not count:
        raise ValueError("Expected data with at least one batch. Received an empty iterable.")
