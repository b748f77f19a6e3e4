"""Row "memory" (torch): the memory Lanczos adds to a per-sample Jacobian's products,
against the activations autograd saved for them (measured in a fresh process by
:mod:`jacspec.bench.memory_probe`)."""

from __future__ import annotations

from .registry import Row, register
from .timing import TORCH_PRELOAD, run_fresh


@register("memory", "torch", quick=False)
def memory_torch(quick: bool) -> list[Row]:
    """Peak memory of Lanczos vs the model's saved activations, in a fresh subprocess."""
    d = run_fresh("jacspec.bench.memory_probe", ["lanczos"], preload=TORCH_PRELOAD)
    # The basis (two fixed-width buffers) is what Lanczos adds; the rise of peak RSS is
    # reported beside it.
    ratio = d["basis_mb"] / d["activations_mb"]
    return [dict(name="memory: lanczos/activations (torch)",
                 jacspec=f"{d['basis_mb']:.1f} MB basis, peak RSS +{d['lanczos_peak_mb']:.0f} MB",
                 reference=f"{d['activations_mb']:.1f} MB", ratio=ratio, target="report",
                 met=None,
                 configuration=f"B={d['B']}, MLP {d['arch']} float32, {d['products']} "
                 f"products (k=1): Krylov basis B*(m+n)*jmax*4 bytes and the rise of peak RSS "
                 f"during svds vs the bytes autograd saved for the products (forward and "
                 f"JVP graphs, counted by saved_tensors_hooks)", details=d)]
