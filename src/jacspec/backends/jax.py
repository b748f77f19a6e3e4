"""JAX adapter.

A Jacobian is linearized once (``jax.linearize``: one forward pass, residuals kept) and
its transpose comes from ``jax.linear_transpose`` of that linearization, so JVPs and VJPs
both reuse the forward pass. Blocks of vectors go through ``jax.vmap``. Hessians are
forward-over-reverse (``jax.linearize`` of ``jax.grad``). Everything is traceable under
``jax.jit`` and differentiable under ``jax.grad``. The library never changes the x64 flag:
float64 needs ``jax_enable_x64`` set by the user.

GPU: ``pip install "jax[cuda12]"``; products run on the device of ``x``.
"""

from __future__ import annotations

import functools
import warnings
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from . import _jaxpr_structure
from ._base import (
    Backend,
    GradientOracle,
    Linearization,
    check_input,
    check_output,
    check_scalar_output,
)

# An eager computation (a linearization, a solver's piece) runs compiled from the
# COMPILE_AFTER-th time its configuration is seen. From the first: op by op, eager JAX
# compiles every operation for each new shape anyway, which costs more than compiling
# the pieces (docs/benchmarks.md, "first call" row); a repeated configuration then runs
# at jit speed.
COMPILE_AFTER = 1
# Output dtypes of the linearizations compiled (16-bit models included: their products
# run op by op otherwise).
_FLOATING = ("float32", "float64", "bfloat16", "float16")
# Configurations remembered (sightings and compiled functions), least recent dropped.
CACHE_SIZE = 256
_seen: OrderedDict = OrderedDict()
_compiled: OrderedDict = OrderedDict()


def _remember(cache: OrderedDict, key: Hashable, value: Any) -> Any:
    cache[key] = value
    cache.move_to_end(key)
    if len(cache) > CACHE_SIZE:
        cache.popitem(last=False)
    return value


def _sighting(key: Hashable) -> int:
    """How many times ``key`` has been seen, this time included."""
    return _remember(_seen, key, _seen.get(key, 0) + 1)


def _one_placement(args: Any) -> Any:
    """``args`` with every array committed to one device where any is.

    ``jax.jit`` compiles separately for committed and uncommitted arguments: a piece fed
    by an eager array placed on a device and by another piece's uncommitted output
    would compile twice in one solve."""
    leaves = jax.tree_util.tree_leaves(args)
    if any(isinstance(a, jax.core.Tracer) for a in leaves):
        return args  # inside a transformation (jax.grad): placed by the outer program
    devices = next((a.devices() for a in leaves
                    if isinstance(a, jax.Array) and a.committed), None)
    if (devices is None or len(devices) > 1  # split arrays: jit places the others
            or all(a.committed for a in leaves if isinstance(a, jax.Array))):
        return args
    device = next(iter(devices))
    return jax.tree_util.tree_map(
        lambda a: jax.device_put(a, device)
        if isinstance(a, jax.Array) and not a.committed else a, args)


@functools.lru_cache(maxsize=64)
def _normal_on(sharding, shape, dtype):
    """``key -> jax.random.normal(key, shape, dtype)`` drawn split by ``sharding``
    (threefry draws are the same however split): no device holds the whole array."""
    return jax.jit(functools.partial(jax.random.normal, shape=shape, dtype=dtype),
                   out_shardings=sharding)


@jax.jit
def _all_finite(x):
    """One program per shape (eager ``isfinite`` then ``all`` would compile two)."""
    return jnp.all(jnp.isfinite(x))


def _cols_first(V, shape):
    k = V.shape[-1]
    return jnp.moveaxis(V, -1, 0).reshape((k,) + tuple(shape))


def _cols_last(R, batch_shape, size):
    k = R.shape[0]
    return jnp.moveaxis(R.reshape((k,) + tuple(batch_shape) + (size,)), 0, -1)


def _apply_cols(fn, V, in_shape, batch_shape, out_size, grad):
    Vc = _cols_first(V, in_shape)
    R = fn(Vc[0])[None] if Vc.shape[0] == 1 else jax.vmap(fn)(Vc)
    R = _cols_last(R, batch_shape, out_size)
    return R if grad else jax.lax.stop_gradient(R)


def _cols_vmap(fn, V):
    """``fn`` applied to each column of ``V`` ``(n, k)``."""
    return jax.vmap(fn, in_axes=-1, out_axes=-1)(V)


