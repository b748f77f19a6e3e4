"""The lipschitz bench rows on a tiny model: the row's bounds bracket each other and
the composed upper bound is at most the product of the layers' exact norms (its
reference), with no timed assertion."""

from __future__ import annotations

import pytest


def test_lipschitz_row_small():
    torch = pytest.importorskip("torch")
    from torch import nn

    from jacspec.bench.lipschitz_rows import _row

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                        nn.Flatten(), nn.Linear(3 * 5 * 5, 4)).eval()
    row = _row("tiny", net, (1, 5, 5), torch.rand(6, 1, 5, 5), 2, "tiny CNN")
    d = row["details"]
    # upper rounds each float32 norm up by its accuracy sqrt(eps); the product does not
    assert 0 < d["lower"] <= d["upper"] <= d["layer_product"] * (1 + 2e-3)
    assert row["ratio"] == pytest.approx(d["upper"] / d["lower"])
    assert row["met"] is None and "lipschitz" in row["name"]
