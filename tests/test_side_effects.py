"""Nothing the user passed is mutated: parameters, buffers, modes, flags, inputs."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js
from _helpers import selected_backends


def _framework(name: str):
    """The framework module for a test of one framework, skipped in other sessions."""
    if name not in selected_backends():
        pytest.skip(f"runs in the {name} session")
    return pytest.importorskip(name)


def _torch_model(torch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(), torch.nn.Linear(6, 3)
    ).double()
    model[0].weight.requires_grad_(False)  # a frozen layer must stay frozen
    return model


@pytest.mark.parametrize("train", [True, False])
def test_torch_batchnorm_state_is_kept(train):
    torch = pytest.importorskip("torch")
    model = _torch_model(torch)
    model.train(train)
    # make the running statistics non-trivial first
    with torch.no_grad():
        model.train()(torch.randn(16, 4, dtype=torch.float64))
    model.train(train)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {k: p.requires_grad for k, p in model.named_parameters()}
    modes = [m.training for m in model.modules()]
    X = torch.randn(8, 4, dtype=torch.float64)
    X_copy = X.clone()

    J = js.jacobian(model, X)  # the module itself as f
    J2 = js.jacobian(lambda x: model(x), X)  # a closure over it
    for op in (J, J2):
        op.matvec(torch.randn(32, dtype=torch.float64))
        op.rmatvec(torch.randn(24, dtype=torch.float64))
        js.dense(op)
    H = js.hessian(lambda p: model(X).pow(2).sum(), dict(model.named_parameters()))
    H.matvec(torch.randn(H.shape[1], dtype=torch.float64))

    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(X, X_copy) and not X.requires_grad
    # and the model still trains normally afterwards (no stale version counters)
    model(X).sum().backward()


def test_torch_x_requires_grad_flag_untouched():
    torch = pytest.importorskip("torch")
    x = torch.ones(3, dtype=torch.float64)
    J = js.jacobian(lambda z: z**2, x)
    J.matvec(torch.ones(3, dtype=torch.float64))
    assert not x.requires_grad and x.grad is None


def test_keras_batchnorm_state_is_kept():
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(5),
                              keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    X = tf.random.stateless_normal((6, 4), seed=[1, 2])
    before = [v.numpy().copy() for v in model.variables]
    J = js.jacobian(lambda x: model(x, training=True), X)
    J.matvec(tf.ones(24))
    js.dense(J)
    for v, b in zip(model.variables, before):
        np.testing.assert_array_equal(v.numpy(), b)


# ------------------------------------------------ however f reaches the model (SPEC)
# Module-level holders: f reaches these models through globals, several calls deep.
_REGISTRY: dict = {}


def _global_level1(z):
    return _REGISTRY["model"](z)


def _global_level2(z):
    return _global_level1(z)


def _global_level3(z):
    return _global_level2(z)


def _ways_to_reach(model, call):
    """``name -> f``: ways a function can reach ``model``; ``call(m, z)`` runs it."""
    import functools
    import weakref

    class Wrap:
        def __init__(self, m):
            self.m = m

        def __call__(self, z):
            return call(self.m, z)

    class Outer:  # a wrapper's attribute's attribute
        def __init__(self, m):
            self.inner = Wrap(m)

        def forward(self, z):
            return self.inner(z)

    def with_default(z, m=model):
        return call(m, z)

    def with_kwdefault(z, *, ms=(None, model)):
        return call(ms[1], z)

    models_list = [model]
    models_dict = {"net": model}

    def h1(z):
        return call(model, z)

    def h2(z):
        return h1(z)

    def h3(z):
        return h2(z)

    weak = weakref.ref(model)  # no closure, default or attribute walk leads to the model
    _REGISTRY["model"] = model
    return {
        "module": (lambda z: call(model, z)),
        "wrapper attribute": Wrap(model),
        "nested attributes": Outer(model).forward,
        "default argument": with_default,
        "keyword default": with_kwdefault,
        "list": lambda z: call(models_list[0], z),
        "dict": lambda z: call(models_dict["net"], z),
        "helpers 4 deep": lambda z: h3(z),
        "globals 3 deep": _global_level3,
        "partial": functools.partial(lambda m, z: call(m, z), model),
        "weak reference": lambda z: call(weak(), z),
    }


TORCH_WAYS = ["module", "wrapper attribute", "nested attributes", "default argument",
              "keyword default", "list", "dict", "helpers 4 deep", "globals 3 deep", "partial",
              "weak reference"]


def _every_entry_point(f, X, backend_name):
    """js.jacobian + spectral_norm, js.hessian, js.penalties.spectral, js.slope on f."""
    js.spectral_norm(js.jacobian(f, X))
    js.spectral_norm(js.jacobian(f, X, batched=True))
    if backend_name == "torch":
        H = js.hessian(lambda z: (f(z) ** 2).sum(), X)
        H @ (X.reshape(-1) * 0 + 1)
        p = js.penalties.spectral(f, X, method="lanczos", maxiter=3)
        p.backward()
    else:
        import tensorflow as tf

        H = js.hessian(lambda z: tf.reduce_sum(f(z) ** 2), X)
        H @ tf.ones(H.shape[1], dtype=X.dtype)
        js.penalties.spectral(f, X, method="lanczos", maxiter=3)
    js.slope(f, X, num_between=2)


def _bn_model(torch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 6), torch.nn.BatchNorm1d(6), torch.nn.Tanh(), torch.nn.Linear(6, 2)
    ).double()
    model[0].bias.requires_grad_(False)
    with torch.no_grad():  # non-trivial running statistics
        model(torch.randn(16, 4, dtype=torch.float64))
    return model


def _torch_state(model):
    return (
        {k: v.clone() for k, v in model.state_dict().items()},
        [m.training for m in model.modules()],
        {k: p.requires_grad for k, p in model.named_parameters()},
    )


def _assert_same_torch_state(torch, model, before):
    tensors, modes, flags = before
    for k, v in model.state_dict().items():
        assert torch.equal(v, tensors[k]), f"{k} changed"
    assert [m.training for m in model.modules()] == modes
    assert {k: p.requires_grad for k, p in model.named_parameters()} == flags


# Training mode (BatchNorm writes its statistics) for every way; evaluation mode for two.
TORCH_CASES = [(way, True) for way in TORCH_WAYS] + [("module", False), ("list", False)]


@pytest.mark.parametrize(("way", "train"), TORCH_CASES)
def test_torch_model_state_however_f_reaches_it(way, train):
    torch = _framework("torch")
    model = _bn_model(torch).train(train)
    f = _ways_to_reach(model, lambda m, z: m(z))[way]
    X = torch.randn(8, 4, dtype=torch.float64)
    before = _torch_state(model)
    _every_entry_point(f, X, "torch")
    _assert_same_torch_state(torch, model, before)
    if train:  # the buffers the guard restored still move in the user's own training
        model(X)
        assert int(model[1].num_batches_tracked) == int(before[0]["1.num_batches_tracked"]) + 1


def test_torch_f_that_switches_modes_and_flags():
    torch = _framework("torch")
    model = _bn_model(torch).eval()
    frozen = model[0].weight

    class Trainer:
        def __init__(self, m):
            self.m = m

        def __call__(self, z):
            self.m.train()  # f itself flips the mode and a flag: both come back
            frozen.requires_grad_(False)
            return self.m(z)

    before = _torch_state(model)
    _every_entry_point(Trainer(model), torch.randn(8, 4, dtype=torch.float64), "torch")
    _assert_same_torch_state(torch, model, before)


def test_torch_writes_to_views_and_out_arguments_are_undone():
    torch = _framework("torch")
    state = torch.zeros(4, dtype=torch.float64)
    counter = torch.zeros((), dtype=torch.int64)
    total = torch.zeros(4, dtype=torch.float64)

    def f(z):
        with torch.no_grad():
            state[:2].add_(1.0)  # a write through a view of a user tensor
            counter.add_(1)
            torch.add(state, 1.0, out=total)  # an out= argument
        h = z * 2.0
        h.mul_(3.0)  # f's own intermediate: written in place, must not be restored
        return h.tanh()

    x = torch.linspace(-0.1, 0.1, 4, dtype=torch.float64)
    J = js.dense(js.jacobian(f, x))
    ref = torch.func.jacrev(lambda z: torch.tanh(6.0 * z))(x)
    np.testing.assert_allclose(J.numpy(), ref.numpy(), rtol=1e-12)
    assert torch.equal(state, torch.zeros(4, dtype=torch.float64))
    assert int(counter) == 0 and torch.equal(total, torch.zeros(4, dtype=torch.float64))


def _keras_bn_model(tf):
    keras = tf.keras
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(6),
                              keras.layers.BatchNormalization(), keras.layers.Dense(2)])
    model(tf.random.stateless_normal((16, 4), seed=[3, 4]), training=True)
    return model


KERAS_WAYS = ["module", "wrapper attribute", "default argument", "list", "dict",
              "helpers 4 deep", "weak reference"]


@pytest.mark.parametrize("way", KERAS_WAYS)
def test_keras_model_state_however_f_reaches_it(way):
    tf = _framework("tensorflow")
    model = _keras_bn_model(tf)
    f = _ways_to_reach(model, lambda m, z: m(z, training=True))[way]
    X = tf.random.stateless_normal((8, 4), seed=[1, 2])
    before = [v.numpy().copy() for v in model.variables]
    _every_entry_point(f, X, "tensorflow")
    for v, b in zip(model.variables, before):
        np.testing.assert_array_equal(v.numpy(), b, err_msg=v.path)
    model(X, training=True)  # the model still updates its statistics in user code
    assert not np.array_equal(model.layers[1].moving_mean.numpy(), before[2])


def test_keras_model_built_by_f():
    """A model's first call builds its variables; jacspec's guard must not get in the way."""
    tf = _framework("tensorflow")
    keras = tf.keras
    model = keras.Sequential([keras.layers.Dense(3), keras.layers.BatchNormalization()])
    X = tf.random.stateless_normal((5, 4), seed=[0, 7], dtype=tf.float32)
    with tf.GradientTape() as outer:
        J = js.dense(js.jacobian(lambda z: model(z, training=False), X[0:1]))
        loss = tf.reduce_sum(J**2)
    assert len(model.variables) == 6
    kernel = model.layers[0].kernel
    assert outer.gradient(loss, kernel.value) is not None  # f used the real variables
    with tf.GradientTape() as tape:
        tape.watch(X)
        y = model(X[0:1], training=False)
    ref = tape.jacobian(y, X)[..., 0:1, :]
    np.testing.assert_allclose(J.numpy(), tf.reshape(ref, J.shape).numpy(), rtol=1e-5)
    before = [v.numpy().copy() for v in model.variables]
    js.dense(js.jacobian(lambda z: model(z, training=True), X))
    for v, b in zip(model.variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
