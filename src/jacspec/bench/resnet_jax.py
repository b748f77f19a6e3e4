"""ResNet-18 for 32x32 images in JAX, as plain functions of a parameter pytree: the
network of :mod:`jacspec.bench.resnet_torch` (3x3 stem, no max-pool, stages of ``width``
to ``8 * width`` channels), NHWC with HWIO kernels, batch norm in inference mode at its
initial statistics (mean 0, variance 1), torch's default initialization.
Framework-specific bench code: imports JAX at module level.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> from jacspec.bench.resnet_jax import init, apply
>>> params = init(0, width=8)
>>> apply(params, jnp.zeros((2, 32, 32, 3))).shape
(2, 10)
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["init", "apply", "STAGES"]

BN_EPS = 1e-5
#: (channels as a multiple of ``width``, stride) of the four stages, two blocks each.
STAGES = ((1, 1), (2, 2), (4, 2), (8, 2))

Params = dict[str, Any]


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> jax.Array:
    # torch's default for conv and linear layers: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    # Drawn by NumPy: eager jax.random would compile one program per shape.
    bound = 1.0 / math.sqrt(fan_in)
    return jnp.asarray(rng.uniform(-bound, bound, shape).astype(np.float32))


def _conv_init(rng: np.random.Generator, k: int, c_in: int, c_out: int) -> jax.Array:
    return _uniform(rng, (k, k, c_in, c_out), k * k * c_in)


def _bn_init(c: int) -> dict[str, jax.Array]:
    return {"scale": jnp.ones(c, jnp.float32), "bias": jnp.zeros(c, jnp.float32)}


def init(seed: int = 0, width: int = 64, num_classes: int = 10) -> Params:
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


def apply(params: Params, x: jax.Array) -> jax.Array:
    """Logits ``(B, num_classes)`` of images ``x`` of shape ``(B, 32, 32, 3)``."""
    h = jax.nn.relu(_bn(_conv(x, params["conv1"], 1), params["bn1"]))
    for blk, stride in zip(params["blocks"], _strides()):
        h = _block(blk, h, stride)
    return jnp.mean(h, axis=(1, 2)) @ params["fc"]["w"] + params["fc"]["b"]
