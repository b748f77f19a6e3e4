"""Small models written natively in each framework, with dense reference derivatives.

Every builder takes NumPy weights so that the same model exists in every backend; the
reference Jacobian/Hessian comes from the framework's *own* dense autodiff
(``torch.func.jacrev``, ``jax.jacrev``, ``tf.GradientTape.jacobian``), never from jacspec.
"""

from __future__ import annotations

import numpy as np

from _helpers import from_numpy, to_numpy


def mlp_weights(rng: np.random.Generator, sizes: list[int]) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (rng.standard_normal((o, i)) / np.sqrt(i), 0.1 * rng.standard_normal(o))
        for i, o in zip(sizes[:-1], sizes[1:])
    ]


def mlp(backend: str, weights, dtype: str, act: str = "tanh"):
    """``f(x)`` for ``x`` of shape ``(..., n_in)``: affine layers with ``act`` between."""
    ws = [(from_numpy(W, backend, dtype), from_numpy(b, backend, dtype)) for W, b in weights]
    if backend == "torch":
        import torch

        fn = {"tanh": torch.tanh, "relu": torch.relu, "softplus": torch.nn.functional.softplus}[act]

        def f(x):
            for i, (W, b) in enumerate(ws):
                x = x @ W.T + b
                if i < len(ws) - 1:
                    x = fn(x)
            return x

        return f
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        fn = {"tanh": jnp.tanh, "relu": jax.nn.relu, "softplus": jax.nn.softplus}[act]

        def f(x):
            for i, (W, b) in enumerate(ws):
                x = x @ W.T + b
                if i < len(ws) - 1:
                    x = fn(x)
            return x

        return f
    if backend == "tensorflow":
        import tensorflow as tf

        fn = {"tanh": tf.tanh, "relu": tf.nn.relu, "softplus": tf.nn.softplus}[act]

        def f(x):
            for i, (W, b) in enumerate(ws):
                x = tf.tensordot(x, tf.transpose(W), axes=1) + b
                if i < len(ws) - 1:
                    x = fn(x)
            return x

        return f
    raise ValueError(backend)


