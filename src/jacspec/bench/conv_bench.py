"""Benchmark row "conv": Fantastic Four bound vs exact circular vs exact zero-padded norm.

Trains a small CNN on scikit-learn's digits (8x8 images) for a couple of epochs in the
chosen framework, then, for each conv layer, times and compares:

- ``bound``: :func:`jacspec.conv.fantastic_four` (four small matrix norms);
- ``exact_circular``: the exact norm with circular padding on the layer's input size
  (:func:`jacspec.conv.circular_singular_values` by FFT for stride 1, Lanczos otherwise);
- ``exact_zero``: the exact norm of the layer as it is (zero padding, its stride) by
  :func:`jacspec.conv.spectral_norm` (Lanczos on conv / transposed-conv products);
- tightness ratios ``bound / exact_zero``, ``bound / exact_circular``,
  ``exact_circular / exact_zero``.

Frameworks are imported inside :func:`run` only. Times are the best of ``repeats`` calls
after one warm-up call (JAX compiles on the first call of each shape).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = ["run"]

# (c_out, c_in, k, stride) of the CNN's conv layers; "same" zero padding everywhere.
ARCH = [(16, 1, 3, 1), (32, 16, 3, 2), (32, 32, 3, 1)]


def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)  # (n, 8, 8)
    return X, d.target.astype(np.int64)


def _sizes() -> list[int]:
    out, h = [], 8
    for _, _, _, s in ARCH:
        out.append(h)
        h = -(-h // s)
    return out


def _train_torch(X, y, epochs, seed):
    import torch
    from torch import nn

    torch.manual_seed(seed)
    layers: list[Any] = []
    for co, ci, k, s in ARCH:
        pad = k // 2
        layers += [nn.Conv2d(ci, co, k, stride=s, padding=pad), nn.ReLU()]
    h = _sizes()[-1] // ARCH[-1][3] if ARCH[-1][3] > 1 else _sizes()[-1]
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(ARCH[-1][0] * h * h, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    Xt, yt = torch.from_numpy(X[:, None]), torch.from_numpy(y)
    for _ in range(epochs):
        perm = torch.randperm(len(Xt))
        for i in range(0, len(Xt), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(net(Xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float((net(Xt).argmax(1) == yt).float().mean())
    convs = [m.weight.detach() for m in net if isinstance(m, nn.Conv2d)]
    return convs, acc


def _train_tensorflow(X, y, epochs, seed):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    layers: list[Any] = [tf.keras.Input((8, 8, 1))]
    for co, _, k, s in ARCH:
        layers.append(tf.keras.layers.Conv2D(co, k, strides=s, padding="same",
                                             activation="relu"))
    layers += [tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)]
    model = tf.keras.Sequential(layers)
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3),
                  loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(X[..., None], y, batch_size=64, epochs=epochs, verbose=0)
    acc = float(model.evaluate(X[..., None], y, verbose=0)[1])
    convs = [tf.convert_to_tensor(lay.kernel) for lay in model.layers
             if isinstance(lay, tf.keras.layers.Conv2D)]
    return convs, acc


def _train_jax(X, y, epochs, seed):
    import jax
    import jax.numpy as jnp

    key = jax.random.key(seed)
    params = []
    h = 8
    for co, ci, k, s in ARCH:
        key, sub = jax.random.split(key)
        params.append((jax.random.normal(sub, (k, k, ci, co)) * np.sqrt(2 / (k * k * ci)),
                       jnp.zeros(co)))
        h = -(-h // s)
    key, sub = jax.random.split(key)
    feat = ARCH[-1][0] * h * h
    params.append((jax.random.normal(sub, (feat, 10)) / np.sqrt(feat), jnp.zeros(10)))

    def forward(params, x):
        for (w, b), (_, _, _, s) in zip(params[:-1], ARCH):
            x = jax.lax.conv_general_dilated(x, w, (s, s), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = jax.nn.relu(x + b)
        w, b = params[-1]
        return x.reshape(x.shape[0], -1) @ w + b

    def loss(params, x, t):
        logits = forward(params, x)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), t[:, None], 1))

    @jax.jit
    def step(params, m, v, i, x, t):
        g = jax.grad(loss)(params, x, t)
        m = jax.tree_util.tree_map(lambda a, b: 0.9 * a + 0.1 * b, m, g)
        v = jax.tree_util.tree_map(lambda a, b: 0.999 * a + 0.001 * b * b, v, g)
        upd = jax.tree_util.tree_map(
            lambda a, b: 3e-3 * (a / (1 - 0.9 ** i)) / (jnp.sqrt(b / (1 - 0.999 ** i)) + 1e-8),
            m, v)
        return jax.tree_util.tree_map(lambda p, u: p - u, params, upd), m, v

    m = jax.tree_util.tree_map(jnp.zeros_like, params)
    v = jax.tree_util.tree_map(jnp.zeros_like, params)
    Xj, yj = jnp.asarray(X[..., None]), jnp.asarray(y)
    rng = np.random.default_rng(seed)
    i = 0
    for _ in range(epochs):
        perm = rng.permutation(len(X))
        for s0 in range(0, len(X) - 63, 64):
            idx = perm[s0:s0 + 64]
            i += 1
            params, m, v = step(params, m, v, i, Xj[idx], yj[idx])
    acc = float(jnp.mean(jnp.argmax(forward(params, Xj), 1) == yj))
    return [p[0] for p in params[:-1]], acc


def _timed(fn, repeats: int) -> tuple[float, float]:
    """(value, best seconds over ``repeats`` calls after one warm-up call)."""
    from jacspec.backends import backend_of

    out = fn()
    b = backend_of(out)
    value = float(b.to_numpy(out))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        float(b.to_numpy(out))  # waits for the device
        best = min(best, time.perf_counter() - t0)
    return value, best


def run(backend: str = "torch", quick: bool = False) -> list[dict]:
    """Train the CNN in ``backend`` and measure each conv layer (see module docstring).

    Returns one dict per conv layer: ``layer, backend, kernel, stride, input_size,
    bound, exact_circular, exact_zero, bound_over_zero, bound_over_circular,
    circular_over_zero, t_bound_s, t_circular_s, t_zero_s, train_accuracy, epochs``.
    """
    import jacspec as js

    trainers = {"torch": _train_torch, "jax": _train_jax, "tensorflow": _train_tensorflow}
    if backend not in trainers:
        raise ValueError(
            f"Expected backend among {sorted(trainers)} (NumPy cannot train a CNN). "
            f"Received {backend!r}."
        )
    X, y = _digits()
    epochs = 2 if quick else 5
    repeats = 1 if quick else 3
    weights, acc = trainers[backend](X, y, epochs, 0)
    rows = []
    for j, ((co, ci, k, s), w, h) in enumerate(zip(ARCH, weights, _sizes())):
        hw = (h, h)
        bound, t_b = _timed(lambda w=w: js.conv.fantastic_four(w).bound, repeats)
        circ, t_c = _timed(
            lambda w=w, hw=hw, s=s: js.conv.spectral_norm(
                w, hw, stride=s, padding="circular", method="lanczos"), repeats)
        zero, t_z = _timed(
            lambda w=w, hw=hw, s=s: js.conv.spectral_norm(
                w, hw, stride=s, padding="same", method="lanczos"), repeats)
        rows.append(dict(
            layer=f"conv{j}", backend=backend, kernel=f"{co}x{ci}x{k}x{k}", stride=s,
            input_size=f"{h}x{h}", bound=bound, exact_circular=circ, exact_zero=zero,
            bound_over_zero=bound / zero, bound_over_circular=bound / circ,
            circular_over_zero=circ / zero, t_bound_s=t_b, t_circular_s=t_c, t_zero_s=t_z,
            train_accuracy=acc, epochs=epochs,
        ))
    return rows


if __name__ == "__main__":  # pragma: no cover
    import sys

    for row in run(sys.argv[1] if len(sys.argv) > 1 else "torch", quick="--quick" in sys.argv):
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
