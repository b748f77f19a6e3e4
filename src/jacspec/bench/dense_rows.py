"""Rows "dense per-sample" of ``jacspec bench``: ``js.spectral_norm`` of a batch of small
per-sample Jacobians (``method="auto"`` picks the dense path: the Jacobians from one
block of products, the top singular value of each) against the best hand-written dense
route of the framework: ``vmap(jacrev)`` and ``matrix_norm(ord=2)``."""

from __future__ import annotations

import numpy as np

from .models import digits
from .registry import Row, register
from .timing import interleaved_times, ms, repetitions

B = 128


def _row(framework: str, t: dict[str, float], err: float, cfg: str) -> Row:
    ratio = t["jacspec"] / t["hand"]
    return dict(name=f"dense per-sample: auto / vmap(jacrev) ({framework})",
                jacspec=ms(t["jacspec"]), reference=ms(t["hand"]), ratio=ratio,
                target="<= 1.1", met=ratio <= 1.1, configuration=cfg,
                details=dict(times_s=t, max_abs_difference=err))


@register("dense", "torch", target="<= 1.1")
def dense_torch(quick: bool) -> list[Row]:
    import torch
    from torch.func import jacrev, vmap

    import jacspec as js

    from .models_torch import trained_mlp

    model, X, _, _ = trained_mlp(torch.float32, epochs=3)
    xb = X[:B]

    def hand():
        J = vmap(jacrev(lambda z: model(z[None])[0]))(xb)
        return torch.linalg.matrix_norm(J, ord=2)

    def ours():
        return js.spectral_norm(js.jacobian(model, xb, batched=True))

    t = interleaved_times(dict(jacspec=ours, hand=hand), 4 * repetitions(quick))
    err = float((ours() - hand()).abs().max())
    return [_row("torch", t, err, f"B={B} per-sample 10x64 Jacobians of a trained MLP "
                 "64-128-10, float32, torch eager; reference: torch.func.vmap(jacrev) "
                 "+ torch.linalg.matrix_norm(ord=2)")]


@register("dense", "jax", target="<= 1.1")
def dense_jax(quick: bool) -> list[Row]:
    import jax
    import jax.numpy as jnp

    import jacspec as js

    from .models_jax import mlp

    X, _ = digits()
    xb = jnp.asarray(X[:B])
    f = mlp([64, 128, 10])

    hand = jax.jit(lambda x: jnp.linalg.matrix_norm(
        jax.vmap(jax.jacrev(lambda z: f(z[None])[0]))(x), ord=2))
    ours = jax.jit(lambda x: js.spectral_norm(js.jacobian(f, x, batched=True)))
    t = interleaved_times(dict(jacspec=lambda: jax.block_until_ready(ours(xb)),
                               hand=lambda: jax.block_until_ready(hand(xb))),
                          4 * repetitions(quick))
    err = float(np.max(np.abs(np.asarray(ours(xb)) - np.asarray(hand(xb)))))
    return [_row("JAX jit", t, err, f"B={B} per-sample 10x64 Jacobians of a random MLP "
                 "64-128-10, float32, both under jax.jit; reference: "
                 "jax.vmap(jax.jacrev) + jnp.linalg.matrix_norm(ord=2)")]
