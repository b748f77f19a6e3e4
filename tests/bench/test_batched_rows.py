"""The batched-products rows time what they say: the three routes compute the same block,
and each case yields one row with both routes' times."""

from __future__ import annotations

import numpy as np
import pytest

from jacspec.bench import batched_rows as R

pytest.importorskip("sklearn")


def test_block_route_rows(backend, monkeypatch):
    if backend != "torch":
        pytest.skip("a torch row")
    import torch

    import jacspec as js
    from jacspec.backends.torch import block_route
    from jacspec.bench.models_torch import penalty_models

    monkeypatch.setattr(R, "B", 8)  # small batches: the rows' logic, not their timing
    rows = R.block_routes_torch(quick=True)
    assert [r["name"] for r in rows] == [
        "batched products: auto / best route (MLP, torch)",
        "batched products: auto / best route (CNN, torch)"]
    for r in rows:
        t = r["details"]["times_s"]
        assert set(t) == {"vmap", "loop", "auto"} and np.isfinite(r["ratio"])
    net, x = penalty_models(8)["CNN"]
    J = js.jacobian(net, x, batched=True)
    eye = torch.eye(10).expand(8, 10, 10)
    ref = torch.func.vmap(torch.func.jacrev(net))(x[:, None])[:, 0].reshape(8, 10, 64)
    for route in ("vmap", "loop", None):
        with block_route(route), torch.no_grad():
            np.testing.assert_allclose(J.H.matmat(eye).numpy(),
                                       ref.mT.detach().numpy(), rtol=1e-5, atol=1e-6)