def _with_batch_placement(prod, params):
    """``(batch, V) -> prod(params, batch, V)``, the arrays on one set of devices (a
    jitted call takes no other): with parameters sharded over a mesh
    (:func:`_vector_sharding`), ``V`` split like the operator's vectors; else ``params``
    and ``V`` replicated over the mesh of a batch sharded by
    :meth:`JaxBackend.distributed_batch`."""
    vectors = _vector_sharding(params)
    placed: dict = {}

    def call(batch, V):
        if vectors is not None:
            return prod(params, batch, jax.device_put(V, vectors))
        leaf = next((a for a in jax.tree_util.tree_leaves(batch) if isinstance(a, jax.Array)),
                    None)
        sharding = getattr(leaf, "sharding", None)
        mesh = getattr(sharding, "mesh", None)
        if mesh is None or mesh.size == 1:
            return prod(params, batch, V)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        if mesh not in placed:
            placed[mesh] = jax.device_put(params, replicated)
        return prod(placed[mesh], batch, jax.device_put(V, replicated))

    return call


def _axis_names(entry) -> tuple:
    """The mesh axes one entry of a ``PartitionSpec`` splits its dimension over."""
    if isinstance(entry, str):
        return (entry,)
    if isinstance(entry, tuple):
        return tuple(a for a in entry if isinstance(a, str))
    return ()


def _vector_sharding(params, *, warn: bool = False):
    """How the flat vectors of an operator on ``params`` are split: for parameters split
    over the axes of one mesh by ``NamedSharding``s, a ``NamedSharding`` of the vectors
    over those axes (all of them where their devices divide the vector's length, else
    the leading ones that do, said if ``warn``); None for parameters on one device or
    replicated. A ValueError where no axis divides the length."""
    from jax.sharding import NamedSharding, PartitionSpec

    leaves = jax.tree_util.tree_leaves(params)
    shardings = [getattr(a, "sharding", None) for a in leaves]
    if not leaves or not all(isinstance(s, NamedSharding) for s in shardings):
        return None
    mesh = shardings[0].mesh
    used = {a for s in shardings for entry in s.spec for a in _axis_names(entry)}
    if any(s.mesh != mesh for s in shardings) or not used:
        return None
    axes = [a for a in mesh.axis_names if a in used]
    n = sum(Backend.sizes(tuple(a.shape)) for a in leaves)
    split = list(axes)
    while split and n % Backend.sizes(tuple(mesh.shape[a] for a in split)):
        split.pop()
    if not split:
        raise ValueError(
            f"Expected the number of parameters to be a multiple of the device count of "
            f"the first mesh axis they are sharded over ({axes[0]!r}: "
            f"{mesh.shape[axes[0]]}), so that the operator's vectors split evenly. "
            f"Received {n} parameters; pad one parameter by a few entries.")
    if warn and split != axes:
        warnings.warn(
            f"jacspec: the {n} parameters cannot be split evenly over the mesh axes "
            f"{tuple(axes)} they are sharded over; the operator's vectors are split over "
            f"{tuple(split)} only.", RuntimeWarning, stacklevel=5)
    return NamedSharding(mesh, PartitionSpec(tuple(split)))


def _flat_maps(params, layout):
    """``(to_flat, to_tree)`` between trees like ``params`` and flat vectors in
    ``ravel_pytree``'s order, inside a jitted product on (traced) ``params``. ``layout``
    (:func:`_layout`, of the concrete parameters): None, or how the vectors and the
    parameters are split, kept by sharding constraints at both ends, so that no device
    holds a whole vector outside XLA's own steps. ``ravel_pytree`` is traced: its
    concatenation of ``params`` is compiled away."""
    _, unravel = ravel_pytree(params)
    if layout is None:
        return (lambda tree: ravel_pytree(tree)[0]), unravel
    vectors, leaves = layout
    constrain = jax.lax.with_sharding_constraint
    return (lambda tree: constrain(ravel_pytree(tree)[0], vectors),
            lambda v: constrain(unravel(v), leaves))


def _layout(params):
    """``(vectors, leaves)``: the flat vectors' sharding (:func:`_vector_sharding`) and
    the parameters' own, or None where the vectors are not split."""
    vectors = _vector_sharding(params)
    if vectors is None:
        return None
    return vectors, jax.tree_util.tree_map(lambda a: a.sharding, params)


