"""Symmetry and diagonality targets (Cui et al. 2022, arXiv 2212.00311).

Claim: regularizing ``sigma_max(J - J0)`` of a square Jacobian, with the per-sample top
singular vector found by batched Lanczos, shapes the Jacobian toward the target: toward
symmetry with ``J0 = J^T`` and toward a diagonal with ``J0 = D(J 1)``, at a small cost
in the task loss.

Setup: a residual denoiser ``f(x) = x + g(x)`` on digits (``g``: 64-256-64 MLP, tanh),
a map R^64 -> R^64 with a square Jacobian, trained with Adam on noisy inputs
(Gaussian, sigma 0.3) to reconstruct the clean image (squared error summed over the 64
pixels), with no penalty and with ``js.penalties.spectral(f, x, target=...)`` for
``target=None`` (the plain spectral norm), ``"transpose"`` and ``"rowsum_diagonal"``.
Measured on noisy test images, per sample and averaged over them, from the
materialized Jacobians (``js.dense``): the asymmetry ``||J - J^T||_2``, the diagonality
residual ``||J - D(J 1)||_2``, the off-diagonal mass ``||J - diag(J)||_F / ||J - I||_F``
(the share of the residual branch's Jacobian off the diagonal), ``||J||_2`` and the
reconstruction error, at initialization (last layer of ``g`` scaled by 0.1, so that
``f`` starts near the identity) and after training.

    python docs/experiments/cui_targets.py [--quick]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import _common as C
import numpy as np

import jacspec as js

METHODS = {  # label: (penalty name, weights tried)
    "none": (None, (0.0,)),
    "spectral (J0 = 0)": ("spectral", (0.1, 1.0)),
    "symmetry (J0 = Jᵀ)": ("transpose", (0.1, 1.0)),
    "diagonality (J0 = D(J1))": ("rowsum_diagonal", (0.1, 1.0)),
}
NOISE = 0.3
FULL = dict(n_train=1000, epochs=40, batch_size=100, lr=1e-3, n_eval=C.N_TEST)
QUICK = dict(n_train=100, epochs=2, batch_size=50, lr=1e-3, n_eval=100)

BACKENDS = ("torch",)
TITLE = "Symmetry and diagonality targets on a residual denoiser, digits"


def noisy(X: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (X + NOISE * rng.standard_normal(X.shape)).astype(np.float32)


def jacobian_stats(k, model, X: np.ndarray) -> dict[str, float]:
    """Per-sample asymmetry, diagonality residual and off-diagonal mass, averaged, from
    the materialized per-sample Jacobians (``js.dense``: 64 products per batch)."""
    with k.no_grad():
        J = k.to_numpy(js.dense(js.jacobian(k.fn(model), k.asarray(X), batched=True)))
    J = J.astype(np.float64)
    eye = np.eye(J.shape[-1])
    off = J - np.einsum("bii->bi", J)[:, :, None] * eye
    return {
        "norm": np.linalg.norm(J, 2, axis=(1, 2)).mean(),
        "asym": np.linalg.norm(J - np.swapaxes(J, 1, 2), 2, axis=(1, 2)).mean(),
        "diag": np.linalg.norm(J - J.sum(2)[:, :, None] * eye, 2, axis=(1, 2)).mean(),
        # The identity of the skip connection is diagonal: measure the branch's share.
        "mass": (np.linalg.norm(off, axis=(1, 2)) / np.linalg.norm(J - eye, axis=(1, 2))).mean(),
    }


def run(args) -> C.Report:
    k = C.kit(args.backend)
    cfg = QUICK if args.quick else FULL
    report = C.Report(f"cui_targets_{args.backend}", args.out, args.backend, args.quick)
    methods = {m: (p, lams[-1:] if args.quick else lams) for m, (p, lams) in METHODS.items()}
    split = C.digits(cfg["n_train"], seed=0)
    n = cfg["n_eval"]
    rec = C.Records()
    examples: dict[str, np.ndarray] = {}
    for seed in C.seeds(args):
        X_in = noisy(split.X_train, 10 + seed)
        X_test, X_clean = noisy(split.X_test, 100 + seed)[:n], split.X_test[:n]
        spec = C.mlp_spec([64, 256, 64], seed, activation="tanh", residual=True,
                           last_scale=0.1)
        model = k.build(spec)
        rec.add(("initialization", 0.0), mse=k.full_loss(model, X_test, X_clean, "mse"),
                **jacobian_stats(k, model, X_test))
        examples.setdefault("initialization", example(k, model, X_test))
        for method, (penalty, lams) in methods.items():
            for lam in lams:
                model = k.build(spec)
                k.train(model, X_in, split.X_train, loss="mse", penalty=penalty, lam=lam,
                        epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                        seed=seed)
                key = (method, lam)
                rec.add(key, mse=k.full_loss(model, X_test, X_clean, "mse"),
                        **jacobian_stats(k, model, X_test))
                if lam == lams[-1]:
                    examples.setdefault(method, example(k, model, X_test))
                print(f"seed {seed} {method} lam={lam:g}: mse {rec.data[key]['mse'][-1]:.3f} "
                      f"asym {rec.data[key]['asym'][-1]:.3f}", flush=True)
    report.add(f"Digits: {cfg['n_train']} training, {n} test images, Gaussian input "
               f"noise σ={NOISE}; Adam (lr {cfg['lr']}), batch {cfg['batch_size']}, "
               f"{cfg['epochs']} epochs; {len(C.seeds(args))} seed(s), mean ± std. The "
               "error of the identity map (returning the noisy input) is "
               f"{NOISE**2 * 64:.2f} (64 σ²).")
    report.table(
        ["training", "weight", "reconstruction error", "‖J−Jᵀ‖₂", "‖J−D(J1)‖₂",
         "off-diagonal mass", "‖J‖₂"],
        [[key[0], "-" if key[0] in ("none", "initialization") else f"{key[1]:g}",
          rec.fmt(key, "mse"), rec.fmt(key, "asym"), rec.fmt(key, "diag"),
          rec.fmt(key, "mass"), rec.fmt(key, "norm", 2)] for key in rec.keys()],
        "**Jacobian shape and reconstruction error on noisy test images:**")
    report.write(plot(rec, examples), TITLE)
    return report


def example(k, model, X: np.ndarray) -> np.ndarray:
    """The dense 64x64 Jacobian at the first test point."""
    with k.no_grad():
        return k.to_numpy(js.dense(js.jacobian(k.fn(model), k.asarray(X[:1]), batched=True)))[0]


def plot(rec, examples):
    fig, axes = C.figure(2, len(examples), size=(3.2, 3.0))
    vmax = max(np.abs(J - np.eye(len(J))).max() for J in examples.values())
    for ax, (name, J) in zip(axes[0], examples.items()):
        ax.imshow(J - np.eye(len(J)), cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    axes[0, 0].set_ylabel("J − I at one test image")
    keys = rec.keys()
    labels = [k[0] if k[0] in ("none", "initialization") else f"{k[0]}\nλ={k[1]:g}"
              for k in keys]
    for ax, (metric, title) in zip(axes[1], (("asym", "‖J−Jᵀ‖₂"),
                                             ("diag", "‖J−D(J1)‖₂"),
                                             ("mass", "off-diagonal mass"),
                                             ("mse", "reconstruction error"))):
        ax.barh(range(len(keys)), [rec.mean(k, metric) for k in keys],
                xerr=[rec.std(k, metric) for k in keys], color=C.colors(len(keys)))
        ax.set_yticks(range(len(keys)))
        ax.set_yticklabels(labels if ax is axes[1, 0] else [], fontsize=7)
        ax.invert_yaxis()
        ax.set_title(title, fontsize=9)
    for ax in axes[1, 4:]:
        ax.axis("off")
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    return C.main(run, __doc__, argv, BACKENDS)


if __name__ == "__main__":
    sys.exit(main())
