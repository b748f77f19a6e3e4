"""JAX side of the experiments, with the interface of ``_torch_kit``: models from NumPy
specs as pure functions of a parameter pytree, a jitted Adam step with a named penalty,
accuracy, and the FGSM / L2 PGD attacks."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from _common import IMAGE_SHAPE, CNNSpec, MLPSpec, batches

import jacspec as js

DTYPE = jnp.float32


def asarray(a: np.ndarray) -> jax.Array:
    return jnp.asarray(np.asarray(a), dtype=DTYPE)


def to_numpy(a: jax.Array) -> np.ndarray:
    return np.asarray(a)


no_grad = contextlib.nullcontext  # JAX records no gradients outside jax.grad


def _mlp(params: Any, x: jax.Array, activation: str, residual: bool) -> jax.Array:
    act = jax.nn.relu if activation == "relu" else jnp.tanh
    h = x
    for i, (W, b) in enumerate(params):
        h = h @ W.T + b
        if i < len(params) - 1:
            h = act(h)
    return x + h if residual else h


def _cnn(params: Any, x: jax.Array, strides: tuple[int, ...]) -> jax.Array:
    convs, (W, b) = params
    h = jnp.reshape(x, (x.shape[0],) + IMAGE_SHAPE[1:] + (1,))  # NHWC
    for (w, c), s in zip(convs, strides):
        h = jax.lax.conv_general_dilated(h, w, (s, s), ((1, 1), (1, 1)),
                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        h = jax.nn.relu(h + c)
    # Flatten in torch's (C, H, W) order so that the dense weight is shared with torch.
    h = jnp.reshape(jnp.transpose(h, (0, 3, 1, 2)), (h.shape[0], -1))
    return h @ W.T + b


@dataclass
class Model:
    """A pure ``apply(params, x)`` and its current parameters."""

    apply: Callable[[Any, jax.Array], jax.Array]
    params: Any


@functools.cache
def _apply(kind: str, option: Any) -> Callable[[Any, jax.Array], jax.Array]:
    """One function object per architecture, so that jitted steps are reused."""
    if kind == "mlp":
        return lambda p, x: _mlp(p, x, *option)
    return lambda p, x: _cnn(p, x, option)


def build(spec: MLPSpec | CNNSpec) -> Model:
    if isinstance(spec, MLPSpec):
        params = [(asarray(W), asarray(b)) for W, b in spec.layers]
        return Model(_apply("mlp", (spec.activation, spec.residual)), params)
    strides = tuple(s for _, _, s in spec.convs)
    convs = [(asarray(np.transpose(w, (2, 3, 1, 0))), asarray(b)) for w, b, _ in spec.convs]
    params = (convs, (asarray(spec.dense[0]), asarray(spec.dense[1])))
    return Model(_apply("cnn", strides), params)


@functools.cache
def _jitted(apply: Callable) -> Callable:
    return jax.jit(apply)


def fn(model: Model) -> Callable:
    """The callable jacspec differentiates: ``x -> apply(params, x)``, jitted (one XLA
    computation per shape, also under jacspec's JVPs and VJPs, instead of op by op)."""
    return functools.partial(_jitted(model.apply), model.params)


def layer_norms(params: Any) -> list[jax.Array]:
    """Per-layer norms: the exact spectral norm of each dense weight (2-D leaves) and
    the Fantastic Four bound of each conv kernel (4-D leaves, HWIO)."""
    out = []
    for leaf in jax.tree_util.tree_leaves(params):
        if leaf.ndim == 2:
            out.append(jnp.linalg.norm(leaf, ord=2))
        elif leaf.ndim == 4:
            out.append(js.penalties.conv_bound(leaf))
    return out


@jax.jit
def _norm_product(params: Any) -> jax.Array:
    return jnp.prod(jnp.stack(layer_norms(params)))


def layer_norm_product(model: Model) -> float:
    """The product of :func:`layer_norms`: an upper bound on every ``||J_f(x)||_2``."""
    return float(_norm_product(model.params))


def _cross_entropy(logits: jax.Array, y: jax.Array) -> jax.Array:
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]


def _loss(kind: str) -> Callable:
    if kind == "ce":
        return lambda out, y: jnp.mean(_cross_entropy(out, y))
    return lambda out, target: jnp.mean(jnp.sum((out - target) ** 2, axis=1))


#: Penalties by name: ``(apply, params, x, y, step) -> scalar`` (traceable).
PENALTIES: dict[str, Callable[..., jax.Array]] = {
    "spectral": lambda a, p, x, y, k: js.penalties.spectral(lambda z: a(p, z), x),
    "bound": lambda a, p, x, y, k: _norm_product(p) ** 2,
    "layer_sum": lambda a, p, x, y, k: jnp.sum(jnp.stack(layer_norms(p))),
    "frobenius": lambda a, p, x, y, k: js.penalties.frobenius(lambda z: a(p, z), x, seed=k),
    "gradient_norm": lambda a, p, x, y, k: js.penalties.gradient_norm(
        lambda z: _cross_entropy(a(p, z), y), x),
    "transpose": lambda a, p, x, y, k: js.penalties.spectral(
        lambda z: a(p, z), x, target="transpose"),
    "rowsum_diagonal": lambda a, p, x, y, k: js.penalties.spectral(
        lambda z: a(p, z), x, target="rowsum_diagonal"),
}
penalty_names = tuple(PENALTIES)


