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

:func:`resnet_rows` times :func:`jacspec.conv.fantastic_four` against the exact norm on
the conv layer shapes of ResNet-18 (torch), side by side in one process.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

__all__ = ["run", "resnet_rows", "RESNET18"]

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


#: (c_out, c_in, k, stride, input size) of every distinct conv layer shape of ResNet-18
#: on 224x224 images after its 7x7 stem (feature maps 56, 28, 14, 7); padding k // 2.
RESNET18 = [(64, 64, 3, 1, 56), (128, 64, 3, 2, 56), (128, 128, 3, 1, 28),
            (128, 64, 1, 2, 56), (256, 128, 3, 2, 28), (256, 256, 3, 1, 14),
            (256, 128, 1, 2, 28), (512, 256, 3, 2, 14), (512, 512, 3, 1, 7),
            (512, 256, 1, 2, 14)]


def _power_fantastic_four(torch, w, iters: int = 50):
    """The four reshape norms by ``iters`` power iterations each, from fixed random
    vectors, as the bound's authors compute them (estimates from below, not certified)."""
    co, ci, h, wd = w.shape
    mats = [w.permute(0, 2, 1, 3).reshape(co * h, ci * wd),
            w.permute(0, 3, 1, 2).reshape(co * wd, ci * h),
            w.reshape(co, ci * h * wd), w.permute(0, 2, 3, 1).reshape(co * h * wd, ci)]
    gen = torch.Generator().manual_seed(0)
    norms = []
    for M in mats:
        v = torch.randn(M.shape[1], generator=gen, dtype=M.dtype)
        for _ in range(iters):
            u = M @ v
            u = u / u.norm()
            v = M.T @ u
            s = v.norm()
            v = v / s
        norms.append(s)
    return (h * wd) ** 0.5 * torch.stack(norms).min()


def resnet_rows(quick: bool = False) -> list[dict]:
    """Row "fantastic four bound / exact norm (torch)": per ResNet-18 layer shape (He
    initialization, float32), the median times of the bound and of the exact norm
    (``js.conv.spectral_norm``, zero padding ``k // 2``, the layer's stride), run in
    turn; the ratio is the worst over the layers (``quick``: the layers of 256 and 512
    output channels, where the bound costs most against the exact norm, one timed
    round). A second row (report) compares the bound with the authors' way of computing
    it (power iteration, not certified)."""
    import torch

    import jacspec as js

    from .rows import interleaved_times

    reps = 1 if quick else 3
    shapes = [r for r in RESNET18 if r[0] >= 256] if quick else RESNET18
    layers = []
    for co, ci, k, s, n in shapes:
        torch.manual_seed(0)
        w = torch.randn(co, ci, k, k) * (2.0 / (ci * k * k)) ** 0.5
        fns = {
            "bound": lambda w=w: js.conv.fantastic_four(w, tol=1e-3).bound,
            "exact": lambda w=w, n=n, s=s, k=k: js.conv.spectral_norm(
                w, (n, n), stride=s, padding=k // 2),
            "power": lambda w=w: _power_fantastic_four(torch, w),
        }
        t = interleaved_times(fns, reps, sync=float)
        layers.append(dict(
            layer=f"{co}x{ci}x{k}x{k} s{s} at {n}x{n}",
            bound=float(fns["bound"]()), exact=float(fns["exact"]()),
            power=float(fns["power"]()), times_ms={a: round(v * 1e3, 2) for a, v in t.items()},
            bound_over_exact_time=t["bound"] / t["exact"],
            bound_over_power_time=t["bound"] / t["power"]))
    worst = max(layers, key=lambda d: d["bound_over_exact_time"])
    slow = max(layers, key=lambda d: d["bound_over_power_time"])
    cfg = ("ResNet-18 conv shapes (224x224 images: 64..512 channels, 3x3 and 1x1, maps "
           "56/28/14/7, stem left out" + ("; quick: c_out >= 256" if quick else "")
           + "), He-initialized float32 kernels; exact = "
           "js.conv.spectral_norm (Lanczos, zero padding k//2, the layer's stride); ")
    return [
        dict(name="fantastic four bound / exact norm (torch)",
             jacspec=f"{worst['times_ms']['bound']:.1f} ms",
             reference=f"{worst['times_ms']['exact']:.1f} ms",
             ratio=worst["bound_over_exact_time"], target="<= 0.10",
             met=worst["bound_over_exact_time"] <= 0.10,
             configuration=cfg + f"worst layer {worst['layer']}",
             details=dict(layers=layers)),
        dict(name="fantastic four bound / power-iteration version (torch)",
             jacspec=f"{slow['times_ms']['bound']:.1f} ms",
             reference=f"{slow['times_ms']['power']:.1f} ms",
             ratio=slow["bound_over_power_time"], target="report", met=None,
             configuration=cfg + "reference: 50 power iterations per reshape, the "
             f"authors' way (a lower estimate, not a bound); worst layer {slow['layer']}",
             details=dict(layers=layers)),
    ]


if __name__ == "__main__":  # pragma: no cover
    import sys

    for row in run(sys.argv[1] if len(sys.argv) > 1 else "torch", quick="--quick" in sys.argv):
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
