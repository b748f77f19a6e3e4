"""Row "lanczos/power products" (torch): the operator products Lanczos and power
iteration need until every per-sample ``sigma_max`` stays within relative error 1e-6 of
the dense SVD, on per-sample Jacobians (10x64) of held-out digits through the trained
design MLP, float64. Target: Lanczos <= 1/3 of power at the worst sample (a batch waits
for its slowest sample).
"""

from __future__ import annotations

import math
import warnings

import numpy as np

from .registry import Row, register

REL = 1e-6  # the accuracy both methods must reach and keep


def _first_sustained(errs: np.ndarray, counts: np.ndarray, rel: float) -> np.ndarray:
    """Per sample (rows of ``errs``, (B, T)): the product count from which the error
    stays <= rel to the end of the scan (``inf`` when it never gets there)."""
    ok = errs <= rel
    # index of the first True after the last False
    bad_after = np.flip(np.cumsum(np.flip(~ok, axis=1), axis=1), axis=1) > 0
    first = np.argmax(~bad_after, axis=1)
    out = counts[first].astype(float)
    out[bad_after[:, -1]] = np.inf
    return out


def _count(v: float) -> int | None:
    """A product count for the JSON details (None: not reached within the cap)."""
    return int(v) if math.isfinite(v) else None


def _lanczos_counts(js, J, s1: np.ndarray) -> np.ndarray:
    """Per sample: products until Lanczos' ``sigma_max`` stays within :data:`REL`, from
    ``js.svds(J, method="lanczos", maxiter=p)`` at every budget ``p`` up to the full
    basis."""
    counts, errs = [], []
    for p in range(2, 2 * min(J.shape) + 1):  # two products: the first Ritz value
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = js.svds(J, method="lanczos", maxiter=p, tol=1e-14)
        counts.append(int(res.num_matvecs))
        errs.append(np.abs(res.values[:, 0].numpy() - s1) / s1)
    return _first_sustained(np.stack(errs, 1), np.array(counts), REL)


def _power_values(M: np.ndarray, V0: np.ndarray, steps: int) -> np.ndarray:
    """The values of power iteration after each of ``steps`` steps on the batch of
    matrices ``M`` (B, m, n), m <= n, from the start ``V0`` (B, n), as
    ``js.svds(method="power")`` iterates: from the smaller side, ``u`` the unit
    ``M v0``; a step's value ``||M^T u||``, the next ``u`` the unit ``M M^T u``."""
    u = np.einsum("bmn,bn->bm", M, V0)
    u /= np.linalg.norm(u, axis=-1, keepdims=True)
    out = np.empty((len(M), steps))
    for t in range(steps):
        w = np.einsum("bmn,bm->bn", M, u)
        out[:, t] = np.linalg.norm(w, axis=-1)
        u = np.einsum("bmn,bn->bm", M, w)
        u /= np.linalg.norm(u, axis=-1, keepdims=True)
    return out


@register("lanczos", "torch", target="<= 0.333")
def lanczos_vs_power_torch(quick: bool) -> list[Row]:
    """Lanczos: ``js.svds(J, method="lanczos", maxiter=p, tol=1e-14)`` for every ``p`` up
    to the full basis, the per-sample error of each. Power: the values after every step
    of power iteration from a fixed start ``v0`` (the iteration of
    ``js.svds(J, method="power", v0=v0)``, on the dense Jacobians), up to ``cap``
    products; the counts at the median and the worst sample are checked against
    ``js.svds(J, method="power", v0=v0, maxiter=count)``."""
    import torch

    import jacspec as js

    from .models_torch import design_mlp

    B = 64 if quick else 128
    cap = 2000 if quick else 4000
    net, Xte, acc = design_mlp(torch.float64)
    J = js.jacobian(net, Xte[:B], batched=True)
    M = js.dense(J).numpy()  # (B, 10, 64)
    ref = np.linalg.svd(M, compute_uv=False)
    s1 = ref[:, 0]
    gap = ref[:, 1] / ref[:, 0]
    nl = _lanczos_counts(js, J, s1)
    V0 = np.random.default_rng(0).standard_normal(M.shape[::2])
    firsts = _power_values(M, V0, cap // 2)  # (B, steps)
    errs_p = np.abs(firsts - s1[:, None]) / s1[:, None]
    npw = _first_sustained(errs_p, 2 * np.arange(1, firsts.shape[1] + 1), REL)
    checks = {}
    for name, c in (("median", np.median(npw)), ("worst", np.max(npw))):
        if math.isfinite(c):
            c = int(c) + int(c) % 2
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                chk = js.svds(J, method="power", maxiter=c, tol=1e-14,
                              v0=torch.from_numpy(V0)).values[:, 0].numpy()
            sel = npw <= c
            checks[name] = float((np.abs(chk - s1) / s1)[sel].max())
    med_l, worst_l = float(np.median(nl)), float(np.max(nl))
    med_p, worst_p = float(np.median(npw)), float(np.max(npw))
    ratio = worst_l / worst_p if math.isfinite(worst_p) else 0.0

    def fmt(x: float) -> str:
        return f">{cap}" if not math.isfinite(x) else f"{x:.0f}"

    return [dict(name="lanczos/power products (batched, worst sample)",
                 jacspec=f"{fmt(worst_l)} products (median {fmt(med_l)})",
                 reference=f"{fmt(worst_p)} products (median {fmt(med_p)})",
                 ratio=ratio, target="<= 0.333", met=ratio <= 1 / 3,
                 configuration=f"B={B} per-sample Jacobians 10x64 of held-out digits, MLP "
                 f"64-256-256-10 tanh trained 300 Adam steps (test acc {acc:.3f}), float64; "
                 f"products until the relative error of sigma_max stays <= {REL} vs dense "
                 f"SVD (power capped at {cap}); sigma2/sigma1 median {np.median(gap):.3f}, "
                 f"max {gap.max():.4f}; ratio = worst Lanczos / worst power",
                 details=dict(lanczos=[_count(v) for v in nl], power=[_count(v) for v in npw],
                              gap=gap.tolist(), median_ratio=med_l / med_p,
                              power_check_max_err=checks))]
