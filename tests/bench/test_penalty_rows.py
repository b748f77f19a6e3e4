"""The hand-written references of the penalty and dense bench rows compute what jacspec
computes (a bench ratio against a wrong reference would mean nothing): the exact
spectral penalty on the bench's MLP and CNN, in each autodiff backend."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js
from jacspec.bench import penalty_rows as P

pytest.importorskip("sklearn")


def _models(backend):
    if backend == "torch":
        import torch

        from jacspec.bench.models_torch import penalty_models

        return {k: (net, x, lambda net=net, x=x: P.hand_penalty_torch(torch, net, x))
                for k, (net, x) in penalty_models(P.B).items()}
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        from jacspec.bench.models_jax import penalty_models

        out = {}
        for k, (net, params, x) in penalty_models(P.B).items():
            f = lambda z, net=net, params=params: net(params, z)  # noqa: E731
            out[k] = (f, x, lambda f=f, x=x: P.hand_penalty_jax(jax, jnp, f, x))
        return out
    import tensorflow as tf

    from jacspec.bench.models_tensorflow import penalty_models

    return {k: (net, x, lambda net=net, x=x: P.hand_penalty_tf(tf, net, x))
            for k, (net, x) in penalty_models(P.B).items()}


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
