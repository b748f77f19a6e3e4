"""TensorFlow adapter.

``f`` runs once under a persistent ``tf.GradientTape``: a VJP is ``tape.gradient`` with
``output_gradients``. A JVP differentiates that VJP with respect to its cotangent on a
second persistent tape (built once, on first use), so both reuse the forward pass.
Hessian-vector products are reverse-over-reverse on a retained gradient; a GGN product
is a forward pass under ``tf.autodiff.ForwardAccumulator`` plus one backward pass. The array
namespace is the shim in :mod:`jacspec.backends._tf_namespace`. ``f`` runs inside
``keras.StatelessScope`` (see :func:`run_without_side_effects`): Keras models keep their
variables (BatchNorm moving statistics) however ``f`` reaches them, and plain
``tf.Variable`` writes are written back (:mod:`._tf_state`).

GPU: ``pip install "tensorflow[and-cuda]"``; products run on the device of ``x``.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from typing import Any

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import record  # whether a tape records (no public API)

from . import _tf_namespace, _tf_state
from ._base import (
    Backend,
    GradientOracle,
    Linearization,
    check_input,
    check_output,
    check_scalar_output,
)

_ZERO = tf.UnconnectedGradients.ZERO


def _solvers_not_converted() -> None:
    """Keep AutoGraph from rewriting jacspec's solvers when a ``tf.function`` reaches
    them (as Keras keeps it from rewriting Keras): they branch and loop inside a trace
    through ``Backend.cond``/``while_loop`` already, and converting them makes the first
    trace several times slower. User functions are still converted: the solvers never
    call them (the forward pass runs when the operator is built). The rule list is not
    public API: where it has moved, nothing changes."""
    try:
        from tensorflow.python.autograph.core import config, config_lib
    except ImportError:  # pragma: no cover - another TensorFlow layout
        return
    rules = tuple(getattr(config, "CONVERSION_RULES", ()))
    if not any(str(r).endswith(" jacspec.solvers") for r in rules):
        config.CONVERSION_RULES = (config_lib.DoNotConvert("jacspec.solvers"),) + rules


_solvers_not_converted()


def _stateless_scope() -> Any:
    """Keras 3's ``StatelessScope`` (captures variable assignments instead of applying
    them), or None where Keras 3 is not in use."""
    keras = sys.modules.get("keras")
    return getattr(keras, "StatelessScope", None) if keras is not None else None


def _created_in_scope() -> bool:
    """Whether variables were created inside the current ``StatelessScope`` (a model's
    first call builds it): they read as placeholders there, so ``f`` must run again."""
    try:
        from keras.src.backend.common import global_state
    except ImportError:  # pragma: no cover - another Keras layout
        return False
    return bool(global_state.get_global_attribute("uninitialized_variables"))


def run_without_side_effects(f: Callable, run: Callable[[], Any]) -> Any:
    """``run()`` (which calls ``f``) without lasting effect on the user's variables.

    With Keras 3, ``run`` executes inside ``keras.StatelessScope``, so BatchNorm moving
    statistics (any Keras variable assignment) never reach the variables, however ``f``
    reaches the model. A first call that builds the model runs twice: the variables it
    creates are initialized when the scope closes, and the second run uses them. Plain
    ``tf.Variable`` writes (``tf.Module`` state, Keras 2 layers) are written back
    afterwards (:func:`._tf_state.writes_undone`).
    """
    scope = _stateless_scope()
    with _tf_state.writes_undone():
        if scope is None:
            return run()
        for _attempt in range(2):
            with scope():
                out = run()
                again = _created_in_scope()
            if not again:
                break
        return out


def _is_keras_variable(x: Any) -> bool:
    """A Keras 3 variable (``layer.kernel``, ``model.trainable_variables``) on TensorFlow."""
    keras = sys.modules.get("keras")
    cls = getattr(keras, "Variable", None) if keras is not None else None
    return cls is not None and isinstance(x, cls) and isinstance(
        getattr(x, "value", None), tf.Variable
    )


def _watchable(x: Any) -> Any:
    """The ``tf.Variable`` behind a Keras variable (what tapes watch), else ``x``.

    A variable mirrored by a ``tf.distribute.Strategy`` is watched through its first
    copy outside a replica (its reads there go to that copy); inside ``strategy.run``
    it stands for the replica's own copy."""
    x = x.value if _is_keras_variable(x) else x
    if (isinstance(x, tf.distribute.DistributedValues)
            and tf.distribute.in_cross_replica_context()):
        return x.values[0]
    return x


