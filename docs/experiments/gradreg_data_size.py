"""Gradient regularization vs training-set size (Varga et al. 2017, arXiv 1712.09936).

Claim: gradient regularization (double backpropagation, and the random-projection
Jacobian penalty "SpectReg") improves the test accuracy of a classifier, most of all
when the training set is small.

Setup: a ReLU MLP 64-128-128-10 on digits with 50 ... 1000 training samples (a
different random subset, and initial weights, per seed; validation and test splits of
fixed size), full-batch Adam for a fixed number of steps, with no penalty, double
backpropagation ``js.penalties.gradient_norm`` (squared norm of the per-sample input
gradient of the cross-entropy) and ``js.penalties.frobenius`` (squared Frobenius norm
of the logits' Jacobian, one random projection per sample and step). Each penalty
weight is chosen per training-set size from a small grid by validation accuracy. The
gain is the test accuracy minus that of the unpenalized run of the same seed.

    python docs/experiments/gradreg_data_size.py [--quick]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import _common as C
import numpy as np

METHODS = {  # label: (penalty name, weights tried)
    "none": (None, (0.0,)),
    "double backprop": ("gradient_norm", (0.03, 0.3, 3.0)),
    "SpectReg (Frobenius, 1 projection)": ("frobenius", (1e-3, 1e-2, 1e-1)),
}
FULL = dict(sizes=(50, 100, 200, 500, 1000), n_val=200, steps=300, lr=3e-3)
QUICK = dict(sizes=(50, 200), n_val=50, steps=10, lr=3e-3)

BACKENDS = ("torch",)
TITLE = "Gradient regularization vs training-set size, digits"


def run(args) -> C.Report:
    k = C.kit(args.backend)
    cfg = QUICK if args.quick else FULL
    report = C.Report(f"gradreg_data_size_{args.backend}", args.out, args.backend,
                      args.quick, spectral=False)
    methods = {m: (p, lams[1:2] if args.quick and len(lams) > 1 else lams)
               for m, (p, lams) in METHODS.items()}
    rec = C.Records()
    for seed in C.seeds(args):
        for n in cfg["sizes"]:
            split = C.digits(n, n_val=cfg["n_val"], seed=seed)
            for method, (penalty, lams) in methods.items():
                for lam in lams:
                    model = k.build(C.mlp_spec([64, 128, 128, 10], seed))
                    k.train(model, split.X_train, split.y_train, penalty=penalty, lam=lam,
                            epochs=cfg["steps"], lr=cfg["lr"], seed=seed)
                    rec.add((n, method, lam), val=k.accuracy(model, split.X_val, split.y_val),
                            test=k.accuracy(model, split.X_test, split.y_test))
            print(f"seed {seed} n={n}: " + ", ".join(
                f"{key[1]} {key[2]:g}: {rec.data[key]['test'][-1]:.3f}"
                for key in rec.keys() if key[0] == n), flush=True)
    best = rec.best("val")
    gains = {key: rec.values(key, "test") - rec.values((key[0], "none", 0.0), "test")
             for key in best.values()}
    report.add(f"Digits: {', '.join(map(str, cfg['sizes']))} training samples, "
               f"{cfg['n_val']} validation, {C.N_TEST} test; full-batch Adam "
               f"(lr {cfg['lr']}), {cfg['steps']} steps; {len(C.seeds(args))} seed(s), "
               "mean ± std (gain: paired by seed).")
    report.table(
        ["training samples", "penalty", "weight", "test acc", "gain over none"],
        [[key[0], key[1], f"{key[2]:g}", rec.fmt(key, "test"),
          "-" if key[1] == "none" else C.mean_std(gains[key])]
         for key in best.values()],
        "**Best weight per penalty and size** (by validation accuracy):")
    report.write(plot(rec, best, gains, cfg["sizes"]), TITLE)
    return report


def plot(rec, best, gains, sizes):
    fig, axes = C.figure(1, 2, size=(5.0, 3.6))
    for method in METHODS:
        keys = [best[(n, method)] for n in sizes]
        axes[0, 0].errorbar(sizes, [rec.mean(k, "test") for k in keys],
                            yerr=[rec.std(k, "test") for k in keys], marker="o", capsize=2,
                            label=method)
        if method != "none":
            g = np.array([gains[k] for k in keys])
            axes[0, 1].errorbar(sizes, 100 * g.mean(1), yerr=100 * g.std(1), marker="o",
                                capsize=2, label=method)
    axes[0, 1].axhline(0, color="k", lw=0.8)
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xlabel("training samples")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("test accuracy")
    axes[0, 1].set_ylabel("gain over no penalty (points)")
    axes[0, 0].legend(fontsize=8)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    return C.main(run, __doc__, argv, BACKENDS)


if __name__ == "__main__":
    sys.exit(main())
