"""Benchmark rows "lipschitz": ``js.lipschitz`` on a digits CNN and on ResNet-18 (torch).

Each row reports the time of one ``js.lipschitz`` call and the width of the bracket it
gives, ``upper / lower`` (1 would be the exact Lipschitz constant), beside the product
of the layers' exact norms that ``js.conv.layer_report`` gives (the usual certified
bound, which ignores how batch norm, pooling and consecutive linear layers combine).

- digits CNN: convs 1-16-32-32 (3x3, strides 1, 2, 1), ReLU, dense to 10, trained for a
  few epochs on scikit-learn's digits; ``data`` = 256 digits.
- ResNet-18 (``jacspec.bench.resnet_torch``, 32x32x3 inputs, eval mode, batch norm
  with its initial statistics) at one random initialization; ``data`` = 8 random normal
  images. Quick mode: width 16 instead of 64.

Uses only jacspec's public API; torch is imported inside the row functions.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["lipschitz_rows"]

Row = dict[str, Any]


def _digits_cnn(torch: Any, epochs: int) -> tuple[Any, Any]:
    from sklearn.datasets import load_digits
    from torch import nn

    d = load_digits()
    X = torch.tensor((d.images / 16.0)[:, None], dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.int64)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
                        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
                        nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                        nn.Flatten(), nn.Linear(32 * 4 * 4, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(X))
        for i in range(0, len(X), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(net(X[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval(), X[:256]


def _row(name: str, model: Any, shape: tuple[int, ...], data: Any, refine: int,
         cfg: str) -> Row:
    import jacspec as js

    t0 = time.perf_counter()
    res = js.lipschitz(model, shape, data=data, refine_steps=refine)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    product = js.conv.layer_report(model, shape)[-1].product
    t_report = time.perf_counter() - t0
    return dict(
        name=f"lipschitz upper / lower: {name} (torch)", jacspec=f"{seconds:.2f} s",
        reference=f"{t_report:.2f} s", ratio=res.ratio, target="report", met=None,
        configuration=cfg + f"; refine_steps={refine}; reference: js.conv.layer_report "
        "(the product of the layers' exact norms)",
        details=dict(upper=res.upper, lower=res.lower, seconds=seconds,
                     layer_product=float(product), layer_report_seconds=t_report,
                     upper_over_layer_product=res.upper / float(product)))


def lipschitz_rows(quick: bool = False) -> list[Row]:
    """The two rows (torch)."""
    import torch

    from .resnet_torch import ResNet18

    net, X = _digits_cnn(torch, epochs=1 if quick else 5)
    rows = [_row("digits CNN", net, (1, 8, 8), X, 5 if quick else 20,
                 "digits CNN 1-16-32-32-dense10, trained; data: 256 digits")]
    width = 16 if quick else 64
    torch.manual_seed(0)
    resnet = ResNet18(width=width).eval()
    images = torch.randn(8, 3, 32, 32)
    rows.append(_row(f"ResNet-18 width {width}", resnet, (3, 32, 32), images,
                     2 if quick else 5,
                     f"ResNet-18 (32x32x3, width {width}), random initialization, eval "
                     "mode; data: 8 random normal images"))
    return rows


if __name__ == "__main__":  # pragma: no cover
    import sys

    for row in lipschitz_rows(quick="--quick" in sys.argv):
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
