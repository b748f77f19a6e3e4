"""The models of ``jacspec bench`` in JAX, as plain functions: tanh MLPs, the digits
CNNs, and the ResNet-18 of :mod:`jacspec.bench.models_torch` for 32x32 images (3x3 stem,
no max-pool, stages of ``width`` to ``8 * width`` channels), NHWC with HWIO kernels,
batch norm in inference mode at its initial statistics (mean 0, variance 1), torch's
default initialization. Framework-specific bench code: imports JAX at module level.

Examples
--------
>>> import jax.numpy as jnp
>>> from jacspec.bench.models_jax import resnet18_init, resnet18_apply
>>> params = resnet18_init(0, width=8)
>>> resnet18_apply(params, jnp.zeros((2, 32, 32, 3))).shape
(2, 10)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .models import CNN_ARCH, digit_images, digits

__all__ = ["describe", "mlp", "penalty_models", "train_digits_cnn", "resnet18_init",
           "resnet18_apply", "STAGES", "gpt_init", "gpt_apply"]

Params = dict[str, Any]


def describe() -> dict[str, Any]:
    """The framework's part of the bench's configuration."""
    return {"jax": jax.__version__, "device": str(jax.devices()[0])}


def mlp(sizes: Sequence[int], seed: int = 0) -> Callable[[jax.Array], jax.Array]:
    """A random tanh MLP ``x -> logits`` (weights ``N(0, 1/fan_in)``, zero biases)."""
    key = jax.random.key(seed)
    params = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        key, k1 = jax.random.split(key)
        params.append((jax.random.normal(k1, (a, b)) / np.sqrt(a), jnp.zeros(b)))

    def f(x: jax.Array) -> jax.Array:
        for i, (w, b) in enumerate(params):
            x = x @ w + b
            if i < len(params) - 1:
                x = jnp.tanh(x)
        return x

    return f


def penalty_models(batch: int) -> dict[str, tuple[Callable, Any, jax.Array]]:
    """The penalty rows' models as ``(net(params, x), params, x)`` on ``batch`` digits:
    the design-size MLP and a small CNN (two 3x3 convolutions, 10 outputs), random."""
    X, _ = digits()
    keys = iter(jax.random.split(jax.random.key(0), 8))

    def dense(a: int, b: int) -> tuple[jax.Array, jax.Array]:
        return (jax.random.normal(next(keys), (a, b), jnp.float32) / math.sqrt(a),
                jnp.zeros(b, jnp.float32))

    def conv(o: int, i: int) -> tuple[jax.Array, jax.Array]:
        return (jax.random.normal(next(keys), (o, i, 3, 3), jnp.float32) / math.sqrt(9 * i),
                jnp.zeros((1, o, 1, 1), jnp.float32))

    def net(p: list, x: jax.Array) -> jax.Array:
        for i, (w, b) in enumerate(p):
            x = x @ w + b
            x = jnp.tanh(x) if i < len(p) - 1 else x
        return x

    def cnn(p: list, x: jax.Array) -> jax.Array:
        (w1, b1), (w2, b2), (w3, b3) = p
        dn = ("NCHW", "OIHW", "NCHW")
        x = jnp.tanh(jax.lax.conv_general_dilated(x, w1, (1, 1), "SAME",
                                                  dimension_numbers=dn) + b1)
        x = jnp.tanh(jax.lax.conv_general_dilated(x, w2, (2, 2), ((1, 1), (1, 1)),
                                                  dimension_numbers=dn) + b2)
        return x.reshape(x.shape[0], -1) @ w3 + b3

    x = jnp.asarray(X[:batch])
    return {"MLP": (net, [dense(64, 256), dense(256, 256), dense(256, 10)], x),
            "CNN": (cnn, [conv(16, 1), conv(32, 16), dense(32 * 16, 10)],
                    x.reshape(batch, 1, 8, 8))}


def train_digits_cnn(epochs: int, seed: int = 0) -> tuple[list[jax.Array], float]:
    """The CNN of :data:`~jacspec.bench.models.CNN_ARCH` trained on digits (batches of
    64, shuffled; a jitted Adam step): its conv kernels (HWIO) and the training
    accuracy."""
    X, y = digit_images()
    key = jax.random.key(seed)
    params = []
    h = 8
    for co, ci, k, s in CNN_ARCH:
        key, sub = jax.random.split(key)
        params.append((jax.random.normal(sub, (k, k, ci, co)) * np.sqrt(2 / (k * k * ci)),
                       jnp.zeros(co)))
        h = -(-h // s)
    key, sub = jax.random.split(key)
    feat = CNN_ARCH[-1][0] * h * h
    params.append((jax.random.normal(sub, (feat, 10)) / np.sqrt(feat), jnp.zeros(10)))

    def forward(params: list, x: jax.Array) -> jax.Array:
        for (w, b), (_, _, _, s) in zip(params[:-1], CNN_ARCH):
            x = jax.lax.conv_general_dilated(x, w, (s, s), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            x = jax.nn.relu(x + b)
        w, b = params[-1]
        return x.reshape(x.shape[0], -1) @ w + b

    def loss(params: list, x: jax.Array, t: jax.Array) -> jax.Array:
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


# ---------------------------------------------------------------------------- ResNet-18

BN_EPS = 1e-5
#: (channels as a multiple of ``width``, stride) of the four stages, two blocks each.
STAGES = ((1, 1), (2, 2), (4, 2), (8, 2))


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    # torch's default for conv and linear layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    # Drawn by NumPy: eager jax.random would compile one program per shape.
    bound = 1.0 / math.sqrt(fan_in)
    return jnp.asarray(rng.uniform(-bound, bound, shape).astype(np.float32))


def _conv_init(rng: np.random.Generator, k: int, c_in: int, c_out: int) -> jax.Array:
    return _uniform(rng, (k, k, c_in, c_out), k * k * c_in)


def _bn_init(c: int) -> dict[str, jax.Array]:
    return {"scale": jnp.ones(c, jnp.float32), "bias": jnp.zeros(c, jnp.float32)}


def resnet18_init(seed: int = 0, width: int = 64, num_classes: int = 10) -> Params:
    """Random parameters: ``{"conv1", "bn1", "blocks": [...], "fc": {"w", "b"}}``;
    a block holds ``conv1``, ``bn1``, ``conv2``, ``bn2`` and, where the shape changes,
    ``short`` and ``short_bn``."""
    rng = np.random.default_rng(seed)
    params: Params = {"conv1": _conv_init(rng, 3, 3, width), "bn1": _bn_init(width)}
    blocks, c_in = [], width
    for mult, stride in STAGES:
        c_out = mult * width
        for s in (stride, 1):
            blk = {"conv1": _conv_init(rng, 3, c_in, c_out), "bn1": _bn_init(c_out),
                   "conv2": _conv_init(rng, 3, c_out, c_out), "bn2": _bn_init(c_out)}
            if s != 1 or c_in != c_out:
                blk["short"] = _conv_init(rng, 1, c_in, c_out)
                blk["short_bn"] = _bn_init(c_out)
            blocks.append(blk)
            c_in = c_out
    params["blocks"] = blocks
    params["fc"] = {"w": _uniform(rng, (c_in, num_classes), c_in),
                    "b": _uniform(rng, (num_classes,), c_in)}
    return params


def _conv(x: jax.Array, w: jax.Array, stride: int) -> jax.Array:
    pad = (w.shape[0] - 1) // 2
    return jax.lax.conv_general_dilated(x, w, (stride, stride), ((pad, pad), (pad, pad)),
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _bn(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
    return x * (p["scale"] / math.sqrt(1.0 + BN_EPS)) + p["bias"]


def _block(p: Params, x: jax.Array, stride: int) -> jax.Array:
    out = jax.nn.relu(_bn(_conv(x, p["conv1"], stride), p["bn1"]))
    out = _bn(_conv(out, p["conv2"], 1), p["bn2"])
    short = _bn(_conv(x, p["short"], stride), p["short_bn"]) if "short" in p else x
    return jax.nn.relu(out + short)


def _strides() -> list[int]:
    return [s for _, stride in STAGES for s in (stride, 1)]


def resnet18_apply(params: Params, x: jax.Array) -> jax.Array:
    """Logits ``(B, num_classes)`` of images ``x`` of shape ``(B, 32, 32, 3)``."""
    h = jax.nn.relu(_bn(_conv(x, params["conv1"], 1), params["bn1"]))
    for blk, stride in zip(params["blocks"], _strides()):
        h = _block(blk, h, stride)
    return jnp.mean(h, axis=(1, 2)) @ params["fc"]["w"] + params["fc"]["b"]


def _dense_init(key: jax.Array, a: int, b: int) -> dict[str, jax.Array]:
    return {"w": jax.random.normal(key, (a, b), jnp.float32) / np.sqrt(a),
            "b": jnp.zeros(b, jnp.float32)}


def _norm_init(d: int) -> dict[str, jax.Array]:
    return {"scale": jnp.ones(d, jnp.float32), "bias": jnp.zeros(d, jnp.float32)}


def gpt_init(vocab: int, d: int, layers: int, heads: int, context: int, seed: int = 0
             ) -> Params:
    """Parameters of the GPT-style decoder of :class:`jacspec.bench.models_torch.GPT`
    (float32); ``heads`` is kept in them as a static shape: the query-key-value kernel
    is ``(d, 3, heads, d // heads)``."""
    keys = iter(jax.random.split(jax.random.key(seed), 4 + 4 * layers))
    blocks = []
    for _ in range(layers):
        qkv = _dense_init(next(keys), d, 3 * d)
        blocks.append({"ln1": _norm_init(d), "ln2": _norm_init(d),
                       "qkv": {"w": qkv["w"].reshape(d, 3, heads, d // heads),
                               "b": qkv["b"].reshape(3, heads, d // heads)},
                       "proj": _dense_init(next(keys), d, d),
                       "fc": _dense_init(next(keys), d, 4 * d),
                       "out": _dense_init(next(keys), 4 * d, d)})
    return {"wte": jax.random.normal(next(keys), (vocab, d), jnp.float32),
            "wpe": jax.random.normal(next(keys), (context, d), jnp.float32),
            "blocks": blocks, "ln": _norm_init(d), "head": _dense_init(next(keys), d, vocab)}


def _layer_norm(x: jax.Array, p: dict[str, jax.Array]) -> jax.Array:
    mu = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.var(x, axis=-1, keepdims=True)
    return (x - mu) / jnp.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def gpt_apply(params: Params, tokens: jax.Array) -> jax.Array:
    """``tokens (B, T) -> logits (B * T, vocab)`` of the decoder of :func:`gpt_init`,
    attention by ``jax.nn.dot_product_attention`` (causal)."""
    B, T = tokens.shape
    h = params["wte"][tokens] + params["wpe"][:T]
    for p in params["blocks"]:
        qkv = jnp.einsum("btd,dshk->sbthk", _layer_norm(h, p["ln1"]), p["qkv"]["w"])
        q, k, v = qkv + p["qkv"]["b"][:, None, None]
        a = jax.nn.dot_product_attention(q, k, v, is_causal=True).reshape(B, T, -1)
        h = h + a @ p["proj"]["w"] + p["proj"]["b"]
        m = jax.nn.gelu(_layer_norm(h, p["ln2"]) @ p["fc"]["w"] + p["fc"]["b"])
        h = h + m @ p["out"]["w"] + p["out"]["b"]
    z = _layer_norm(h, params["ln"]) @ params["head"]["w"] + params["head"]["b"]
    return z.reshape(B * T, -1)
