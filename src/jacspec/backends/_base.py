"""The adapter protocol every framework implements.

The numerical core of jacspec sees only this protocol: an array namespace ``xp``
(array-API style), a handful of conversions, a seeded sampler, and two autodiff entry
points (:meth:`Backend.linearize` for Jacobians, :meth:`Backend.linearize_gradient` for
Hessians). Adding a framework means writing one subclass in one module.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = Any

FLOAT_DTYPES = ("float32", "float64")
COMPLEX_DTYPES = ("complex64", "complex128")
#: Dtypes of models whose products run in 16 bits while the solvers work in float32.
HALF_DTYPES = ("bfloat16", "float16")
#: The unit roundoff of each of them (the precision of a product).
HALF_EPS = {"bfloat16": 2.0**-8, "float16": 2.0**-11}


@dataclass
class Linearization:
    """A derivative evaluated at one point, applied to flat vectors.

    All products take and return *flat* blocks of column vectors: ``V`` has shape
    ``batch_shape + (n, k)`` for :attr:`mm` and ``batch_shape + (m, k)`` for :attr:`rmm`.
    With ``grad=True`` the result is differentiable (in the framework's own autodiff)
    with respect to the point and to whatever the function closes over; with
    ``grad=False`` it carries no gradient.

    Attributes
    ----------
    y : array
        The function value at the point (for a Hessian: the scalar(s) ``f(x)``).
    n, m : int
        Flattened input and output sizes (per sample when batched).
    batch_shape : tuple
        ``(B,)`` for a batched linearization, else ``()``.
    mm, rmm : callable
        ``mm(V, grad) -> J V`` and ``rmm(U, grad) -> J^T U``.
    mv, rmv : callable or None
        Optional single-vector forms without gradient, ``batch_shape + (n,)`` to
        ``batch_shape + (m,)`` and back (a faster path for the Krylov solvers' steps).
    key : hashable or None
        The structure of the products (equal keys: the same program on other arrays),
        where the adapter can tell; None otherwise.
    state, rebuild : optional
        Where the products are one compiled program: the arrays they read (a pytree)
        and ``rebuild(state) -> Linearization`` with the same products on another such
        state (traced, inside a compiled solve, see :meth:`Backend.compile`).
    """

    y: Array
    n: int
    m: int
    batch_shape: tuple[int, ...]
    mm: Callable[[Array, bool], Array]
    rmm: Callable[[Array, bool], Array]
    mv: Callable[[Array], Array] | None = None
    rmv: Callable[[Array], Array] | None = None
    key: Hashable | None = None
    state: Any = None
    rebuild: Callable[[Any], Linearization] | None = None


class Backend:
    """Base class of the framework adapters (see :mod:`jacspec.backends`)."""

    name: str = ""
    module_name: str = ""
    #: Whether the framework differentiates. The public functions that need autodiff
    #: ask it once, in their argument check (``jacspec.validate.autodiff_backend``);
    #: the autodiff methods below are never called on an adapter without it.
    has_autodiff: bool = True

    # -- namespace and types ----------------------------------------------------------
    @property
    def xp(self) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def solver_xp(self) -> Any:
        """The namespace the solvers' inner loops use: :attr:`xp`, or a faster variant of
        it for arrays that already share one dtype and device (see the torch adapter)."""
        return self.xp

    def is_array(self, x: Any) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def version(self) -> str:
        import importlib

        return getattr(importlib.import_module(self.module_name), "__version__", "?")

    def devices(self) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def dtype_name(self, dtype: Any) -> str:
        """Canonical NumPy-style name of a framework dtype (``"float32"``, ...)."""
        return np.dtype(dtype).name

    def dtype_from_name(self, name: str) -> Any:
        return getattr(self.xp, name)

    def device(self, x: Array) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_numpy(self, x: Array) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def from_numpy(self, a: np.ndarray, *, dtype: Any = None, device: Any = None) -> Array:
        raise NotImplementedError  # pragma: no cover - abstract

    def normal(
        self, shape: tuple[int, ...], *, dtype: Any, device: Any, seed: int | None
    ) -> Array:  # pragma: no cover - abstract
        """Standard normal samples, deterministic for a fixed ``seed`` on a device.

        Complex dtypes get independent real and imaginary parts. The framework's global
        RNG state is never touched.
        """
        raise NotImplementedError

    def stop_gradient(self, x: Array) -> Array:
        return x

    def is_traced(self, x: Array) -> bool:
        """True inside a tracing transformation (``jax.jit``, ``tf.function``)."""
        return False

    def has_float64(self) -> bool:
        """Whether float64 arrays can be made now (JAX: only with ``jax_enable_x64``)."""
        return True

    def all_finite(self, x: Array) -> bool:
        return bool(np.all(np.isfinite(self.to_numpy(x))))

    def to_bool(self, x: Array) -> bool:
        """A 0-d boolean array as a Python bool (a host read)."""
        return bool(self.to_numpy(x))

    def to_float(self, x: Array) -> float:
        """A 0-d real array as a Python float (a host read)."""
        return float(self.to_numpy(x))

    def any_true(self, x: Array) -> bool:
        """Whether any entry of a boolean array is True (a host read)."""
        return self.to_bool(self.solver_xp.any(x))

    def all_true(self, x: Array) -> bool:
        """Whether every entry of a boolean array is True (a host read)."""
        return self.to_bool(self.solver_xp.all(x))

    def row_coefs(self, W: Array, Q: Array) -> Array:
        """``W @ Q^H`` (the conjugate transpose of ``Q``'s last two axes): the
        coefficients of the rows of ``W`` along the rows of ``Q`` (Gram–Schmidt).
        Adapters whose transposes copy contract the rows directly instead."""
        xp = self.solver_xp
        QH = xp.matrix_transpose(Q)
        return xp.matmul(W, xp.conj(QH) if xp.isdtype(Q.dtype, "complex floating") else QH)

    def sub_matmul(self, W: Array, C: Array, Q: Array) -> Array:
        """``W - C @ Q`` for stacks of matrices (the Gram–Schmidt update), fused where
        the framework has such a kernel (torch: ``baddbmm``)."""
        return W - self.solver_xp.matmul(C, Q)

    def no_grad(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which products need record no gradient (torch: ``no_grad``)."""
        return contextlib.nullcontext()

    # -- what the solvers' loops use --------------------------------------------------
    #: Whether arrays may change shape from step to step at no cost outside a trace: the
    #: Krylov steps then work on the filled rows of their buffers only. False where the
    #: framework compiles every new shape eagerly (JAX).
    dynamic_shapes: bool = True
    #: Whether generic directions (start and breakdown restart vectors) come from
    #: :meth:`hash_uniform` in eager solves too, not only inside a trace: where eager
    #: solves run as compiled programs (JAX), whose directions must be those of the
    #: plain path and whose compilation a counter-based normal draw would dominate.
    hashed_directions: bool = False

    def cond(self, pred: Array, true_fn: Callable[[], Any], false_fn: Callable[[], Any]
             ) -> Any:
        """``true_fn()`` if the 0-d boolean ``pred`` holds, else ``false_fn()``: a host
        read and a Python branch, or, for a traced ``pred``, :meth:`traced_cond`."""
        if self.is_traced(pred):
            return self.traced_cond(pred, true_fn, false_fn)
        return true_fn() if self.to_bool(pred) else false_fn()

    def traced_cond(self, pred: Array, true_fn: Callable[[], Any],
                    false_fn: Callable[[], Any]) -> Any:
        """The framework's branch inside a trace (``lax.cond``, ``tf.cond``), which runs
        one side only."""
        raise NotImplementedError(f"{self.name} cannot branch inside a trace.")

    def fori_loop(self, lo: int, hi: int, body: Callable[[Any, Any], Any], carry: Any
                  ) -> Any:
        """``carry = body(i, carry)`` for ``i`` in ``[lo, hi)``: a Python loop by
        default; JAX compiles it as one loop whose body is traced once."""
        for i in range(lo, hi):
            carry = body(i, carry)
        return carry

    def while_loop(self, cond_fn: Callable[[Any], Any], body_fn: Callable[[Any], Any],
                   carry: Any) -> Any:
        """``carry = body_fn(carry)`` while ``cond_fn(carry)`` (a 0-d boolean) holds: a
        host read per test, or, where the test is traced, :meth:`traced_while_loop`.
        ``carry`` is a tuple of arrays."""
        if self.is_traced(cond_fn(carry)):
            return self.traced_while_loop(cond_fn, body_fn, carry)
        while self.to_bool(cond_fn(carry)):
            carry = body_fn(carry)
        return carry

    def traced_while_loop(self, cond_fn: Callable[[Any], Any],
                          body_fn: Callable[[Any], Any], carry: Any) -> Any:
        """The framework's loop inside a trace (``lax.while_loop``, ``tf.while_loop``)."""
        raise NotImplementedError(f"{self.name} cannot loop inside a trace.")

    def leading_rows(self, X: Array, j: int) -> Array:
        """``X[:, :j]`` for a stack ``(B, J, W)`` and a Python ``j`` (the filled rows of
        a solver buffer outside a trace)."""
        return X[:, :j]

    def set_row(self, X: Array, j: Any, x: Array, start: int = 0) -> Array:
        """``X`` (..., J, W) with ``X[..., j, start:start + t] = x`` (``x``: (..., t));
        ``j`` may be a traced index. Only solver work buffers are written, and the rows
        written are zero before: adapters may write in place (torch). The default is
        functional (a select on the row index)."""
        xp = self.solver_xp
        J, W, t = int(X.shape[-2]), int(X.shape[-1]), int(x.shape[-1])
        rows = xp.arange(J, device=self.device(X))[:, None] == j
        if t == W:
            return xp.where(rows, x[..., None, :], X)
        lead = tuple(int(d) for d in x.shape[:-1])
        pad = [xp.zeros(lead + (start,), dtype=X.dtype, device=self.device(X)), x,
               xp.zeros(lead + (W - t - start,), dtype=X.dtype, device=self.device(X))]
        x = xp.concat(pad, axis=-1)
        return X + xp.where(rows, x[..., None, :], xp.zeros_like(X))  # other entries kept

    def should_compile(self, key: Hashable) -> bool:
        """Whether an eager solve whose configuration is ``key`` runs as compiled pieces
        (:meth:`compile`) this time: where the framework compiles, once the key has been
        seen often enough to pay for it. Default False (every step runs as it is)."""
        return False

    def detached(self, x: Any) -> Any:
        """``x`` (a pytree of arrays that a transformation traces) as concrete arrays
        without gradient where only an eager differentiation traces it (eager
        ``jax.grad``: the values are known), so that a gradient-free solve on them may
        run compiled; None where a trace holds them (``jax.jit``). Default None."""
        return None

    def compile(self, fn: Callable[..., Any], key: Hashable) -> Callable[..., Any]:
        """``fn`` (a pure function of pytrees of arrays) compiled, once per ``key``: a
        later call with the same key may reuse the first ``fn``'s compilation, so ``fn``
        must depend on nothing but ``key`` and its arguments. Default: ``fn`` itself."""
        return fn

    def hash_uniform(self, shape: tuple[int, ...], *, dtype: Any, seed: Any) -> Array:
        """Generic directions (start and breakdown restart vectors) inside a traced
        loop, where ``seed`` may be traced (and everywhere where
        :attr:`hashed_directions`). The default draws normal samples."""
        return self.normal(shape, dtype=dtype, device=None, seed=seed)

    # -- convolutions and models (js.conv) ----------------------------------------------
    #: The framework's own conv kernel layout (the default of ``layout=``).
    conv_layout: str = "OIHW"
    #: Whether the framework's images are channels-last (NHWC): the layout of the vectors
    #: a conv operator acts on.
    channels_last: bool = False

    def as_matrix(self, A: Any) -> Array:
        """The array an explicit operator holds for ``A`` (``js.aslinearoperator``):
        ``A`` itself, kept as given so that products read it afresh (framework
        variables included)."""
        return A

    def read(self, x: Any) -> Array:
        """The array behind a framework variable (a ``tf.Variable`` reads as a tensor)."""
        return x

    def conv2d(self, x: Array, w: Array, *, stride: tuple[int, int],
               pads: tuple[tuple[int, int], tuple[int, int]]) -> Array:
        """Cross-correlation of ``x`` ``(N, C, H, W)`` with ``w`` ``(O, C, h, w)``,
        ``pads = ((top, bottom), (left, right))`` zeros."""
        raise NotImplementedError(f"{self.name} has no conv2d.")

    def conv2d_adjoint(self, y: Array, w: Array, *, stride: tuple[int, int],
                       pads: tuple[tuple[int, int], tuple[int, int]],
                       input_hw: tuple[int, int]) -> Array:
        """The exact adjoint of :meth:`conv2d`, ``(N, C, H, W)``."""
        raise NotImplementedError(f"{self.name} has no conv2d.")

    def owns_model(self, model: Any) -> bool:
        """Whether ``model`` is a model of this framework (``js.conv.layer_report``)."""
        return False

    def conv_layers(self, model: Any, input_shape: tuple[int, ...]) -> list:
        """The conv and dense layers of ``model`` in forward order (see
        ``js.conv.layer_report``)."""
        raise TypeError(f"{self.name} models have no layer report.")

    def lipschitz_graph(self, model: Any, input_shape: tuple[int, ...], *,
                        layout: str | None = None
                        ) -> contextlib.AbstractContextManager[Any]:
        """A context manager giving ``model`` as a ``ModelGraph`` of nodes (see
        ``jacspec.backends._graph``) for ``js.lipschitz``, with the model in inference
        mode while the context lasts and its modes restored after. ``layout``
        (``"NCHW"``/``"NHWC"``) is checked against the model's image layout."""
        raise TypeError(f"js.lipschitz does not read {self.name} models.")

    # -- autodiff ------------------------------------------------------------------
    def linearize(self, f: Callable, x: Array, *, batched: bool) -> Linearization:
        """Jacobian of ``f`` at ``x`` (see :class:`Linearization`)."""
        raise NotImplementedError(f"{self.name} has no automatic differentiation.")

    def linearize_gradient(self, f: Callable, x: Any, *, batched: bool) -> Linearization:
        """Hessian of scalar ``f`` at ``x``, an array or a parameter collection."""
        raise NotImplementedError(f"{self.name} has no automatic differentiation.")

    # -- how Hessian products are formed (js.hessian(..., hvp=)) ----------------------
    def missing_derivative(self, err: BaseException) -> bool:
        """Whether ``err`` (raised by a product) says that an operation of the model has
        no derivative of the order the product needs (a fused kernel without double
        backward, a custom gradient without forward mode). ``hvp="auto"`` then falls
        back to finite differences; ``hvp="autodiff"`` lets ``err`` through. Default:
        never."""
        return False

    def second_order_kernels(self) -> contextlib.AbstractContextManager[Any]:
        """Context in which the framework's kernels have the derivatives a product needs
        beyond one backward pass (torch: the math kernel of
        ``scaled_dot_product_attention``, whose flash and memory-efficient kernels have
        no second derivative). The user's own kernel choice is back when it exits.
        Default: no change."""
        return contextlib.nullcontext()

    def gradient_oracle(self, f: Callable, x: Any, *, batched: bool) -> GradientOracle:
        """The gradient of ``sum f`` at shifted points ``x + d`` (see
        :class:`GradientOracle`): what finite-difference Hessian products need, one
        backward pass each and no second derivative."""
        raise NotImplementedError(f"{self.name} has no automatic differentiation.")

    def hessian_linearization(self, f: Callable, x: Any, *, batched: bool,
                              hvp: str = "auto") -> Linearization:
        """The Hessian of ``f`` at ``x`` by the route ``hvp`` names: ``"autodiff"`` the
        adapter's exact route (:meth:`linearize_gradient`), ``"finite_difference"``
        central differences of gradients, ``"auto"`` the exact route, falling back to
        finite differences (with a warning) where the model's operations have no second
        derivative (:meth:`missing_derivative`)."""
        if hvp == "finite_difference":
            return finite_difference_hessian(self, self.gradient_oracle(f, x, batched=batched))
        try:
            lin = self.linearize_gradient(f, x, batched=batched)
        except Exception as err:
            if hvp != "auto" or not self.missing_derivative(err):
                raise
            _warn_fallback(err)
            return finite_difference_hessian(self, self.gradient_oracle(f, x, batched=batched))
        if hvp != "auto":
            return lin
        return _falling_back(self, lin, lambda: finite_difference_hessian(
            self, self.gradient_oracle(f, x, batched=batched)))

    def plain_collection(self, x: Any) -> Any:
        """``x`` as a plain list or dict where it is the framework's own container of
        parameters (torch ``ParameterList``, ``ParameterDict``); else ``x`` itself."""
        return x

    def is_param_collection(self, x: Any) -> bool:
        """Whether ``x`` is a collection of parameters (list/tuple/dict of arrays...)."""
        if isinstance(x, dict):
            return len(x) > 0 and all(self.is_array(v) for v in x.values())
        if isinstance(x, (list, tuple)):
            return len(x) > 0 and all(self.is_array(v) for v in x)
        return False

    # -- helpers shared by the adapters ---------------------------------------------
    @staticmethod
    def sizes(shape: tuple[int, ...]) -> int:
        return int(math.prod(shape))

    # ==================================================================================
    # Dataset operators (js.hessian(..., data=...), js.ggn) and products summed across
    # processes. The core (jacspec.datasets) iterates, weights, sums and validates; an
    # adapter supplies the product of one batch and, for distributed=True, the collective.
    # ==================================================================================
    def batch_product(self, f: Callable, params: Any, *, hvp: str = "auto"
                      ) -> Callable[[Any, Array], Array]:
        """The per-batch Hessian product of a dataset operator by the route ``hvp`` (see
        :meth:`hessian_linearization`): the adapter's :meth:`batch_hessian_product`, or
        central differences of per-batch gradients."""

        def finite(batch: Any, V: Array) -> Array:
            oracle = self.gradient_oracle(lambda p: f(p, batch), params, batched=False)
            return finite_difference_hessian(self, oracle).mm(V, False)

        if hvp == "finite_difference":
            return finite
        exact = self.batch_hessian_product(f, params)
        if hvp != "auto":
            return exact
        route: list[Callable[[Any, Array], Array]] = [exact]

        def prod(batch: Any, V: Array) -> Array:
            try:
                return route[0](batch, V)
            except Exception as err:
                if route[0] is finite or not self.missing_derivative(err):
                    raise
                _warn_fallback(err)
                route[0] = finite
                return finite(batch, V)

        return prod

    def batch_hessian_product(self, f: Callable, params: Any) -> Callable[[Any, Array], Array]:
        """``prod(batch, V)``: the Hessian of ``p -> f(p, batch)`` at ``params`` times a
        flat block ``V`` ``(n, k)``, without gradient.

        The default linearizes every batch afresh with :meth:`linearize_gradient`; an
        adapter may compile it (JAX: one jitted function per batch shape).
        """

        def prod(batch: Any, V: Array) -> Array:
            lin = self.linearize_gradient(lambda p: f(p, batch), params, batched=False)
            return lin.mm(V, False)

        return prod

    def random_seed(self) -> int | None:
        """A seed for the random layers (dropout) of a dataset operator's ``f``, drawn
        from the framework's global random state without moving it; ``None`` where ``f``
        draws no global randomness (JAX passes keys explicitly; NumPy has no autodiff)."""
        return None

    def fixed_randomness(self, seed: int | None) -> contextlib.AbstractContextManager[Any]:
        """Context in which the framework's global random generators are seeded with
        ``seed`` (left as they are when ``None``) and after which they are in the
        caller's state again: a dataset operator runs each batch's product in it, so a
        batch sees the same random draws in every product."""
        return contextlib.nullcontext()

    def batch_ggn_product(
        self, f: Callable, loss: Callable, params: Any
    ) -> Callable[[Any, Array], Array]:
        """``prod((inputs, targets), V)``: the generalized Gauss–Newton matrix
        ``J^T H J`` of one batch times ``V`` ``(n, k)``, without gradient; ``J`` is the
        Jacobian of ``p -> f(p, inputs)`` at ``params`` and ``H`` the Hessian of
        ``z -> loss(z, targets)`` at the outputs.

        The default composes :meth:`linearize` and :meth:`linearize_gradient`.
        """

        def prod(batch: Any, V: Array) -> Array:
            inputs, targets = batch
            jac = self.linearize(lambda p: f(p, inputs), params, batched=False)
            z = self.stop_gradient(jac.y)
            hess = self.linearize_gradient(lambda o: loss(o, targets), z, batched=False)
            return jac.rmm(hess.mm(jac.mm(V, False), False), False)

        return prod

    def scan_batches(self, product: Callable[[Any, Array], Array],
                     batches: Callable[[], list], V: Array) -> Array | None:
        """The sum of ``product(batch, V)`` over the in-memory batches ``batches()``
        returns (checked, one structure) as one loop the framework compiles, where that
        holds less memory than a loop of calls (JAX inside a trace: ``lax.scan``);
        ``None``: the caller loops. Default: ``None``."""
        return None

    def staged_product(self, product: Callable[[Array], Array], n: int, dtype: Any,
                       device: Any = None
                       ) -> tuple[Hashable, Any, Callable[[Any, Array], Array]] | None:
        """``(key, arrays, apply)`` where ``product`` (``V`` ``(n, k)`` to ``(n, k)``
        on ``device``, reading arrays it closes over) traces to one program:
        ``apply(arrays, V)`` computes it on those arrays or others of their kind
        (traced in a compiled piece), ``key`` the program's structure. None where the
        framework does not trace it (default), the trace fails (the caller then runs
        ``product``) or the program cannot run where the vectors are."""
        return None

    def distributed_group(self, group: Any, params: Any = None) -> Any:
        """The group a ``distributed=True`` operator on ``params`` sums over, fixed when
        it is built (TensorFlow: the strategy in scope unless ``group`` names one; JAX:
        the mesh the parameters are split over unless ``group`` names it; others: as
        given)."""
        return group

    def vector_device(self, params: Any, y: Array) -> Any:
        """Where the flat parameter-sized vectors of an operator on ``params`` live, ``y``
        being a value the function returned: ``y``'s device, or for parameters split
        across devices how the vectors are split (JAX: a ``NamedSharding``); the
        operator's ``device``."""
        return self.device(y)

    def placement(self, device: Any, ndim: int, axis: int | None) -> Any:
        """The ``device`` argument of an ``ndim``-dimensional array that a solve creates
        for an operator on ``device``, whose ``axis`` runs along the operator's vectors
        (None: no such axis, a small array): ``device`` itself, unless the vectors are
        split across devices (JAX: that split along ``axis``; replicated for None)."""
        return device

    def keep_placement(self, x: Array, device: Any) -> Array:
        """``x`` on ``device`` (a :meth:`placement`), after a step that the framework may
        have run elsewhere (JAX: XLA runs a QR on whole columns, replicated): ``x``
        itself by default."""
        return x

    def distributed_data(self, data: Any, *, group: Any) -> Any:
        """The data as a ``distributed=True`` operator iterates it (TensorFlow: a
        ``tf.data.Dataset`` distributed by the strategy; others: as it is)."""
        return data

    def distributed_parts(self, batch: Any, *, group: Any) -> list[Any]:
        """The pieces of a batch of distributed data that this process holds, each a
        batch of the user's structure (TensorFlow: the per-replica values; others: the
        batch itself)."""
        return [batch]

    def distributed_product(self, product: Callable[[Any, Array], Array], batch: Any,
                            V: Array, weight: Callable[[Any], float], *,
                            group: Any) -> Array | None:
        """``weight(b) * product(b, V)`` of this process's part ``b`` of a batch, None
        when it is empty. The default runs it here on :meth:`distributed_batch`'s form
        of the batch; an adapter whose pieces live on replicas runs each there and
        reduces them."""
        batch = self.distributed_batch(batch, group=group)
        w = weight(batch)
        return product(batch, V) * w if w else None

    def distributed_batch(self, batch: Any, *, group: Any) -> Any:
        """A batch as the per-batch products of a ``distributed=True`` operator take it
        (torch: this process's shard as it is; JAX: a global array sharded over devices)."""
        raise NotImplementedError(self._no_distributed_message())

    def distributed_count(self, count: int, *, group: Any) -> int:
        """The number of samples over all processes, given this process's ``count``."""
        raise NotImplementedError(self._no_distributed_message())

    def distributed_sum(self, x: Array, *, group: Any) -> Array:
        """The sum over processes of this process's partial product ``x`` (every process
        receives the same array)."""
        raise NotImplementedError(self._no_distributed_message())

    def sharded_product(self, f: Callable, loss: Callable | None, params: Any,
                        summary: Any, *, hvp: str, group: Any) -> ShardedProduct | None:
        """The per-batch product of a ``distributed=True`` dataset operator whose
        ``params`` are sharded across processes (torch FSDP2), or None where every
        process holds all parameters (the default: products are summed by
        :meth:`distributed_sum`). ``loss`` is None for the Hessian of ``f``, else the
        GGN of ``loss`` after ``f``; ``summary`` is the data's
        :class:`~jacspec.datasets.DataSummary` (its first batch is checked here)."""
        return None

    def _no_distributed_message(self) -> str:
        return (
            f"Expected a backend with a collective for distributed=True (torch with "
            f"torch.distributed, jax with several devices, or tensorflow with a "
            f"tf.distribute.Strategy). Received {self.name}, which "
            "jacspec does not distribute; run it in one process (distributed=False)."
        )


@dataclass(frozen=True)
class Sharding:
    """How the vectors of an operator are split across processes.

    Attributes
    ----------
    local_n : int
        The entries of a vector this process holds (its shards of the parameters).
    rank : int
        This process's index in the group.
    sum : callable
        ``sum(x)``: the sum over the processes of an array of partial reductions (inner
        products, squared norms); every process receives the same array.
    """

    local_n: int
    rank: int
    sum: Callable[[Any], Any]


@dataclass(frozen=True)
class ShardedProduct:
    """A dataset operator's product on sharded parameters (see
    :meth:`Backend.sharded_product`).

    Attributes
    ----------
    n : int
        The number of parameters over all processes.
    dtype, device
        Those of the products.
    sharding : Sharding
        How vectors are split.
    product : callable
        ``product(batch, V, weight)``: ``weight`` times one batch's operator on the
        local parts ``V`` ``(local_n, k)``, summed over the processes (each process
        passes its own batch and weight; every process must call it for every batch),
        as local parts ``(local_n, k)``.
    """

    n: int
    dtype: Any
    device: Any
    sharding: Sharding
    product: Callable[[Any, Any, float], Any]


@dataclass
class GradientOracle:
    """Gradients of ``sum f`` at points shifted from ``x``, flat.

    Attributes
    ----------
    y : array
        ``f(x)``.
    n : int
        The flattened size of ``x`` (per sample when batched).
    batch_shape : tuple
        ``(B,)`` for per-sample gradients, else ``()``.
    point_norm : array
        The norm of ``x``, shape ``batch_shape`` (the scale of a finite-difference step).
    grad : callable
        ``grad(d)``: the gradient at ``x + d`` for a flat ``d`` ``batch_shape + (n,)``,
        flat like ``d``; the user's arrays are as they were afterwards.
    """

    y: Array
    n: int
    batch_shape: tuple[int, ...]
    point_norm: Array
    grad: Callable[[Array], Array]


#: The relative step of central differences, ``eps ** (1/3)`` of the dtype: it balances
#: the truncation error (``~ step**2``) against rounding (``~ eps / step``).
def _fd_step(dtype_name: str) -> float:
    eps = {"float64": 2.0**-52, "float32": 2.0**-23, "bfloat16": 2.0**-7,
           "float16": 2.0**-10}.get(dtype_name, 2.0**-23)  # machine epsilons
    return eps ** (1.0 / 3.0)


def central_difference(g: Callable[[Any], Any], v: Any, t: Any) -> Any:
    """``(g(t v) - g(-t v)) / (2 t)``: the derivative of ``g`` at 0 along ``v`` with
    step ``t`` (a number, or an array that broadcasts against ``v``), error ``O(t^2)``.
    ``g`` takes the displacement: gradients at ``x + d`` for Hessian products, outputs
    at ``params + d`` for Jacobian products."""
    d = v * t
    return (g(d) - g(-d)) / (2.0 * t)


def finite_difference_hessian(backend: Backend, oracle: GradientOracle) -> Linearization:
    """Hessian products by central differences of gradients.

    ``H v ~ (g(x + t v) - g(x - t v)) / (2 t)`` with ``t = eps**(1/3) (1 + |x|) / |v|``:
    two backward passes per vector and no second derivative. The relative error is
    about ``sqrt(eps)`` (float32: ~1e-4 to 1e-3, float64: ~1e-8 or better; less where
    third derivatives are small). Products carry no gradient.
    """
    y, n, bshape = oracle.y, oracle.n, oracle.batch_shape
    xp = backend.xp
    c = _fd_step(backend.dtype_name(y.dtype))

    def hv(v: Array) -> Array:
        vn = xp.linalg.vector_norm(v, axis=-1)
        t = c * (1.0 + oracle.point_norm) / xp.where(vn > 0, vn, xp.ones_like(vn))
        return central_difference(oracle.grad, v, t[..., None])

    def mm(V: Array, grad: bool) -> Array:
        return xp.stack([hv(V[..., j]) for j in range(V.shape[-1])], axis=-1)

    return Linearization(y=y, n=n, m=n, batch_shape=bshape, mm=mm, rmm=mm, mv=hv, rmv=hv)


def _warn_fallback(err: BaseException) -> None:
    import warnings

    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    warnings.warn(
        "The model has an operation without a second derivative "
        f"({first}); Hessian products use central differences of gradients "
        "(accuracy about sqrt(eps) relative). Pass hvp='autodiff' to raise instead, or "
        "hvp='finite_difference' to choose this route.", RuntimeWarning, stacklevel=4)


def _falling_back(backend: Backend, lin: Linearization,
                  make: Callable[[], Linearization]) -> Linearization:
    """``lin`` whose products switch, once and for good, to ``make()``'s where one fails
    for lack of a derivative (:meth:`Backend.missing_derivative`)."""
    route: list[Linearization] = [lin]

    def switched(name: str) -> Callable[..., Array]:
        def call(*args: Any) -> Array:
            if route[0] is lin:
                try:
                    return getattr(lin, name)(*args)
                except Exception as err:
                    if not backend.missing_derivative(err):
                        raise
                    _warn_fallback(err)
                    route[0] = make()
            return getattr(route[0], name)(*args)

        return call

    return Linearization(y=lin.y, n=lin.n, m=lin.m, batch_shape=lin.batch_shape,
                         mm=switched("mm"), rmm=switched("mm"),
                         mv=switched("mv") if lin.mv is not None else None,
                         rmv=switched("mv") if lin.mv is not None else None,
                         key=lin.key, state=lin.state, rebuild=lin.rebuild)


@contextlib.contextmanager
def nullcontext() -> Iterator[None]:
    yield


def check_output(backend: Backend, y: Any, x_batch: int | None, *, what: str) -> None:
    """Validate a function output before any product is taken.

    Raises ``TypeError`` for non-arrays or non-floating outputs, ``ValueError`` when a
    batched ``f`` changed the batch size, ``FloatingPointError`` for NaN/Inf.
    """
    if not backend.is_array(y):
        raise TypeError(
            f"Expected {what} to return a single {backend.name} array. "
            f"Received {type(y).__name__}."
        )
    name = backend.dtype_name(y.dtype)
    if name not in FLOAT_DTYPES + HALF_DTYPES:
        raise TypeError(
            f"Expected {what} to return floating-point values (float32, float64, "
            "bfloat16 or float16). "
            f"Received dtype {name}; integer or boolean outputs have no derivative."
        )
    if x_batch is not None:
        if len(y.shape) == 0 or int(y.shape[0]) != x_batch:
            raise ValueError(
                f"Expected {what} to keep the batch size with batched=True: output shape "
                f"({x_batch}, ...). Received output shape {tuple(y.shape)}."
            )
    if not backend.is_traced(y) and not backend.all_finite(y):
        raise FloatingPointError(f"{what} returned NaN or Inf at the given point.")


def check_scalar_output(y_shape: tuple[int, ...], bshape: tuple[int, ...]) -> None:
    """A Hessian's ``f`` returns a scalar (one per sample when batched, ``bshape == (B,)``)."""
    size = int(math.prod(y_shape))
    if tuple(y_shape) != bshape and not (not bshape and size == 1):
        raise ValueError(
            "Expected f to return a scalar"
            + (" per sample, shape (B,)" if bshape else "")
            + f" for a Hessian. Received output shape {tuple(y_shape)}."
        )


def check_input(backend: Backend, x: Any, *, batched: bool, what: str = "x") -> None:
    """Validate the point at which a derivative is taken."""
    name = backend.dtype_name(x.dtype)
    if name not in FLOAT_DTYPES + HALF_DTYPES:
        raise TypeError(
            f"Expected {what} of dtype float32, float64, bfloat16 or float16. "
            f"Received dtype {name}; "
            "derivatives need floating-point inputs."
        )
    if batched and len(x.shape) == 0:
        raise ValueError(f"Expected {what} with a leading batch axis. Received shape ().")
    if batched and int(x.shape[0]) == 0:
        raise ValueError(f"Expected a non-empty batch. Received {what} of shape {tuple(x.shape)}.")


def find_closure_objects(
    f: Any, predicate: Callable[[Any], bool], *, max_depth: int = 6, max_visits: int = 2000
) -> list:
    """Objects reachable from callable ``f`` that satisfy ``predicate``.

    Follows ``functools.partial`` parts, a bound method's ``__self__``, closure cells,
    default arguments, the globals ``f``'s code names (``lambda x: model(x)`` at module
    level) and the attributes it names of the Python modules among them
    (``models.net``), lists, tuples, sets and dicts, the attributes of plain objects (a
    wrapper's ``self.model``) and the data attributes of their classes and of classes
    (``Config.net``), up to ``max_depth`` links and ``max_visits`` objects. An object
    satisfying ``predicate`` is collected and not looked into.

    The adapters use it to record, before ``f`` runs, the state that only Python code
    changes (torch's train/eval modes and ``requires_grad`` flags); tensor and variable
    writes are caught where they happen (see ``jacspec.backends._torch_state``).
    """
    import functools

    found: list = []
    seen: set[int] = set()

    def children(g: Any) -> list:
        if isinstance(g, functools.partial):
            return [g.func, *g.args, *g.keywords.values()]
        if isinstance(g, dict):
            return list(g.values())
        if isinstance(g, (list, tuple, set, frozenset)):
            return list(g)
        if isinstance(g, type):
            return _class_data(g)
        if isinstance(g, (str, bytes, int, float, complex, bool)) or g is None:
            return []
        if _from_library(g):  # library code holds no user model
            return []
        out: list = []
        owner = getattr(g, "__self__", None)
        if owner is not None:
            out.append(owner)
        func = getattr(g, "__func__", g)
        code = getattr(func, "__code__", None)
        if code is not None:
            for cell in getattr(func, "__closure__", None) or ():
                with contextlib.suppress(ValueError):  # an empty cell
                    out.append(cell.cell_contents)
            out.extend(getattr(func, "__defaults__", None) or ())
            out.extend((getattr(func, "__kwdefaults__", None) or {}).values())
            glb = getattr(func, "__globals__", None) or {}
            names = [glb[nm] for nm in code.co_names if nm in glb]
            out.extend(v for v in names if not _is_module_obj(v))
            out.extend(_module_attributes([v for v in names if _is_module_obj(v)],
                                          code.co_names))
            return out
        attrs = getattr(g, "__dict__", None)
        if isinstance(attrs, dict):
            out.extend(attrs.values())
            out.append(type(g))  # class attributes read through the instance
        return out

    frontier = [f]
    for _ in range(max_depth + 1):
        nxt: list = []
        for g in frontier:
            if id(g) in seen or len(seen) >= max_visits:
                continue
            seen.add(id(g))
            if predicate(g):
                found.append(g)
                continue
            try:
                nxt.extend(children(g))
            except Exception:  # an exotic object whose attributes cannot be read
                continue
        frontier = nxt
    return found


# Packages whose functions and objects are not walked into: they hold no user model, and
# walking them (their globals, closures, defaults) costs far more than f's forward pass.
_LIBRARIES = frozenset({
    "torch", "numpy", "jax", "jaxlib", "tensorflow", "keras", "tf_keras", "scipy",
    "jacspec", "builtins", "functools", "collections", "typing", "abc", "enum",
})


def _from_library(obj: Any) -> bool:
    """Whether ``obj`` (a function, or an instance by its type) comes from a library."""
    mod = getattr(obj, "__module__", None)
    if not isinstance(mod, str):
        mod = type(obj).__module__
    return mod.split(".", 1)[0] in _LIBRARIES


def _class_data(cls: type) -> list:
    """The data attributes (not functions or descriptors) that a user-defined class and
    its user-defined bases define (``class Config: net = model``)."""
    import types

    skip = (types.FunctionType, property, staticmethod, classmethod)
    return [v for c in cls.__mro__ if not _from_library(c)
            for name, v in vars(c).items()
            if not (name.startswith("__") or isinstance(v, skip))]


def _module_attributes(modules: list, names: tuple[str, ...], depth: int = 4) -> list:
    """The attributes of user (non-library) Python modules that code naming ``names``
    can read (``models.net``, ``pkg.models.net``), without walking whole modules."""
    out: list = []
    for _ in range(depth):
        modules = [m for m in modules if m.__name__.split(".", 1)[0] not in _LIBRARIES]
        found = [vars(m)[nm] for m in modules for nm in names if nm in vars(m)]
        out.extend(v for v in found if not _is_module_obj(v))
        modules = [v for v in found if _is_module_obj(v)]
        if not modules:
            break
    return out


def _is_module_obj(obj: Any) -> bool:
    """A Python module (``np``, ``torch``): never worth walking into."""
    import types

    return isinstance(obj, types.ModuleType)
