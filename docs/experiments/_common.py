"""Framework-free helpers shared by the experiment scripts in this folder.

Data (scikit-learn's bundled digits, no download), initial weights drawn with NumPy (so
that the torch and JAX runs of an experiment start from the same weights), the command
line every script accepts, mean ± std formatting, markdown tables and figure saving.
The training loops and attacks live in ``_torch_kit.py`` and ``_jax_kit.py``, which share
one interface (see :func:`kit`).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import os
import platform
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"

#: digits images are 8x8 with values 0..16; scaled to [0, 1].
IMAGE_SHAPE = (1, 8, 8)
NUM_CLASSES = 10
#: Fixed size of the test split (the rest of the 1797 digits feeds train/validation).
N_TEST = 597


# ----------------------------------------------------------------------------- data


@dataclass
class Split:
    """A seeded digits split; arrays are float32 in ``[0, 1]`` with int64 labels."""

    X_train: np.ndarray
    y_train: np.ndarray
    X_val: np.ndarray
    y_val: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray


def digits(n_train: int, *, n_val: int = 0, n_test: int = N_TEST, seed: int = 0) -> Split:
    """A random split of scikit-learn's digits: test first, then validation, then train.

    The test split depends only on ``seed`` (not on ``n_train``), so runs with different
    training-set sizes are scored on the same test points.
    """
    from sklearn.datasets import load_digits

    data = load_digits()
    X = (data.data / 16.0).astype(np.float32)
    y = data.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(y))
    if n_test + n_val + n_train > len(y):
        raise ValueError(
            f"Expected n_train + n_val + n_test <= {len(y)}. "
            f"Received {n_train} + {n_val} + {n_test}."
        )
    te = perm[:n_test]
    va = perm[n_test:n_test + n_val]
    tr = perm[n_test + n_val:n_test + n_val + n_train]
    return Split(X[tr], y[tr], X[va], y[va], X[te], y[te])


# ------------------------------------------------------------------- initial weights


def init_dense(n_in: int, n_out: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """He-normal ``(out, in)`` weight and zero bias (ReLU networks)."""
    W = rng.standard_normal((n_out, n_in)) * np.sqrt(2.0 / n_in)
    return W.astype(np.float32), np.zeros(n_out, np.float32)


def init_conv(c_in: int, c_out: int, k: int, rng: np.random.Generator) -> tuple[np.ndarray, ...]:
    """He-normal OIHW kernel and zero bias."""
    fan_in = c_in * k * k
    w = rng.standard_normal((c_out, c_in, k, k)) * np.sqrt(2.0 / fan_in)
    return w.astype(np.float32), np.zeros(c_out, np.float32)


@dataclass
class MLPSpec:
    """A ReLU MLP ``sizes[0] -> ... -> sizes[-1]``; ``residual`` adds the input to the
    output (square maps only). ``layers`` holds ``(W (out, in), b)`` NumPy pairs."""

    layers: list[tuple[np.ndarray, np.ndarray]]
    activation: str = "relu"
    residual: bool = False


@dataclass
class CNNSpec:
    """Convs (3x3, "same" zero padding, ReLU) on ``(1, 8, 8)`` digits, then one dense
    layer. ``convs`` holds ``(w OIHW, b, stride)``; ``dense`` is ``(W, b)``."""

    convs: list[tuple[np.ndarray, np.ndarray, int]]
    dense: tuple[np.ndarray, np.ndarray]


def mlp_spec(sizes: Sequence[int], seed: int, *, activation: str = "relu",
             residual: bool = False, last_scale: float = 1.0) -> MLPSpec:
    """Seeded initial weights of an MLP (``last_scale`` shrinks the last layer)."""
    rng = np.random.default_rng(seed)
    layers = [init_dense(i, o, rng) for i, o in zip(sizes[:-1], sizes[1:])]
    W, b = layers[-1]
    layers[-1] = ((W * last_scale).astype(np.float32), b)
    return MLPSpec(layers, activation, residual)


def cnn_spec(channels: Sequence[int], strides: Sequence[int], seed: int) -> CNNSpec:
    """Seeded initial weights of a CNN with convs ``channels[i] -> channels[i+1]``."""
    rng = np.random.default_rng(seed)
    convs, h = [], IMAGE_SHAPE[1]
    for c_in, c_out, s in zip(channels[:-1], channels[1:], strides):
        w, b = init_conv(c_in, c_out, 3, rng)
        convs.append((w, b, int(s)))
        h = -(-h // s)
    dense = init_dense(channels[-1] * h * h, NUM_CLASSES, rng)
    return CNNSpec(convs, dense)


# ------------------------------------------------------------------------ backends


def kit(backend: str) -> Any:
    """The training/attack helpers of one framework: ``_torch_kit`` or ``_jax_kit``.

    Both modules define the same functions: ``build(spec)``, ``fn(model)`` (the callable
    jacspec differentiates), ``train(model, X, y, ...)``, ``predict``, ``accuracy``,
    ``fgsm``, ``pgd_l2``, ``layer_norm_product`` and ``penalty_names``.
    """
    if backend not in ("torch", "jax"):
        raise ValueError(f"Expected backend 'torch' or 'jax'. Received {backend!r}.")
    return importlib.import_module(f"_{backend}_kit")


# ---------------------------------------------------------------- command line


def parser(description: str, backends: Sequence[str] = ("torch",)) -> argparse.ArgumentParser:
    """The options every experiment takes: ``--quick``, ``--backend``, ``--out``,
    ``--seeds``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="a smoke run of a few seconds (tiny sizes, one seed)")
    p.add_argument("--backend", choices=tuple(backends), default=backends[0])
    p.add_argument("--out", default=str(RESULTS),
                   help=f"folder for the table and figure (default: {RESULTS})")
    p.add_argument("--seeds", type=int, default=None,
                   help="number of seeds (default: 3, or 1 with --quick)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1; 0: torch's default)")
    return p


