"""16-bit models (bfloat16, float16): products in the model's dtype, solvers in float32
(float64 on request), and top eigenvalues and per-sample spectral norms within what
16-bit products allow of the same weights evaluated in float64."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js
from _helpers import dtype_name, from_numpy, to_numpy

# Relative accuracy (to the largest value) of values from 16-bit products: a few units
# of the dtype's roundoff (bfloat16: 2**-8, float16: 2**-11), as documented.
ACCURACY = {"bfloat16": 4e-2, "float16": 5e-3}
SIZES = [4, 8, 8, 2]


def _np(a):
    a = a.detach() if hasattr(a, "detach") else a
    return np.asarray(to_numpy(a.float() if hasattr(a, "float") else a), dtype=np.float64)


def _cast(b, a, name):
    """A framework array ``a`` (float64) rounded to ``name``."""
    if b == "torch":
        import torch

        return a.to(getattr(torch, name))
    if b == "jax":
        import jax.numpy as jnp

        return a.astype(jnp.dtype(name))
    import tensorflow as tf

    return tf.cast(a, tf.as_dtype(name))


def _ops(b):
    if b == "torch":
        import torch

        return torch.tanh, lambda z, t: ((z - t) ** 2).mean()
    if b == "jax":
        import jax.numpy as jnp

        return jnp.tanh, lambda z, t: jnp.mean((z - t) ** 2)
    import tensorflow as tf

    return tf.tanh, lambda z, t: tf.reduce_mean((z - t) ** 2)


def _problem(b, name):
    """The same weights and data twice: rounded to ``name``, and those values in float64."""
    rng = np.random.default_rng(0)
    shapes = [s for i in range(len(SIZES) - 1)
              for s in ((SIZES[i + 1], SIZES[i]), (SIZES[i + 1],))]
    arrays = [rng.standard_normal(s) / np.sqrt(s[-1]) for s in shapes]
    X, Y = rng.standard_normal((8, SIZES[0])), rng.standard_normal((8, SIZES[-1]))
    half = [_cast(b, from_numpy(a, b, "float64"), name) for a in arrays + [X, Y]]
    full = [_cast(b, h, "float64") for h in half]  # the rounded values, exactly
    tanh, mse = _ops(b)

    def apply(params, x):
        for i in range(0, len(params), 2):
            W, c = params[i], params[i + 1]
            x = (_matmul(b, x, W) + c)
            x = tanh(x) if i + 2 < len(params) else x
        return x

    return [(h[:-2], h[-2], h[-1]) for h in (half, full)], apply, mse


def _matmul(b, x, W):
    if b == "tensorflow":
        import tensorflow as tf

        return tf.matmul(x, W, transpose_b=True)
    return x @ W.T


@pytest.mark.parametrize("name", ["bfloat16", "float16"])
def test_half_precision_eigenvalues_and_norms(autodiff_backend, name):
    b = autodiff_backend
    ((ph, Xh, Yh), (pd, Xd, Yd)), apply, mse = _problem(b, name)
    acc = ACCURACY[name]

    H = js.hessian(lambda p: mse(apply(p, Xh), Yh), list(ph))
    Hd = js.hessian(lambda p: mse(apply(p, Xd), Yd), list(pd))
    assert dtype_name(H.dtype) == "float32" and H.product_eps == {"bfloat16": 2**-8,
                                                                  "float16": 2**-11}[name]
    top, ref = _np(js.eigsh(H, k=1).values), _np(js.eigsh(Hd, k=1).values)
    assert np.all(np.isfinite(top))
    np.testing.assert_allclose(top, ref, rtol=acc)

    J = js.jacobian(lambda x: apply(ph, x), Xh, batched=True)
    Jd = js.jacobian(lambda x: apply(pd, x), Xd, batched=True)
    sig, sig_ref = _np(js.spectral_norm(J)), _np(js.spectral_norm(Jd))
    assert sig.shape == (8,) and np.all(np.isfinite(sig))
    np.testing.assert_allclose(sig, sig_ref, rtol=acc)

    G = js.ggn(apply, mse, list(ph), data=[(Xh, Yh)])
    Gd = js.ggn(apply, mse, list(pd), data=[(Xd, Yd)])
    g, g_ref = _np(js.eigsh(G, k=1).values), _np(js.eigsh(Gd, k=1).values)
    np.testing.assert_allclose(g, g_ref, rtol=acc)

    # float64 solver vectors on request; the products still run in 16 bits
    H64 = js.hessian(lambda p: mse(apply(p, Xh), Yh), list(ph), dtype="float64")
    v = from_numpy(np.random.default_rng(1).standard_normal(H.shape[1]), b, "float64")
    assert dtype_name(H64.dtype) == "float64"
    np.testing.assert_allclose(_np(H64 @ v), _np(Hd @ v), atol=acc * np.abs(_np(Hd @ v)).max())


def test_bad_solver_dtype_is_a_value_error(autodiff_backend):
    x = from_numpy(np.ones(3), autodiff_backend, "float32")
    with pytest.raises(ValueError, match="Expected dtype to be float32 or float64"):
        js.jacobian(lambda t: t * 2, x, dtype="int32")
