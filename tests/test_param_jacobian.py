"""Jacobians with respect to parameter collections (js.jacobian(f, params)) against the
framework's own dense Jacobian of the flattened parameters."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jacspec as js
from _helpers import from_numpy, to_numpy
from _models import ParamMLP, mlp_weights, reference_jacobian

TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


def _np(a):
    out = to_numpy(a.detach() if hasattr(a, "detach") else a)
    return np.asarray(out)


@given(  # shapes from small sets: eager JAX compiles per shape
    sizes=st.sampled_from([[1, 1], [3, 2], [2, 4, 3], [5, 3, 1]]),
    batch=st.sampled_from([1, 4]),
    act=st.sampled_from(["tanh", "softplus"]),
    seed=st.integers(0, 2**16),
)
def test_parameter_jacobian_matches_dense(autodiff_backend, dtype, sizes, batch, act, seed):
    b = autodiff_backend
    rng = np.random.default_rng(seed)
    net = ParamMLP(b, mlp_weights(rng, sizes), dtype, act)
    X = from_numpy(rng.standard_normal((batch, sizes[0])), b, dtype)
    J = js.jacobian(lambda p: net.apply(p, X), net.params)
    ref = reference_jacobian(b, lambda t: net.apply_flat(t, X), net.theta0)
    n = int(ref.shape[1])
    assert J.shape == (batch * sizes[-1], n) and J.batch_shape == ()
    np.testing.assert_allclose(_np(js.dense(J)), ref, **TOL[dtype])
    np.testing.assert_allclose(_np(js.dense(J.T)), ref.T, **TOL[dtype])
    # blocks of vectors (k > 1) and single vectors take different paths
    V = rng.standard_normal((n, 3))
    U = rng.standard_normal((J.shape[0], 2))
    np.testing.assert_allclose(_np(J.matmat(from_numpy(V, b, dtype))), ref @ V, **TOL[dtype])
    np.testing.assert_allclose(_np(J.rmatmat(from_numpy(U, b, dtype))), ref.T @ U, **TOL[dtype])
    np.testing.assert_allclose(_np(J.rmatvec(from_numpy(U[:, 0], b, dtype))), ref.T @ U[:, 0],
                               **TOL[dtype])
    # the empirical NTK
    ntk = _np(js.dense(J @ J.T))
    np.testing.assert_allclose(ntk, ref @ ref.T, rtol=10 * TOL[dtype]["rtol"],
                               atol=10 * TOL[dtype]["atol"] * max(1.0, np.abs(ref).max() ** 2))


def test_parameter_jacobian_torch_closure_and_spectral_norm():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    X = torch.randn(5, 3, dtype=torch.float64)
    params = {k: v.detach() for k, v in model.named_parameters()}
    ref = torch.func.jacrev(lambda p: torch.func.functional_call(model, p, (X,)))(params)
    ref = torch.cat([r.reshape(10, -1) for r in ref.values()], 1).numpy()
    # closure style: f ignores its argument and runs the model on its own parameters
    J = js.jacobian(lambda p: model(X), model.named_parameters())
    np.testing.assert_allclose(_np(js.dense(J)), ref, rtol=1e-10, atol=1e-12)
    sigma = js.spectral_norm(J)
    np.testing.assert_allclose(float(sigma.detach()), np.linalg.norm(ref, 2), rtol=1e-6)
    sigma.backward()  # differentiable in the model's parameters
    assert model[0].weight.grad is not None
    assert all(p.grad is None or p.requires_grad for p in model.parameters())


def test_parameter_jacobian_keras_variables():
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")
    layer = keras.layers.Dense(2, activation="tanh", dtype="float64")
    X = tf.constant(np.random.default_rng(0).standard_normal((4, 3)))
    layer.build((None, 3))
    J = js.jacobian(lambda p: layer(X), layer.trainable_variables)
    W, c = (v.numpy() for v in layer.trainable_variables)
    theta0 = tf.constant(np.concatenate([W.ravel(), c]))

    def flat(t):
        return tf.tanh(X @ tf.reshape(t[:6], (3, 2)) + t[6:])

    ref = reference_jacobian("tensorflow", flat, theta0)
    assert J.shape == (8, 8)
    np.testing.assert_allclose(_np(js.dense(J)), ref, rtol=1e-10, atol=1e-12)


def test_parameter_jacobian_batched_is_an_error(autodiff_backend):
    b = autodiff_backend
    net = ParamMLP(b, mlp_weights(np.random.default_rng(0), [2, 3]), "float64")
    X = from_numpy(np.ones((4, 2)), b, "float64")
    with pytest.raises(ValueError, match="batched=True"):
        js.jacobian(lambda p: net.apply(p, X), net.params, batched=True)
