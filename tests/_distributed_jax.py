"""Run by tests/test_datasets.py in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (four CPU devices).

A dataset Hessian and GGN with ``distributed=True`` (batches sharded over the four
devices, the reduction left to XLA) must equal the single-device operators. Prints
``devices=4`` and ``OK``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jacspec as js


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    params = {"W1": jnp.asarray(rng.standard_normal((4, 6))) / 2, "b1": jnp.zeros(6),
              "W2": jnp.asarray(rng.standard_normal((6, 3))) / 2}

    def apply(p, x):
        return jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"]

    def loss(out, t):
        return jnp.mean((out - t) ** 2)

    def batch_loss(p, batch):
        return loss(apply(p, batch[0]), batch[1])

    sizes = [8, 8, 4, 5]  # the last one is replicated (5 is not a multiple of 4)
    data = [(jnp.asarray(rng.standard_normal((s, 4))), jnp.asarray(rng.standard_normal((s, 3))))
            for s in sizes]
    print(f"devices={len(jax.devices())}")
    for make in (lambda d: js.hessian(batch_loss, params, data=data, distributed=d),
                 lambda d: js.ggn(apply, loss, params, data=data, distributed=d)):
        sharded, single = make(True), make(False)
        np.testing.assert_allclose(np.asarray(js.dense(sharded)), np.asarray(js.dense(single)),
                                   rtol=1e-12, atol=1e-14)
    a = js.eigsh(sharded, k=1, method="lanczos", tol=1e-8).values
    b = js.eigsh(single, k=1, method="lanczos", tol=1e-8).values
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-8)
    print("OK")


if __name__ == "__main__":
    main()
