"""The hand-written references of the penalty and dense bench rows compute what jacspec
computes (a bench ratio against a wrong reference would mean nothing): the exact
spectral penalty on the bench's MLP and CNN, in each autodiff backend."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js
from jacspec.bench import rows_penalty as P

pytest.importorskip("sklearn")


def _models(backend):
    if backend == "torch":
        import torch

        return {k: (net, x, lambda net=net, x=x: P._torch_hand(torch, net, x))
                for k, (net, x) in P._torch_models(torch).items()}
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        out = {}
        for k, (net, params, x) in P._jax_models(jax, jnp).items():
            f = lambda z, net=net, params=params: net(params, z)  # noqa: E731
            out[k] = (f, x, lambda f=f, x=x: P._jax_hand(jax, jnp, f, x))
        return out
    import tensorflow as tf

    return {k: (net, x, lambda net=net, x=x: P._tf_hand(tf, net, x))
            for k, (net, x) in P._tf_models(tf).items()}


def _np(a):
    return np.asarray(a.detach() if hasattr(a, "detach") else a)


@pytest.mark.parametrize("model", ["MLP", "CNN"])
def test_hand_written_exact_penalty_matches_jacspec(autodiff_backend, model):
    f, x, hand = _models(autodiff_backend)[model]
    ours = float(_np(js.penalties.spectral(f, x)))
    M = _np(js.dense(js.jacobian(f, x, batched=True))).astype(np.float64)
    exact = np.mean(np.linalg.svd(M, compute_uv=False)[:, 0] ** 2)
    assert ours == pytest.approx(exact, rel=1e-4)
    assert float(_np(hand())) == pytest.approx(exact, rel=1e-4)
