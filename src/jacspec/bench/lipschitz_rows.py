"""Rows "lipschitz": ``js.lipschitz`` on the digits CNN and on ResNet-18 (torch).

Each row reports the time of one ``js.lipschitz`` call and the width of the bracket it
gives, ``upper / lower`` (1 would be the exact Lipschitz constant), beside the time of
``js.conv.layer_report``, whose product of the layers' exact norms is the usual
certified bound (it ignores how batch norm, pooling, residual sums and consecutive
linear layers combine); ``details`` has both bounds.

- ``lipschitz``: the digits CNN (``models_torch.digits_cnn``, trained 3 epochs; quick:
  1), ``data`` = 256 digits, ``refine_steps`` 20 (quick: 5).
- ``lipschitz-resnet`` (full run only): ResNet-18 (``models_torch.ResNet18``, 32x32x3,
  width 64) at one random initialization in eval mode; ``data`` = 8 random normal
  images, ``refine_steps`` 5; and the upper bound again with ``conv="gram"``
  (``js.conv.gram_bound`` for every conv): its time and its ratio to the exact one.
"""

from __future__ import annotations

import time
from typing import Any

from .registry import Row, register

__all__ = ["digits_cnn_torch", "resnet_torch"]


def _row(name: str, model: Any, shape: tuple[int, ...], data: Any, refine: int,
         cfg: str) -> Row:
    import jacspec as js

    t0 = time.perf_counter()
    res = js.lipschitz(model, shape, data=data, refine_steps=refine)
    seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    product = float(js.conv.layer_report(model, shape)[-1].product)
    t_report = time.perf_counter() - t0
    return dict(
        name=f"lipschitz upper / lower: {name} (torch)", jacspec=f"{seconds:.2f} s",
        reference=f"{t_report:.2f} s", ratio=res.ratio, target="report", met=None,
        configuration=cfg + f"; refine_steps={refine}; reference time: "
        "js.conv.layer_report (the product of the layers' exact norms)",
        details=dict(upper=res.upper, lower=res.lower, seconds=seconds,
                     layer_product=product, layer_report_seconds=t_report,
                     upper_over_layer_product=res.upper / product))


@register("lipschitz", "torch")
def digits_cnn_torch(quick: bool) -> list[Row]:
    import torch

    from .models_torch import digits_cnn

    net, _ = digits_cnn(epochs=1 if quick else 3)
    X = torch.as_tensor(_digit_images()[:256, None])
    return [_row("digits CNN", net, (1, 8, 8), X, 5 if quick else 20,
                 "digits CNN (models.CNN_ARCH, dense to 10), trained; data: 256 digits")]


@register("lipschitz-resnet", "torch", quick=False)
def resnet_torch(quick: bool) -> list[Row]:
    import torch

    import jacspec as js

    from .models_torch import ResNet18

    torch.manual_seed(0)
    net = ResNet18(width=64).eval()
    images = torch.randn(8, 3, 32, 32)
    cfg = ("ResNet-18 (32x32x3, width 64), random initialization, eval mode; data: 8 "
           "random normal images")
    exact = _row("ResNet-18", net, (3, 32, 32), images, 5, cfg)
    t0 = time.perf_counter()
    gram = js.lipschitz(net, (3, 32, 32), data=images, refine_steps=0, conv="gram")
    seconds = time.perf_counter() - t0
    upper = exact["details"]["upper"]
    return [exact, dict(
        name="lipschitz upper: conv='gram' / exact convs, ResNet-18 (torch)",
        jacspec=f"{seconds:.2f} s", reference=exact["jacspec"], ratio=gram.upper / upper,
        target="report", met=None,
        configuration=cfg + "; js.lipschitz(conv='gram', refine_steps=0) against the "
        "exact-norm call above (which also refines the lower bound); ratio: the upper "
        "bounds", details=dict(upper_gram=gram.upper, upper_exact=upper, seconds=seconds))]


def _digit_images() -> Any:
    from .models import digit_images

    return digit_images()[0]