class JaxBackend(Backend):
    name = "jax"
    module_name = "jax"

    @property
    def xp(self) -> Any:
        return jnp

    def is_array(self, x: Any) -> bool:
        return isinstance(x, jax.Array)

    def version(self) -> str:
        return jax.__version__

    def devices(self) -> list[str]:
        return [f"{d.platform}:{d.id} ({d.device_kind})" for d in jax.devices()]

    def dtype_name(self, dtype: Any) -> str:
        return np.dtype(dtype).name

    def dtype_from_name(self, name: str) -> Any:
        return jnp.dtype(name)

    def device(self, x: Any) -> Any:
        try:
            dev = x.device
            return dev() if callable(dev) else dev
        except Exception:  # tracers have no committed device
            return None

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def from_numpy(self, a, *, dtype=None, device=None):
        arr = jnp.asarray(np.asarray(a), dtype=dtype)
        return jax.device_put(arr, device) if device is not None else arr

    def normal(self, shape, *, dtype, device, seed):
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
            key = seed  # a jax.random key (may be traced: varies between jitted calls)
        elif isinstance(seed, jax.Array):
            key = jax.random.key(seed)  # a (possibly traced) integer
        else:
            key = jax.random.key(int(seed))
        if isinstance(device, jax.sharding.Sharding):  # drawn split (the same draws)
            return _normal_on(device, tuple(shape), dtype)(key)
        out = jax.random.normal(key, tuple(shape), dtype=dtype)
        return jax.device_put(out, device) if device is not None else out

    def stop_gradient(self, x):
        return jax.lax.stop_gradient(x)

    def is_traced(self, x) -> bool:
        return isinstance(x, jax.core.Tracer)

    def has_float64(self) -> bool:
        return bool(jax.config.read("jax_enable_x64"))

    def all_finite(self, x) -> bool:
        if x.sharding.is_fully_replicated and all(d.platform == "cpu" for d in x.devices()):
            # NumPy reads a CPU array in place; a program would be compiled per shape
            return bool(np.isfinite(np.asarray(x)).all())
        return bool(_all_finite(x))

    def hash_uniform(self, shape, *, dtype, seed):
        """Uniform(-1, 1) values from a counter hash (murmur3's 32-bit finalizer of the
        element index and ``seed``): a few fused integer ops, unlike ``jax.random``,
        whose threefry draws cost more than a Krylov step inside a compiled loop (and
        more to compile). For generic directions only (not statistically random);
        one compiled program per shape eagerly."""
        return _hash_uniform(jnp.asarray(seed).astype(jnp.uint32), tuple(shape),
                             jnp.dtype(dtype))

    def row_coefs(self, W, Q):
        """An ``einsum`` contracting the rows directly: XLA:CPU otherwise materializes
        the transposed basis every step for ``W @ Q^H``."""
        if jnp.iscomplexobj(Q):
            Q = jnp.conj(Q)
        return jnp.einsum("...ts,...js->...tj", W, Q)

    # Eager JAX compiles every new shape: solver buffers keep their width.
    dynamic_shapes = False
    # Eager solves run compiled (a threefry draw compiles for longer than a Krylov step).
    hashed_directions = True
    conv_layout = "HWIO"
    channels_last = True

    def traced_cond(self, pred, true_fn, false_fn):
        return jax.lax.cond(pred, true_fn, false_fn)

    def traced_while_loop(self, cond_fn, body_fn, carry):
        """``lax.while_loop`` (gradient-free solves only: it has no reverse mode)."""
        return jax.lax.while_loop(cond_fn, body_fn, carry)

    def fori_loop(self, lo: int, hi: int, body, carry):
        """``lax.fori_loop``: the body is traced once, so a traced solve compiles the size
        of one step, not of its budget."""
        return jax.lax.fori_loop(lo, hi, body, carry)

    def set_row(self, X, j, x, start=0):
        """A select on the row index: a dynamic-update-slice of the basis that the step's
        projections then read made XLA:CPU copy the whole basis several times a step."""
        if start or x.shape[-1] != X.shape[-1]:
            return super().set_row(X, j, x, start)
        rows = jnp.arange(X.shape[-2])[:, None] == j
        return jnp.where(rows, x[..., None, :].astype(X.dtype), X)

    def tree_leaves(self, x: Any) -> list:
        return jax.tree_util.tree_leaves(x)

    def is_param_collection(self, x: Any) -> bool:
        if self.is_array(x):
            return False
        leaves = jax.tree_util.tree_leaves(x)
        return len(leaves) > 0 and all(self.is_array(v) for v in leaves)

    # -- autodiff ------------------------------------------------------------------
    def _flat_point(self, f, x, *, batched):
        """``(x0, fun)``: an array point as it is, a pytree of parameters raveled into
        one flat vector ``x0`` with ``fun(x0) == f(x)`` (vectors in the tree's order)."""
        if self.is_array(x):
            check_input(self, x, batched=batched)
            return x, f
        if batched:
            raise ValueError(
                "Expected an array x with batched=True. Received a parameter collection "
                f"({type(x).__name__}); batched derivatives are per-sample input derivatives."
            )
        for leaf in jax.tree_util.tree_leaves(x):
            check_input(self, leaf, batched=False, what="each parameter")
        x0, unravel = ravel_pytree(x)
        return x0, lambda theta: f(unravel(theta))

    def owns_model(self, model) -> bool:
        """Flax (NNX, Linen) and Equinox modules (js.lipschitz)."""
        from ._lipschitz_jax import owns_model

        return owns_model(model)

    def lipschitz_graph(self, model, input_shape, *, layout=None):
        """The traced program of a Flax or Equinox model as a graph (js.lipschitz)."""
        from ._lipschitz_jax import jax_graph

        return jax_graph(model, input_shape, layout)

    def linearize(self, f, x, *, batched):
        x, fun = self._flat_point(f, x, batched=batched)
        fun, key, compiled = self._traced(fun, x, batched, "jacobian")
        if compiled is not None:
            return compiled
        y, jvp_fn = jax.linearize(fun, x)
        check_output(self, y, int(x.shape[0]) if batched else None, what="f")
        vjp_fn = jax.linear_transpose(jvp_fn, x)
        bshape = (int(x.shape[0]),) if batched else ()
        n = self.sizes(tuple(x.shape)[len(bshape):])
        m = self.sizes(tuple(y.shape)[len(bshape):])

        def mm(V, grad):
            return _apply_cols(jvp_fn, V, x.shape, bshape, m, grad)

        def rmm(U, grad):
            return _apply_cols(lambda u: vjp_fn(u)[0], U, y.shape, bshape, n, grad)

        return Linearization(y=y, n=n, m=m, batch_shape=bshape, mm=mm, rmm=rmm,
                             key=key)

    def linearize_gradient(self, f, x, *, batched):
        x0, fun = self._flat_point(f, x, batched=batched)
        fun, key, compiled = self._traced(fun, x0, batched, "hessian")
        if compiled is not None:
            return compiled
        y = fun(x0)
        bshape = (int(x0.shape[0]),) if batched else ()
        check_output(self, y, bshape[0] if batched else None, what="f")
        check_scalar_output(tuple(y.shape), bshape)
        grad_fn = jax.grad(lambda t: jnp.sum(fun(t)))
        hvp_fn = _hvp_function(grad_fn, x0)
        n = self.sizes(tuple(x0.shape)[len(bshape):])

        def mm(V, grad):
            return _apply_cols(hvp_fn, V, x0.shape, bshape, n, grad)

        return Linearization(y=y, n=n, m=n, batch_shape=bshape, mm=mm, rmm=mm,
                             key=key)

    def _traced(self, fun, x, batched, kind):
        """``(fun, key, compiled)`` for a concrete point: the linearization by the
        compiled :class:`_Program` of ``f``'s tangent program (:func:`_tangent_program`)
        once its structure has been seen ``COMPILE_AFTER`` times (else None), and
        ``key``, that structure.

        ``f`` runs (is traced) at every call, so the program always is the one ``f``
        computes now; a compiled program is reused only for a tangent program of equal
        structure (:mod:`._jaxpr_structure`), derivative rules included, since they are
        traced into it; the arrays it reads are arguments. ``(fun, None, None)`` where
        ``f`` does not trace to one floating array (the plain path then reports what is
        wrong) or closes over traced values (inside a user's transformation).
        """
        if self.is_traced(x):
            return fun, None, None
        try:  # a fresh function: make_jaxpr caches traces by function
            closed, (shape, _) = jax.make_jaxpr(
                functools.partial(_tangent_program, fun, kind), return_shape=True)(x, x)
            consts = list(closed.consts)
            structure = _jaxpr_structure.structure(closed.jaxpr, (False, True))
        except Exception:  # the plain path raises the user-facing error
            return fun, None, None
        bshape = (int(x.shape[0]),) if batched else ()
        if (any(self.is_traced(c) for c in consts) or not isinstance(
                shape, jax.ShapeDtypeStruct)
                or self.dtype_name(shape.dtype) not in _FLOATING
                or (batched and tuple(shape.shape[:1]) != bshape)
                or (kind == "hessian" and tuple(shape.shape) != bshape and not (
                    not batched and int(np.prod(shape.shape)) == 1))):
            return fun, None, None
        key = (kind, batched, tuple(x.shape), self.dtype_name(x.dtype), structure)
        if _sighting(key) < COMPILE_AFTER:
            return fun, key, None
        program = _compiled.get(key)
        if program is None:
            program = _Program(closed.jaxpr, x, shape, bshape, kind, key)
        _remember(_compiled, program.key, program)
        y, lin_fn = program.lin(consts, x)
        check_output(self, y, bshape[0] if batched else None, what="f")
        return fun, program.key, program.linearization(y, (lin_fn,))

    def missing_derivative(self, err):
        """A custom derivative without the mode a product needs, or a primitive without
        a differentiation rule."""
        text = str(err)
        return isinstance(err, (TypeError, NotImplementedError, ValueError)) and (
            "custom_vjp" in text or "Differentiation rule" in text
            or "can't apply forward-mode" in text)

    def gradient_oracle(self, f, x, *, batched):
        """``jax.grad`` of ``sum f`` at ``x + d``, one compiled program per operator."""
        x0, fun = self._flat_point(f, x, batched=batched)
        y = fun(x0)
        bshape = (int(x0.shape[0]),) if batched else ()
        check_output(self, y, bshape[0] if batched else None, what="f")
        check_scalar_output(tuple(y.shape), bshape)
        n = self.sizes(tuple(x0.shape)[len(bshape):])
        grad_fn = jax.jit(jax.grad(lambda t: jnp.sum(fun(t))))
        sq = jnp.sum(jnp.square(x0.astype(jnp.float32)).reshape(bshape + (-1,)), axis=-1)

        def grad(d):
            return grad_fn(x0 + d.reshape(x0.shape).astype(x0.dtype)).reshape(bshape + (n,))

        return GradientOracle(y=y, n=n, batch_shape=bshape,
                              point_norm=jnp.sqrt(sq).astype(y.dtype), grad=grad)

    def should_compile(self, key: Hashable) -> bool:
        """From the ``COMPILE_AFTER``-th sighting of ``key`` on."""
        return _sighting(key) >= COMPILE_AFTER

    def detached(self, x):
        """``jax.lax.stop_gradient``: concrete arrays under an eager ``jax.grad`` (a
        primitive without tangents runs outside the differentiation), tracers under
        ``jax.jit`` (then None)."""
        x = jax.lax.stop_gradient(x)
        leaves = jax.tree_util.tree_leaves(x)
        return None if any(isinstance(a, jax.core.Tracer) for a in leaves) else x

    def compile(self, fn: Callable, key: Hashable) -> Callable:
        """``jax.jit(fn)``, one per ``key``: later calls with the same key reuse the first
        ``fn``'s compilation."""
        jitted = _compiled.get(key)
        if jitted is None:
            program = jax.jit(fn)

            def jitted(*args: Any) -> Any:
                return program(*_one_placement(args))

        return _remember(_compiled, key, jitted)

    # -- dataset operators (js.hessian(..., data=), js.ggn) ----------------------------
    def batch_hessian_product(self, f, params):
        """One jitted forward-over-reverse HVP per batch shape (see the base class); for
        parameters split over a mesh, the products split like the operator's vectors."""
        layout = _layout(params)

        @jax.jit
        def prod(p, batch, V):
            to_flat, to_tree = _flat_maps(p, layout)
            hvp = _hvp_function(jax.grad(lambda q: jnp.sum(f(q, batch))), p)
            return _cols_vmap(lambda v: to_flat(hvp(to_tree(v))), V)

        return _with_batch_placement(prod, params)

    def batch_ggn_product(self, f, loss, params):
        """One jitted ``J^T H J`` product per batch shape (see the base class), split like
        the Hessian's: a forward pass carrying the tangents ``J V`` and the loss's output
        Hessian on them, then, inside a conditional whose branches are both that pass, the
        forward pass whose residuals the VJP keeps. XLA schedules a conditional as one
        step, after its operand ``H J V`` exists, so the two forward passes never overlap
        (an optimization barrier is lifted before scheduling, and inside a ``lax.scan``
        body the scheduler then interleaves them): a training step's buffers plus
        ``H J V``."""
        layout = _layout(params)

        @jax.jit
        def prod(p, batch, V):
            inputs, targets = batch
            to_flat, to_tree = _flat_maps(p, layout)
            loss_grad = jax.grad(lambda o: jnp.sum(loss(o, targets)))

            def output_hessian(v):
                z, zt = jax.jvp(lambda q: f(q, inputs), (p,), (to_tree(v),))
                return jax.jvp(loss_grad, (z,), (zt,))[1]

            def pullback(HZ, q, x):
                _, vjp_fn = jax.vjp(lambda r: f(r, x), q)
                return _cols_vmap(lambda hz: to_flat(vjp_fn(hz)[0]), HZ)

            # a predicate XLA cannot fold, unbatched under a vmap over columns (a batched
            # one would turn the conditional into a select running both branches)
            always = jax.lax.optimization_barrier(jnp.bool_(True))
            return jax.lax.cond(always, pullback, pullback,
                                _cols_vmap(output_hessian, V), p, inputs)

        return _with_batch_placement(prod, params)

    def scan_batches(self, product, batches, V):
        """Inside a trace, each run of consecutive batches of one shape as one
        ``lax.scan`` over the run's stacked batches, the sum carried in the data's
        order: the compiled program holds one batch's buffers and one copy of the
        product per shape (a loop of traced calls would unroll them, and XLA keeps the
        unrolled batches' buffers alive together); a dataset whose last batch is
        smaller scans all but that one."""
        if not self.is_traced(V):
            return None
        batches = batches()
        flat = [jax.tree_util.tree_flatten(b) for b in batches]
        kinds = [(t, [(jnp.shape(a), jnp.result_type(a)) for a in leaves])
                 for leaves, t in flat]
        runs: list[list[int]] = []
        for i, kind in enumerate(kinds):
            if runs and kinds[runs[-1][0]] == kind:
                runs[-1].append(i)
            else:
                runs.append([i])
        if all(len(run) < 2 for run in runs):
            return None
        total = None
        for run in runs:
            if len(run) == 1:
                part = product(batches[run[0]], V)
                total = part if total is None else total + part
                continue
            tree = flat[run[0]][1]
            stacked = [jnp.stack(col) for col in zip(*(flat[i][0] for i in run))]
            if total is None:
                out = jax.eval_shape(product, batches[run[0]], V)
                total = jnp.zeros(out.shape, out.dtype)

            def body(carry, leaves, tree=tree):
                return carry + product(jax.tree_util.tree_unflatten(tree, leaves), V), None

            total = jax.lax.scan(body, total, stacked)[0]
        return total

    def staged_product(self, product, n, dtype, device=None):
        """``product`` on one column traced to a jaxpr (keyed by its structure,
        :mod:`._jaxpr_structure`), its constants (the parameters, the batches) the
        arrays: a dataset operator's pass over in-memory batches runs inside a compiled
        solve as one program (``lax.scan`` where the batches are alike) instead of a
        solve of op-by-op steps around per-batch products. Columns go through
        ``jax.vmap``. The program is only evaluated, never differentiated (compiled
        pieces are gradient-free), so derivative rules are not part of the key."""
        spec = jax.ShapeDtypeStruct((int(n),), jnp.dtype(dtype))
        try:  # a fresh function: make_jaxpr caches traces by function
            closed = jax.make_jaxpr(lambda v: product(v[:, None])[:, 0])(spec)
            structure = _jaxpr_structure.structure(closed.jaxpr, (False,))
        except Exception:  # the caller's eager products report what is wrong
            return None
        consts = list(closed.consts)
        if any(self.is_traced(c) for c in consts):
            return None  # inside a user's transformation: its trace owns the arrays
        if not isinstance(device, jax.sharding.Sharding) and any(
                len(getattr(d, "device_set", ())) > 1 for e in closed.jaxpr.eqns
                if e.primitive.name == "device_put" for d in e.params["devices"]):
            return None  # batches split over devices, the solve's vectors on one
        jaxpr = closed.jaxpr

        def apply(arrays, V):
            def column(v):
                return jax.core.eval_jaxpr(jaxpr, arrays, v)[0]

            return jax.vmap(column, in_axes=-1, out_axes=-1)(V)

        return ("staged product", int(n), self.dtype_name(dtype), structure), consts, apply

    def distributed_group(self, group, params=None):
        """``group`` (a ``jax.sharding.Mesh``), by default the mesh the parameters are
        split over (None where they are not: all devices, at each batch)."""
        from jax.sharding import Mesh

        if group is not None and not isinstance(group, Mesh):
            raise TypeError(
                "Expected group to be a jax.sharding.Mesh (or None: all devices). "
                f"Received {type(group).__name__}."
            )
        vectors = _vector_sharding(params)
        if vectors is None:
            return group
        if group is not None and group != vectors.mesh:
            raise ValueError(
                "Expected group to be the mesh the parameters are sharded over (or "
                f"None). Received a mesh of axes {dict(group.shape)}, the parameters' "
                f"has axes {dict(vectors.mesh.shape)}."
            )
        return vectors.mesh

    def vector_device(self, params, y):
        """For parameters split over a mesh, the flat vectors' ``NamedSharding``
        (:func:`_vector_sharding`); else ``y``'s device."""
        vectors = _vector_sharding(params, warn=True)
        return vectors if vectors is not None else self.device(y)

    def placement(self, device, ndim, axis):
        """For vectors split by a ``NamedSharding`` (:meth:`vector_device`), the same
        split along ``axis`` of an ``ndim``-dimensional array (``axis=None``:
        replicated over the mesh); else ``device``."""
        from jax.sharding import NamedSharding, PartitionSpec

        if not isinstance(device, NamedSharding):
            return device
        spec = [None] * ndim
        if axis is not None:
            spec[axis] = device.spec[0]
        return NamedSharding(device.mesh, PartitionSpec(*spec))

    def keep_placement(self, x, device):
        """``x`` split by ``device`` where it is a ``NamedSharding``."""
        if not isinstance(device, jax.sharding.NamedSharding):
            return x
        if self.is_traced(x):
            return jax.lax.with_sharding_constraint(x, device)
        return x if x.sharding == device else jax.device_put(x, device)

    def distributed_batch(self, batch, *, group):
        """A global array sharded over the devices along the batch axis (``group``: a
        ``jax.sharding.Mesh`` whose first axis is the data axis; default: all devices),
        built from this process's part of the batch. In one process, a batch whose size
        the device count does not divide is replicated instead."""
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        mesh = group if group is not None else Mesh(np.array(jax.devices()), ("data",))
        axis = mesh.axis_names[0]
        sharded = NamedSharding(mesh, PartitionSpec(axis))
        ways = int(mesh.shape[axis])

        def put(a):
            if not hasattr(a, "shape") or len(a.shape) == 0:
                return a
            if jax.process_count() > 1:
                return jax.make_array_from_process_local_data(sharded, np.asarray(a))
            if int(a.shape[0]) % ways:
                return jax.device_put(a, NamedSharding(mesh, PartitionSpec()))
            return jax.device_put(a, sharded)

        return jax.tree_util.tree_map(put, batch)

    def distributed_count(self, count, *, group):
        if jax.process_count() == 1:
            return int(count)
        from jax.experimental import multihost_utils

        return int(np.sum(multihost_utils.process_allgather(np.asarray(count))))

    def distributed_sum(self, x, *, group):
        """``x`` as XLA reduced it inside each jitted product (the batches were global
        arrays): split like the operator's vectors, or replicated, then its copy on this
        process's first device (the solvers work on one device)."""
        if self.is_traced(x) or not x.sharding.is_fully_replicated:
            return x
        return x.addressable_data(0) if len(x.sharding.device_set) > 1 else x

    # -- convolutions (js.conv) ------------------------------------------------------
    def conv2d(self, x, w, *, stride, pads):
        """Cross-correlation of ``x`` ``(N, C, H, W)`` with ``w`` ``(O, C, h, w)``.

        ``pads = ((top, bottom), (left, right))`` zeros, ``stride = (sh, sw)``.
        """
        return _conv2d(x, w, tuple(stride), tuple(tuple(p) for p in pads))

    def conv2d_adjoint(self, y, w, *, stride, pads, input_hw):
        """The exact adjoint of :meth:`conv2d` (its linear transpose), ``(N, C, H, W)``."""
        return _conv2d_adjoint(y, w, tuple(stride), tuple(tuple(p) for p in pads),
                               tuple(input_hw))


