"""Slope vs width and input scale (Johansson et al. 2021, arXiv 2107.01473).

Claims: (a) the distribution of the slope ``||J_f(x)||_2`` of a classifier trained to a
given training loss is, to a large extent, independent of the width of its layers, at
the data points and between them; (b) scaling the inputs by ``c`` scales the slope of
the trained network by ``1/c``.

Setup: ReLU MLPs 64-w-w-10, w = 32 ... 1024, He-normal initial weights, trained with
full-batch Adam on digits until the training cross-entropy reaches a fixed target (the
same for every width). Slopes by ``js.slope`` at every training point and at points on
segments between random pairs of training points (``num_between``); the test-point
median as well. For (b), the width-256 network is trained the same way on inputs
``c * x`` for several ``c``; the median slope times ``c`` should then be constant. The
exact identity ``slope(x -> f(x / c))(c x) = slope(f)(x) / c`` is checked alongside, as
a test of the tool rather than of training.

    python docs/experiments/slope_width.py [--quick] [--backend {torch,jax}]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import _common as C
import numpy as np

FULL = dict(n_train=500, widths=(32, 64, 128, 256, 512, 1024), scales=(0.25, 0.5, 1, 2, 4),
            scale_width=256, target=0.02, max_epochs=2000, lr=1e-3, num_between=1000)
QUICK = dict(n_train=100, widths=(32, 128), scales=(0.5, 1, 2), scale_width=32, target=0.5,
             max_epochs=20, lr=3e-3, num_between=100)

BACKENDS = ("torch", "jax")
TITLE = "Slope distributions vs width and input scale, digits"


def fit(k, width: int, split: C.Split, c: float, cfg: dict, seed: int):
    """A width-``width`` MLP trained on inputs scaled by ``c``."""
    model = k.build(C.mlp_spec([64, width, width, 10], seed))
    out = k.train(model, c * split.X_train, split.y_train, epochs=cfg["max_epochs"],
                  lr=cfg["lr"], seed=seed, until_loss=cfg["target"])
    return model, out


def run(args) -> C.Report:
    k = C.kit(args.backend)
    cfg = QUICK if args.quick else FULL
    report = C.Report(f"slope_width_{args.backend}", args.out, args.backend, args.quick,
                      spectral=False)
    split = C.digits(cfg["n_train"], seed=0)
    rec = C.Records()
    hists: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for seed in C.seeds(args):
        for w in cfg["widths"]:
            model, out = fit(k, w, split, 1.0, cfg, seed)
            s = C.slopes(k, model, split.X_train, num_between=cfg["num_between"], seed=seed)
            data, between = s.numpy("data"), s.numpy("between")
            test = C.slopes(k, model, split.X_test).numpy()
            hists.setdefault(w, []).append((data, between))
            rec.add(("width", w), steps=out["steps"], loss=out["loss"],
                    acc=k.accuracy(model, split.X_test, split.y_test), params=k.num_params(model),
                    d50=np.median(data), d05=np.quantile(data, 0.05),
                    d95=np.quantile(data, 0.95), b50=np.median(between),
                    b05=np.quantile(between, 0.05), b95=np.quantile(between, 0.95),
                    t50=np.median(test))
            print(f"seed {seed} width {w}: {out['steps']} steps, loss {out['loss']:.4f}, "
                  f"slope median {np.median(data):.2f}", flush=True)
        for c in cfg["scales"]:
            model, out = fit(k, cfg["scale_width"], split, c, cfg, seed)
            med = float(np.median(C.slopes(k, model, c * split.X_test).numpy()))
            rec.add(("scale", c), steps=out["steps"], loss=out["loss"], median=med,
                    cmedian=c * med,
                    acc=k.accuracy(model, c * split.X_test, split.y_test))
        rec.add("identity", rel=identity_check(k, model, split.X_test, cfg["scales"][-1]))
    report.add(f"Digits: {cfg['n_train']} training, {C.N_TEST} test samples; full-batch "
               f"Adam (lr {cfg['lr']}) until the training cross-entropy is "
               f"<= {cfg['target']} (at most {cfg['max_epochs']} steps); slopes at the "
               f"{cfg['n_train']} training points and {cfg['num_between']} points between "
               f"them; {len(C.seeds(args))} seed(s), mean ± std.")
    widths = [key for key in rec.keys() if key[0] == "width"]
    report.table(
        ["width", "parameters", "steps", "train loss", "test acc", "slope at data: q05",
         "median", "q95", "between: q05", "median", "q95", "test-point median"],
        [[key[1], int(rec.mean(key, "params")), rec.fmt(key, "steps", 0),
          rec.fmt(key, "loss", 4), rec.fmt(key, "acc"), rec.fmt(key, "d05", 2),
          rec.fmt(key, "d50", 2), rec.fmt(key, "d95", 2), rec.fmt(key, "b05", 2),
          rec.fmt(key, "b50", 2), rec.fmt(key, "b95", 2), rec.fmt(key, "t50", 2)]
         for key in widths],
        "**Slope vs width** (quantiles of `js.slope` values):")
    scales = [key for key in rec.keys() if key[0] == "scale"]
    ref = rec.mean(("scale", 1), "median")
    report.table(
        ["input scale c", "steps", "test acc", "median slope s(c)", "c · s(c)",
         "s(c) / s(1)", "1/c"],
        [[f"{key[1]:g}", rec.fmt(key, "steps", 0), rec.fmt(key, "acc"),
          rec.fmt(key, "median", 2), rec.fmt(key, "cmedian", 2),
          f"{rec.mean(key, 'median') / ref:.3f}", f"{1 / key[1]:.3f}"] for key in scales],
        f"**Trained on inputs scaled by c** (width {cfg['scale_width']}; median slope at "
        "the scaled test points):")
    report.add("Identity check, `js.slope` of `x -> f(x / c)` at `c x` against "
               f"`js.slope(f)(x) / c` (c = {cfg['scales'][-1]:g}): largest relative "
               f"difference {max(rec.values('identity', 'rel')):.1e}.")
    report.write(plot(rec, hists, widths, scales), TITLE)
    return report


def identity_check(k, model, X: np.ndarray, c: float) -> float:
    """Largest relative difference between the slope of ``x -> f(x / c)`` at ``c X`` and
    ``slope(f)(X) / c``: zero up to rounding, by the chain rule."""
    import jacspec as js

    f = k.fn(model)
    scaled = js.slope(lambda z: f(z / c), k.asarray(c * X)).numpy()
    plain = C.slopes(k, model, X).numpy() / c
    return float(np.max(np.abs(scaled - plain) / plain))


def plot(rec, hists, widths, scales):
    fig, axes = C.figure(1, 3, size=(4.4, 3.4))
    allv = np.concatenate([np.concatenate(run) for runs in hists.values() for run in runs])
    edges = np.linspace(0, np.quantile(allv, 0.995), 50)
    colors = C.colors(len(hists))
    for i, (ax, kind) in enumerate(zip(axes[0, :2], ("data", "between"))):
        for color, (w, runs) in zip(colors, hists.items()):
            ax.hist(np.concatenate([run[i] for run in runs]), bins=edges, density=True,
                    histtype="step", color=color, label=f"w={w}")
        ax.set_xlabel(r"slope $\|J_f(x)\|_2$")
        ax.set_title("at training points" if kind == "data" else "between training points")
    axes[0, 0].set_ylabel("density")
    axes[0, 0].legend(fontsize=8)
    ax = axes[0, 2]
    cs = np.array([key[1] for key in scales], dtype=float)
    med = np.array([rec.mean(key, "median") for key in scales])
    sd = np.array([rec.std(key, "median") for key in scales])
    ax.errorbar(cs, med, yerr=sd, marker="o", label="median slope s(c)")
    ref = rec.mean(("scale", 1), "median")
    ax.plot(cs, ref / cs, "k--", label="s(1) / c")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log", base=2)
    ax.set_xlabel("input scale c")
    ax.set_title("trained on scaled inputs")
    ax.legend(fontsize=8)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    return C.main(run, __doc__, argv, BACKENDS)


if __name__ == "__main__":
    sys.exit(main())
