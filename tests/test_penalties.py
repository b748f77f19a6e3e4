"""Tests of ``js.penalties``: values against dense references, envelope gradients, targets,
the unbiased Frobenius estimate, double backprop, use inside each framework's training
machinery (torch ``backward``, ``jax.grad`` under ``jax.jit``, ``tf.GradientTape`` and a
Keras ``train_step``), a short training run, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js
from _helpers import from_numpy, to_numpy
from jacspec.backends import get_backend

# ----------------------------------------------------------------------------- helpers


def value_and_grad(backend: str, loss, params: list[np.ndarray], dtype: str = "float64",
                   *, jit: bool = True):
    """``loss(*params)`` and its gradients w.r.t. the parameters, as NumPy, computed the
    way a user of ``backend`` would: torch ``backward``, ``jax.jit(jax.value_and_grad)``,
    ``tf.GradientTape`` over ``tf.Variable``s."""
    if backend == "torch":

        ps = [from_numpy(p, backend, dtype).requires_grad_(True) for p in params]
        val = loss(*ps)
        assert tuple(val.shape) == ()
        val.backward()
        return float(val.detach()), [to_numpy(p.grad) for p in ps]
    if backend == "jax":
        import jax

        ps = [from_numpy(p, backend, dtype) for p in params]
        fn = jax.value_and_grad(lambda ps: loss(*ps))
        val, grads = (jax.jit(fn) if jit else fn)(ps)
        assert tuple(val.shape) == ()
        return float(val), [to_numpy(g) for g in grads]
    if backend == "tensorflow":
        import tensorflow as tf

        ps = [tf.Variable(from_numpy(p, backend, dtype)) for p in params]
        with tf.GradientTape() as tape:
            val = loss(*ps)
        assert tuple(val.shape) == ()
        grads = tape.gradient(val, ps)
        return float(val), [to_numpy(g) for g in grads]
    raise ValueError(backend)


def xp_of(backend: str):
    return get_backend(backend).xp


def linear(backend: str, W):
    """``f(x) = W x`` on a batch ``x`` of shape ``(B, n)``."""
    xp = xp_of(backend)
    return lambda z: xp.matmul(z, xp.matrix_transpose(W))


def finite_difference(fun, W: np.ndarray, h: float = 1e-6) -> np.ndarray:
    G = np.zeros_like(W)
    for idx in np.ndindex(W.shape):
        E = np.zeros_like(W)
        E[idx] = h
        G[idx] = (fun(W + E) - fun(W - E)) / (2 * h)
    return G


# ------------------------------------------------------------------ linear: envelope


@pytest.mark.parametrize("method", ["lanczos", "power"])
@pytest.mark.parametrize("squared", [True, False])
def test_linear_gradient_is_envelope(autodiff_backend, method, squared):
    backend = autodiff_backend
    rng = np.random.default_rng(0)
    # a clear spectral gap so that power iteration converges in the budget
    U, _ = np.linalg.qr(rng.standard_normal((5, 5)))
    V, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    S = np.array([3.0, 1.0, 0.5, 0.2])
    W0 = U[:, :4] @ np.diag(S) @ V.T
    x = from_numpy(rng.standard_normal((3, 4)), backend, "float64")
    num = 8 if method == "lanczos" else 60

    def loss(W):
        return js.penalties.spectral(linear(backend, W), x, method=method, squared=squared,
                                     maxiter=num, tol=1e-12)

    val, (g,) = value_and_grad(backend, loss, [W0])
    u, v = U[:, 0], V[:, 0]
    sigma = S[0]
    expected = 2 * sigma * np.outer(u, v) if squared else np.outer(u, v)
    np.testing.assert_allclose(val, sigma**2 if squared else sigma, rtol=1e-8)
    np.testing.assert_allclose(g, expected, atol=1e-6)


def test_linear_value_float32_and_batch(autodiff_backend):
    backend = autodiff_backend
    rng = np.random.default_rng(1)
    W0 = rng.standard_normal((6, 6))
    x = from_numpy(rng.standard_normal((5, 6)), backend, "float32")
    W = from_numpy(W0, backend, "float32")
    pen = js.penalties.spectral(linear(backend, W), x)
    assert tuple(pen.shape) == ()
    assert get_backend(backend).dtype_name(pen.dtype) == "float32"
    np.testing.assert_allclose(float(to_numpy(pen)), np.linalg.norm(W0, 2) ** 2, rtol=1e-4)


# ----------------------------------------------------------------------------- targets


def _gradient_field(backend, W):
    """``f(x) = W^T tanh(W x)``: the gradient of ``sum(log cosh(W x))``, symmetric Jacobian."""
    xp = xp_of(backend)
    return lambda z: xp.matmul(xp.tanh(xp.matmul(z, xp.matrix_transpose(W))), W)


def _generic(backend, W):
    xp = xp_of(backend)
    return lambda z: xp.tanh(xp.matmul(z, xp.matrix_transpose(W)))


def _dense_jacobians(backend, f, x):
    return to_numpy(js.dense(js.jacobian(f, x, batched=True)))


@pytest.mark.parametrize("squared", [True, False])
def test_transpose_target(autodiff_backend, squared):
    backend = autodiff_backend
    rng = np.random.default_rng(2)
    W = from_numpy(rng.standard_normal((7, 5)), backend, "float64")
    Wsq = from_numpy(rng.standard_normal((5, 5)), backend, "float64")
    x = from_numpy(rng.standard_normal((4, 5)), backend, "float64")
    sym = js.penalties.spectral(_gradient_field(backend, W), x, target="transpose",
                                squared=squared)
    assert abs(float(to_numpy(sym))) < 1e-12
    gen_f = _generic(backend, Wsq)
    gen = float(to_numpy(js.penalties.spectral(gen_f, x, target="transpose", squared=squared)))
    J = _dense_jacobians(backend, gen_f, x)
    ref = np.linalg.svd(J - np.swapaxes(J, 1, 2), compute_uv=False)[:, 0]
    np.testing.assert_allclose(gen, np.mean(ref**2 if squared else ref), rtol=1e-8)
    assert gen > 0.1


def test_transpose_target_gradient_vanishes_for_gradient_field(autodiff_backend):
    backend = autodiff_backend
    rng = np.random.default_rng(3)
    x = from_numpy(rng.standard_normal((3, 4)), backend, "float64")

    def loss(W):
        return js.penalties.spectral(_gradient_field(backend, W), x, target="transpose")

    val, (g,) = value_and_grad(backend, loss, [rng.standard_normal((6, 4))])
    assert abs(val) < 1e-12 and np.all(np.isfinite(g)) and np.abs(g).max() < 1e-10


def test_rowsum_diagonal_target(autodiff_backend):
    backend = autodiff_backend
    xp = xp_of(backend)
    rng = np.random.default_rng(4)
    x = from_numpy(rng.standard_normal((4, 6)), backend, "float64")
    elementwise = lambda z: xp.tanh(z) * z**2 + xp.sin(3 * z)  # noqa: E731
    diag = js.penalties.spectral(elementwise, x, target="rowsum_diagonal")
    assert abs(float(to_numpy(diag))) < 1e-12
    W = from_numpy(rng.standard_normal((6, 6)), backend, "float64")
    gen_f = _generic(backend, W)
    gen = float(to_numpy(js.penalties.spectral(gen_f, x, target="rowsum_diagonal")))
    J = _dense_jacobians(backend, gen_f, x)
    D = np.stack([np.diag(Jb.sum(axis=1)) for Jb in J])
    ref = np.linalg.svd(J - D, compute_uv=False)[:, 0]
    np.testing.assert_allclose(gen, np.mean(ref**2), rtol=1e-8)


def test_hessian_derivative(autodiff_backend):
    backend = autodiff_backend
    xp = xp_of(backend)
    rng = np.random.default_rng(5)
    W = from_numpy(rng.standard_normal((3, 4)), backend, "float64")
    x = from_numpy(rng.standard_normal((5, 4)), backend, "float64")
    g = lambda z: xp.sum(xp.tanh(xp.matmul(z, xp.matrix_transpose(W))) ** 2, axis=-1)  # noqa: E731
    pen = float(to_numpy(js.penalties.spectral(g, x, derivative="hessian")))
    H = to_numpy(js.dense(js.hessian(g, x, batched=True)))
    ref = np.abs(np.linalg.eigvalsh(H)).max(axis=1)
    np.testing.assert_allclose(pen, np.mean(ref**2), rtol=1e-8)
    # (B, 1) outputs are accepted as one scalar per sample
    g1 = lambda z: xp.reshape(g(z), (-1, 1))  # noqa: E731
    pen1 = float(to_numpy(js.penalties.spectral(g1, x, derivative="hessian")))
    np.testing.assert_allclose(pen1, pen, rtol=1e-12)


# --------------------------------------------------------------------------- frobenius


def test_frobenius_exact_equals_dense(autodiff_backend, dtype):
    backend = autodiff_backend
    rng = np.random.default_rng(6)
    W0 = rng.standard_normal((3, 5))
    X0 = rng.standard_normal((4, 5))
    W = from_numpy(W0, backend, dtype)
    x = from_numpy(X0, backend, dtype)
    val = float(to_numpy(js.penalties.frobenius(_generic(backend, W), x, num_projections=None)))
    d = 1 - np.tanh(X0 @ W0.T) ** 2  # (B, 3)
    ref = np.mean([np.sum((d[i][:, None] * W0) ** 2) for i in range(len(X0))])
    np.testing.assert_allclose(val, ref, rtol=1e-5 if dtype == "float32" else 1e-12)


def test_frobenius_projection_unbiased(autodiff_backend):
    backend = autodiff_backend
    xp = xp_of(backend)
    rng = np.random.default_rng(7)
    W = from_numpy(rng.standard_normal((4, 3)), backend, "float64")
    x1 = from_numpy(rng.standard_normal((1, 3)), backend, "float64")
    x = xp.concat([x1] * 50, axis=0)  # 50 independent projections of the same Jacobian
    f = _generic(backend, W)
    exact = float(to_numpy(js.penalties.frobenius(f, x1, num_projections=None)))
    means = [float(to_numpy(js.penalties.frobenius(f, x, seed=s))) for s in range(30)]
    se = np.std(means, ddof=1) / np.sqrt(len(means))
    assert se > 0
    assert abs(np.mean(means) - exact) < 3 * se
    # deterministic for a fixed seed, several projections average
    a = to_numpy(js.penalties.frobenius(f, x, seed=3, num_projections=4))
    b = to_numpy(js.penalties.frobenius(f, x, seed=3, num_projections=4))
    assert a == b


def test_frobenius_gradient_matches_finite_differences(autodiff_backend):
    backend = autodiff_backend
    rng = np.random.default_rng(8)
    W0 = rng.standard_normal((3, 4))
    X0 = rng.standard_normal((2, 4))
    x = from_numpy(X0, backend, "float64")

    def loss(W):
        return js.penalties.frobenius(_generic(backend, W), x, num_projections=2, seed=1)

    _, (g,) = value_and_grad(backend, loss, [W0])

    def numeric(Wn):
        return float(to_numpy(loss(from_numpy(Wn, backend, "float64"))))

    np.testing.assert_allclose(g, finite_difference(numeric, W0), rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------- gradient norm


def test_gradient_norm_values_and_gradient(autodiff_backend):
    backend = autodiff_backend
    xp = xp_of(backend)
    rng = np.random.default_rng(9)
    W0 = rng.standard_normal((3, 4))
    X0 = rng.standard_normal((5, 4))
    x = from_numpy(X0, backend, "float64")

    def per_sample(W):
        return lambda z: xp.sum(xp.tanh(xp.matmul(z, xp.matrix_transpose(W))), axis=-1)

    # d l_i / d x_i = W^T (1 - tanh^2(W x_i))
    G = (1 - np.tanh(X0 @ W0.T) ** 2) @ W0
    Wt = from_numpy(W0, backend, "float64")
    val = float(to_numpy(js.penalties.gradient_norm(per_sample(Wt), x)))
    np.testing.assert_allclose(val, np.mean(np.sum(G**2, axis=1)), rtol=1e-12)
    scalar = lambda z: xp.mean(per_sample(Wt)(z))  # noqa: E731
    val_s = float(to_numpy(js.penalties.gradient_norm(scalar, x)))
    np.testing.assert_allclose(val_s, np.sum((G / len(X0)) ** 2), rtol=1e-12)

    def loss(W):
        return js.penalties.gradient_norm(per_sample(W), x)

    _, (g,) = value_and_grad(backend, loss, [W0])

    def numeric(Wn):
        return float(to_numpy(loss(from_numpy(Wn, backend, "float64"))))

    np.testing.assert_allclose(g, finite_difference(numeric, W0), rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------ framework machinery


def _only(backend: str, name: str) -> None:
    if backend != name:
        pytest.skip(f"{name}-specific test")


def test_penalties_in_jax_jit(autodiff_backend):
    _only(autodiff_backend, "jax")
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(10)
    W0 = jnp.asarray(rng.standard_normal((4, 4)))
    x = jnp.asarray(rng.standard_normal((3, 4)))

    def loss(W, key):
        f = lambda z: jnp.tanh(z @ W.T)  # noqa: E731
        per_sample = lambda z: jnp.sum(f(z) ** 2, axis=-1)  # noqa: E731
        return (js.penalties.spectral(f, x)
                + js.penalties.spectral(f, x, target="transpose", method="power")
                + js.penalties.spectral(f, x, target="rowsum_diagonal", squared=False)
                + js.penalties.spectral(per_sample, x, derivative="hessian")
                + js.penalties.frobenius(f, x, seed=key)
                + js.penalties.gradient_norm(per_sample, x))

    step = jax.jit(jax.value_and_grad(loss))
    v1, g1 = step(W0, jax.random.key(0))
    v2, _ = step(W0, jax.random.key(1))  # a traced key: new projections, no retrace
    eager_v, eager_g = jax.value_and_grad(loss)(W0, jax.random.key(0))
    assert np.isfinite(float(v1)) and float(v1) != float(v2)
    np.testing.assert_allclose(float(v1), float(eager_v), rtol=1e-10)
    np.testing.assert_allclose(np.asarray(g1), np.asarray(eager_g), rtol=1e-8, atol=1e-12)


def test_penalty_in_torch_module_training_leaves_state(autodiff_backend):
    _only(autodiff_backend, "torch")
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8),
                                torch.nn.Tanh(), torch.nn.Linear(8, 3))
    model.eval()
    x = torch.randn(6, 4)
    pen = js.penalties.spectral(model, x) + js.penalties.frobenius(model, x, seed=0)
    pen.backward()
    for p in (model[0].weight, model[0].bias, model[1].weight, model[3].weight):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0
    assert model[3].bias.grad is None  # the output bias does not change the Jacobian
    assert not model.training and not x.requires_grad


def test_keras_custom_train_step(autodiff_backend):
    _only(autodiff_backend, "tensorflow")
    import tensorflow as tf

    keras = tf.keras

    class Regularized(keras.Model):
        def __init__(self):
            super().__init__()
            self.hidden = keras.layers.Dense(16, activation="tanh")
            self.out = keras.layers.Dense(3)

        def call(self, x):
            return self.out(self.hidden(x))

        def train_step(self, data):
            x, y = data
            with tf.GradientTape() as tape:
                logits = self(x, training=True)
                ce = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
                loss = ce + 0.1 * js.penalties.spectral(self, x, method="lanczos", maxiter=4)
            grads = tape.gradient(loss, self.trainable_variables)
            self.optimizer.apply_gradients(zip(grads, self.trainable_variables))
            return {"loss": loss}

    rng = np.random.default_rng(11)
    X = rng.standard_normal((32, 5)).astype("float32")
    y = rng.integers(0, 3, 32).astype("int32")
    model = Regularized()
    model.compile(optimizer=keras.optimizers.Adam(0.01))
    hist = model.fit(X, y, epochs=2, batch_size=16, verbose=0)
    losses = hist.history["loss"]
    assert len(losses) == 2 and all(np.isfinite(losses))


# -------------------------------------------------------------------- short training


@pytest.mark.slow  # four short training runs
def test_training_with_penalty_lowers_jacobian_norm(autodiff_backend):
    """Each penalty lowers the mean test-set Jacobian spectral norm (seeded, tiny run)."""
    from jacspec import demo

    results = demo.run(autodiff_backend, n_train=100, n_test=300, steps=60, hidden=32,
                       num_between=10,
                       penalties={"spectral": 0.01, "frobenius": 0.002, "gradient_norm": 3.0},
                       plot=False, progress=False, stream=_Sink())
    plain = results[0]
    assert plain.name == "plain"
    for r in results[1:]:
        assert r.jac_mean < plain.jac_mean, (r.name, r.jac_mean, plain.jac_mean)


class _Sink:
    def write(self, s):
        pass

    def flush(self):
        pass


# ------------------------------------------------------------------------- conv bound


def test_conv_bound_is_fantastic_four(autodiff_backend):
    backend = autodiff_backend
    rng = np.random.default_rng(12)
    K = rng.standard_normal((3, 2, 3, 3))
    w = from_numpy(K if backend == "torch" else K.transpose(2, 3, 1, 0), backend, "float64")
    ref = js.conv.fantastic_four(w).bound
    val = js.penalties.conv_bound(w)
    np.testing.assert_allclose(to_numpy(val), to_numpy(ref))
    assert tuple(val.shape) == ()
    shape = K.shape if backend == "torch" else K.transpose(2, 3, 1, 0).shape
    _, (g,) = value_and_grad(backend, lambda w: js.penalties.conv_bound(w),
                             [to_numpy(w)], jit=False)
    assert g.shape == shape and np.all(np.isfinite(g)) and np.abs(g).max() > 0


# --------------------------------------------------------------------------- bad input


def test_bad_input(autodiff_backend):
    backend = autodiff_backend
    xp = xp_of(backend)
    x = from_numpy(np.ones((3, 4)), backend, "float64")
    f = lambda z: xp.tanh(z)  # noqa: E731
    with pytest.raises(ValueError, match="scalar"):
        js.penalties.spectral(f, x, derivative="hessian")
    with pytest.raises(ValueError, match="target"):
        js.penalties.spectral(f, x, target="symmetric")
    with pytest.raises(ValueError, match="derivative"):
        js.penalties.spectral(f, x, derivative="jvp")
    with pytest.raises(ValueError, match="method"):
        js.penalties.spectral(f, x, method="qr")
    with pytest.raises(ValueError, match="maxiter"):
        js.penalties.spectral(f, x, maxiter=0)
    with pytest.raises(ValueError, match="maxiter >= 2"):
        js.penalties.spectral(f, x, method="lanczos", maxiter=1)
    with pytest.raises(ValueError, match="tol"):
        js.penalties.spectral(f, x, tol=0.0)
    with pytest.raises(ValueError, match="shape"):
        js.penalties.spectral(f, x, v0=from_numpy(np.ones((3, 5)), backend, "float64"))
    with pytest.raises(ValueError, match="square"):
        js.penalties.spectral(lambda z: z[:, :2], x, target="transpose")
    with pytest.raises(ValueError, match="batch"):
        js.penalties.spectral(lambda z: z[:2], x)
    with pytest.raises(ValueError, match="non-empty"):
        js.penalties.spectral(f, x[:0])
    with pytest.raises(ValueError, match="non-empty"):
        js.penalties.frobenius(f, x[:0])
    with pytest.raises(ValueError, match="num_projections"):
        js.penalties.frobenius(f, x, num_projections=0)
    with pytest.raises(ValueError, match="scalar or one loss per sample"):
        js.penalties.gradient_norm(f, x)


def test_numpy_input_is_type_error():
    x = np.ones((3, 4))
    for call in (
        lambda: js.penalties.spectral(lambda z: z, x),
        lambda: js.penalties.frobenius(lambda z: z, x),
        lambda: js.penalties.gradient_norm(lambda z: z.sum(), x),
        lambda: js.penalties.spectral(lambda z: z, [[1.0]]),
    ):
        with pytest.raises(TypeError):
            call()


def test_return_vectors_and_warm_start(autodiff_backend):
    """``return_vectors=True`` gives the top left singular vectors (B, m); fed back as
    ``v0`` they start the next solve at the answer (a two-product budget is then exact)."""
    backend = autodiff_backend
    xp = xp_of(backend)
    rng = np.random.default_rng(11)
    W0 = rng.standard_normal((30, 20))
    x = from_numpy(rng.standard_normal((4, 20)), backend, "float64")
    W = from_numpy(W0, backend, "float64")
    f = lambda z: xp.tanh(xp.matmul(z, xp.matrix_transpose(W)))  # noqa: E731
    exact = np.linalg.svd(_dense_jacobians(backend, f, x), compute_uv=False)[:, 0]
    val, u = js.penalties.spectral(f, x, method="lanczos", tol=1e-10, return_vectors=True)
    U = to_numpy(u)
    assert U.shape == (4, 30)
    np.testing.assert_allclose(np.linalg.norm(U, axis=1), 1.0, rtol=1e-10)
    np.testing.assert_allclose(float(to_numpy(val)), np.mean(exact**2), rtol=1e-10)
    warm = js.penalties.spectral(f, x, method="lanczos", maxiter=2, v0=u)
    cold = js.penalties.spectral(f, x, method="lanczos", maxiter=2)
    np.testing.assert_allclose(float(to_numpy(warm)), np.mean(exact**2), rtol=1e-10)
    assert float(to_numpy(cold)) < np.mean(exact**2) * (1 - 1e-6)