def main(run: Callable[[argparse.Namespace], Any], doc: str,
         argv: Sequence[str] | None, backends: Sequence[str] = ("torch",)) -> int:
    """A script's entry point: parse the common options (the first line of ``doc``
    describes the script) and ``run(args)`` with the requested torch threads."""
    args = parser(doc.splitlines()[0], backends).parse_args(argv)
    with kit(args.backend).threads(args.threads):
        run(args)
    return 0


def seeds(args: argparse.Namespace) -> list[int]:
    n = args.seeds if args.seeds is not None else (1 if args.quick else 3)
    return list(range(n))


def slopes(k: Any, model: Any, X: np.ndarray, *, num_between: int = 0,
           seed: int = 0) -> Any:
    """``js.slope`` of a kit's model at the rows of ``X`` (and between them)."""
    import jacspec as js

    return js.slope(k.fn(model), k.asarray(X), num_between=num_between, seed=seed)


# -------------------------------------------------------------------- statistics


def mean_std(values: Iterable[float], digits: int = 3) -> str:
    """``"m ± s"`` over seeds (population std; ``"m"`` alone for one value)."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std():.{digits}f}"


@dataclass
class Records:
    """Measurements keyed by a configuration, one value per seed and metric."""

    data: dict[Any, dict[str, list[float]]] = field(default_factory=dict)

    def add(self, key: Any, **metrics: float) -> None:
        row = self.data.setdefault(key, {})
        for name, value in metrics.items():
            row.setdefault(name, []).append(float(value))

    def values(self, key: Any, metric: str) -> np.ndarray:
        return np.asarray(self.data[key][metric])

    def mean(self, key: Any, metric: str) -> float:
        return float(self.values(key, metric).mean())

    def std(self, key: Any, metric: str) -> float:
        return float(self.values(key, metric).std())

    def fmt(self, key: Any, metric: str, digits: int = 3) -> str:
        return mean_std(self.data[key][metric], digits)

    def keys(self) -> list[Any]:
        return list(self.data)

    def best(self, metric: str) -> dict[Any, Any]:
        """For keys ``(*group, weight)``: per group, the key whose ``metric`` has the
        highest mean (e.g. the penalty weight with the best validation accuracy)."""
        out: dict[Any, Any] = {}
        for key in self.data:
            group = key[:-1]
            if group not in out or self.mean(key, metric) > self.mean(out[group], metric):
                out[group] = key
        return out


# ------------------------------------------------------------------------ output


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def environment(backend: str, spectral_defaults: bool = True) -> str:
    """One line naming the framework version, CPU and (if asked) the defaults of
    ``js.penalties.spectral`` in use."""
    import jacspec as js

    mod = importlib.import_module(backend)
    line = (f"{backend} {mod.__version__}, jacspec {js.__version__}, "
            f"{platform.machine()} CPU, {os.cpu_count()} cores")
    if not spectral_defaults:
        return line
    spectral = inspect.signature(js.penalties.spectral).parameters
    defaults = ", ".join(
        f"{k}={v.default!r}" for k, v in spectral.items()
        if v.default is not inspect.Parameter.empty and k in (
            "method", "tol", "maxiter"))
    return f"{line}; `js.penalties.spectral` defaults: {defaults}"


class Report:
    """Collects the markdown of one experiment run and writes it with the figure.

    The files are ``<out>/<name>.md`` and ``<out>/<name>.png``; the docs page includes
    the markdown and shows the figure.
    """

    def __init__(self, name: str, out: str | os.PathLike, backend: str,
                 quick: bool, *, spectral: bool = True) -> None:
        self.name, self.backend, self.quick = name, backend, quick
        self.spectral = spectral
        self.out = Path(out)
        self.parts: list[str] = []
        self.t0 = time.perf_counter()

    def add(self, text: str) -> None:
        self.parts.append(text.strip("\n"))

    def table(self, header: Sequence[str], rows: Iterable[Sequence[Any]],
              caption: str | None = None) -> None:
        if caption:
            self.add(caption)
        self.add(markdown_table(header, rows))

    def write(self, fig: Any, title: str) -> tuple[Path, Path]:
        """Write the markdown (with a footer on the run) and the figure (titled
        ``title (backend)``); print both."""
        self.out.mkdir(parents=True, exist_ok=True)
        md = self.out / f"{self.name}.md"
        png = self.out / f"{self.name}.png"
        seconds = time.perf_counter() - self.t0
        mode = "quick" if self.quick else "full"
        self.add(f"<small>Generated by `{self.script()}` ({mode} mode, "
                 f"{seconds / 60:.1f} min): "
                 f"{environment(self.backend, self.spectral)}.</small>")
        md.write_text("\n\n".join(self.parts) + "\n", encoding="utf-8")
        fig.suptitle(f"{title} ({self.backend})")
        fig.tight_layout()
        fig.savefig(png, dpi=100, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        print("\n\n".join(self.parts))
        print(f"wrote {md} and {png}")
        return md, png

    def script(self) -> str:
        stem = self.name.removesuffix(f"_{self.backend}")
        flags = f" --backend {self.backend}" if self.name.endswith(self.backend) else ""
        return f"python docs/experiments/{stem}.py{flags}"


def figure(nrows: int = 1, ncols: int = 1, *, size: tuple[float, float] = (5.0, 3.6),
           **kwargs: Any) -> tuple[Any, Any]:
    """A matplotlib figure drawn off-screen (Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                        squeeze=False, **kwargs)


def colors(n: int) -> list[Any]:
    """``n`` colours along the viridis map (ordered series: widths, sizes)."""
    import matplotlib

    return [matplotlib.colormaps["viridis"](t) for t in np.linspace(0.0, 0.9, n)]


def timed(fn: Callable[[], Any], repeats: int = 3) -> tuple[Any, float]:
    """``fn()``'s result and the best wall time of ``repeats`` calls after a warm-up."""
    out = fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def batches(n: int, batch_size: int | None, epochs: int, seed: int) -> Iterable[np.ndarray]:
    """Index arrays of seeded minibatches of a fixed size (full batch when
    ``batch_size`` is None or >= n); the remainder of a shuffled epoch is dropped, so
    that every step sees the same shape (JAX compiles once)."""
    if batch_size is None or batch_size >= n:
        for _ in range(epochs):
            yield np.arange(n)
        return
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
        perm = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            yield perm[start:start + batch_size]
