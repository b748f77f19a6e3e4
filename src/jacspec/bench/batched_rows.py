"""Rows "batched/loop": per-sample spectral norms of B=128 samples in one batched call
against a Python loop of unbatched calls (torch, TensorFlow; eager), target >= 10x.
``--quick`` times the loop over the first 32 samples, once, and scales it to 128 (the
loop's time is its samples' times added up)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .models import digits
from .registry import Row, register
from .timing import loop_time, median_time, ms

B = 128


def _loop_seconds(one: Callable[[int], Any], quick: bool) -> float:
    """The time of the loop ``one(i)`` over the ``B`` samples (quick: over 32, scaled)."""
    n = 32 if quick else B
    return loop_time(one, n, 1 if quick else 3) * B / n


@register("batched", "torch", target=">= 10")
def batched_vs_loop_torch(quick: bool) -> list[Row]:
    import torch

    import jacspec as js

    from .models_torch import trained_mlp

    model, X, _, _ = trained_mlp(torch.float32, epochs=3)
    xb = X[:B]
    reps = 3 if quick else 7
    rows = []
    for method in ["auto", "lanczos"]:
        t_b = median_time(lambda m=method: js.spectral_norm(
            js.jacobian(model, xb, batched=True), method=m), reps)
        t_l = _loop_seconds(lambda i, m=method: js.spectral_norm(
            js.jacobian(model, xb[i]), method=m), quick)
        rows.append(dict(name=f"batched/loop ({method}, torch)", jacspec=ms(t_b),
                         reference=ms(t_l), ratio=t_l / t_b, target=">= 10",
                         met=t_l / t_b >= 10,
                         configuration="B=128 per-sample spectral norms, 10x64 Jacobians "
                         "of a trained MLP, float32; reference: Python loop over samples"
                         + (" (the first 32, scaled to 128)" if quick else ""),
                         details=dict(batched_s=t_b, loop_s=t_l)))
    return rows


@register("batched", "tensorflow", target=">= 10")
def batched_vs_loop_tf(quick: bool) -> list[Row]:
    """Per-sample spectral norms of B=128 samples: one batched call vs a Python loop of
    unbatched calls, eager."""
    import tensorflow as tf

    import jacspec as js

    from .models_tensorflow import keras_mlp

    X, _ = digits()
    xb = tf.constant(X[:B])
    model = keras_mlp([64, 128, 128, 10])
    rows = []
    for method in ["auto", "lanczos"]:
        t_b = median_time(lambda m=method: js.spectral_norm(
            js.jacobian(model, xb, batched=True), method=m), 3 if quick else 7)
        t_l = _loop_seconds(lambda i, m=method: js.spectral_norm(
            js.jacobian(model, xb[i:i + 1]), method=m), quick)
        rows.append(dict(
            name=f"batched/loop ({method}, tensorflow)", jacspec=ms(t_b),
            reference=ms(t_l), ratio=t_l / t_b, target=">= 10", met=t_l / t_b >= 10,
            configuration="B=128 per-sample spectral norms, 10x64 Jacobians of a random "
            "Keras MLP 64-128-128-10 tanh, float32, eager; reference: Python loop over "
            "samples" + (" (the first 32, scaled to 128)" if quick else ""),
            details=dict(batched_s=t_b, loop_s=t_l)))
    return rows
