"""On a GPU, every result stays on the input's device (skipped without one)."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js
from _helpers import from_numpy, gpu_device, to_numpy
from _models import mlp, mlp_weights

pytestmark = pytest.mark.gpu


def _same_device(backend, a, b):
    if backend == "torch":
        return a.device == b.device
    if backend == "jax":
        return a.devices() == b.devices()
    return a.device == b.device


def test_products_and_solvers_stay_on_device(autodiff_backend):
    b = autodiff_backend
    dev = gpu_device(b)
    rng = np.random.default_rng(0)
    weights = mlp_weights(rng, [6, 8, 3])
    Xn = rng.standard_normal((4, 6))
    X = from_numpy(Xn, b, "float32", device=dev)
    # JAX and TensorFlow put the weights on the default device (the GPU); torch needs it
    # said explicitly
    f_dev = mlp(b, weights, "float32")
    if b == "torch":
        import torch

        ws = [(torch.tensor(W, device=dev, dtype=torch.float32),
               torch.tensor(c, device=dev, dtype=torch.float32)) for W, c in weights]

        def f_dev(x):
            for i, (W, c) in enumerate(ws):
                x = x @ W.T + c
                x = torch.tanh(x) if i < len(ws) - 1 else x
            return x

    J = js.jacobian(f_dev, X, batched=True)
    out = J.matvec(from_numpy(rng.standard_normal((4, 6)), b, "float32", device=dev))
    assert _same_device(b, out, X)
    s = js.spectral_norm(J, method="lanczos")
    assert _same_device(b, s, X)
    ref = np.linalg.norm(to_numpy(js.dense(J)), ord=2, axis=(1, 2))
    np.testing.assert_allclose(to_numpy(s), ref, rtol=1e-3)
    res = js.svds(J, k=2, method="lanczos", return_vectors=True)
    assert _same_device(b, res.values, X) and _same_device(b, res.right, X)