def _as_shape(t: tf.Tensor, shape: tuple[int, ...]) -> tf.Tensor:
    """``t`` reshaped to ``shape``; no op where the shapes already agree (every op is
    paid for, eagerly and in a graph)."""
    return t if t.shape.as_list() == list(shape) else tf.reshape(t, shape)


def _detached(t: tf.Tensor) -> tf.Tensor:
    """``tf.stop_gradient(t)``; eagerly with no tape recording, ``t`` itself (the op
    would cost a dispatch per product for nothing)."""
    if tf.executing_eagerly() and not record.could_possibly_record():
        return t
    return tf.stop_gradient(t)


def _cols(V: tf.Tensor, shape) -> list[tf.Tensor]:
    """``batch + (n, k)`` -> k tensors of ``shape``."""
    k = V.shape[-1]
    return [_as_shape(V[..., j], shape) for j in range(k)]


def _stack_cols(cols: list[tf.Tensor], batch_shape, size) -> tf.Tensor:
    return tf.stack([_as_shape(c, tuple(batch_shape) + (size,)) for c in cols], axis=-1)


class _Layout:
    """Flat vectors ``batch_shape + (n,)`` cut into the leaves' shapes and joined back,
    in the leaves' order."""

    def __init__(self, leaves: list, batch_shape: tuple[int, ...]) -> None:
        self.bshape = batch_shape
        self.shapes = [tuple(v.shape) for v in leaves]
        self.sizes = [int(np.prod(s[len(batch_shape):], dtype=np.int64)) for s in self.shapes]
        self.n = sum(self.sizes)

    def split(self, v: tf.Tensor) -> list[tf.Tensor]:
        parts = tf.split(v, self.sizes, axis=-1) if len(self.sizes) > 1 else [v]
        return [_as_shape(p, s) for p, s in zip(parts, self.shapes)]

    def join(self, rs: list[tf.Tensor]) -> tf.Tensor:
        cols = [_as_shape(r, self.bshape + (size,)) for r, size in zip(rs, self.sizes)]
        return cols[0] if len(cols) == 1 else tf.concat(cols, axis=-1)


