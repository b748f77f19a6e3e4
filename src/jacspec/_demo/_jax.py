"""The ``jacspec demo`` MLP and training loop in JAX: a jitted step with a tiny
hand-written Adam on pytrees (no optax dependency)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from .. import penalties as js_penalties
from . import penalty


def mlp(params, x):
    for i, (W, b) in enumerate(params):
        x = x @ W.T + b
        if i < len(params) - 1:
            x = jnp.tanh(x)
    return x


def cross_entropy(logits, y):
    """Per-sample cross-entropy of integer labels ``y``."""
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.take_along_axis(logp, y[:, None], axis=-1)[:, 0]


class Trainer:
    def __init__(self, weights, dtype: str = "float32") -> None:
        self.dtype = jnp.dtype(dtype)
        self.params = [(self.asarray(W), self.asarray(b)) for W, b in weights]

    def asarray(self, a):
        return jnp.asarray(np.asarray(a), dtype=self.dtype)

    @property
    def model(self):
        params = self.params
        return lambda x: mlp(params, x)

    def fit(self, X, y, *, penalty_name=None, lam=0.0, steps=300, lr=1e-2, callback=None,
            b1=0.9, b2=0.999, eps=1e-8):
        X = self.asarray(X)
        y = jnp.asarray(np.asarray(y), dtype=jnp.int32)

        def loss_fn(params, step):
            loss = jnp.mean(cross_entropy(mlp(params, X), y))
            if penalty_name is not None:
                f = lambda z: mlp(params, z)  # noqa: E731
                per_sample = lambda z: cross_entropy(mlp(params, z), y)  # noqa: E731
                loss = loss + lam * penalty(js_penalties, penalty_name, f, X, per_sample,
                                            seed=step)
            return loss

        @jax.jit
        def update(params, m, v, step):
            loss, g = jax.value_and_grad(loss_fn)(params, step)
            t = jnp.asarray(step + 1, dtype=self.dtype)  # keep the parameters' dtype
            m = jax.tree_util.tree_map(lambda a, b: b1 * a + (1 - b1) * b, m, g)
            v = jax.tree_util.tree_map(lambda a, b: b2 * a + (1 - b2) * b * b, v, g)
            c1, c2 = 1 - b1**t, 1 - b2**t
            params = jax.tree_util.tree_map(
                lambda p, a, b: p - lr * (a / c1) / (jnp.sqrt(b / c2) + eps), params, m, v)
            return params, m, v, loss

        params = self.params
        m = jax.tree_util.tree_map(jnp.zeros_like, params)
        v = jax.tree_util.tree_map(jnp.zeros_like, params)
        for step in range(steps):
            params, m, v, loss = update(params, m, v, jnp.asarray(step, dtype=jnp.int32))
            if callback is not None:
                callback(step, loss)
        self.params = params
        return self
