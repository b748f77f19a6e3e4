"""js.jacobian / js.hessian cross-checked against each framework's own dense autodiff."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jacspec as js
from _helpers import from_numpy, to_numpy
from _models import mlp, mlp_weights, reference_hessian, reference_jacobian, small_cnn

TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


def _close(a, b, dtype):
    np.testing.assert_allclose(to_numpy(a), b, **TOL[dtype])


# layer widths from a small set: eager JAX compiles per shape, so examples reuse programs
@given(
    sizes=st.lists(st.sampled_from([1, 3, 6]), min_size=2, max_size=4),
    act=st.sampled_from(["tanh", "relu", "softplus"]),
    seed=st.integers(0, 2**16),
)
def test_jacobian_mlp_matches_dense(autodiff_backend, dtype, sizes, act, seed):
    b = autodiff_backend
    rng = np.random.default_rng(seed)
    f = mlp(b, mlp_weights(rng, sizes), dtype, act)
    x = from_numpy(rng.standard_normal(sizes[0]), b, dtype)
    J = js.jacobian(f, x)
    ref = reference_jacobian(b, f, x)
    assert J.shape == ref.shape and J.batch_shape == ()
    assert J.backend == b
    _close(js.dense(J), ref, dtype)
    _close(js.dense(J.T), ref.T, dtype)
    v = rng.standard_normal(sizes[0])
    u = rng.standard_normal(sizes[-1])
    Jv = J.matvec(from_numpy(v, b, dtype))
    JTu = J.rmatvec(from_numpy(u, b, dtype))
    _close(Jv, ref @ v, dtype)
    _close(JTu, ref.T @ u, dtype)
    # adjoint identity <J v, u> == <v, J^T u>
    lhs = float(to_numpy(Jv) @ u)
    rhs = float(v @ to_numpy(JTu))
    assert np.isclose(lhs, rhs, rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 10)


@given(
    sizes=st.lists(st.sampled_from([1, 3, 5]), min_size=2, max_size=3),
    batch=st.sampled_from([1, 4]),
    k=st.integers(1, 3),
    seed=st.integers(0, 2**16),
)
def test_batched_jacobian_matches_per_sample(autodiff_backend, dtype, sizes, batch, k, seed):
    b = autodiff_backend
    rng = np.random.default_rng(seed)
    f = mlp(b, mlp_weights(rng, sizes), dtype, "tanh")
    Xn = rng.standard_normal((batch, sizes[0]))
    X = from_numpy(Xn, b, dtype)
    J = js.jacobian(f, X, batched=True)
    assert J.batch_shape == (batch,) and J.shape == (sizes[-1], sizes[0])
    refs = np.stack([reference_jacobian(b, f, from_numpy(Xn[i], b, dtype)) for i in range(batch)])
    _close(js.dense(J), refs, dtype)
    V = rng.standard_normal((batch, sizes[0], k))
    U = rng.standard_normal((batch, sizes[-1], k))
    _close(J.matmat(from_numpy(V, b, dtype)), refs @ V, dtype)
    _close(J.rmatmat(from_numpy(U, b, dtype)), np.swapaxes(refs, 1, 2) @ U, dtype)
    _close(J.matvec(from_numpy(V[..., 0], b, dtype)), (refs @ V)[..., 0], dtype)


@pytest.mark.parametrize("batched", [False, True])
def test_jacobian_cnn_multidimensional_shapes(autodiff_backend, dtype, batched):
    b = autodiff_backend
    rng = np.random.default_rng(3)
    f, in_shape = small_cnn(b, rng, dtype)
    Xn = rng.standard_normal(((2,) if batched else ()) + in_shape)
    X = from_numpy(Xn, b, dtype)
    J = js.jacobian(f, X, batched=batched)
    n = int(np.prod(in_shape))
    assert J.shape == (4, n)
    if batched:
        refs = np.stack([reference_jacobian(b, f, from_numpy(x, b, dtype)) for x in Xn])
    else:
        refs = reference_jacobian(b, f, X)
    _close(js.dense(J), refs, dtype)
    _close(js.dense(J.H), np.swapaxes(refs, -1, -2), dtype)


def test_jacobian_value_and_output_shapes(autodiff_backend):
    b = autodiff_backend
    x = from_numpy(np.arange(6.0).reshape(2, 3), b, "float64")
    J = js.jacobian(lambda z: z * 2.0, x)
    assert J.shape == (6, 6)
    np.testing.assert_allclose(to_numpy(J.value), 2 * np.arange(6.0).reshape(2, 3))
    np.testing.assert_allclose(to_numpy(js.dense(J)), 2 * np.eye(6))


def test_constant_function_is_zero_operator(autodiff_backend):
    b = autodiff_backend
    x = from_numpy(np.ones(3), b, "float64")
    c = from_numpy(np.arange(2.0), b, "float64")
    J = js.jacobian(lambda z: c, x)
    np.testing.assert_array_equal(to_numpy(js.dense(J)), np.zeros((2, 3)))
    np.testing.assert_array_equal(to_numpy(js.dense(J.T)), np.zeros((3, 2)))


@given(n=st.integers(1, 5), seed=st.integers(0, 2**16))
def test_hessian_matches_dense(autodiff_backend, dtype, n, seed):
    b = autodiff_backend
    rng = np.random.default_rng(seed)
    f0 = mlp(b, mlp_weights(rng, [n, 4, 1]), dtype, "softplus")

    def f(x):
        y = f0(x)
        return (y * y).sum() if b != "tensorflow" else __import__("tensorflow").reduce_sum(y * y)

    x = from_numpy(rng.standard_normal(n), b, dtype)
    H = js.hessian(f, x)
    ref = reference_hessian(b, f, x)
    assert H.shape == (n, n) and H.is_hermitian
    _close(js.dense(H), ref, dtype)
    _close(js.dense(H.T), ref, dtype)


def test_batched_hessian(autodiff_backend, dtype):
    b = autodiff_backend
    rng = np.random.default_rng(0)
    f0 = mlp(b, mlp_weights(rng, [3, 5, 1]), dtype, "tanh")

    def per_sample(x):  # (B, 3) -> (B,)
        return f0(x)[..., 0] ** 2

    Xn = rng.standard_normal((4, 3))
    H = js.hessian(per_sample, from_numpy(Xn, b, dtype), batched=True)
    assert H.batch_shape == (4,) and H.shape == (3, 3)
    refs = np.stack(
        [reference_hessian(b, lambda x: per_sample(x[None])[0], from_numpy(x, b, dtype)) for x in Xn]
    )
    _close(js.dense(H), refs, dtype)


def test_hessian_torch_named_parameters():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    X = torch.randn(5, 3, dtype=torch.float64)
    params = dict(model.named_parameters())
    names = list(params)
    shapes = [p.shape for p in params.values()]
    sizes = [p.numel() for p in params.values()]

    def loss_flat(theta):
        ps = {k: t.reshape(s) for k, t, s in zip(names, torch.split(theta, sizes), shapes)}
        return torch.func.functional_call(model, ps, (X,)).pow(2).mean()

    theta0 = torch.cat([p.detach().reshape(-1) for p in params.values()])
    ref = torch.func.jacrev(torch.func.jacrev(loss_flat))(theta0).numpy()  # as _models
    # functional style: f uses the collection it is given
    H1 = js.hessian(lambda p: torch.func.functional_call(model, p, (X,)).pow(2).mean(), params)
    # closure style, with the named_parameters() iterator itself
    H2 = js.hessian(lambda p: model(X).pow(2).mean(), model.named_parameters())
    for H in (H1, H2):
        assert H.shape == (sum(sizes),) * 2
        np.testing.assert_allclose(to_numpy(js.dense(H)), ref, rtol=1e-10, atol=1e-12)
    v = torch.randn(sum(sizes), dtype=torch.float64)
    np.testing.assert_allclose(to_numpy(H1 @ v), ref @ v.numpy(), rtol=1e-10, atol=1e-12)


def test_hessian_jax_pytree():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(0)
    X = jnp.asarray(rng.standard_normal((6, 3)))
    params = {"w": jnp.asarray(rng.standard_normal((3, 2))), "b": (jnp.zeros(2), jnp.ones(1))}

    def loss(p):
        return jnp.mean(jnp.tanh(X @ p["w"] + p["b"][0]) ** 2) * p["b"][1][0] ** 2

    theta0, unravel = ravel_pytree(params)
    ref = np.asarray(jax.jit(jax.hessian(lambda t: loss(unravel(t))))(theta0))
    H = js.hessian(loss, params)
    assert H.shape == (9, 9)
    np.testing.assert_allclose(np.asarray(js.dense(H)), ref, rtol=1e-10, atol=1e-12)


def test_hessian_tf_variables():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(0)
    W = tf.Variable(rng.standard_normal((3, 2)))
    c = tf.Variable(rng.standard_normal(2))
    X = tf.constant(rng.standard_normal((5, 3)))

    def loss(vs):
        w, b = vs
        return tf.reduce_mean(tf.tanh(X @ w + b) ** 2)

    H = js.hessian(loss, [W, c])
    sizes = [6, 2]

    def loss_flat(theta):
        w = tf.reshape(theta[:6], (3, 2))
        return tf.reduce_mean(tf.tanh(X @ w + theta[6:]) ** 2)

    theta0 = tf.concat([tf.reshape(W, [-1]), c], 0)
    with tf.GradientTape() as t2:
        t2.watch(theta0)
        with tf.GradientTape() as t1:
            t1.watch(theta0)
            y = loss_flat(theta0)
        g = t1.gradient(y, theta0)
    ref = t2.jacobian(g, theta0).numpy()
    assert H.shape == (sum(sizes),) * 2
    np.testing.assert_allclose(js.dense(H).numpy(), ref, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------------ bad input


def test_numpy_x_has_no_autodiff():
    with pytest.raises(TypeError, match="NumPy has no automatic differentiation"):
        js.jacobian(lambda x: x, np.ones(3))
    with pytest.raises(TypeError, match="NumPy has no automatic differentiation"):
        js.hessian(lambda x: (x**2).sum(), np.ones(3))


@pytest.mark.parametrize("bad", [[1.0, 2.0], 3.0, "x", None])
def test_non_array_x(bad):
    with pytest.raises(TypeError, match="Expected x"):
        js.jacobian(lambda x: x, bad)


def test_non_callable_f(autodiff_backend):
    with pytest.raises(TypeError, match="callable"):
        js.jacobian(3, from_numpy(np.ones(2), autodiff_backend, "float64"))


def test_integer_x(autodiff_backend):
    x = from_numpy(np.arange(3), autodiff_backend, "int32")
    with pytest.raises(TypeError, match="dtype"):
        js.jacobian(lambda z: z, x)


def test_integer_output(autodiff_backend):
    b = autodiff_backend
    x = from_numpy(np.ones(3), b, "float64")
    out = from_numpy(np.arange(3), b, "int32")
    with pytest.raises(TypeError, match="integer"):
        js.jacobian(lambda z: out, x)


def test_non_array_output(autodiff_backend):
    x = from_numpy(np.ones(3), autodiff_backend, "float64")
    with pytest.raises(TypeError, match="return a single"):
        js.jacobian(lambda z: (z, z), x)


def test_nan_output(autodiff_backend):
    x = from_numpy(np.array([1.0, -1.0]), autodiff_backend, "float64")
    with pytest.raises(FloatingPointError, match="NaN"):
        js.jacobian(lambda z: z * float("nan"), x)
    with pytest.raises(FloatingPointError, match="NaN"):
        js.hessian(lambda z: (z * float("inf")).sum() if autodiff_backend != "tensorflow"
                   else __import__("tensorflow").reduce_sum(z * float("inf")), x)


def test_batch_size_change(autodiff_backend):
    x = from_numpy(np.ones((4, 3)), autodiff_backend, "float64")
    with pytest.raises(ValueError, match=r"batch size.*Received output shape \(2, 3\)"):
        js.jacobian(lambda z: z[:2], x, batched=True)


def test_hessian_of_non_scalar(autodiff_backend):
    x = from_numpy(np.ones(3), autodiff_backend, "float64")
    with pytest.raises(ValueError, match="scalar"):
        js.hessian(lambda z: z * 2.0, x)


def test_mixed_frameworks_in_collection():
    torch = pytest.importorskip("torch")
    tf = pytest.importorskip("tensorflow")
    with pytest.raises(TypeError, match="tensorflow and torch"):
        js.hessian(lambda p: p[0].sum(), [torch.ones(2), tf.ones(2)])


def test_vector_shape_error(autodiff_backend):
    b = autodiff_backend
    J = js.jacobian(lambda z: z * 2.0, from_numpy(np.ones((3, 2)), b, "float64"), batched=True)
    with pytest.raises(ValueError, match=r"Expected an array of shape \(3, 2\). Received \(2,\)"):
        J.matvec(from_numpy(np.ones(2), b, "float64"))
    with pytest.raises(TypeError, match="numpy"):
        J.matvec(np.ones((3, 2)))