@functools.partial(jax.jit, static_argnums=(1, 2))
def _hash_uniform(seed, shape, dtype):
    """See :meth:`JaxBackend.hash_uniform`; ``seed`` a (possibly traced) uint32."""
    size = int(np.prod(shape))
    h = jnp.arange(size, dtype=jnp.uint32) * jnp.uint32(0x9E3779B1)
    h = h + seed * jnp.uint32(0x632BE5AB)  # (seed * 0x632BE5AB) mod 2^32
    h = h ^ (h >> 16)
    h = h * jnp.uint32(0x85EBCA6B)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(0xC2B2AE35)
    h = h ^ (h >> 16)
    u = (h >> 8).astype(jnp.float32) * (2.0 / 2**24) - 1.0
    return u.reshape(shape).astype(dtype)


def _hvp_function(grad_fn, x0):
    """``v -> H v`` at ``x0``: forward-over-reverse (``jax.linearize`` of the gradient,
    one linearization reused by every product); where the model has a custom
    derivative without forward mode (``jax.custom_vjp``), reverse-over-reverse (the VJP
    of the gradient, the Hessian being symmetric)."""
    try:
        return jax.linearize(grad_fn, x0)[1]
    except TypeError as err:
        if "custom_vjp" not in str(err) and "forward-mode" not in str(err):
            raise
    _, vjp_fn = jax.vjp(grad_fn, x0)
    return jax.tree_util.Partial(_first_cotangent, vjp_fn)