@functools.lru_cache(maxsize=4096)
def _eager_bounds(lead: tuple[int, ...], j: int, start: int, stop: int
                  ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    rank = len(lead) + 2
    return (tf.constant([0] * len(lead) + [j, start], tf.int64),
            tf.constant(list(lead) + [j + 1, stop], tf.int64),
            tf.constant([1] * rank, tf.int64))


@functools.lru_cache(maxsize=4096)
def _leading_bounds(shape: tuple[int, ...], j: int) -> tuple[tf.Tensor, tf.Tensor]:
    """``(begin, size)`` of ``X[:, :j]`` for ``X`` of ``shape``, as eager tensors."""
    rank = len(shape)
    return (tf.constant([0] * rank, tf.int64),
            tf.constant([shape[0], j] + [-1] * (rank - 2), tf.int64))


def _slice_bounds(lead: tuple[int, ...], j: int, start: int, stop: int, eager: bool
                  ) -> tuple[Any, Any, Any]:
    """``(begin, end, strides)`` of row ``j``, columns ``[start, stop)`` of a stack of
    matrices: eagerly, tensors made once per row (converting Python lists costs more
    than the update itself); in a graph, lists (constants of that graph)."""
    if eager:
        return _eager_bounds(lead, j, start, stop)
    return [0] * len(lead) + [j, start], list(lead) + [j + 1, stop], [1] * (len(lead) + 2)


def _with_leaves(x: Any, shifted: list) -> Any:
    """``x``'s structure holding ``shifted``; variables stay the objects passed (Keras
    variables included), having been shifted in place."""
    items = list(x.values()) if isinstance(x, dict) else (
        list(x) if isinstance(x, (list, tuple)) else [x])
    out = [orig if isinstance(new, tf.Variable) else new for orig, new in zip(items, shifted)]
    if isinstance(x, dict):
        return dict(zip(x.keys(), out))
    if isinstance(x, (list, tuple)):
        return type(x)(out)
    return out[0]


class TensorflowBackend(Backend):
    name = "tensorflow"
    module_name = "tensorflow"

    @property
    def xp(self) -> Any:
        return _tf_namespace

    def is_array(self, x: Any) -> bool:
        return isinstance(x, (tf.Tensor, tf.Variable)) or _is_keras_variable(x)

    def version(self) -> str:
        return tf.__version__

    def devices(self) -> list[str]:
        return [d.name for d in tf.config.list_logical_devices()]

    def dtype_name(self, dtype: Any) -> str:
        return tf.as_dtype(dtype).name

    def dtype_from_name(self, name: str) -> Any:
        return tf.as_dtype(name)

    def device(self, x: Any) -> Any:
        try:
            return x.device
        except Exception:
            return None

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x.numpy() if hasattr(x, "numpy") else x)

    def from_numpy(self, a, *, dtype=None, device=None):
        with tf.device(device) if device else contextlib.nullcontext():
            return tf.constant(np.asarray(a), dtype=None if dtype is None else tf.as_dtype(dtype))

    def normal(self, shape, *, dtype, device, seed):
        dtype = tf.as_dtype(dtype)
        if seed is None:
            seed = int(np.random.SeedSequence().generate_state(1)[0])
        if isinstance(seed, (tf.Tensor, tf.Variable)):  # a (possibly traced) integer
            seeds = tf.stack([tf.math.floormod(tf.cast(seed, tf.int64), 2**31),
                              tf.constant(0x5EED, dtype=tf.int64)])
        else:
            seeds = tf.constant([int(seed) % (2**31), 0x5EED], dtype=tf.int64)
        with tf.device(device) if device else contextlib.nullcontext():
            if dtype.is_complex:
                real_dt = dtype.real_dtype
                re = tf.random.stateless_normal(shape, seed=seeds, dtype=real_dt)
                im = tf.random.stateless_normal(shape, seed=seeds + [0, 1], dtype=real_dt)
                return tf.complex(re, im) / tf.cast(np.sqrt(2.0), dtype)
            return tf.random.stateless_normal(tuple(shape), seed=seeds, dtype=dtype)

    def stop_gradient(self, x):
        return tf.stop_gradient(x)

    def is_traced(self, x) -> bool:
        return not tf.executing_eagerly()

    def all_finite(self, x) -> bool:
        if x.dtype.is_complex:  # tf.math.is_finite takes real dtypes only
            return self.all_finite(tf.math.real(x)) and self.all_finite(tf.math.imag(x))
        return bool(tf.reduce_all(tf.math.is_finite(x)))

    conv_layout = "HWIO"
    channels_last = True

    def traced_cond(self, pred, true_fn, false_fn):
        return tf.cond(pred, true_fn, false_fn)

    def traced_while_loop(self, cond_fn, body_fn, carry):
        return tf.while_loop(cond_fn, lambda c: (body_fn(c),), (carry,))[0]

    def fori_loop(self, lo, hi, body, carry):
        """Eagerly a Python loop; inside a graph ``tf.while_loop``, so that a traced
        solve's graph holds one step, not its whole budget of them (a power iteration's
        200 steps unrolled took minutes to build)."""
        if tf.executing_eagerly() or hi - lo <= 1:
            return super().fori_loop(lo, hi, body, carry)
        # tf.while_loop carries tensors only: the carry's empty fields (None) stay out
        held = [x is not None for x in tf.nest.flatten(carry)]

        def pack(values):
            it = iter(values)
            return tf.nest.pack_sequence_as(carry, [next(it) if h else None for h in held])

        def step(i, values):
            out = tf.nest.flatten(body(i, pack(values)))
            return i + 1, [x for x in out if x is not None]

        values = [x for x in tf.nest.flatten(carry) if x is not None]
        return pack(tf.while_loop(lambda i, v: i < hi, step, (tf.constant(lo), values))[1])

    def row_coefs(self, W, Q):
        """``W Q^H`` through the matmul's adjoint flag: no transposed copy of ``Q``."""
        return tf.linalg.matmul(W, Q, adjoint_b=True)

    def set_row(self, X, j, x, start=0):
        """``X[..., j, start:start + t] = x`` as one strided-slice update (a new tensor,
        as every TensorFlow write); ``j`` may be traced. The default's select takes
        several ops, each a pass over ``X``."""
        lead = [int(d) for d in X.shape[:-2]]
        stop = start + int(x.shape[-1])
        if tf.is_tensor(j):
            j = tf.reshape(tf.cast(j, tf.int64), (1,))
            begin = tf.concat([tf.constant([0] * len(lead), tf.int64), j,
                               tf.constant([start], tf.int64)], axis=0)
            end = tf.concat([tf.constant(lead, tf.int64), j + 1,
                             tf.constant([stop], tf.int64)], axis=0)
            strides = tf.ones((len(lead) + 2,), tf.int64)
        else:
            begin, end, strides = _slice_bounds(tuple(lead), int(j), start, stop,
                                                tf.executing_eagerly())
        # the row axis shrinks: x is written as it is, without an op adding that axis
        return tf.raw_ops.TensorStridedSliceUpdate(input=X, begin=begin, end=end,
                                                   strides=strides, value=x,
                                                   shrink_axis_mask=1 << len(lead))

    def leading_rows(self, X, j):
        """``X[:, :j]`` as one slice whose bounds are made once per shape eagerly (an
        index expression converts its bounds at every call)."""
        if not tf.executing_eagerly():
            return X[:, :j]
        begin, size = _leading_bounds(tuple(int(d) for d in X.shape), int(j))
        return tf.slice(X, begin, size)

    def read(self, x):
        return tf.convert_to_tensor(_watchable(x))

    def owns_model(self, model) -> bool:
        mods = {c.__module__.split(".")[0] for c in type(model).__mro__}
        return bool(mods & {"keras", "tensorflow", "tf_keras"})

    # -- autodiff ------------------------------------------------------------------
    def _point(self, x: Any, *, batched: bool) -> list:
        """The tensors tapes watch for an array or a parameter collection (the
        ``tf.Variable`` behind each Keras variable), in the collection's order."""
        if self.is_array(x):
            check_input(self, x, batched=batched)
            return [_watchable(x)]
        if batched:
            raise ValueError(
                "Expected an array x with batched=True. Received a parameter collection "
                f"({type(x).__name__}); batched derivatives are per-sample input derivatives."
            )
        leaves = [_watchable(v) for v in (x.values() if isinstance(x, dict) else x)]
        for v in leaves:
            check_input(self, v, batched=False, what="each parameter")
        return leaves

    def linearize(self, f, x, *, batched):
        leaves = self._point(x, batched=batched)

        def record() -> tuple[tf.GradientTape, Any]:
            with tf.GradientTape(persistent=True) as tape:
                tape.watch(leaves)
                y = f(x)
            return tape, y

        tape, y = run_without_side_effects(f, record)
        check_output(self, y, int(x.shape[0]) if batched else None, what="f")
        bshape = (int(x.shape[0]),) if batched else ()
        lay = _Layout(leaves, bshape)
        out_shape = tuple(y.shape)
        n, m = lay.n, self.sizes(out_shape[len(bshape):])
        dual: dict[str, Any] = {}

        def vjp(u):
            """``J^T u`` for one vector ``bshape + (m,)``."""
            return lay.join(tape.gradient(y, leaves, output_gradients=_as_shape(u, out_shape),
                                          unconnected_gradients=_ZERO))

        def jvp(v):
            """``J v`` for one vector ``bshape + (n,)``, shaped like ``y``."""
            if not dual:
                u0 = tf.zeros_like(y)
                with tf.GradientTape(persistent=True) as outer:
                    outer.watch(u0)
                    g = tape.gradient(y, leaves, output_gradients=u0,
                                      unconnected_gradients=_ZERO)
                dual.update(u0=u0, g=g, tape=outer)
            return dual["tape"].gradient(dual["g"], dual["u0"], output_gradients=lay.split(v),
                                         unconnected_gradients=_ZERO)

        def finish(cols, size, grad):
            out = _stack_cols(cols, bshape, size)
            return out if grad else _detached(out)

        def rmm(U, grad):
            return finish([vjp(u) for u in _cols(U, out_shape)], n, grad)

        def mm(V, grad):
            return finish([jvp(v) for v in _cols(V, bshape + (n,))], m, grad)

        def mv(v):
            return _detached(_as_shape(jvp(v), bshape + (m,)))

        def rmv(u):
            return _detached(vjp(u))

        return Linearization(y=y, n=n, m=m, batch_shape=bshape, mm=mm, rmm=rmm, mv=mv,
                             rmv=rmv)

    def linearize_gradient(self, f, x, *, batched):
        leaves = self._point(x, batched=batched)

        def record() -> tuple[tf.GradientTape, tf.GradientTape, Any, Any]:
            outer = tf.GradientTape(persistent=True)
            with outer:
                outer.watch(leaves)
                with tf.GradientTape() as inner:
                    inner.watch(leaves)
                    y = f(x)
                    y_sum = tf.reduce_sum(y)
            return outer, inner, y, y_sum

        outer, inner, y, y_sum = run_without_side_effects(f, record)
        with outer:  # resumes recording: the gradient below is differentiated again
            bshape = (int(x.shape[0]),) if batched else ()
            check_output(self, y, bshape[0] if batched else None, what="f")
            check_scalar_output(tuple(y.shape), bshape)
            grads = inner.gradient(y_sum, leaves, unconnected_gradients=_ZERO)
        lay = _Layout(leaves, bshape)

        def mm(V, grad):
            cols = [
                lay.join(outer.gradient(grads, leaves, output_gradients=lay.split(V[..., j]),
                                        unconnected_gradients=_ZERO))
                for j in range(V.shape[-1])
            ]
            out = tf.stack(cols, axis=-1)
            return out if grad else tf.stop_gradient(out)

        return Linearization(y=y, n=lay.n, m=lay.n, batch_shape=bshape, mm=mm, rmm=mm)

    # -- dataset operators (js.ggn) ----------------------------------------------------
    def batch_ggn_product(self, f, loss, params):
        """``J^T H J v`` of one batch for a single vector (the solvers' steps): one
        forward pass under a ``tf.autodiff.ForwardAccumulator`` (the tangent ``J v``)
        recorded by one tape, the loss's output Hessian on ``J v`` (autodiff of the
        loss alone), and one backward pass: no graph of a graph. Blocks of vectors
        (and operations without forward mode) take the base class's route, which
        shares one forward pass among the columns (eager TensorFlow pays per
        operation)."""
        leaves = self._point(params, batched=False)
        lay = _Layout(leaves, ())
        base = super().batch_ggn_product(f, loss, params)
        forward_mode = [True]  # emptied where an operation has no forward mode

        def column(inputs, targets, v):
            def record():
                with tf.GradientTape() as tape:
                    tape.watch(leaves)
                    with tf.autodiff.ForwardAccumulator(
                            leaves, [tf.cast(p, w.dtype) for p, w in
                                     zip(lay.split(v), leaves)]) as acc:
                        z = f(params, inputs)
                return tape, z, acc.jvp(z, unconnected_gradients=_ZERO)

            tape, z, jz = run_without_side_effects(f, record)
            z0 = tf.stop_gradient(z)
            with tf.GradientTape() as outer:
                outer.watch(z0)
                with tf.GradientTape() as inner:
                    inner.watch(z0)
                    value = loss(z0, targets)
                g = inner.gradient(value, z0, unconnected_gradients=_ZERO)
            hz = outer.gradient(g, z0, output_gradients=jz, unconnected_gradients=_ZERO)
            return lay.join(tape.gradient(z, leaves, output_gradients=hz,
                                          unconnected_gradients=_ZERO))

        def prod(batch, V):
            if V.shape[-1] > 1 or not forward_mode:
                return base(batch, V)
            inputs, targets = batch
            try:
                return column(inputs, targets, V[:, 0])[:, None]
            except Exception as err:
                if not self.missing_derivative(err):
                    raise
                forward_mode.clear()
                return base(batch, V)

        return prod

    # -- routes of Hessian products (hvp=) --------------------------------------------
    def missing_derivative(self, err):
        text = str(err)
        return isinstance(err, (LookupError, NotImplementedError, ValueError)) and (
            "No gradient defined" in text or "gradient registry has no entry" in text)

    def gradient_oracle(self, f, x, *, batched):
        """Gradients at ``x + d``: tensors are shifted copies; variables (which ``f``
        reads itself) are shifted in place for the one gradient and given their exact
        old values back."""
        leaves = self._point(x, batched=batched)
        y = run_without_side_effects(f, lambda: f(x))
        bshape = (int(x.shape[0]),) if batched else ()
        check_output(self, y, bshape[0] if batched else None, what="f")
        check_scalar_output(tuple(y.shape), bshape)
        lay = _Layout(leaves, bshape)
        sq = tf.add_n([tf.reduce_sum(tf.reshape(tf.square(tf.cast(v, tf.float32)),
                                                bshape + (-1,)), axis=-1) for v in leaves])
        point_norm = tf.cast(tf.sqrt(sq), y.dtype)

        def grad(d):
            saved, shifted = [], []
            for leaf, part in zip(leaves, lay.split(d)):
                if isinstance(leaf, tf.Variable):
                    saved.append((leaf, tf.identity(leaf)))
                    leaf.assign_add(tf.cast(part, leaf.dtype))
                    shifted.append(leaf)
                else:
                    shifted.append(tf.convert_to_tensor(leaf) + tf.cast(part, leaf.dtype))
            arg = _with_leaves(x, shifted)

            def record():
                with tf.GradientTape() as tape:
                    tape.watch(shifted)
                    total = tf.reduce_sum(f(arg))
                return tape.gradient(total, shifted, unconnected_gradients=_ZERO)

            try:
                gs = run_without_side_effects(f, record)
            finally:
                for var, value in saved:
                    var.assign(value)
            return lay.join(gs)

        return GradientOracle(y=y, n=lay.n, batch_shape=bshape, point_norm=point_norm,
                              grad=grad)

    # -- products summed over replicas (distributed=True) -----------------------------
    def distributed_group(self, group, params=None):
        """The ``tf.distribute.Strategy`` of a distributed operator: ``group``, else the
        one whose scope is entered when the operator is built."""
        if group is not None:
            if not isinstance(group, tf.distribute.Strategy):
                raise TypeError("Expected group to be a tf.distribute.Strategy (or None: the "
                                f"strategy in scope). Received {type(group).__name__}.")
            return group
        if not tf.distribute.has_strategy():
            raise ValueError(
                "Expected a tf.distribute.Strategy for distributed=True: build the operator "
                "inside `with strategy.scope():` or pass group=strategy. Received none in "
                "scope."
            )
        return tf.distribute.get_strategy()

    def distributed_data(self, data, *, group):
        """A ``tf.data.Dataset`` distributed by the strategy (its batches split over the
        replicas); data the strategy already distributed, as it is."""
        if isinstance(data, tf.data.Dataset):
            return group.experimental_distribute_dataset(data)
        return data

    def distributed_parts(self, batch, *, group):
        """The per-replica values of a distributed batch, as batches of the user's
        structure."""
        strategy = group
        parts = strategy.experimental_local_results(batch)
        if not isinstance(parts, tuple) or not parts:
            raise ValueError(
                "Expected data distributed by the strategy (strategy."
                "experimental_distribute_dataset, or a tf.data.Dataset) for "
                f"distributed=True. Received batches of type {type(batch).__name__}."
            )
        return list(parts)

    def distributed_product(self, product, batch, V, weight, *, group):
        """Each replica's weighted product of its piece of the batch (``strategy.run``,
        the replica's copy of the variables), summed by ``strategy.reduce``."""
        strategy = group

        def on_replica(piece):
            w = weight(piece)
            return product(piece, V) * w if w else tf.zeros_like(V)

        per_replica = strategy.run(on_replica, args=(batch,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

    def distributed_count(self, count, *, group):
        """The samples of all workers: each replica contributes its worker's count
        divided by the worker's replicas (equal on every worker of a strategy)."""
        strategy = group
        local = len(strategy.extended.worker_devices)
        share = strategy.experimental_distribute_values_from_function(
            lambda ctx: tf.constant(float(count) / local, tf.float64))
        return int(round(float(strategy.reduce(tf.distribute.ReduceOp.SUM, share, axis=None))))

    def distributed_sum(self, x, *, group):
        """``x`` as it is: :meth:`distributed_product` already reduced every batch over
        all replicas (and workers)."""
        return x

    # -- convolutions (js.conv) ------------------------------------------------------
    def conv2d(self, x, w, *, stride, pads):
        """Cross-correlation of ``x`` ``(N, C, H, W)`` with ``w`` ``(O, C, h, w)``.

        ``pads = ((top, bottom), (left, right))`` zeros, ``stride = (sh, sw)``. Runs
        NHWC (the layout TensorFlow's CPU kernels support).
        """
        (pt, pb), (pl, pr) = pads
        out = tf.nn.conv2d(
            tf.transpose(x, (0, 2, 3, 1)), tf.transpose(w, (2, 3, 1, 0)),
            strides=[1, stride[0], stride[1], 1],
            padding=[[0, 0], [pt, pb], [pl, pr], [0, 0]],
        )
        return tf.transpose(out, (0, 3, 1, 2))

    def conv2d_adjoint(self, y, w, *, stride, pads, input_hw):
        """The exact adjoint of :meth:`conv2d` (``conv2d_transpose``), ``(N, C, H, W)``."""
        (pt, pb), (pl, pr) = pads
        n, c = int(y.shape[0]), int(w.shape[1])
        out = tf.nn.conv2d_transpose(
            tf.transpose(y, (0, 2, 3, 1)), tf.transpose(w, (2, 3, 1, 0)),
            output_shape=[n, int(input_hw[0]), int(input_hw[1]), c],
            strides=[1, stride[0], stride[1], 1],
            padding=[[0, 0], [pt, pb], [pl, pr], [0, 0]],
        )
        return tf.transpose(out, (0, 3, 1, 2))

    def conv_layers(self, model, input_shape):
        """Conv/dense layers of a Keras model, in forward order (js.conv)."""
        from ._conv_layers import keras_layers

        return keras_layers(model, input_shape)

    def lipschitz_graph(self, model, input_shape, *, layout=None):
        """The layer graph of a Keras model (js.lipschitz)."""
        from ._lipschitz_keras import keras_graph

        return keras_graph(model, input_shape, layout)


BACKEND = TensorflowBackend()
