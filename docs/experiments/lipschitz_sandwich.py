"""The Lipschitz sandwich during training: how tight a certificate ``js.lipschitz`` gives.

Question: ``js.lipschitz`` brackets a network's global L2 Lipschitz constant between a
certified ``upper`` (exact layer norms composed along the network) and an attained
``lower`` (the largest exact per-sample Jacobian norm over data, raised by gradient
ascent on the input). How wide is the bracket during training, and does a penalty that
shrinks the layers' norms close it?

Setup: the digits CNN of the Fantastic Four experiment (convs 1-16-32-32, 3x3, strides
1, 2, 1, ReLU, dense to 10) trained three ways: no penalty; the exact spectral penalty
(``js.penalties.spectral``, each sample's ``sigma_max(J)^2``); and the conv-bound penalty
(``lam * sum over layers`` of ``js.conv.gram_bound`` of each conv at the input size it
sees, with its stride and padding, where the library has it, else the Fantastic Four
bound ``js.penalties.conv_bound``, plus the dense layer's spectral norm). After every epoch: ``js.lipschitz(model, (64,),
data=validation set)``: upper, lower and their ratio. At the end: test accuracy and the
certified accuracy at L2 radii ``eps``: the share of test points classified correctly
with ``margin > sqrt(2) * upper * eps`` (no perturbation of norm ``eps`` can flip them),
next to the same count with ``lower`` in place of ``upper``, which no certificate from
a global constant can exceed.

    python docs/experiments/lipschitz_sandwich.py [--quick]
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import _common as C
import numpy as np
import torch
import torch.nn.functional as F

import jacspec as js

CHANNELS, STRIDES = (1, 16, 32, 32), (1, 2, 1)
EPS = (0.05, 0.1, 0.2, 0.3)
#: Conv-bound method: Gram iteration where the library has it.
CONV_METHOD = "gram" if hasattr(js.conv, "gram_bound") else "fantastic_four"
PENALTIES = {"none": 0.0, "spectral": 0.03, "conv_bound": 0.03}
FULL = dict(n_train=500, n_val=200, epochs=10, batch_size=50, lr=3e-3, refine=10)
QUICK = dict(n_train=100, n_val=10, epochs=1, batch_size=50, lr=3e-3, refine=1)

BACKENDS = ("torch",)
TITLE = "Lipschitz sandwich during training"


def conv_bound_sum(model: torch.nn.Module) -> torch.Tensor:
    """Sum over layers of a certified bound on each layer's norm (differentiable): the
    Gram-iteration bound of each conv at the input size it sees, with its stride and
    padding (else the Fantastic Four bound), the dense layer's spectral norm."""
    out, size = [], C.IMAGE_SHAPE[1]
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            if CONV_METHOD == "gram":
                out.append(js.conv.gram_bound(m.weight, (size, size), stride=m.stride,
                                              padding=m.padding))
            else:
                out.append(js.penalties.conv_bound(m.weight))
            size = -(-size // m.stride[0])
        elif isinstance(m, torch.nn.Linear):
            out.append(torch.linalg.matrix_norm(m.weight, ord=2))
    return torch.stack(out).sum()


def penalty(name: str, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    if name == "spectral":
        return js.penalties.spectral(model, x)
    return conv_bound_sum(model)


def certified(logits: np.ndarray, y: np.ndarray, lipschitz: float) -> list[float]:
    """Share of points correct with margin > sqrt(2) L eps, at each eps."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    ok = logits.argmax(1) == y
    margin = top2[:, 1] - top2[:, 0]
    return [float(np.mean(ok & (margin > np.sqrt(2) * lipschitz * e))) for e in EPS]


def train_and_watch(k, name: str, split: C.Split, cfg: dict, seed: int) -> dict:
    """Train with the named penalty; the sandwich after every epoch."""
    model = k.build(C.cnn_spec(CHANNELS, STRIDES, seed))
    Xt, yt = k.asarray(split.X_train), torch.as_tensor(split.y_train)
    Xv = k.asarray(split.X_val)
    opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
    lam = PENALTIES[name]
    curve: dict[str, list[float]] = {"upper": [], "lower": [], "seconds": []}
    for epoch in range(cfg["epochs"]):
        for idx in C.batches(len(Xt), cfg["batch_size"], 1, seed * 1000 + epoch):
            loss = F.cross_entropy(model(Xt[idx]), yt[idx])
            if lam:
                loss = loss + lam * penalty(name, model, Xt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        t0 = time.perf_counter()
        res = js.lipschitz(model, (64,), data=Xv, refine_steps=cfg["refine"], seed=epoch)
        curve["seconds"].append(time.perf_counter() - t0)
        curve["upper"].append(res.upper)
        curve["lower"].append(res.lower)
    logits = k.predict(model, split.X_test)
    return dict(curve, test=float(np.mean(logits.argmax(1) == split.y_test)),
                cert_upper=certified(logits, split.y_test, curve["upper"][-1]),
                cert_lower=certified(logits, split.y_test, curve["lower"][-1]))


def run(args) -> C.Report:
    k = C.kit("torch")
    cfg = QUICK if args.quick else FULL
    report = C.Report("lipschitz_sandwich_torch", args.out, "torch", args.quick)
    split = C.digits(cfg["n_train"], n_val=cfg["n_val"], seed=0)
    runs: dict[str, list[dict]] = {name: [] for name in PENALTIES}
    for seed in C.seeds(args):
        for name in PENALTIES:
            r = train_and_watch(k, name, split, cfg, seed)
            runs[name].append(r)
            print(f"seed {seed} {name}: test {r['test']:.3f}, upper {r['upper'][-1]:.2f}, "
                  f"lower {r['lower'][-1]:.2f}", flush=True)
    report.add(
        f"Digits CNN: convs {'-'.join(map(str, CHANNELS))} (3x3, strides "
        f"{', '.join(map(str, STRIDES))}, zero padding 1), ReLU, dense to 10; "
        f"{cfg['n_train']} training, {cfg['n_val']} validation, {C.N_TEST} test samples; "
        f"Adam (lr {cfg['lr']}), batch {cfg['batch_size']}, {cfg['epochs']} epochs; "
        f"penalty weights {', '.join(f'{n} {v:g}' for n, v in PENALTIES.items() if v)}; "
        f"conv bound: `{CONV_METHOD}`. `js.lipschitz(model, (64,), data=validation set, "
        f"refine_steps={cfg['refine']})` after each epoch; {len(C.seeds(args))} seed(s), "
        "mean ± std.")
    epochs = range(cfg["epochs"])
    report.table(
        ["epoch"] + [f"{n}: {c}" for n in PENALTIES for c in ("upper", "lower", "gap")],
        [[e + 1] + [cell for n in PENALTIES for cell in (
            C.mean_std([r["upper"][e] for r in runs[n]], 2),
            C.mean_std([r["lower"][e] for r in runs[n]], 2),
            C.mean_std([r["upper"][e] / r["lower"][e] for r in runs[n]], 1))]
         for e in epochs],
        "**Upper and lower bound on the Lipschitz constant of the logits, per epoch** "
        "(gap = upper / lower):")
    report.table(
        ["penalty", "test acc", "upper", "lower", "gap", "js.lipschitz time (s)"]
        + [f"certified ε={e} (upper / lower)" for e in EPS],
        [[n, C.mean_std([r["test"] for r in runs[n]]),
          C.mean_std([r["upper"][-1] for r in runs[n]], 2),
          C.mean_std([r["lower"][-1] for r in runs[n]], 2),
          C.mean_std([r["upper"][-1] / r["lower"][-1] for r in runs[n]], 1),
          C.mean_std([np.mean(r["seconds"]) for r in runs[n]], 2)]
         + [f"{C.mean_std([r['cert_upper'][i] for r in runs[n]])} / "
            f"{C.mean_std([r['cert_lower'][i] for r in runs[n]])}" for i in range(len(EPS))]
         for n in PENALTIES],
        "**After training**: certified accuracy with `upper` (a certificate) and with "
        "`lower` (a ceiling: no global-constant certificate can do better):")
    report.write(plot(runs, cfg), TITLE)
    return report


def plot(runs: dict[str, list[dict]], cfg: dict):
    fig, axes = C.figure(1, 3, size=(4.6, 3.6))
    epochs = np.arange(1, cfg["epochs"] + 1)
    for color, (name, rs) in zip(C.colors(len(runs)), runs.items()):
        up = np.array([r["upper"] for r in rs])
        lo = np.array([r["lower"] for r in rs])
        axes[0, 0].plot(epochs, up.mean(0), color=color, label=f"{name}: upper")
        axes[0, 0].plot(epochs, lo.mean(0), color=color, ls="--", label=f"{name}: lower")
        axes[0, 0].fill_between(epochs, lo.mean(0), up.mean(0), color=color, alpha=0.15)
        axes[0, 1].plot(epochs, (up / lo).mean(0), color=color, marker="o", label=name)
        cu = np.array([r["cert_upper"] for r in rs]).mean(0)
        cl = np.array([r["cert_lower"] for r in rs]).mean(0)
        axes[0, 2].plot(EPS, cu, color=color, marker="o", label=f"{name}: upper")
        axes[0, 2].plot(EPS, cl, color=color, marker="x", ls="--", label=f"{name}: lower")
    axes[0, 0].set_yscale("log")
    axes[0, 0].set_xlabel("epoch")
    axes[0, 0].set_ylabel("Lipschitz constant of the logits")
    axes[0, 1].set_xlabel("epoch")
    axes[0, 1].set_ylabel("gap: upper / lower")
    axes[0, 2].set_xlabel("L2 radius ε")
    axes[0, 2].set_ylabel("certified test accuracy")
    for a in axes[0]:
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    return fig


def main(argv: Sequence[str] | None = None) -> int:
    return C.main(run, __doc__, argv, BACKENDS)


if __name__ == "__main__":
    sys.exit(main())
