"""Fantastic Four: a cheap, tight conv bound, and a regularizer (Singla & Feizi 2021,
arXiv 1911.10258).

Claims: (a) ``sqrt(h w) min(||R||, ||S||, ||T||, ||U||)`` over four reshapes of the
kernel bounds a conv layer's spectral norm, is tight (close to the exact norm), and
costs much less than computing the exact norm; (b) used as a penalty in training, it
improves generalization and provable robustness.

Setup: (a) per-layer tables from ``js.conv.layer_report`` (Fantastic Four bound, exact
operator norm on the layer's input size with its padding and stride, product of the
exact norms) for a CNN trained on digits and for a ResNet-18 (CIFAR variant, 32x32x3
inputs, ``jacspec.bench.models_torch``) at one random initialization. The time of the
bound (``js.conv.fantastic_four``) and of the exact norm (``js.conv.spectral_norm``) is
measured per layer (one call each, after a warm-up call). (b) the digits CNN trained with no penalty and with
``lam * sum over layers`` of the Fantastic Four bound of each conv kernel
(``js.penalties.conv_bound``) and the spectral norm of the dense weight; reported: test
accuracy, the product of the exact layer norms (a Lipschitz constant of the logits,
ReLU being 1-Lipschitz) and the certified accuracy: the share of test points classified
correctly with a logit margin above ``sqrt(2) L eps``, which no L2 perturbation of size
``eps`` can flip.

    python docs/experiments/fantastic_four.py [--quick]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import _common as C
import numpy as np
import torch
from torch import nn

import jacspec as js
from jacspec.bench.models_torch import ResNet18

CHANNELS, STRIDES = (1, 16, 32, 32), (1, 2, 1)
LAMBDAS = (0.0, 0.003, 0.03, 0.3)
EPS = (0.0, 0.02, 0.05, 0.1, 0.2)
FULL = dict(n_train=500, n_val=200, epochs=40, batch_size=100, lr=3e-3, resnet=True)
QUICK = dict(n_train=100, n_val=50, epochs=2, batch_size=50, lr=3e-3, resnet=False)

BACKENDS = ("torch",)
TITLE = "Fantastic Four bound: tightness, cost, and as a penalty"


# ------------------------------------------------------------------------ per layer


def layer_rows(model: nn.Module, input_shape: tuple[int, ...]) -> list[dict]:
    """``js.conv.layer_report`` rows with the bound's and the exact norm's times."""
    convs = {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    rows = []
    for row in js.conv.layer_report(model, input_shape):
        r = row._asdict()
        if row.kind == "conv":
            w = convs[row.name].weight.detach()
            m = convs[row.name]
            _, r["t_bound"] = C.timed(lambda w=w: js.conv.fantastic_four(w).bound, repeats=1)
            _, r["t_exact"] = C.timed(lambda w=w, m=m, row=row: js.conv.spectral_norm(
                w, row.input_size, stride=m.stride, padding=m.padding), repeats=1)
        rows.append(r)
    return rows


def speedup(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.2g}x"


def per_layer_table(report: C.Report, runs: list[list[dict]], title: str,
                    chain: bool = True) -> None:
    """One row per layer: bound, exact, ratio (mean ± std over the runs), times; for a
    ``chain`` of layers (no skip connections) also the products of the norms."""
    header = ["layer", "kernel", "stride", "input", "Fantastic Four bound", "exact norm",
              "bound / exact", "bound time (ms)", "exact time (ms)", "exact / bound time"]
    rows = []
    for i, r in enumerate(runs[0]):
        col = [run[i] for run in runs]
        conv = r["kind"] == "conv"
        rows.append([
            r["name"], "x".join(map(str, r["kernel_shape"])),
            "x".join(map(str, r["stride"])) if conv else "-",
            "x".join(map(str, r["input_size"])),
            C.mean_std([c["bound"] for c in col], 3),
            C.mean_std([c["exact"] for c in col], 3),
            C.mean_std([c["bound"] / c["exact"] for c in col], 2) if conv else "1 (dense)",
            C.mean_std([1e3 * c["t_bound"] for c in col], 2) if conv else "-",
            C.mean_std([1e3 * c["t_exact"] for c in col], 1) if conv else "-",
            speedup(np.mean([c["t_exact"] / c["t_bound"] for c in col])) if conv else "-",
        ])
    prod = [run[-1]["product"] for run in runs]
    bound_prod = [np.prod([c["bound"] for c in run]) for run in runs]
    report.table(header, rows, title)
    if chain:
        report.add(f"Product of exact layer norms {C.mean_std(prod, 1)}; product of bounds "
                   f"{C.mean_std(bound_prod, 1)}.")


# ------------------------------------------------------------------------ training


def certified(k, model, X: np.ndarray, y: np.ndarray, lipschitz: float) -> dict[str, float]:
    """Certified accuracy at each eps: correct, with margin > sqrt(2) L eps."""
    logits = k.predict(model, X)
    top2 = np.sort(logits, axis=1)[:, -2:]
    correct = logits.argmax(1) == y
    margin = top2[:, 1] - top2[:, 0]
    return {f"cert {e}": float(np.mean(correct & (margin > np.sqrt(2) * lipschitz * e)))
            for e in EPS}


def run(args) -> C.Report:
    k = C.kit("torch")
    cfg = QUICK if args.quick else FULL
    report = C.Report("fantastic_four_torch", args.out, "torch", args.quick, spectral=False)
    lams = LAMBDAS[:2] if args.quick else LAMBDAS
    split = C.digits(cfg["n_train"], n_val=cfg["n_val"], seed=0)
    rec = C.Records()
    cnn_rows, resnet_rows = [], []
    for seed in C.seeds(args):
        for lam in lams:
            model = k.build(C.cnn_spec(CHANNELS, STRIDES, seed))
            k.train(model, split.X_train, split.y_train, penalty="layer_sum", lam=lam,
                    epochs=cfg["epochs"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                    seed=seed)
            rows = layer_rows(model, (64,))
            if lam == 0:
                cnn_rows.append(rows)
            L = rows[-1]["product"]
            rec.add(("cnn", lam), test=k.accuracy(model, split.X_test, split.y_test),
                    val=k.accuracy(model, split.X_val, split.y_val), lipschitz=L,
                    bound=np.prod([r["bound"] for r in rows]),
                    **certified(k, model, split.X_test, split.y_test, L))
            print(f"seed {seed} lam={lam:g}: test {rec.data[('cnn', lam)]['test'][-1]:.3f}, "
                  f"L {L:.1f}", flush=True)
        if cfg["resnet"] and seed == 0:  # one random initialization (minutes per network)
            torch.manual_seed(seed)
            resnet_rows.append(layer_rows(ResNet18().eval(), (3, 32, 32)))
    report.add(f"Digits CNN: convs {'-'.join(map(str, CHANNELS))} (3x3, strides "
               f"{', '.join(map(str, STRIDES))}, zero padding 1), ReLU, dense to 10; "
               f"{cfg['n_train']} training, {cfg['n_val']} validation, {C.N_TEST} test "
               f"samples; Adam (lr {cfg['lr']}), batch {cfg['batch_size']}, {cfg['epochs']} "
               f"epochs; {len(C.seeds(args))} seed(s), mean ± std. Times: 1 thread.")
    per_layer_table(report, cnn_rows, "**Digits CNN, trained without penalty** (per layer):")
    if resnet_rows:
        per_layer_table(report, resnet_rows,
                        "**ResNet-18 at one random initialization, 32x32x3 inputs** "
                        "(per conv and dense layer; BatchNorm not included):", chain=False)
    report.table(
        ["penalty weight λ", "test acc", "val acc", "Lipschitz product (exact norms)",
         "product of bounds"] + [f"certified acc ε={e}" for e in EPS[1:]],
        [[f"{lam:g}", rec.fmt(("cnn", lam), "test"), rec.fmt(("cnn", lam), "val"),
          rec.fmt(("cnn", lam), "lipschitz", 1), rec.fmt(("cnn", lam), "bound", 1)]
         + [rec.fmt(("cnn", lam), f"cert {e}") for e in EPS[1:]] for lam in lams],
        "**Training the digits CNN with `λ · Σ layer bounds`** (certified: correct with "
        "logit margin > √2 · L · ε, L2 radius ε):")
    report.write(plot(rec, lams, cnn_rows, resnet_rows), TITLE)
    return report


def plot(rec, lams, cnn_rows, resnet_rows):
    fig, axes = C.figure(1, 3, size=(4.6, 3.6))
    for rows, label, marker in ((cnn_rows, "digits CNN (trained)", "s"),
                                (resnet_rows, "ResNet-18 (init)", "o")):
        if not rows:
            continue
        convs = [i for i, r in enumerate(rows[0]) if r["kind"] == "conv"]
        ratio = np.array([[run[i]["bound"] / run[i]["exact"] for i in convs] for run in rows])
        axes[0, 0].errorbar(range(len(convs)), ratio.mean(0), yerr=ratio.std(0),
                            marker=marker, ls="", capsize=2, label=label)
        tb = np.array([[run[i]["t_bound"] for i in convs] for run in rows]).mean(0)
        te = np.array([[run[i]["t_exact"] for i in convs] for run in rows]).mean(0)
        axes[0, 1].plot(range(len(convs)), 1e3 * te, marker=marker, label=f"exact, {label}")
        axes[0, 1].plot(range(len(convs)), 1e3 * tb, marker=marker, ls="--",
                        label=f"bound, {label}")
    axes[0, 0].axhline(1, color="k", lw=0.8)
    axes[0, 0].set_xlabel("conv layer (forward order)")
    axes[0, 0].set_ylabel("Fantastic Four bound / exact norm")
    axes[0, 0].legend(fontsize=8)
    axes[0, 1].set_yscale("log")
    axes[0, 1].set_xlabel("conv layer (forward order)")
    axes[0, 1].set_ylabel("time per layer (ms)")
    axes[0, 1].legend(fontsize=7)
    ax = axes[0, 2]
    for color, lam in zip(C.colors(len(lams)), lams):
        key = ("cnn", lam)
        ax.errorbar(EPS, [rec.mean(key, f"cert {e}") for e in EPS],
                    yerr=[rec.std(key, f"cert {e}") for e in EPS], marker="o", capsize=2,
                    color=color, label=f"λ={lam:g} (L={rec.mean(key, 'lipschitz'):.0f})")
    ax.set_xlabel("L2 radius ε")
    ax.set_ylabel("certified test accuracy")
    ax.legend(fontsize=8)
    for a in axes[0]:
        a.grid(alpha=0.3)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    return C.main(run, __doc__, argv, BACKENDS)


if __name__ == "__main__":
    sys.exit(main())
