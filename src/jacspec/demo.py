"""``jacspec demo``: train a small classifier with and without Jacobian penalties.

On scikit-learn's bundled digits (8x8 images, 10 classes; no download) with a small
training subset — the regime where Varga et al. (2017) and Johansson et al. (2022) report
the largest gains — the same MLP (64-64-10, tanh, same initial weights) is trained plainly
and with each penalty of :mod:`jacspec.penalties`, natively in the chosen framework
(``torch.optim.Adam``; a jitted JAX step with a hand-written Adam; a TensorFlow
``GradientTape`` step). For each run it prints the test accuracy, the mean and maximum
per-sample Jacobian spectral norm on the test set, the slope quantiles at the test points
and between them (Johansson et al. 2021), and the wall time; it saves a plot of the slope
distributions where matplotlib is installed.

Run it as ``jacspec demo [--backend NAME]`` or ``python -m jacspec.demo``; from Python,
``jacspec.demo.run(backend="torch")``.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TextIO

import numpy as np

from ._install import install_hint
from ._paths import writable_folder
from ._progress import progress as progress_display

__all__ = ["run", "main", "RunResult", "DEFAULT_PENALTIES", "default_backend"]

#: Penalty weights used by the demo (per-sample values averaged over the batch).
DEFAULT_PENALTIES: dict[str, float] = {
    "spectral": 0.01,
    "frobenius": 0.002,
    "gradient_norm": 3.0,
}

_BACKEND_ORDER = ("torch", "jax", "tensorflow")
# scikit-learn's digits; the test set keeps at least two samples (the slope between
# test points needs a pair)
NUM_DIGITS = 1797
MIN_TEST = 2
MAX_SEED = 2**31 - 1  # every framework's seed (and numpy's) takes it


def check_options(*, steps: int | None, n_train: int, seed: int, out: str | None,
                  plot: bool) -> None:
    """ValueError for options that would fail only after training."""

    def bad(option: str, expected: str, value: Any) -> ValueError:
        return ValueError(f"Expected {option} to be {expected}. Received {value!r}.")

    def is_int(x: Any) -> bool:
        return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

    if steps is not None and not (is_int(steps) and steps >= 1):
        raise bad("steps", "a positive integer", steps)
    if not (is_int(n_train) and 1 <= n_train <= NUM_DIGITS - MIN_TEST):
        raise bad("n_train", f"an integer from 1 to {NUM_DIGITS - MIN_TEST} (the other "
                  f"of the {NUM_DIGITS} digits are the test set)", n_train)
    if not (is_int(seed) and 0 <= seed <= MAX_SEED):
        raise bad("seed", f"an integer from 0 to {MAX_SEED}", seed)
    problem = writable_folder(out) if plot and out is not None else None
    if problem:
        raise ValueError(f"Expected out to be a folder for the plot: {problem}.")


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """:func:`check_options` of parsed arguments, as the parser's usage error (exit
    status 2), before anything runs."""
    try:
        check_options(steps=args.steps, n_train=args.n_train, seed=args.seed, out=args.out,
                      plot=not args.no_plot)
    except ValueError as err:
        option = {"steps": "--steps", "n_train": "--n-train", "seed": "--seed",
                  "out": "--out"}[str(err).split()[1]]
        parser.error(f"argument {option}: {err}")


def default_backend() -> str:
    """The first installed of torch, jax, tensorflow."""
    for name in _BACKEND_ORDER:
        if importlib.util.find_spec(name) is not None:
            return name
    raise RuntimeError(
        "jacspec demo needs one of torch, jax or tensorflow; none is installed. "
        f"Install one, e.g. {install_hint('torch')}."
    )


@dataclass
class RunResult:
    """One training run of the demo: the penalty and what was measured after training."""

    name: str
    lam: float
    accuracy: float
    jac_mean: float
    jac_max: float
    slope_data: dict[str, float]
    slope_between: dict[str, float]
    seconds: float
    slopes: Any = field(default=None, repr=False)  # the SlopeResult


def _load_data(n_train: int, seed: int) -> tuple[np.ndarray, ...]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "jacspec demo uses scikit-learn's bundled digits data set: "
            'pip install "jacspec[demo]" (or pip install scikit-learn).'
        ) from err
    data = load_digits()
    X = (data.data / 16.0).astype(np.float64)
    y = data.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(len(y))
    tr, te = perm[:n_train], perm[n_train:]
    return X[tr], y[tr], X[te], y[te]


def _init_weights(sizes: Sequence[int], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal((o, i)) / np.sqrt(i), np.zeros(o))
        for i, o in zip(sizes[:-1], sizes[1:])
    ]


class _Progress:
    """Training progress of one run, with the loss (see :mod:`jacspec._progress`)."""

    def __init__(self, total: int, desc: str, enabled: bool, stream: TextIO) -> None:
        self.bar = progress_display(total, desc=desc, unit="step", enabled=enabled,
                                    file=stream)

    def __call__(self, step: int, loss: Any) -> None:
        self.bar.set_postfix_str(f"loss {float(loss):.4f}")
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _evaluate(js: Any, trainer: Any, X_test: np.ndarray, y_test: np.ndarray,
              num_between: int, seed: int, progress: bool) -> tuple[float, Any]:
    Xt = trainer.asarray(X_test)
    f = trainer.model
    b = js.backends.backend_of(Xt)
    with b.no_grad():
        logits = b.to_numpy(f(Xt))
    acc = float(np.mean(np.argmax(logits, axis=1) == y_test))
    slopes = js.slope(f, Xt, num_between=num_between, seed=seed, progress=progress)
    return acc, slopes


def format_table(results: Sequence[RunResult]) -> str:
    """The demo's table: one row per run."""
    head = (f"{'run':<15}{'lambda':>8}{'test acc':>10}{'|J| mean':>10}{'|J| max':>10}"
            f"{'data q05/q50/q95':>22}{'between q05/q50/q95':>24}{'time s':>8}")
    lines = [head, "-" * len(head)]
    for r in results:
        d, bt = r.slope_data, r.slope_between

        def q(s: dict[str, float]) -> str:
            return "/".join(f"{s[k]:.2f}" for k in ("q05", "q50", "q95")) if "q50" in s else "-"

        lines.append(
            f"{r.name:<15}{r.lam:>8.3g}{r.accuracy:>10.3f}{r.jac_mean:>10.3f}"
            f"{r.jac_max:>10.3f}{q(d):>22}{q(bt):>24}{r.seconds:>8.1f}"
        )
    return "\n".join(lines)


