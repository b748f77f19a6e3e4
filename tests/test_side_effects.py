"""Nothing the user passed is mutated: parameters, buffers, modes, flags, inputs."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js


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


def test_torch_products_are_differentiable_in_parameters():
    torch = pytest.importorskip("torch")
    W = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, dtype=torch.float64)
    J = js.jacobian(lambda z: W @ z, x)
    v = torch.randn(2, dtype=torch.float64)
    (J @ v).sum().backward()
    # d/dW sum(W v) = 1 v^T
    np.testing.assert_allclose(W.grad.numpy(), np.outer(np.ones(3), v.numpy()))
    # without any parameter requiring grad, results are plain tensors
    out = js.jacobian(lambda z: z * 2.0, x) @ v
    assert not out.requires_grad


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


def test_jax_jacobian_under_jit_and_grad():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)
    W = jnp.asarray(np.random.default_rng(0).standard_normal((3, 2)))

    @jax.jit
    def product(W, x, v):
        return js.jacobian(lambda z: jnp.tanh(W @ z), x).matvec(v)

    x, v = jnp.ones(2), jnp.asarray([1.0, -1.0])
    ref = (1 - jnp.tanh(W @ x) ** 2) * (W @ v)
    np.testing.assert_allclose(np.asarray(product(W, x, v)), np.asarray(ref), rtol=1e-12)
    g = jax.grad(lambda W: product(W, x, v).sum())(W)
    g_ref = jax.grad(lambda W: ((1 - jnp.tanh(W @ x) ** 2) * (W @ v)).sum())(W)
    np.testing.assert_allclose(np.asarray(g), np.asarray(g_ref), rtol=1e-12)


def test_keras_variables_are_tensorflow_arrays():
    tf = pytest.importorskip("tensorflow")
    keras = tf.keras
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(1)])
    X = tf.random.stateless_normal((5, 3), seed=[0, 1])
    params = model.trainable_variables  # Keras 3 variables, not tf.Variable instances
    H = js.hessian(lambda vs: tf.reduce_mean(model(X) ** 2), params)
    n = sum(int(np.prod(v.shape)) for v in params)
    assert H.shape == (n, n)
    D = js.dense(H).numpy()
    # reference: nested tapes over the tf.Variables behind the Keras variables
    tvars = [v.value for v in params]
    with tf.GradientTape(persistent=True) as t2:
        with tf.GradientTape() as t1:
            loss = tf.reduce_mean(model(X) ** 2)
        g = tf.concat([tf.reshape(gi, [-1]) for gi in t1.gradient(loss, tvars)], 0)
    rows = t2.jacobian(g, tvars, experimental_use_pfor=False)
    ref = np.concatenate([r.numpy().reshape(n, -1) for r in rows], axis=1)
    np.testing.assert_allclose(D, ref, rtol=1e-4, atol=1e-6)
    kernel = model.layers[0].kernel
    with tf.GradientTape() as tape:
        s = js.conv.miyato(tf.reshape(kernel, (1, 1, 3, 4)))
    assert tape.gradient(s, kernel) is not None


def test_torch_operator_survives_the_users_backward():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x = torch.randn(4)
    J = js.jacobian(model, x)
    js.spectral_norm(J).backward()  # frees the graph J's products reuse
    ref = torch.func.jacrev(model)(x).detach().numpy()
    np.testing.assert_allclose(js.dense(J).detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    H = js.hessian(lambda p: model(x).pow(2).sum(), dict(model.named_parameters()))
    (H @ torch.ones(H.shape[1])).sum().backward()
    v = torch.ones(H.shape[1])
    first = (H @ v).detach()
    np.testing.assert_allclose((H @ v).detach().numpy(), first.numpy(), rtol=1e-6)
