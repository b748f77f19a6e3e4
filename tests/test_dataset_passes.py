"""Every product of a dataset operator streams the data again: a pass that yields other
samples than the first (fewer, none) is a ValueError naming the change, never a mean
silently weighted by the first pass's count."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js
from _helpers import from_numpy
from _models import ParamMLP, mlp_weights


class LaterPasses:
    """Yields ``first`` on its first pass and ``later`` on every pass after it."""

    def __init__(self, first: list, later: list) -> None:
        self.first, self.later, self.passes = first, later, 0

    def __iter__(self):
        def one_pass():  # a pass counts once it is read
            self.passes += 1
            yield from self.first if self.passes == 1 else self.later

        return one_pass()


def _problem(b: str):
    rng = np.random.default_rng(0)
    net = ParamMLP(b, mlp_weights(rng, [3, 2]), "float64", "tanh")
    data = [(from_numpy(rng.standard_normal((4, 3)), b, "float64"),
             from_numpy(rng.standard_normal((4, 2)), b, "float64")) for _ in range(3)]

    def batch_loss(p, batch):
        d = net.apply(p, batch[0]) - batch[1]
        return js.backends.get_backend(b).xp.mean(d * d)

    return net, data, batch_loss


@pytest.mark.parametrize("later", ["fewer", "empty"])
def test_a_later_pass_with_other_samples_is_an_error(autodiff_backend, later):
    net, data, batch_loss = _problem(autodiff_backend)
    ops = [
        js.hessian(batch_loss, net.params,
                   data=LaterPasses(data, data[:1] if later == "fewer" else [])),
        js.ggn(net.apply, lambda o, t: js.backends.get_backend(autodiff_backend).xp.mean(
            (o - t) * (o - t)), net.params,
            data=LaterPasses(data, data[:1] if later == "fewer" else [])),
    ]
    got = "4 samples" if later == "fewer" else "0 samples"
    for H in ops:
        v = from_numpy(np.ones(H.shape[1]), autodiff_backend, "float64")
        with pytest.raises(ValueError, match=f"the 12 samples of the first pass.*{got}"):
            H @ v


def test_same_samples_in_other_batches_is_fine(autodiff_backend):
    """Only the samples count: the same samples batched differently give the same mean."""
    b = autodiff_backend
    net, data, batch_loss = _problem(b)
    xp = js.backends.get_backend(b).xp
    whole = [(xp.concat([d[0] for d in data]), xp.concat([d[1] for d in data]))]
    H = js.hessian(batch_loss, net.params, data=LaterPasses(data, whole))
    ref = js.hessian(batch_loss, net.params, data=whole)
    v = from_numpy(np.ones(H.shape[1]), b, "float64")
    np.testing.assert_allclose(np.asarray(H @ v), np.asarray(ref @ v), rtol=1e-12)


def test_tf_data_with_fewer_samples_later():
    tf = pytest.importorskip("tensorflow")
    net, data, batch_loss = _problem("tensorflow")
    X = tf.concat([d[0] for d in data], 0)
    Y = tf.concat([d[1] for d in data], 0)
    seen = tf.Variable(0, dtype=tf.int64)  # elements read so far, over all passes
    ds = (tf.data.Dataset.from_tensor_slices((X, Y))
          .filter(lambda x, y: seen.assign_add(1) <= 12 + 5).batch(4))
    H = js.hessian(batch_loss, net.params, data=ds)
    with pytest.raises(ValueError, match="12 samples of the first pass.*5 samples"):
        H @ tf.ones(H.shape[1], dtype=tf.float64)
