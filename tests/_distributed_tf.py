"""Run by tests/test_datasets.py in a subprocess: TensorFlow with two logical CPU devices
under a ``tf.distribute.MirroredStrategy``.

A dataset Hessian and GGN with ``distributed=True`` (each batch split over the two
replicas by the strategy, products run on each replica and summed by
``strategy.reduce``) must equal the single-device operators: dense matrices, top
eigenvalues (against the single-device matrix's), a trace estimate and a spectral
density's moments. Prints ``replicas=2`` and ``OK``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import jacspec as js  # noqa: E402


def main() -> None:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    # Small on purpose: each eager product under the strategy costs a new distributed
    # iterator and one `strategy.run` per batch, whatever the size.
    with strategy.scope():
        params = [tf.Variable(rng.standard_normal((2, 3)) / 2), tf.Variable(np.zeros(3)),
                  tf.Variable(rng.standard_normal((3, 2)) / 2)]

    def apply(p, x):
        return tf.tanh(x @ p[0] + p[1]) @ p[2]

    def loss(out, t):
        return tf.reduce_mean((out - t) ** 2)

    def batch_loss(p, batch):
        return loss(apply(p, batch[0]), batch[1])

    # 23 samples in batches of 12: the last batch (11) splits unevenly over the replicas.
    X, Y = rng.standard_normal((23, 2)), rng.standard_normal((23, 2))
    data = tf.data.Dataset.from_tensor_slices((X, Y)).batch(12)
    print(f"replicas={strategy.num_replicas_in_sync}")
    with strategy.scope():
        H = js.hessian(batch_loss, params, data=data, distributed=True)
        G = js.ggn(apply, loss, params, data=data, distributed=True)
    H1, G1 = js.hessian(batch_loss, params, data=data), js.ggn(apply, loss, params, data=data)
    assert H.num_samples == G.num_samples == H1.num_samples == 23
    dense = js.dense(H1).numpy()
    np.testing.assert_allclose(js.dense(H).numpy(), dense, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(js.dense(G).numpy(), js.dense(G1).numpy(), rtol=1e-12,
                               atol=1e-14)
    # the solvers on the distributed operator, against the single-device matrix
    evals = np.linalg.eigvalsh(dense)
    top = js.eigsh(H, k=2, method="lanczos", tol=1e-8).values.numpy()
    np.testing.assert_allclose(top, evals[np.argsort(-np.abs(evals))[:2]], rtol=1e-7)
    t_a, t_b = (float(js.trace(op, num_probes=4, seed=3)) for op in (H, H1))
    np.testing.assert_allclose(t_a, t_b, rtol=1e-10)
    d_a, d_b = (js.spectral_density(op, num_probes=1, num_steps=5, seed=1) for op in (H, H1))
    for p in (1, 2):
        np.testing.assert_allclose(float(d_a.moment(p)), float(d_b.moment(p)), rtol=1e-8)
    # The strategy's own distributed dataset, passed as it is, gives the same operator.
    dist_data = strategy.experimental_distribute_dataset(data)
    H2 = js.hessian(batch_loss, params, data=dist_data, distributed=True, group=strategy)
    np.testing.assert_allclose(js.dense(H2).numpy(), dense, rtol=1e-12, atol=1e-14)
    print("OK")


if __name__ == "__main__":
    main()
