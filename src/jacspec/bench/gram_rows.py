"""Rows "gram": the Gram-iteration bound against the exact operator norms of ResNet-18's
conv layers, and against the authors' formula.

* Per ResNet-18 conv layer shape (torch, He-initialized float32 kernels, one thread):
  the median times of :func:`jacspec.conv.gram_bound` (``iterations=6``, the layer's
  input size, stride and zero padding ``k // 2``) and of the exact norm
  (:func:`jacspec.conv.spectral_norm`, Lanczos on conv / transposed-conv products), run
  in turn, and the tightness ``gram / exact``. Targets: time ratio <= 0.25 and
  tightness <= 1.01 on every layer.
* The same bound with circular padding against the authors' formula (Delattre et al.
  2023, ``compute_delattre2023`` of their lip4conv code, ported below: the same Gram
  iteration with per-frequency Frobenius rescaling, through ``torch.fft.rfft2`` and
  without rounding terms): time and value ratios.
"""

from __future__ import annotations

from typing import Any

from .models import RESNET18_CONVS
from .registry import Row, register
from .timing import interleaved_times, ms

#: The targets of the time and tightness rows.
TIME_TARGET, TIGHT_TARGET = 0.25, 1.01


def _authors_circular(torch: Any, w: Any, n: int, n_iter: int = 6) -> Any:
    """The authors' circular-padding Gram bound (stride 1; their code, on the CPU)."""
    cout, cin = w.shape[:2]
    if cin > cout:
        w = w.transpose(0, 1)
        cin, cout = cout, cin
    X = torch.fft.rfft2(w, s=(n, n)).reshape(cout, cin, -1).permute(2, 0, 1)
    log_norm = torch.zeros(X.shape[0], dtype=w.dtype)
    inv = 1.0
    for _ in range(n_iter):
        nrm = torch.linalg.matrix_norm(X)
        X = X / nrm.reshape(-1, 1, 1)
        log_norm = 2 * log_norm + nrm.log()
        X = X.mH @ X
        inv /= 2
    return (torch.linalg.matrix_norm(X).pow(inv) * (2 * inv * log_norm).exp()).max()


def _shapes(quick: bool) -> tuple:
    """ResNet-18's conv shapes; ``quick``: at a quarter of the width (16..128 channels),
    maps 28 and below."""
    if not quick:
        return RESNET18_CONVS
    return tuple((co // 4, ci // 4, k, s, n) for co, ci, k, s, n in RESNET18_CONVS if n <= 28)


def _layers(torch: Any, js: Any, quick: bool) -> list[dict]:
    reps = 1 if quick else 3
    layers = []
    for co, ci, k, s, n in _shapes(quick):
        torch.manual_seed(0)
        w = torch.randn(co, ci, k, k) * (2.0 / (ci * k * k)) ** 0.5
        fns = {
            "gram": lambda w=w, n=n, s=s, k=k: js.conv.gram_bound(
                w, (n, n), stride=s, padding=k // 2),
            "exact": lambda w=w, n=n, s=s, k=k: js.conv.spectral_norm(
                w, (n, n), stride=s, padding=k // 2),
        }
        out: dict[str, Any] = {}
        t = interleaved_times(fns, reps, sync=float, outputs=out)
        row = dict(layer=f"{co}x{ci}x{k}x{k} s{s} at {n}x{n}",
                   gram=float(out["gram"]), exact=float(out["exact"]),
                   times_ms={a: round(v * 1e3, 1) for a, v in t.items()},
                   time_ratio=t["gram"] / t["exact"])
        row["tightness"] = row["gram"] / row["exact"]
        if s == 1:
            circ = {
                "gram": lambda w=w, n=n: js.conv.gram_bound(w, (n, n)),
                "authors": lambda w=w, n=n: _authors_circular(torch, w, n),
            }
            tc = interleaved_times(circ, reps, sync=float, outputs=out)
            row.update(circular_gram=float(out["gram"]), circular_authors=float(out["authors"]),
                       circular_times_ms={a: round(v * 1e3, 1) for a, v in tc.items()},
                       circular_time_ratio=tc["gram"] / tc["authors"])
        layers.append(row)
    return layers


@register("gram", "torch",
          target=f"gram/exact time <= {TIME_TARGET}, tightness <= {TIGHT_TARGET}")
def gram_rows(quick: bool) -> list[Row]:
    """The rows of the module docstring (``quick``: a quarter of the width, maps 28 and
    below, one timed round)."""
    import torch

    import jacspec as js

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        layers = _layers(torch, js, quick)
    finally:
        torch.set_num_threads(threads)
    slow = max(layers, key=lambda d: d["time_ratio"])
    loose = max(layers, key=lambda d: d["tightness"])
    circ = [d for d in layers if "circular_gram" in d]
    cslow = max(circ, key=lambda d: d["circular_time_ratio"])
    cfg = ("ResNet-18 conv shapes (224x224 images: 64..512 channels, 3x3 and 1x1, maps "
           "56/28/14/7, stem left out" + ("; quick: a quarter of the width, maps <= 28"
                                          if quick else "")
           + "), He-initialized float32 kernels, 1 thread; "
           "gram = js.conv.gram_bound(w, (n, n), stride, padding=k//2), 6 iterations; "
           "exact = js.conv.spectral_norm (Lanczos, same geometry); ")
    return [
        dict(name="gram bound / exact norm, time (torch)", jacspec=ms(slow["times_ms"]["gram"]
                                                                      / 1e3),
             reference=ms(slow["times_ms"]["exact"] / 1e3), ratio=slow["time_ratio"],
             target=f"<= {TIME_TARGET}", met=slow["time_ratio"] <= TIME_TARGET,
             configuration=cfg + f"worst layer {slow['layer']}", details=dict(layers=layers)),
        dict(name="gram bound / exact norm, value (torch)", jacspec=f"{loose['gram']:.5g}",
             reference=f"{loose['exact']:.5g}", ratio=loose["tightness"],
             target=f"<= {TIGHT_TARGET}", met=loose["tightness"] <= TIGHT_TARGET,
             configuration=cfg + f"loosest layer {loose['layer']}",
             details=dict(layers=layers)),
        dict(name="gram bound / authors' formula, time (torch, circular)",
             jacspec=ms(cslow["circular_times_ms"]["gram"] / 1e3),
             reference=ms(cslow["circular_times_ms"]["authors"] / 1e3),
             ratio=cslow["circular_time_ratio"], target="report", met=None,
             configuration=cfg + "circular padding, stride-1 layers; reference: the "
             "authors' Gram iteration (lip4conv compute_delattre2023, rfft2, no rounding "
             "terms); values: " + ", ".join(
                 f"{d['layer']}: {d['circular_gram'] / d['circular_authors']:.7f}"
                 for d in circ),
             details=dict(layers=layers)),
    ]