def _first_cotangent(vjp_fn, v):
    return vjp_fn(v)[0]


def _tangent_program(fun, kind, x, v):
    """``(y, J v)`` (``kind="jacobian"``) or ``(y, H v)`` (``"hessian"``) at ``(x, v)``:
    the program the compiled linearizations of :class:`_Program` are built from, derivative
    rules (``jax.custom_jvp``) traced into it."""
    if kind == "hessian":
        def total(t):
            y = fun(t)
            return jnp.sum(y), y

        (_, y), (hv, _) = jax.jvp(jax.grad(total, has_aux=True), (x,), (v,))
        return y, hv
    return jax.jvp(fun, (x,), (v,))


class _Program:
    """The compiled linearization and products of one tangent program (a jaxpr of
    :func:`_tangent_program`, the cache key its structure). The program is built from
    that jaxpr alone and the arrays it reads (``f``'s parameters, a rule's constants)
    are arguments, not constants, so a later call whose tangent program has the same
    structure computes with its own values. The products take the linearization (a
    ``jax.tree_util.Partial`` of its residuals, whose structure this compilation fixes)
    as an argument too, so that a compiled solve can pass it along."""

    def __init__(self, jaxpr, x, out, bshape, kind, key):
        in_shape, out_shape = tuple(x.shape), tuple(out.shape)
        spec = jax.ShapeDtypeStruct(in_shape, x.dtype)
        n = Backend.sizes(in_shape[len(bshape):])
        m = n if kind == "hessian" else Backend.sizes(out_shape[len(bshape):])
        self.key, self.n, self.m, self.bshape = key, n, m, bshape

        def lin(consts, x):
            def tangent(v):
                y, t = jax.core.eval_jaxpr(jaxpr, consts, x, v)
                return t, y

            # linear in v: the value at 0 (unused, compiled away) costs nothing
            _, lin_fn, y = jax.linearize(tangent, jnp.zeros_like(x), has_aux=True)
            return y, lin_fn

        def mm(jvp_fn, V, grad):
            return _apply_cols(jvp_fn, V, in_shape, bshape, m, grad)

        def rmm(jvp_fn, U, grad):
            if kind == "hessian":
                return mm(jvp_fn, U, grad)
            vjp_fn = jax.linear_transpose(jvp_fn, spec)
            return _apply_cols(lambda u: vjp_fn(u)[0], U, out_shape, bshape, n, grad)

        self.lin = jax.jit(lin)
        self.mm = jax.jit(mm, static_argnums=2)
        self.rmm = jax.jit(rmm, static_argnums=2)

    def linearization(self, y, state) -> Linearization:
        """The products at one point: ``state`` is ``(partial,)``, concrete or traced."""
        (fn,) = state
        return Linearization(y=y, n=self.n, m=self.m, batch_shape=self.bshape,
                             mm=lambda V, grad: self.mm(fn, V, grad),
                             rmm=lambda U, grad: self.rmm(fn, U, grad),
                             key=self.key, state=state, rebuild=self.rebuild)

    def rebuild(self, state) -> Linearization:
        return self.linearization(None, state)


@functools.partial(jax.jit, static_argnums=(2, 3))
def _conv2d(x, w, stride, pads):
    return jax.lax.conv_general_dilated(
        x, w, window_strides=stride, padding=list(pads),
        dimension_numbers=("NCHW", "OIHW", "NCHW"), precision=jax.lax.Precision.HIGHEST)


@functools.partial(jax.jit, static_argnums=(2, 3, 4))
def _conv2d_adjoint(y, w, stride, pads, input_hw):
    spec = jax.ShapeDtypeStruct((y.shape[0], w.shape[1]) + input_hw, y.dtype)
    (z,) = jax.linear_transpose(lambda x: _conv2d(x, w, stride, pads), spec)(y)
    return z

BACKEND = JaxBackend()
