"""Run by tests/test_datasets.py in a subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=4`` (four CPU devices).

Parameters sharded with ``NamedSharding``s over a 2x2 mesh (``data`` x ``model``),
batches over its ``data`` axis: the dataset Hessian and GGN with ``distributed=True``
must equal the single-device operators (dense matrices, top eigenvalues, a trace
estimate, a spectral density's moments, float64), and every vector a solver hands to
the operator, every product and every returned vector must be split over the
``model`` axis (each device holds half of it, never the whole). Parameters split over
both axes split the vectors in quarters; a parameter count that the model axis does not
divide is an error. Prints ``devices=4`` and ``OK``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import jacspec as js

SPECS = {"W1": P(None, "model"), "b1": P("model"), "W2": P("model", None), "b2": P()}


def apply(p, x):
    return jnp.tanh(x @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]


def loss(out, t):
    return jnp.mean((out - t) ** 2)


def batch_loss(p, batch):
    return loss(apply(p, batch[0]), batch[1])


def split_over_model(x, n: int, axis: int) -> None:
    """``x`` split in halves along ``axis`` (its length ``n``), over the mesh's model axis."""
    assert isinstance(x.sharding, NamedSharding), x.sharding
    spec = tuple(x.sharding.spec) + (None,) * x.ndim
    entry = spec[axis % x.ndim]
    assert (entry,) == ("model",) or entry == ("model",), x.sharding.spec
    assert {s.data.shape[axis] for s in x.addressable_shards} == {n // 2}, x.sharding


class Recording:
    """Wraps ``op``'s products: each checks that its vectors come and go split."""

    def __init__(self, op, n: int) -> None:
        self.count, self.n, self.products = 0, n, op._mm
        op._mm = self

    def __call__(self, V, **kw):
        split_over_model(V, self.n, -2)
        out = self.products(V, **kw)
        split_over_model(out, self.n, -2)
        self.count += 1
        return out


def main() -> None:
    jax.config.update("jax_enable_x64", True)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("data", "model"))
    rng = np.random.default_rng(0)
    host = {"W1": rng.standard_normal((4, 8)) / 2, "b1": rng.standard_normal(8) / 4,
            "W2": rng.standard_normal((8, 4)) / 2, "b2": np.zeros(4)}
    sharded = {k: jax.device_put(jnp.asarray(v), NamedSharding(mesh, SPECS[k]))
               for k, v in host.items()}
    single = {k: jnp.asarray(v) for k, v in host.items()}
    n = sum(v.size for v in host.values())
    data = [(jnp.asarray(rng.standard_normal((s, 4))), jnp.asarray(rng.standard_normal((s, 4))))
            for s in (8, 8, 8)]
    print(f"devices={len(jax.devices())}")

    for make, solves in ((lambda p, d: js.hessian(batch_loss, p, data=data, distributed=d), True),
                         (lambda p, d: js.ggn(apply, loss, p, data=data, distributed=d), False)):
        H, H1 = make(sharded, True), make(single, False)
        products = Recording(H, n)
        dense = np.asarray(js.dense(H1))
        np.testing.assert_allclose(np.asarray(js.dense(H)), dense, rtol=1e-12, atol=1e-14)
        top = js.eigsh(H, k=2, which="LA", tol=1e-7, return_vectors=True)
        np.testing.assert_allclose(np.asarray(top.values), np.linalg.eigvalsh(dense)[::-1][:2],
                                   rtol=1e-6)
        split_over_model(top.vectors, n, -2)
        for method in ("hutchinson", "hutch++") if solves else ("hutchinson",):
            tr = js.trace(H, num_probes=9, method=method, seed=3)
            tr1 = js.trace(H1, num_probes=9, method=method, seed=3)
            np.testing.assert_allclose(float(tr), float(tr1), rtol=1e-10)
        if solves:
            dens = js.spectral_density(H, num_probes=2, num_steps=8, seed=1)
            dens1 = js.spectral_density(H1, num_probes=2, num_steps=8, seed=1)
            for power in (1, 2, 3):
                np.testing.assert_allclose(
                    float(jnp.sum(dens.weights * dens.nodes ** power)),
                    float(jnp.sum(dens1.weights * dens1.nodes ** power)), rtol=1e-9)
        assert products.count > 10, products.count  # they all went through the check

        # products on a user's vector (on one device, or split): eager and jitted
        H._mm = products.products
        v = jnp.asarray(rng.standard_normal(n))
        expected = np.asarray(H1 @ v)
        for out in (H @ v, jax.jit(lambda u, op=H: op @ u)(v),
                    H @ jax.device_put(v, NamedSharding(mesh, P("model")))):
            split_over_model(out, n, 0)
            np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-12, atol=1e-14)

    # distributed=False (the batches not split), and the finite-difference
    # route (models without second derivatives): the split is kept
    v = jnp.asarray(rng.standard_normal(n))
    out = js.hessian(batch_loss, sharded, data=data) @ v
    split_over_model(out, n, 0)
    np.testing.assert_allclose(np.asarray(out), np.asarray(js.hessian(
        batch_loss, single, data=data) @ v), rtol=1e-12, atol=1e-14)
    Hf = js.hessian(batch_loss, sharded, data=data, distributed=True, hvp="finite_difference")
    out = Hf @ v
    split_over_model(out, n, 0)
    np.testing.assert_allclose(np.asarray(out), np.asarray(js.hessian(
        batch_loss, single, data=data) @ v), rtol=1e-6, atol=1e-8)

    # fully sharded (W1 over both axes): the vectors split over both, a quarter each
    full = {**sharded, "W1": jax.device_put(single["W1"], NamedSharding(mesh, P("data", "model")))}
    H = js.hessian(batch_loss, full, data=data, distributed=True)
    assert H.device == NamedSharding(mesh, P(("data", "model"))), H.device
    out = js.dense(H)
    assert {s.data.shape for s in out.addressable_shards} == {(n // 4, n)}, out.sharding
    plain = js.dense(js.hessian(batch_loss, single, data=data))
    np.testing.assert_allclose(np.asarray(out), np.asarray(plain), rtol=1e-12, atol=1e-14)

    # a parameter count the model axis does not divide: a clear error
    odd1 = {**single, "W2": single["W2"][:, :3], "b2": jnp.zeros(3)}  # 67 parameters
    odd = {k: jax.device_put(v, NamedSharding(mesh, SPECS[k])) for k, v in odd1.items()}
    try:
        js.hessian(batch_loss, odd, data=[(x, t[:, :3]) for x, t in data], distributed=True)
    except ValueError as err:
        assert "multiple of the device count" in str(err), err
    else:
        raise AssertionError("no error for 67 parameters over a model axis of 2")
    print("OK")


if __name__ == "__main__":
    main()
