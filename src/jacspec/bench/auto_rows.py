"""Row "auto/best" (torch): ``method="auto"`` against the faster of dense and Lanczos on
square maps ``R^s -> R^s`` (both sides scale with ``s``, so the crossover is exercised),
target <= 1.2x at every size."""

from __future__ import annotations

from .registry import Row, register
from .timing import interleaved_times


def _pick(js, J) -> str:
    """The method ``auto`` chose, told by its product count (dense takes ``min(m, n)``
    products, which Lanczos does not spend on these maps)."""
    n_auto = int(js.svds(J, method="auto").num_matvecs)
    return "dense" if n_auto == int(js.svds(J, method="dense").num_matvecs) else "lanczos"


@register("auto", "torch", target="<= 1.2")
def auto_vs_best_torch(quick: bool) -> list[Row]:
    import torch

    import jacspec as js

    from .models_torch import mlp

    # --quick: around the switch between the methods, and one size on each side
    sizes = [10, 64, 128, 256, 512] if quick else [10, 32, 64, 96, 128, 256, 512, 1024,
                                                    3072]
    B = 8
    worst, detail = 0.0, {}
    g = torch.Generator().manual_seed(0)
    for s in sizes:
        net = mlp([s, 2 * s, s])
        xs = torch.randn(B if s <= 1024 else 2, s, generator=g)
        # seconds a call at 512 (dense SVDs) in --quick, at 1024 in the full run
        reps = 3 if s >= (512 if quick else 1024) else (7 if s >= 256 else 11)
        times = interleaved_times(
            {m: (lambda m=m, net=net, xs=xs: js.spectral_norm(
                js.jacobian(net, xs, batched=True), method=m))
             for m in ["dense", "lanczos", "auto"]}, reps)
        ratio = times["auto"] / min(times["dense"], times["lanczos"])
        worst = max(worst, ratio)
        detail[s] = dict(times_ms={k: round(v * 1e3, 2) for k, v in times.items()},
                         auto_picks=_pick(js, js.jacobian(net, xs, batched=True)),
                         ratio=round(ratio, 3))
    picks = ", ".join(f"{s}:{d['auto_picks'][0]}" for s, d in detail.items())
    return [dict(name="auto/best (torch)", jacspec="auto", reference="min(dense, lanczos)",
                 ratio=worst, target="<= 1.2", met=worst <= 1.2,
                 configuration=f"B={B} (2 for s >= 1024), random MLP R^s -> R^2s -> R^s "
                 f"tanh, float32, s in {sizes}; worst ratio over s (auto picks {picks})",
                 details=detail)]
