"""Rows "conv": the Fantastic Four bound against the exact operator norms of conv layers.

* Per layer of a small CNN trained on scikit-learn's digits (8x8 images, a couple of
  epochs, in the row's framework): the time of the bound
  (:func:`jacspec.conv.fantastic_four`) against the exact norm of the layer as it is
  (zero padding, its stride; :func:`jacspec.conv.spectral_norm`, Lanczos on conv /
  transposed-conv products), with the tightness ratios bound / exact, bound / exact
  circular (the norm with circular padding on the layer's input size) and circular /
  zero-padded. Times are the best of ``repeats`` calls after one warm-up call (JAX
  compiles on the first call of each shape).
* ResNet-18's conv layer shapes (torch, full run): the bound against the exact norm, and
  against the authors' power-iteration way of computing it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from .models import CNN_ARCH, RESNET18_CONVS, cnn_input_sizes
from .registry import Row, register
from .timing import interleaved_times, ms


def _timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float]:
    """(value, best seconds over ``repeats`` calls after one warm-up call); reading the
    value as a float waits for the device."""
    value = float(fn())
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        float(fn())
        best = min(best, time.perf_counter() - t0)
    return value, best


def _layer_rows(backend: str, weights: list, acc: float, epochs: int, quick: bool
                ) -> list[Row]:
    """One row per conv layer of the trained digits CNN (see the module docstring)."""
    import jacspec as js

    repeats = 1 if quick else 3
    rows = []
    for j, ((co, ci, k, s), w, h) in enumerate(zip(CNN_ARCH, weights, cnn_input_sizes())):
        hw = (h, h)
        bound, t_b = _timed(lambda w=w: js.conv.fantastic_four(w).bound, repeats)
        circ, t_c = _timed(
            lambda w=w, hw=hw, s=s: js.conv.spectral_norm(
                w, hw, stride=s, padding="circular", method="lanczos"), repeats)
        zero, t_z = _timed(
            lambda w=w, hw=hw, s=s: js.conv.spectral_norm(
                w, hw, stride=s, padding="same", method="lanczos"), repeats)
        r = dict(layer=f"conv{j}", backend=backend, kernel=f"{co}x{ci}x{k}x{k}", stride=s,
                 input_size=f"{h}x{h}", bound=bound, exact_circular=circ, exact_zero=zero,
                 bound_over_zero=bound / zero, bound_over_circular=bound / circ,
                 circular_over_zero=circ / zero, t_bound_s=t_b, t_circular_s=t_c,
                 t_zero_s=t_z, train_accuracy=acc, epochs=epochs)
        rows.append(dict(
            name=f"conv: {r['layer']} {r['kernel']} s{r['stride']} ({backend})",
            jacspec=f"bound {r['bound']:.3g} in {ms(r['t_bound_s'])}",
            reference=f"exact {r['exact_zero']:.3g} in {ms(r['t_zero_s'])}",
            ratio=r["t_zero_s"] / r["t_bound_s"] if r["t_bound_s"] else None,
            target="report", met=None,
            configuration=f"digits CNN layer {r['layer']} at {r['input_size']}: "
            f"ratio = time exact/time bound; tightness bound/exact "
            f"{r['bound_over_zero']:.2f}, circular/zero {r['circular_over_zero']:.2f}",
            details=r))
    return rows


def _epochs(quick: bool) -> int:
    return 2 if quick else 5


@register("conv", "torch")
def conv_torch(quick: bool) -> list[Row]:
    from .models_torch import train_digits_cnn

    return _layer_rows("torch", *train_digits_cnn(_epochs(quick)), _epochs(quick), quick)


@register("conv", "jax", quick=False)
def conv_jax(quick: bool) -> list[Row]:
    from .models_jax import train_digits_cnn

    return _layer_rows("jax", *train_digits_cnn(_epochs(quick)), _epochs(quick), quick)


@register("conv", "tensorflow", quick=False)
def conv_tensorflow(quick: bool) -> list[Row]:
    from .models_tensorflow import train_digits_cnn

    return _layer_rows("tensorflow", *train_digits_cnn(_epochs(quick)), _epochs(quick),
                       quick)


# ---------------------------------------------------------------------------- ResNet-18


def _power_fantastic_four(torch, w, iters: int = 50):
    """The four reshape norms by ``iters`` power iterations each, from fixed random
    vectors, as the bound's authors compute them (estimates from below, not certified)."""
    co, ci, h, wd = w.shape
    mats = [w.permute(0, 2, 1, 3).reshape(co * h, ci * wd),
            w.permute(0, 3, 1, 2).reshape(co * wd, ci * h),
            w.reshape(co, ci * h * wd), w.permute(0, 2, 3, 1).reshape(co * h * wd, ci)]
    gen = torch.Generator().manual_seed(0)
    norms = []
    for M in mats:
        v = torch.randn(M.shape[1], generator=gen, dtype=M.dtype)
        for _ in range(iters):
            u = M @ v
            u = u / u.norm()
            v = M.T @ u
            s = v.norm()
            v = v / s
        norms.append(s)
    return (h * wd) ** 0.5 * torch.stack(norms).min()