def _adam_step(lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Callable:
    def update(params, m, v, g, t):
        m = jax.tree_util.tree_map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
        v = jax.tree_util.tree_map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
        c1, c2 = 1 - b1**t, 1 - b2**t
        params = jax.tree_util.tree_map(
            lambda p, a, b: p - lr * (a / c1) / (jnp.sqrt(b / c2) + eps), params, m, v)
        return params, m, v

    return update


@functools.cache
def _step(apply: Callable, loss: str, penalty: str | None, lam: float, lr: float) -> Callable:
    """The jitted Adam step of one configuration (cached: seeds share the compilation)."""
    data_loss = _loss(loss)
    pen = PENALTIES[penalty] if penalty and lam else None
    adam = _adam_step(lr)

    def objective(params, xb, yb, k):
        value = data_loss(apply(params, xb), yb)
        if pen is not None:
            value = value + lam * pen(apply, params, xb, yb, k)
        return value

    @jax.jit
    def step(params, m, v, xb, yb, k):
        g = jax.grad(objective)(params, xb, yb, k)
        return adam(params, m, v, g, (k + 1).astype(DTYPE))

    return step


def train(model: Model, X: np.ndarray, y: np.ndarray, *, loss: str = "ce",
          penalty: str | None = None, lam: float = 0.0, epochs: int = 30,
          batch_size: int | None = None, lr: float = 1e-3, seed: int = 0,
          until_loss: float | None = None) -> dict[str, float]:
    """Adam (hand-written, on pytrees) on ``loss + lam * penalty``, one jitted step;
    with ``until_loss``, stop at the first epoch whose full training loss (without
    penalty) is at most that."""
    Xj = asarray(X)
    yj = jnp.asarray(y, dtype=jnp.int32) if loss == "ce" else asarray(y)
    step = _step(model.apply, loss, penalty, float(lam), float(lr))
    params = model.params
    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    per_epoch = max(1, len(X) // batch_size) if batch_size else 1
    steps = 0
    for idx in batches(len(X), batch_size, epochs, seed):
        params, m, v = step(params, m, v, Xj[idx], yj[idx], jnp.asarray(steps, jnp.int32))
        steps += 1
        if until_loss is not None and steps % per_epoch == 0:
            model.params = params
            if full_loss(model, X, y, loss) <= until_loss:
                break
    model.params = params
    return {"loss": full_loss(model, X, y, loss), "steps": steps}


@functools.cache
def _full_loss(apply: Callable, loss: str) -> Callable:
    data_loss = _loss(loss)
    return jax.jit(lambda params, x, y: data_loss(apply(params, x), y))


def full_loss(model: Model, X: np.ndarray, y: np.ndarray, loss: str = "ce") -> float:
    target = jnp.asarray(y, dtype=jnp.int32) if loss == "ce" else asarray(y)
    return float(_full_loss(model.apply, loss)(model.params, asarray(X), target))


@functools.cache
def _spectral_penalty(apply: Callable) -> Callable:
    return jax.jit(lambda p, x: js.penalties.spectral(lambda z: apply(p, z), x, squared=False))


def spectral_penalty(model: Model, X: np.ndarray) -> float:
    """``js.penalties.spectral(f, X, squared=False)``: the mean ``sigma_max`` the
    training penalty sees, to compare with the exact norms."""
    return float(_spectral_penalty(model.apply)(model.params, asarray(X)))


def predict(model: Model, X: np.ndarray) -> np.ndarray:
    return np.asarray(fn(model)(asarray(X)))


def accuracy(model: Model, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predict(model, X).argmax(1) == y))


@functools.cache
def _loss_grad(apply: Callable) -> Callable:
    """Jitted input gradient of the summed cross-entropy (one compilation per model)."""

    def total(params, x, y):
        return jnp.sum(_cross_entropy(apply(params, x), y))

    return jax.jit(jax.grad(total, argnums=1))


def _input_grad(model: Model) -> Callable:
    grad = _loss_grad(model.apply)
    return lambda x, y: grad(model.params, x, y)


def fgsm(model: Model, X: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    """Fast gradient sign attack (L-infinity ``eps``), clipped to [0, 1]."""
    Xj, yj = asarray(X), jnp.asarray(y, dtype=jnp.int32)
    return np.asarray(jnp.clip(Xj + eps * jnp.sign(_input_grad(model)(Xj, yj)), 0, 1))


def pgd_l2(model: Model, X: np.ndarray, y: np.ndarray, eps: float,
           steps: int = 10) -> np.ndarray:
    """Projected gradient ascent in the L2 ball of radius ``eps`` (step
    ``2.5 eps / steps``), kept in [0, 1]."""
    Xj, yj = asarray(X), jnp.asarray(y, dtype=jnp.int32)
    grad = _input_grad(model)
    delta = jnp.zeros_like(Xj)
    alpha = 2.5 * eps / steps

    def unit(a):
        return a / jnp.maximum(jnp.linalg.norm(a, axis=1, keepdims=True), 1e-12)

    for _ in range(steps):
        delta = delta + alpha * unit(grad(Xj + delta, yj))
        nrm = jnp.maximum(jnp.linalg.norm(delta, axis=1, keepdims=True), 1e-12)
        delta = delta * jnp.minimum(1.0, eps / nrm)
        delta = jnp.clip(Xj + delta, 0, 1) - Xj
    return np.asarray(Xj + delta)


def num_params(model: Model) -> int:
    return sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(model.params))


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """No-op: XLA's thread pool is fixed at start-up (see ``_torch_kit.threads``)."""
    yield
