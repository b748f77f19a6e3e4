"""Rows "penalty" of ``jacspec bench``: a training step with the default (exact) spectral
penalty, in torch eager, JAX under ``jax.jit`` and TensorFlow under ``tf.function``, on
the design MLP (64-256-256-10) and a small CNN (two 3x3 convolutions, 10 outputs), both
on a batch of 128 digits.

Each model gets three rows, the steps timed side by side in one process:

- spectral step / Frobenius step (``js.penalties.frobenius(num_projections=1)``): the
  price of exactness over the cheapest penalty, reported without a target (an exact
  ``sigma_max`` needs the Jacobian's m cotangents where the Frobenius estimate needs one;
  the hand-written exact step below is the floor);
- spectral step / the hand-written exact step (the per-sample Jacobians from one batched
  backward with 10 cotangents, the top eigenvector of each 10 x 10 Gram matrix, one
  differentiable vector-Jacobian product): what jacspec adds to the best route;
- the per-sample relative error of the penalty's ``sigma_max`` against the dense SVD.

Every step is the gradient of ``cross-entropy + 0.01 * penalty`` w.r.t. the parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .models import digits
from .registry import Row, register
from .timing import interleaved_times, ms, repetitions

B = 128
LAM = 0.01
#: The spectral step's bound over the hand-written exact step (torch: at the floor).
HAND_TARGET = {"torch": 1.05}


def _rows(framework: str, model: str, t: dict[str, float], err: float, cfg: str
          ) -> list[Row]:
    tag = f"{model}, {framework}"
    vs_frob = t["spectral"] / t["frobenius"]
    vs_hand = t["spectral"] / t["hand"]
    bound = HAND_TARGET.get(framework, 1.1)
    cfg = f"{cfg}; plain step {ms(t['plain'])}"
    return [
        dict(name=f"penalty: spectral step / frobenius step ({tag})",
             jacspec=ms(t["spectral"]), reference=ms(t["frobenius"]), ratio=vs_frob,
             target="report", met=None, configuration=cfg,
             details=dict(times_s=t, spectral_over_plain=t["spectral"] / t["plain"])),
        dict(name=f"penalty: spectral step / hand-written exact step ({tag})",
             jacspec=ms(t["spectral"]), reference=ms(t["hand"]), ratio=vs_hand,
             target=f"<= {bound:g}", met=vs_hand <= bound, configuration=cfg,
             details=dict(times_s=t)),
        dict(name=f"penalty: exact spectral, per-sample error ({tag})",
             jacspec=f"{err:.1e}", reference="dense SVD", ratio=err, target="<= 1e-3",
             met=err <= 1e-3, configuration=cfg, details=dict(max_rel_error=err)),
    ]


def _max_rel_error(sigma: np.ndarray, M: np.ndarray) -> float:
    exact = np.linalg.svd(M.astype(np.float64), compute_uv=False)[:, 0]
    return float(np.max(np.abs(sigma - exact) / exact))


def _reps_steps(quick: bool) -> int:
    return max(3 * repetitions(quick), 15)


# ---------------------------------------------------------------------------- torch


def hand_penalty_torch(torch, net: Any, x: Any) -> Any:
    xl = x.detach().requires_grad_(True)
    y = net(xl)
    m = y.shape[-1]
    eye = torch.eye(m, dtype=y.dtype)[:, None, :].expand(m, y.shape[0], m)
    (M,) = torch.autograd.grad(y, xl, eye, retain_graph=True, is_grads_batched=True)
    M = M.reshape(m, y.shape[0], -1).transpose(0, 1)
    u = torch.linalg.eigh(M @ M.mT)[1][..., -1]
    (w,) = torch.autograd.grad(y, xl, u, create_graph=True)
    return (w * w).flatten(1).sum(-1).mean()


@register("penalty", "torch", target="<= 1.05, <= 1e-3")
def penalty_torch(quick: bool) -> list[Row]:
    import torch

    import jacspec as js

    from .models_torch import penalty_models

    _, labels = digits()
    yb = torch.tensor(labels[:B])
    rows: list[Row] = []
    for name, (net, xb) in penalty_models(B).items():
        params = list(net.parameters())

        def step(pen: Callable[[], Any] | None, net=net, xb=xb, params=params) -> None:
            loss = torch.nn.functional.cross_entropy(net(xb), yb)
            if pen is not None:
                loss = loss + LAM * pen()
            torch.autograd.grad(loss, params)

        t = interleaved_times(dict(
            plain=lambda step=step: step(None),
            spectral=lambda step=step, net=net, xb=xb: step(
                lambda: js.penalties.spectral(net, xb)),
            frobenius=lambda step=step, net=net, xb=xb: step(
                lambda: js.penalties.frobenius(net, xb, num_projections=1)),
            hand=lambda step=step, net=net, xb=xb: step(lambda: hand_penalty_torch(torch, net, xb)),
        ), _reps_steps(quick))
        _, u = js.penalties.spectral(net, xb, return_vectors=True)
        J = js.jacobian(net, xb, batched=True)
        with torch.no_grad():
            sigma = J.rmatvec(u).flatten(1).norm(dim=-1).double().numpy()
            M = js.dense(J).numpy()
        rows += _rows("torch", name, t, _max_rel_error(sigma, M),
                      f"torch eager, {name} on (B={B}) digits, float32")
    return rows


# ---------------------------------------------------------------------------- JAX


def hand_penalty_jax(jax, jnp, f: Callable, x: Any) -> Any:
    y, pull = jax.vjp(f, x)
    m = y.shape[-1]
    eye = jnp.broadcast_to(jnp.eye(m, dtype=y.dtype)[:, None, :], (m,) + y.shape)
    M = jax.lax.stop_gradient(jax.vmap(pull)(eye)[0])
    M = jnp.swapaxes(M.reshape(m, y.shape[0], -1), 0, 1)
    u = jax.lax.stop_gradient(jnp.linalg.eigh(M @ jnp.swapaxes(M, 1, 2))[1][..., -1])
    (w,) = pull(u.astype(y.dtype))
    return jnp.mean(jnp.sum(w.reshape(w.shape[0], -1) ** 2, axis=-1))


@register("penalty", "jax", target="<= 1.1, <= 1e-3")
def penalty_jax(quick: bool) -> list[Row]:
    import jax
    import jax.numpy as jnp

    import jacspec as js

    from .models_jax import penalty_models

    _, labels = digits()
    yb = jnp.asarray(labels[:B])
    rows: list[Row] = []
    for name, (net, params, xb) in penalty_models(B).items():

        def make(pen: Callable | None, net=net, xb=xb, params=params
                 ) -> Callable[[], Any]:
            def loss(p):
                logits = net(p, xb)
                ce = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(B), yb])
                return ce if pen is None else ce + LAM * pen(lambda z: net(p, z), xb)

            g = jax.jit(jax.grad(loss))
            return lambda: jax.block_until_ready(g(params))

        t = interleaved_times(dict(
            plain=make(None),
            spectral=make(lambda f, x: js.penalties.spectral(f, x)),
            frobenius=make(lambda f, x: js.penalties.frobenius(f, x, num_projections=1,
                                                               seed=0)),
            hand=make(lambda f, x: hand_penalty_jax(jax, jnp, f, x)),
        ), _reps_steps(quick))
        f = lambda z, net=net, params=params: net(params, z)  # noqa: E731
        _, u = js.penalties.spectral(f, xb, return_vectors=True)
        J = js.jacobian(f, xb, batched=True)
        w = np.asarray(J.rmatvec(u)).reshape(B, -1)
        rows += _rows("JAX jit", name, t,
                      _max_rel_error(np.linalg.norm(w.astype(np.float64), axis=-1),
                                     np.asarray(js.dense(J))),
                      f"jax.jit(jax.grad(...)), {name} on (B={B}) digits, float32")
    return rows


# ---------------------------------------------------------------------------- TensorFlow


def hand_penalty_tf(tf, net: Any, x: Any) -> Any:
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = net(x)
    M = tf.stop_gradient(tf.reshape(tape.batch_jacobian(y, x), (B, y.shape[-1], -1)))
    u = tf.stop_gradient(tf.linalg.eigh(tf.matmul(M, M, transpose_b=True))[1][..., -1])
    w = tape.gradient(y, x, output_gradients=u)
    return tf.reduce_mean(tf.reduce_sum(tf.reshape(w, (B, -1)) ** 2, axis=-1))


@register("penalty", "tensorflow", target="<= 1.1, <= 1e-3")
def penalty_tf(quick: bool) -> list[Row]:
    import tensorflow as tf

    import jacspec as js

    from .models_tensorflow import penalty_models

    _, labels = digits()
    yb = tf.constant(labels[:B])
    rows: list[Row] = []
    for name, (net, xb) in penalty_models(B).items():

        def make(pen: Callable | None, net=net, xb=xb) -> Callable[[], Any]:
            @tf.function
            def step():
                with tf.GradientTape() as tape:
                    loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(
                        yb, net(xb), from_logits=True))
                    if pen is not None:
                        loss = loss + LAM * pen(net, xb)
                return tape.gradient(loss, net.trainable_variables)

            return lambda: [g.numpy() for g in step()[:1]]

        t = interleaved_times(dict(
            plain=make(None),
            spectral=make(lambda f, x: js.penalties.spectral(f, x)),
            frobenius=make(lambda f, x: js.penalties.frobenius(f, x, num_projections=1,
                                                               seed=0)),
            hand=make(lambda f, x: hand_penalty_tf(tf, f, x)),
        ), _reps_steps(quick))
        _, u = js.penalties.spectral(net, xb, return_vectors=True)
        J = js.jacobian(net, xb, batched=True)
        w = np.reshape(J.rmatvec(u).numpy(), (B, -1))
        rows += _rows("TensorFlow tf.function", name, t,
                      _max_rel_error(np.linalg.norm(w.astype(np.float64), axis=-1),
                                     js.dense(J).numpy()),
                      f"tf.function step, Keras {name} on (B={B}) digits, float32")
    return rows
