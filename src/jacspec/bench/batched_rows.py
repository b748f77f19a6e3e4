"""Rows "batched/loop": per-sample spectral norms of B=128 samples in one batched call
against a Python loop of unbatched calls (torch, TensorFlow; eager), target >= 10x.
``--quick`` times the loop over the first 32 samples, once, and scales it to 128 (the
loop's time is its samples' times added up).

Rows "batched products" (torch): a block of 10 cotangents through the per-sample
Jacobians (the exact spectral penalty's block) by one vmapped backward, by a loop of
single backwards, and by jacspec's own choice between them (timed on the first blocks
of a configuration), on a small MLP batch (the vmapped call wins) and a CNN batch of
128 (the loop wins); target: the choice within 5% of the better route."""

from __future__ import annotations

import time
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


@register("batched", "torch", target="<= 1.05")
def block_routes_torch(quick: bool) -> list[Row]:
    """jacspec's choice of route for blocks of vectors against the better of the two
    routes forced, on the penalty rows' MLP (B=8) and CNN (B=128)."""
    import torch

    import jacspec as js
    from jacspec.backends.torch import block_route

    from .models_torch import penalty_models
    from .timing import interleaved_times

    rows = []
    for name, batch in (("MLP", 8), ("CNN", B)):
        net, xb = penalty_models(B)[name]
        xb = xb[:batch]
        J = js.jacobian(net, xb, batched=True)
        m = int(J.shape[0])
        eye = torch.eye(m, dtype=xb.dtype).expand(batch, m, m)

        def block(route, J=J, eye=eye):
            """The block's CPU time (steadier than wall time on a shared machine)."""
            start = time.process_time()
            with block_route(route), torch.no_grad():
                J.H.matmat(eye)
            return time.process_time() - start

        block(None)  # the choice's trials (both routes, timed), on the first block
        rounds = (11 if quick else 31) * (5 if name == "MLP" else 1)  # MLP: ~1 ms calls
        t = interleaved_times({"vmap": lambda b=block: b("vmap"),
                               "loop": lambda b=block: b("loop"),
                               "auto": lambda b=block: b(None)}, rounds,
                              seconds=lambda s: s)
        best = min(t["vmap"], t["loop"])
        ratio = t["auto"] / best
        rows.append(dict(
            name=f"batched products: auto / best route ({name}, torch)",
            jacspec=ms(t["auto"]), reference=f"vmap {ms(t['vmap'])}, loop {ms(t['loop'])}",
            ratio=ratio, target="<= 1.05", met=ratio <= 1.05,
            configuration=f"J^T of {m} cotangents per sample, B={batch}, {name} of the "
            "penalty rows, float32, no gradient, CPU time; reference: the faster of one "
            "vmapped backward (is_grads_batched) and a loop of single backwards",
            details=dict(times_s=t, vmap_over_loop=t["vmap"] / t["loop"])))
    return rows