def _plot(results: Sequence[RunResult], path: str, backend: str) -> str | None:
    try:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    allv = np.concatenate([r.slopes.numpy() for r in results])
    edges = np.histogram_bin_edges(allv, bins=40)
    for ax, kind in zip(axes, ("data", "between")):
        for r in results:
            vals = r.slopes.numpy(kind)
            if vals.size:
                ax.hist(vals, bins=edges, histtype="step", linewidth=1.5, density=True,
                        label=f"{r.name} (acc {r.accuracy:.3f})")
        ax.set_title(f"slope at {'test points' if kind == 'data' else 'points between them'}")
        ax.set_xlabel(r"$\|J_f(x)\|_2$")
    axes[0].set_ylabel("density")
    axes[0].legend()
    fig.suptitle(f"jacspec demo ({backend}): digits, slope distributions")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(
    backend: str | None = None,
    *,
    quick: bool = False,
    n_train: int = 200,
    n_test: int | None = None,
    steps: int | None = None,
    lr: float = 1e-2,
    penalties: dict[str, float] | None = None,
    hidden: int = 64,
    num_between: int | None = None,
    seed: int = 0,
    dtype: str = "float32",
    out: str | None = ".",
    plot: bool = True,
    progress: bool = True,
    stream: TextIO | None = None,
) -> list[RunResult]:
    """Train the demo MLP plainly and with each penalty; print and return the results.

    Parameters
    ----------
    backend : str, optional
        ``"torch"``, ``"jax"`` or ``"tensorflow"``; default: the first installed.
    quick : bool
        A fast smoke run (few steps, few between points): for tests.
    n_train : int
        Training samples (the rest of the 1797 digits is the test set).
    n_test : int, optional
        Use only this many of the test samples (default: all; 400 with ``quick``).
    steps : int, optional
        Full-batch Adam steps per run (default 200, or 30 with ``quick``).
    lr : float
        Adam learning rate.
    penalties : dict, optional
        ``{penalty name: weight}`` of the penalized runs (default
        :data:`DEFAULT_PENALTIES`); a plain run always comes first.
    hidden : int
        Hidden width of the 64-hidden-10 tanh MLP.
    num_between : int, optional
        Points between test points for the slope (default 1000, 100 with ``quick``).
    seed : int
        Seeds the train/test split, the initial weights (shared by all runs) and the
        slope's between points.
    dtype : str
        ``"float32"`` (default) or ``"float64"``.
    out : str or None
        Folder for the plot ``jacspec_demo_<backend>.png`` (None: no plot).
    plot : bool
        Save the plot (where matplotlib is installed).
    progress : bool
        Show training progress on stderr (a tqdm bar on a terminal, lines in a log).
    stream : file, optional
        Where the table is printed (default ``sys.stdout``).

    Returns
    -------
    list of RunResult

    Raises
    ------
    ValueError
        Before training, for ``steps < 1``, ``n_train`` outside ``[1, 1795]``, a
        negative ``seed`` or an ``out`` that is not a writable folder (when plotting).
    """
    import jacspec as js

    check_options(steps=steps, n_train=n_train, seed=seed, out=out, plot=plot)
    stream = sys.stdout if stream is None else stream
    backend = default_backend() if backend is None else backend
    if backend not in _BACKEND_ORDER:
        raise ValueError(
            f"Expected backend to be one of {', '.join(_BACKEND_ORDER)}. Received {backend!r}."
        )
    if importlib.util.find_spec(backend) is None:
        raise ImportError(
            f"jacspec demo --backend {backend} needs {backend} installed: "
            f"{install_hint(backend)}."
        )
    from ._demo import make_trainer, threads

    steps = (30 if quick else 200) if steps is None else int(steps)
    num_between = (100 if quick else 1000) if num_between is None else int(num_between)
    pens = dict(DEFAULT_PENALTIES if penalties is None else penalties)
    unknown = [name for name in pens if name not in DEFAULT_PENALTIES]
    if unknown:
        raise ValueError(
            f"Expected penalty names among {', '.join(DEFAULT_PENALTIES)}. "
            f"Received {unknown!r}."
        )

    X_tr, y_tr, X_te, y_te = _load_data(n_train, seed)
    if n_test is None and quick:
        n_test = 400
    if n_test is not None:
        X_te, y_te = X_te[:n_test], y_te[:n_test]
    weights = _init_weights([X_tr.shape[1], hidden, 10], seed)
    print(
        f"jacspec demo: backend={backend} dtype={dtype} | digits: {len(y_tr)} training, "
        f"{len(y_te)} test samples | MLP 64-{hidden}-10 tanh, full-batch Adam lr={lr}, "
        f"{steps} steps",
        file=stream,
    )
    runs: list[tuple[str, float]] = [("plain", 0.0)] + list(pens.items())
    results: list[RunResult] = []
    with threads(backend):  # the demo's thread count for its small model
        for name, lam in runs:
            t0 = time.perf_counter()
            trainer = make_trainer(backend, weights, dtype)
            bar = _Progress(steps, f"{backend}/{name}", progress, sys.stderr)
            try:
                trainer.fit(X_tr, y_tr, penalty_name=None if name == "plain" else name,
                            lam=lam, steps=steps, lr=lr, callback=bar)
            finally:
                bar.close()
            acc, slopes = _evaluate(js, trainer, X_te, y_te, num_between, seed, progress)
            seconds = time.perf_counter() - t0
            data = slopes.summary("data")
            results.append(RunResult(
                name=name, lam=lam, accuracy=acc, jac_mean=data["mean"], jac_max=data["max"],
                slope_data=data, slope_between=slopes.summary("between"), seconds=seconds,
                slopes=slopes,
            ))
    print(format_table(results), file=stream)
    print("(|J|: per-sample Jacobian spectral norm of the logits on the test set; slope "
          "quantiles at test points and at random points between them)", file=stream)
    if plot and out is not None:
        os.makedirs(out, exist_ok=True)
        path = _plot(results, os.path.join(out, f"jacspec_demo_{backend}.png"), backend)
        if path is not None:
            print(f"slope distributions saved to {path}", file=stream)
    stream.flush()
    return results


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``jacspec demo`` arguments (on ``parser``, e.g. a CLI subparser, or a new one)."""
    p = parser or argparse.ArgumentParser(prog="jacspec demo")
    p.description = (
        "Train a small MLP (64-64-10, tanh) on scikit-learn's digits plainly and with each "
        "Jacobian penalty (spectral, frobenius, gradient_norm); print test accuracy, "
        "per-sample Jacobian spectral norms and slope quantiles, and save a plot of the "
        "slope distributions."
    )
    p.add_argument("--backend", choices=_BACKEND_ORDER, default=None,
                   help="framework (default: the first installed of torch, jax, tensorflow)")
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run: 30 steps, 400 test samples, 100 points between "
                   "them (default: off: 200 steps, all test samples, 1000 points)")
    p.add_argument("--steps", type=int, default=None, metavar="N",
                   help="full-batch Adam steps per run, at least 1 (default: 200, or 30 "
                   "with --quick)")
    p.add_argument("--n-train", type=int, default=200, metavar="N",
                   help=f"training samples, 1 to {NUM_DIGITS - MIN_TEST}; the rest of the "
                   f"{NUM_DIGITS} digits are the test set (default: 200)")
    p.add_argument("--seed", type=int, default=0,
                   help=f"seeds the split, the initial weights and the slope's points, 0 to "
                   f"{MAX_SEED} (default: 0)")
    p.add_argument("--out", default=".", metavar="DIR",
                   help="folder for the plot jacspec_demo_<backend>.png "
                   "(default: the current folder)")
    p.add_argument("--no-plot", action="store_true",
                   help="do not save the plot (default: save it where matplotlib is installed)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress display (default: a bar on a terminal, lines in a log)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m jacspec.demo``."""
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    return run_args(args)


def run_args(args: argparse.Namespace) -> int:
    """Run the demo from parsed :func:`build_parser` arguments (``jacspec demo``)."""
    run(backend=args.backend, quick=args.quick, steps=args.steps, n_train=args.n_train,
        seed=args.seed, out=args.out, plot=not args.no_plot, progress=not args.no_progress)
    return 0


if __name__ == "__main__":
    sys.exit(main())
