"""TensorFlow adapter internals the solvers rely on: row writes into work buffers (eager,
and with a traced row index inside ``tf.function``), the filled rows of a buffer and the single-vector products,
against NumPy and the dense Jacobian; AutoGraph and the solvers; Keras 3 variables as the
parameters of a Hessian."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _helpers import backend_available, row_writes, selected_backends

pytestmark = pytest.mark.skipif(
    "tensorflow" not in selected_backends() or not backend_available("tensorflow"),
    reason="the TensorFlow backend is not selected or not installed")


@given(case=row_writes(), traced=st.booleans())
def test_set_row_matches_numpy(case, traced):
    import tensorflow as tf

    from jacspec.backends.tensorflow import BACKEND

    lead, J, W, j, start, t, dtype = case
    rng = np.random.default_rng(J * 7 + W)
    X = rng.standard_normal(lead + (J, W)).astype(dtype)
    x = rng.standard_normal(lead + (t,)).astype(dtype)
    want = X.copy()
    want[..., j, start:start + t] = x
    Xt, xt = tf.constant(X), tf.constant(x)
    if traced:  # the row index as a tensor inside a graph (the traced while loop)
        got = tf.function(lambda A, i, v: BACKEND.set_row(A, i, v, start))(
            Xt, tf.constant(j), xt)
    else:
        got = BACKEND.set_row(Xt, j, xt, start)
    np.testing.assert_array_equal(got.numpy(), want)
    np.testing.assert_array_equal(Xt.numpy(), X)  # the input is not written


@pytest.mark.parametrize("traced", [False, True])
def test_leading_rows_match_numpy(traced):
    """The filled rows of a buffer, for every row count of two shapes (the eager bounds
    are made once per shape and count: a repeated call must not reuse another's)."""
    import tensorflow as tf

    from jacspec.backends.tensorflow import BACKEND

    rng = np.random.default_rng(0)
    for shape in [(3, 4, 5), (2, 4, 5, 2)] * 2:
        X = rng.standard_normal(shape).astype(np.float32)
        for j in range(shape[1] + 1):
            fn = (tf.function(lambda A, j=j: BACKEND.leading_rows(A, j)) if traced
                  else lambda A, j=j: BACKEND.leading_rows(A, j))
            np.testing.assert_array_equal(fn(tf.constant(X)).numpy(), X[:, :j])


@pytest.mark.parametrize("out_shape", [(5,), (2, 3)])
def test_single_vector_products(out_shape):
    """``mv``/``rmv`` (the solvers' steps) equal the block products and the dense
    per-sample Jacobian, also for outputs that are not flat."""
    import tensorflow as tf

    from jacspec.backends.tensorflow import BACKEND

    rng = np.random.default_rng(0)
    m = int(np.prod(out_shape))
    W = tf.constant(rng.standard_normal((4, m)))
    x = tf.constant(rng.standard_normal((3, 4)))

    def f(z):
        return tf.reshape(tf.tanh(z @ W), (-1,) + out_shape)

    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.reshape(f(x), (3, m))
    J = tape.batch_jacobian(y, x).numpy()  # (3, m, 4)
    lin = BACKEND.linearize(f, x, batched=True)
    v = rng.standard_normal((3, 4))
    u = rng.standard_normal((3, m))
    np.testing.assert_allclose(lin.mv(tf.constant(v)).numpy(), np.einsum("bmn,bn->bm", J, v),
                               rtol=1e-12)
    np.testing.assert_allclose(lin.rmv(tf.constant(u)).numpy(),
                               np.einsum("bmn,bm->bn", J, u), rtol=1e-12)
    np.testing.assert_allclose(lin.mm(tf.constant(v[..., None]), False).numpy()[..., 0],
                               lin.mv(tf.constant(v)).numpy(), rtol=1e-14)
    np.testing.assert_allclose(lin.rmm(tf.constant(u[..., None]), False).numpy()[..., 0],
                               lin.rmv(tf.constant(u)).numpy(), rtol=1e-14)


def test_tf_function_converts_user_code_not_solvers():
    """Inside ``tf.function`` AutoGraph leaves jacspec's solvers as they are (they branch
    through ``Backend.cond``) but still converts the user's function: a Python ``if``
    on a tensor in ``f`` works."""
    import tensorflow as tf

    import jacspec as js
    from jacspec.solvers import svd

    rng = np.random.default_rng(1)
    W = tf.constant(rng.standard_normal((4, 3)))
    x = tf.constant(rng.standard_normal((2, 4)))

    def f(z):
        if tf.reduce_sum(z) > 1e6:  # needs AutoGraph inside a trace
            return z @ W
        return tf.tanh(z @ W)

    g = tf.function(lambda z: js.svds(js.jacobian(f, z, batched=True), method="lanczos",
                                      maxiter=6).values[:, 0])
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = tf.tanh(x @ W)
    J = tape.batch_jacobian(y, x).numpy()
    np.testing.assert_allclose(g(x).numpy(), np.linalg.svd(J, compute_uv=False)[:, 0],
                               rtol=1e-10)
    try:
        from tensorflow.python.autograph.impl import conversion
    except ImportError:  # pragma: no cover - another TensorFlow layout
        return
    assert conversion.is_allowlisted(svd.svds)


def test_keras_variables_are_tensorflow_arrays():
    """Keras 3 variables (not ``tf.Variable``) as the parameters of a Hessian and of a
    penalty."""
    import tensorflow as tf

    import jacspec as js

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


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.complex64])
def test_vector_norm_and_row_coefs_match_numpy(dtype):
    """Norms along one or two axes, kept or dropped (one op for real arrays), their
    gradient, and the Gram–Schmidt coefficients ``W Q^H`` (conjugated when complex)."""
    import tensorflow as tf

    from jacspec.backends import _tf_namespace as xp
    from jacspec.backends.tensorflow import BACKEND

    rng = np.random.default_rng(0)

    def draw(*shape):
        a = rng.standard_normal(shape)
        return (a + 1j * rng.standard_normal(shape) if np.iscomplexobj(dtype(0)) else a
                ).astype(dtype)

    X = draw(3, 4, 5)
    for axis in (-1, 0, (-2, -1), [0, 1]):
        for keepdims in (False, True):
            got = xp.linalg.vector_norm(tf.constant(X), axis=axis, keepdims=keepdims)
            want = np.sqrt(np.sum(np.abs(X) ** 2, axis=tuple(np.atleast_1d(axis)),
                                  keepdims=keepdims))
            np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)
    if dtype is not np.complex64:
        x = tf.constant(X)
        with tf.GradientTape() as tape:
            tape.watch(x)
            n = xp.linalg.vector_norm(x, axis=-1)
        np.testing.assert_allclose(tape.gradient(n, x).numpy(),
                                   X / np.linalg.norm(X, axis=-1, keepdims=True), rtol=1e-5)
    for keepdims in (False, True):  # reductions over all axes (eager: axes made once)
        np.testing.assert_allclose(xp.sum(tf.constant(X), keepdims=keepdims).numpy(),
                                   np.sum(X, keepdims=keepdims), rtol=1e-5)
    assert bool(xp.any(tf.constant(X == X[0, 0, 0]))) and not bool(xp.all(tf.constant(X == 0)))
    Q, W = draw(2, 3, 5), draw(2, 1, 5)
    np.testing.assert_allclose(BACKEND.row_coefs(tf.constant(W), tf.constant(Q)).numpy(),
                               W @ np.conj(np.swapaxes(Q, -1, -2)), rtol=1e-5, atol=1e-6)


def test_products_record_no_gradient_under_a_tape():
    """The solvers' single-vector products are cut from any tape that records (and
    equal the Jacobian's products without one)."""
    import tensorflow as tf

    import jacspec as js

    rng = np.random.default_rng(1)
    A = tf.constant(rng.standard_normal((3, 4)).astype(np.float32))
    x = tf.constant(rng.standard_normal((2, 4)).astype(np.float32))
    lin = js.backends.get_backend("tensorflow").linearize(
        lambda z: tf.tanh(z @ tf.transpose(A)), x, batched=True)
    v = tf.constant(rng.standard_normal((2, 4)).astype(np.float32))
    quiet = lin.mv(v)
    with tf.GradientTape() as tape:
        tape.watch(v)
        loud = lin.mv(v)
    assert tape.gradient(tf.reduce_sum(loud), v) is None
    np.testing.assert_allclose(loud.numpy(), quiet.numpy())
    J = (1 - np.tanh(x.numpy() @ A.numpy().T) ** 2)[:, :, None] * A.numpy()
    np.testing.assert_allclose(quiet.numpy(), np.einsum("bij,bj->bi", J, v.numpy()),
                               rtol=1e-5, atol=1e-6)