@register("conv", "torch", quick=False)
def resnet_rows(quick: bool) -> list[Row]:
    """Row "fantastic four bound / exact norm (torch)": per ResNet-18 layer shape (He
    initialization, float32), the median times of the bound and of the exact norm
    (``js.conv.spectral_norm``, zero padding ``k // 2``, the layer's stride), run in
    turn, 3 rounds; the ratio is the worst over the layers. A second row (report)
    compares the bound with the authors' way of computing it (power iteration, not
    certified). Full run only: the larger layers take seconds each."""
    import torch

    import jacspec as js

    layers = []
    for co, ci, k, s, n in RESNET18_CONVS:
        torch.manual_seed(0)
        w = torch.randn(co, ci, k, k) * (2.0 / (ci * k * k)) ** 0.5
        fns = {
            "bound": lambda w=w: js.conv.fantastic_four(w, tol=1e-3).bound,
            "exact": lambda w=w, n=n, s=s, k=k: js.conv.spectral_norm(
                w, (n, n), stride=s, padding=k // 2),
            "power": lambda w=w: _power_fantastic_four(torch, w),
        }
        out: dict[str, Any] = {}
        t = interleaved_times(fns, 3, sync=float, outputs=out)
        layers.append(dict(
            layer=f"{co}x{ci}x{k}x{k} s{s} at {n}x{n}",
            bound=float(out["bound"]), exact=float(out["exact"]), power=float(out["power"]), times_ms={a: round(v * 1e3, 2) for a, v in t.items()},
            bound_over_exact_time=t["bound"] / t["exact"],
            bound_over_power_time=t["bound"] / t["power"]))
    worst = max(layers, key=lambda d: d["bound_over_exact_time"])
    slow = max(layers, key=lambda d: d["bound_over_power_time"])
    cfg = ("ResNet-18 conv shapes (224x224 images: 64..512 channels, 3x3 and 1x1, maps "
           "56/28/14/7, stem left out), He-initialized float32 kernels; exact = "
           "js.conv.spectral_norm (Lanczos, zero padding k//2, the layer's stride); ")
    return [
        dict(name="fantastic four bound / exact norm (torch)",
             jacspec=f"{worst['times_ms']['bound']:.1f} ms",
             reference=f"{worst['times_ms']['exact']:.1f} ms",
             ratio=worst["bound_over_exact_time"], target="report", met=None,
             configuration=cfg + f"worst layer {worst['layer']}",
             details=dict(layers=layers)),
        dict(name="fantastic four bound / power-iteration version (torch)",
             jacspec=f"{slow['times_ms']['bound']:.1f} ms",
             reference=f"{slow['times_ms']['power']:.1f} ms",
             ratio=slow["bound_over_power_time"], target="report", met=None,
             configuration=cfg + "reference: 50 power iterations per reshape, the "
             f"authors' way (a lower estimate, not a bound); worst layer {slow['layer']}",
             details=dict(layers=layers)),
    ]