def small_cnn(backend: str, rng: np.random.Generator, dtype: str, c_in=2, c_mid=3, hw=5,
              n_out=4):
    """A conv(3x3, same) -> tanh -> dense network on one image ``(c_in, hw, hw)`` (torch:
    channels first) or ``(hw, hw, c_in)`` (jax, tensorflow: channels last). Inputs may
    carry a leading batch axis."""
    K = rng.standard_normal((c_mid, c_in, 3, 3)) / 3.0  # OIHW
    D = rng.standard_normal((n_out, c_mid * hw * hw)) / np.sqrt(c_mid * hw * hw)
    if backend == "torch":
        import torch

        k, d = from_numpy(K, backend, dtype), from_numpy(D, backend, dtype)

        def f(x):
            single = x.ndim == 3
            h = torch.nn.functional.conv2d(x[None] if single else x, k, padding=1)
            h = torch.tanh(h).flatten(1) @ d.T
            return h[0] if single else h

        return f, (c_in, hw, hw)
    if backend == "jax":
        import jax

        k = from_numpy(K.transpose(2, 3, 1, 0), backend, dtype)  # HWIO
        d = from_numpy(D, backend, dtype)

        def f(x):
            single = x.ndim == 3
            xb = x[None] if single else x
            h = jax.lax.conv_general_dilated(xb, k, (1, 1), "SAME",
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
            h = jax.numpy.tanh(h).reshape(h.shape[0], -1) @ d.T
            return h[0] if single else h

        return f, (hw, hw, c_in)
    if backend == "tensorflow":
        import tensorflow as tf

        k = from_numpy(K.transpose(2, 3, 1, 0), backend, dtype)
        d = from_numpy(D, backend, dtype)

        def f(x):
            single = len(x.shape) == 3
            xb = x[None] if single else x
            h = tf.nn.conv2d(xb, k, strides=1, padding="SAME")
            h = tf.reshape(tf.tanh(h), (tf.shape(h)[0], -1)) @ tf.transpose(d)
            return h[0] if single else h

        return f, (hw, hw, c_in)
    raise ValueError(backend)


def reference_jacobian(backend: str, f, x) -> np.ndarray:
    """Dense ``(m, n)`` Jacobian of ``f`` at ``x`` from the framework's own autodiff."""
    if backend == "torch":
        import torch

        J = torch.func.jacrev(f)(x)
    elif backend == "jax":
        import jax

        J = jax.jit(jax.jacrev(f))(x)  # one compiled program, not one per eager op
    elif backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            y = f(x)
        J = tape.jacobian(y, x, experimental_use_pfor=False)
    else:
        raise ValueError(backend)
    J = to_numpy(J)
    n = int(np.prod(to_numpy(x).shape))
    return J.reshape(-1, n)


def reference_hessian(backend: str, f, x) -> np.ndarray:
    """Dense ``(n, n)`` Hessian of scalar ``f`` at array ``x``."""
    if backend == "torch":
        import torch

        # reverse over reverse: torch's forward mode (torch.func.hessian) registers
        # its decompositions with the deprecated torch.jit.script on first use
        H = torch.func.jacrev(torch.func.jacrev(f))(x)
    elif backend == "jax":
        import jax

        H = jax.jit(jax.hessian(f))(x)
    elif backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape(persistent=True) as t2:
            t2.watch(x)
            with tf.GradientTape() as t1:
                t1.watch(x)
                y = f(x)
            g = t1.gradient(y, x)
        H = t2.jacobian(g, x, experimental_use_pfor=False)
    else:
        raise ValueError(backend)
    n = int(np.prod(to_numpy(x).shape))
    return to_numpy(H).reshape(n, n)


# ------------------------------------------------------- models with parameter collections


def _activation(backend: str, act: str):
    if backend == "torch":
        import torch

        return {"tanh": torch.tanh, "softplus": torch.nn.functional.softplus}[act]
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        return {"tanh": jnp.tanh, "softplus": jax.nn.softplus}[act]
    import tensorflow as tf

    return {"tanh": tf.tanh, "softplus": tf.nn.softplus}[act]


def _reshape(backend: str, a, shape):
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.reshape(a, shape)
    return a.reshape(shape)


class ParamMLP:
    """An MLP whose weights are a parameter collection of the backend's own kind.

    ``params`` is a torch dict named like ``named_parameters()``, a JAX pytree (a list of
    ``{"W", "b"}`` dicts) or a list of ``tf.Variable``; every kind flattens in the order
    ``W0, b0, W1, b1, ...``. ``apply(params, x)`` runs the network; ``apply_flat(theta, x)``
    runs it from the flat vector (the reference Jacobians and Hessians differentiate it);
    ``theta0`` is that vector at ``params``.
    """

    def __init__(self, backend: str, weights, dtype: str, act: str = "tanh") -> None:
        self.backend, self.act = backend, _activation(backend, act)
        self.shapes = [s for W, b in weights for s in (W.shape, b.shape)]
        arrays = [from_numpy(a, backend, dtype) for W, b in weights for a in (W, b)]
        flat = np.concatenate([a.ravel() for W, b in weights for a in (W, b)])
        self.theta0 = from_numpy(flat, backend, dtype)
        if backend == "torch":
            self.params = {f"{'weight' if i % 2 == 0 else 'bias'}{i // 2}": a
                           for i, a in enumerate(arrays)}
        elif backend == "jax":
            self.params = [{"W": arrays[i], "b": arrays[i + 1]} for i in range(0, len(arrays), 2)]
        else:
            import tensorflow as tf

            self.params = [tf.Variable(a) for a in arrays]

    def leaves(self, params) -> list:
        if isinstance(params, dict):
            return list(params.values())
        if self.backend == "jax":
            return [a for layer in params for a in (layer["W"], layer["b"])]
        return list(params)

    def _run(self, arrays, x):
        n = len(arrays) // 2
        for i in range(n):
            W, b = arrays[2 * i], arrays[2 * i + 1]
            if self.backend == "tensorflow":
                import tensorflow as tf

                x = tf.tensordot(x, tf.transpose(W), axes=1) + b
            else:
                x = x @ W.T + b
            if i < n - 1:
                x = self.act(x)
        return x

    def apply(self, params, x):
        return self._run(self.leaves(params), x)

    def apply_flat(self, theta, x):
        arrays, start = [], 0
        for s in self.shapes:
            size = int(np.prod(s))
            arrays.append(_reshape(self.backend, theta[start:start + size], s))
            start += size
        return self._run(arrays, x)
