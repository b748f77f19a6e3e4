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
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from ._base import Backend, Linearization, check_input, check_output


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


def _with_batch_placement(prod, theta0):
    """``(batch, V) -> prod(theta0, batch, V)``, with ``theta0`` and ``V`` replicated over
    the mesh of a batch sharded by :meth:`JaxBackend.distributed_batch` (a jitted call
    takes arrays on one set of devices)."""
    placed: dict = {}

    def call(batch, V):
        leaf = next((a for a in jax.tree_util.tree_leaves(batch) if isinstance(a, jax.Array)),
                    None)
        sharding = getattr(leaf, "sharding", None)
        mesh = getattr(sharding, "mesh", None)
        if mesh is None or mesh.size == 1:
            return prod(theta0, batch, V)
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
        if mesh not in placed:
            placed[mesh] = jax.device_put(theta0, replicated)
        return prod(placed[mesh], batch, jax.device_put(V, replicated))

    return call


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
        out = jax.random.normal(key, tuple(shape), dtype=dtype)
        return jax.device_put(out, device) if device is not None else out

    def stop_gradient(self, x):
        return jax.lax.stop_gradient(x)

    def is_traced(self, x) -> bool:
        return isinstance(x, jax.core.Tracer)

    def all_finite(self, x) -> bool:
        return bool(jnp.all(jnp.isfinite(x)))

    def hash_uniform(self, shape, *, dtype, seed):
        """Uniform(-1, 1) values from a counter hash (murmur3's 32-bit finalizer of the
        element index and ``seed``): a few fused integer ops, unlike ``jax.random``,
        whose threefry draws cost more than a Krylov step inside a compiled loop. For
        breakdown restart directions only (generic, not statistically random)."""
        size = int(np.prod(shape))
        h = jnp.arange(size, dtype=jnp.uint32) * jnp.uint32(0x9E3779B1)
        # (seed * 0x632BE5AB) mod 2^32; seed may be traced (a compiled loop's step)
        h = h + jnp.asarray(seed).astype(jnp.uint32) * jnp.uint32(0x632BE5AB)
        h = h ^ (h >> 16)
        h = h * jnp.uint32(0x85EBCA6B)
        h = h ^ (h >> 13)
        h = h * jnp.uint32(0xC2B2AE35)
        h = h ^ (h >> 16)
        u = (h >> 8).astype(jnp.float32) * (2.0 / 2**24) - 1.0
        return u.reshape(shape).astype(dtype)

    def row_coefs(self, W, Q, QH):
        """An ``einsum`` contracting the rows directly: XLA:CPU otherwise materializes
        the transposed basis every step for ``W @ Q^H``."""
        if jnp.iscomplexobj(Q):
            Q = jnp.conj(Q)
        return jnp.einsum("...ts,...js->...tj", W, Q)

    # Eager JAX compiles every new shape: solver buffers keep their width.
    dynamic_shapes = False
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

    def linearize(self, f, x, *, batched):
        x, f = self._flat_point(f, x, batched=batched)
        y, jvp_fn = jax.linearize(f, x)
        check_output(self, y, int(x.shape[0]) if batched else None, what="f")
        vjp_fn = jax.linear_transpose(jvp_fn, x)
        bshape = (int(x.shape[0]),) if batched else ()
        n = self.sizes(tuple(x.shape)[len(bshape):])
        m = self.sizes(tuple(y.shape)[len(bshape):])

        def mm(V, grad):
            return _apply_cols(jvp_fn, V, x.shape, bshape, m, grad)

        def rmm(U, grad):
            return _apply_cols(lambda u: vjp_fn(u)[0], U, y.shape, bshape, n, grad)

        return Linearization(y=y, n=n, m=m, batch_shape=bshape, mm=mm, rmm=rmm)

    def linearize_gradient(self, f, x, *, batched):
        x0, fun = self._flat_point(f, x, batched=batched)
        y = fun(x0)
        bshape = (int(x0.shape[0]),) if batched else ()
        check_output(self, y, bshape[0] if batched else None, what="f")
        if tuple(y.shape) != bshape and not (not batched and y.size == 1):
            raise ValueError(
                "Expected f to return a scalar"
                + (" per sample, shape (B,)" if batched else "")
                + f" for a Hessian. Received output shape {tuple(y.shape)}."
            )
        grad_fn = jax.grad(lambda t: jnp.sum(fun(t)))
        _, hvp_fn = jax.linearize(grad_fn, x0)
        n = self.sizes(tuple(x0.shape)[len(bshape):])

        def mm(V, grad):
            return _apply_cols(hvp_fn, V, x0.shape, bshape, n, grad)

        return Linearization(y=y, n=n, m=n, batch_shape=bshape, mm=mm, rmm=mm)

    # -- dataset operators (js.hessian(..., data=), js.ggn) ----------------------------
    def batch_hessian_product(self, f, params):
        """One jitted forward-over-reverse HVP per batch shape (see the base class)."""
        theta0, unravel = ravel_pytree(params)

        @jax.jit
        def prod(theta, batch, V):
            g = jax.grad(lambda t: jnp.sum(f(unravel(t), batch)))
            return _cols_vmap(lambda v: jax.jvp(g, (theta,), (v,))[1], V)

        return _with_batch_placement(prod, theta0)

    def batch_ggn_product(self, f, loss, params):
        """One jitted ``J^T H J`` product per batch shape (see the base class)."""
        theta0, unravel = ravel_pytree(params)

        @jax.jit
        def prod(theta, batch, V):
            inputs, targets = batch
            z, jvp_fn = jax.linearize(lambda t: f(unravel(t), inputs), theta)
            vjp_fn = jax.linear_transpose(jvp_fn, theta)
            loss_grad = jax.grad(lambda o: jnp.sum(loss(o, targets)))

            def one(v):
                _, hz = jax.jvp(loss_grad, (z,), (jvp_fn(v),))
                return vjp_fn(hz)[0]

            return _cols_vmap(one, V)

        return _with_batch_placement(prod, theta0)

    def distributed_batch(self, batch, *, group):
        """A global array sharded over the devices along the batch axis (``group``: a
        ``jax.sharding.Mesh`` whose first axis is the data axis; default: all devices),
        built from this process's part of the batch. In one process, a batch whose size
        the device count does not divide is replicated instead."""
        from jax.sharding import Mesh, NamedSharding, PartitionSpec

        mesh = group if group is not None else Mesh(np.array(jax.devices()), ("data",))
        if not isinstance(mesh, Mesh):
            raise TypeError(
                "Expected group to be a jax.sharding.Mesh (or None: all devices). "
                f"Received {type(group).__name__}."
            )
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
        """``x``'s copy on this process's first device: the batches were global arrays,
        so XLA already reduced the per-device partial products inside each jitted
        product, and the result is replicated (the solvers work on one device)."""
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
