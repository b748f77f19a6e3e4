"""TensorFlow: writes ``f`` makes to plain ``tf.Variable``s (a ``tf.Module``'s moving
mean, a step counter, weights clamped in the forward pass) are undone, however ``f``
reaches them, and the products are those of ``f`` as it ran. (A ``tf.function`` traced
before the call runs no Python: of its writes, those to the state variables of the
modules ``f`` reaches are undone.)"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import jacspec as js
from _helpers import selected_backends

pytestmark = pytest.mark.skipif("tensorflow" not in selected_backends(),
                                reason="TensorFlow not selected")
tf = pytest.importorskip("tensorflow")


class Normalized(tf.Module):
    """A layer with a moving mean, a step counter and a weight clamped when called."""

    def __init__(self):
        super().__init__()
        self.w = tf.Variable(tf.reshape(tf.linspace(-1.5, 1.5, 12), (4, 3)))
        self.mean = tf.Variable(tf.zeros(3, dtype=tf.float32), trainable=False)
        self.steps = tf.Variable(0, dtype=tf.int64)

    def __call__(self, x):
        self.w.assign(tf.clip_by_value(self.w, -1.0, 1.0))
        h = x @ self.w
        self.mean.assign(0.9 * self.mean + 0.1 * tf.reduce_mean(h, axis=0))
        self.steps.assign_add(1)
        return tf.tanh(h - self.mean)


class Holder:
    def __init__(self, m):
        self.m = m


_GLOBAL = {}


def _ways(module):
    holder = Holder(module)
    _GLOBAL["m"] = module
    traced = tf.function(lambda z: module(z))
    traced(tf.ones((2, 4)))  # traced once: later calls run no Python
    module.w.assign(tf.reshape(tf.linspace(-1.5, 1.5, 12), (4, 3)))  # undo that call
    module.mean.assign(tf.zeros(3))
    module.steps.assign(0)
    return {
        "module": module,
        "closure": lambda z: module(z),
        "attribute": lambda z: holder.m(z),
        "global": lambda z: _GLOBAL["m"](z),
        "tf.function": traced,
    }


def _state(module):
    return [v.numpy().copy() for v in (module.w, module.mean, module.steps)]


@pytest.mark.parametrize("way", ["module", "closure", "attribute", "global", "tf.function"])
def test_module_variables_written_by_f_are_restored(way):
    module = Normalized()
    f = _ways(module)[way]
    X = tf.reshape(tf.linspace(-1.0, 1.0, 8), (2, 4))
    before = _state(module)
    js.spectral_norm(js.jacobian(f, X))
    js.spectral_norm(js.jacobian(f, X, batched=True))
    H = js.hessian(lambda z: tf.reduce_sum(f(z) ** 2), X)
    H @ tf.ones(H.shape[1])
    js.penalties.spectral(f, X, method="lanczos", maxiter=3)
    js.slope(f, X, num_between=2)
    for now, old in zip(_state(module), before):
        np.testing.assert_array_equal(now, old)
    module(X)  # the user's own calls still write
    assert int(module.steps.numpy()) == 1


def test_products_are_those_of_f_as_it_ran():
    """The Jacobian reads the clamped weight and the updated mean, as f did."""
    module = Normalized()
    X = tf.reshape(tf.linspace(-1.0, 1.0, 8), (2, 4))
    J = js.dense(js.jacobian(module, X))
    copy = Normalized()
    with tf.GradientTape() as tape:
        tape.watch(X)
        y = copy(X)
    ref = tf.reshape(tape.jacobian(y, X), J.shape)
    np.testing.assert_allclose(J.numpy(), ref.numpy(), rtol=1e-6)
    assert np.abs(module.w.numpy()).max() == 1.5 and int(module.steps.numpy()) == 0


def test_writes_traced_while_f_runs_are_restored():
    """A tf.function that f traces during the call writes in its own graph: the values
    from before it ran are written back."""
    module = Normalized()
    traced = tf.function(lambda z: module(z))
    X = tf.reshape(tf.linspace(-1.0, 1.0, 8), (2, 4))
    before = _state(module)
    js.dense(js.jacobian(traced, X))
    for now, old in zip(_state(module), before):
        np.testing.assert_array_equal(now, old)


def test_writes_inside_nested_traced_functions_are_restored():
    """A traced function calling another that bumps a counter no Python object of f
    leads to: the call's captured variables tell."""
    counter = tf.Variable(0, dtype=tf.int64)
    scale = tf.Variable(2.0)

    @tf.function
    def inner(h):
        counter.assign_add(1)
        scale.assign(scale * 2.0)
        return tf.tanh(scale * h)

    outer = tf.function(lambda z: inner(z) + 1.0)
    X = tf.fill((2, 3), 0.1)
    outer(X)
    counter.assign(0)
    scale.assign(2.0)
    J = js.dense(js.jacobian(outer, X))
    assert int(counter.numpy()) == 0 and float(scale.numpy()) == 2.0
    ref = 4.0 / np.cosh(0.4) ** 2  # f ran with scale 4
    np.testing.assert_allclose(np.diag(J.numpy()), ref, rtol=1e-5)


def test_writes_in_other_threads_and_after_are_kept():
    """Only the writes of f's thread, during the call, are undone."""
    module = Normalized()
    counter = tf.Variable(0, dtype=tf.int64)
    started, done = threading.Event(), threading.Event()

    def other():
        started.wait()
        counter.assign_add(5)
        done.set()

    def f(z):
        started.set()
        done.wait(10)
        return module(z)

    thread = threading.Thread(target=other)
    thread.start()
    js.dense(js.jacobian(f, tf.ones(4)[None]))
    thread.join()
    assert int(counter.numpy()) == 5 and int(module.steps.numpy()) == 0
    counter.assign_add(1)
    assert int(counter.numpy()) == 6
