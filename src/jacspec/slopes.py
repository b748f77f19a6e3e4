"""The slope of a network: ``||J_f(x)||_2`` over data and between data points.

Johansson et al. (2021), *Slope and generalization properties of neural networks*: the
slope of ``f`` at ``x`` is the spectral norm of its Jacobian, a local Lipschitz constant.
Its distribution over the data and over the volume between data points describes how
"steep" a trained network is; rescaling the inputs by ``c`` divides it by ``c``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import validate as V
from ._progress import progress as progress_display
from .backends import Backend
from .derivatives import jacobian

__all__ = ["slope", "SlopeResult", "QUANTILE_LEVELS"]

Array = Any

#: The levels at which :attr:`SlopeResult.quantiles` are reported.
QUANTILE_LEVELS: tuple[float, ...] = (0.05, 0.25, 0.5, 0.75, 0.95)


@dataclass(frozen=True)
class SlopeResult:
    """Slopes ``||J_f(x)||_2`` at a set of points, with summary statistics.

    Attributes
    ----------
    values : array
        One slope per point, in the framework, dtype and device of the inputs; the data
        points first (in the order of ``X``), then the points between them.
    points_kind : tuple of str
        ``"data"`` or ``"between"``, one per value.
    mean, std : array
        0-d arrays: the mean and the (population, ``ddof=0``) standard deviation of
        all values.
    quantiles : array
        The quantiles of all values at :attr:`quantile_levels`
        (0.05, 0.25, 0.5, 0.75, 0.95), shape ``(5,)``.
    quantile_levels : tuple of float
        ``(0.05, 0.25, 0.5, 0.75, 0.95)``.
    """

    values: Array
    points_kind: tuple[str, ...]
    mean: Array
    std: Array
    quantiles: Array
    quantile_levels: tuple[float, ...] = QUANTILE_LEVELS
    _numpy: np.ndarray = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    # -- numpy views --------------------------------------------------------------------
    def numpy(self, kind: str | None = None) -> np.ndarray:
        """The values as a NumPy array: all of them, or only ``kind`` (``"data"``,
        ``"between"``)."""
        vals = self._numpy
        if kind is None:
            return vals.copy()
        V.points_kind(kind)
        mask = np.array([k == kind for k in self.points_kind], dtype=bool)
        return vals[mask]

    def summary(self, kind: str | None = None) -> dict[str, float]:
        """Plain-float statistics (``count``, ``mean``, ``std``, ``max``, ``q05`` ...
        ``q95``) of all values or of one ``kind`` of points."""
        vals = self.numpy(kind)
        out: dict[str, float] = {"count": float(vals.size)}
        if vals.size == 0:
            return out
        out.update(mean=float(vals.mean()), std=float(vals.std()), max=float(vals.max()))
        for q, v in zip(self.quantile_levels, np.quantile(vals, self.quantile_levels)):
            out[f"q{round(q * 100):02d}"] = float(v)
        return out

    def histogram(self, bins: Any = 30, *, kind: str | None = None,
                  range: tuple[float, float] | None = None, density: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
        """``numpy.histogram`` of the values (all, or one ``kind``): ``(counts, edges)``."""
        return np.histogram(self.numpy(kind), bins=bins, range=range, density=density)

    def plot(self, ax: Any = None, *, bins: Any = 30, label: str | None = None) -> Any:
        """Histograms of the slopes at data points and between them (matplotlib).

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw; a new figure by default.
        bins : int or sequence
            Histogram bins (shared by both kinds).
        label : str, optional
            Prefix of the legend entries.

        Returns
        -------
        matplotlib Axes

        Raises
        ------
        ImportError
            When matplotlib is not installed (``pip install "jacspec[plot]"``).
        """
        try:
            import matplotlib.pyplot as plt
        except ImportError as err:  # pragma: no cover - depends on the environment
            raise ImportError(
                "SlopeResult.plot needs matplotlib, from the `plot` extra: "
                'pip install "jacspec[plot]" (or pip install matplotlib).'
            ) from err
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        all_vals = self.numpy()
        edges = np.histogram_bin_edges(all_vals, bins=bins)
        prefix = f"{label}: " if label else ""
        for kind in ("data", "between"):
            vals = self.numpy(kind)
            if vals.size:
                ax.hist(vals, bins=edges, alpha=0.5, density=True,
                        label=f"{prefix}{kind} (n={vals.size})")
        ax.set_xlabel(r"slope $\|J_f(x)\|_2$")
        ax.set_ylabel("density")
        ax.legend()
        return ax

    def __str__(self) -> str:
        lines = []
        for kind in ("data", "between"):
            s = self.summary(kind)
            if s["count"]:
                qs = " ".join(f"{s[k]:.4g}" for k in s if k.startswith("q"))
                lines.append(
                    f"{kind:>7}: n={int(s['count'])} mean={s['mean']:.4g} std={s['std']:.4g} "
                    f"quantiles(5,25,50,75,95%)=[{qs}]"
                )
        return "SlopeResult\n" + "\n".join(lines)


def _chunks(total: int, size: int) -> Iterator[tuple[int, int]]:
    for start in range(0, total, size):
        yield start, min(start + size, total)


def _between_points(b: Backend, X: Array, num_between: int, seed: int | None) -> Array:
    """``X[i] + t (X[j] - X[i])`` for seeded random pairs ``i != j`` and ``t ~ U[0, 1]``."""
    xp = b.xp
    N = int(X.shape[0])
    rng = np.random.default_rng(seed)
    i = rng.integers(0, N, size=num_between)
    j = (i + rng.integers(1, N, size=num_between)) % N  # a different row
    t = rng.uniform(0.0, 1.0, size=num_between)
    Xi = xp.take(X, b.from_numpy(i, device=b.device(X)), axis=0)
    Xj = xp.take(X, b.from_numpy(j, device=b.device(X)), axis=0)
    tt = b.from_numpy(t, dtype=X.dtype, device=b.device(X))
    tt = xp.reshape(tt, (num_between,) + (1,) * (len(X.shape) - 1))
    return Xi + tt * (Xj - Xi)


def _spectral_norms(f: Callable, Xc: Array, seed: int | None) -> Array:
    from .solvers import spectral_norm

    J = jacobian(f, Xc, batched=True)
    return spectral_norm(J, method="auto", seed=seed)


def slope(
    f: Callable,
    X: Array,
    *,
    num_between: int = 0,
    seed: int | None = 0,
    batch_size: int | None = None,
    progress: bool = False,
) -> SlopeResult:
    r"""The slope ``||J_f(x)||_2`` of ``f`` at the rows of ``X`` and between them.

    Johansson et al. (2021). For every data point ``x`` (a row of ``X``) the slope is the
    spectral norm of the Jacobian of ``f`` at ``x``, computed with
    ``js.spectral_norm(js.jacobian(f, X_chunk, batched=True), method="auto")`` (one
    batched solve per chunk). With ``num_between > 0``, the slope is also evaluated at
    that many points ``x_i + t (x_j - x_i)`` on segments between random pairs of distinct
    rows, ``t`` uniform in ``[0, 1]`` (the "volume between the data").

    The slope is homogeneous: ``slope(x -> f(x / c)) == slope(f) / c``.

    Parameters
    ----------
    f : callable
        Acts sample-wise on a batch ``(B, ...) -> (B, ...)`` (for a torch module,
        evaluation mode is usually what you want: ``model.eval()``).
    X : array
        Data points ``(N, ...)`` (torch, jax or tensorflow; float32/float64).
    num_between : int
        Number of points between pairs of data points (needs ``N >= 2``).
    seed : int or None
        Seeds the pairs and positions of the between points (drawn with NumPy on the
        host, then built on the device of ``X``) and the solver's start vectors.
    batch_size : int, optional
        Points per batched Jacobian (default: all at once). Use it to bound memory.
    progress : bool
        Show progress on stderr: a tqdm bar on a terminal (where tqdm is installed),
        else a line per tenth of the points (log files stay readable).

    Returns
    -------
    SlopeResult
        ``values`` (data points first), ``points_kind``, ``mean``, ``std``,
        ``quantiles``; ``histogram(bins=...)``, ``plot(ax=None)``, ``summary(kind)``.

    Raises
    ------
    TypeError
        For a NumPy ``X`` (no autodiff) or a non-array.
    ValueError
        For an empty ``X``, ``num_between < 0``, ``num_between > 0`` with a single data
        point, ``batch_size < 1``, or an ``f`` that changes the batch size.

    Examples
    --------
    >>> import torch
    >>> import jacspec as js
    >>> W = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    >>> res = js.slope(lambda x: x @ W.T, torch.randn(8, 2), num_between=4)
    >>> res.values.shape, res.points_kind[-1]
    (torch.Size([12]), 'between')
    >>> round(float(res.mean), 4)
    3.0
    """
    b, N, num_between, batch_size = V.slope(f, X, num_between, batch_size)
    xp = b.xp

    X = b.stop_gradient(X)
    parts = [X]
    if num_between > 0:
        parts.append(_between_points(b, X, num_between, seed))
    total = N + num_between
    size = total if batch_size is None else batch_size
    bar = progress_display(total, desc="slope", unit="pt", enabled=progress)
    values = []
    try:
        with b.no_grad():
            for P in parts:
                for start, stop in _chunks(int(P.shape[0]), size):
                    chunk = P[start:stop]
                    values.append(b.stop_gradient(_spectral_norms(f, chunk, seed)))
                    bar.update(stop - start)
    finally:
        bar.close()
    vals = values[0] if len(values) == 1 else xp.concat(values, axis=0)
    kinds = ("data",) * N + ("between",) * num_between

    host = b.to_numpy(vals).astype(np.float64)
    dev = b.device(vals)

    def back(a: Any) -> Array:
        return b.from_numpy(np.asarray(a), dtype=vals.dtype, device=dev)

    return SlopeResult(
        values=vals,
        points_kind=kinds,
        mean=back(host.mean()),
        std=back(host.std()),
        quantiles=back(np.quantile(host, QUANTILE_LEVELS)),
        _numpy=host,
    )
