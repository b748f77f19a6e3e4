"""Spectral densities by stochastic Lanczos quadrature (``js.spectral_density``).

For a unit probe ``u`` and a symmetric ``A``, ``num_steps`` Lanczos steps from ``u`` give
a tridiagonal ``T = S diag(theta) S^T``; the Gauss quadrature with nodes ``theta`` and
weights ``S[0, :]**2`` integrates ``u^T g(A) u`` exactly for polynomials ``g`` of degree
below ``2 num_steps`` (Golub & Meurant; Ubaru, Chen & Saad 2017). Averaged over probes
uniform on the sphere it estimates ``tr g(A) / n`` without bias. For singular values,
Golub–Kahan–Lanczos from ``u`` is Lanczos on ``A^H A``: the nodes are the singular values
of the projected bidiagonal matrix, the weights the squared first components of its
right singular vectors. Both decompositions are :mod:`.krylov`'s fixed-step primitive.

The probes of one call are orthonormal (columns of the QR factor of a Gaussian matrix,
in groups of ``n``): each is uniform on the sphere, so the estimate stays unbiased, and
``n`` of them span the space, which makes ``moment(p)`` the exact ``tr(A^p) / n`` once
``num_steps >= n``.

The probes run side by side, as a batch of independent Lanczos runs whose step is one
block product (``P`` columns) and one batched reorthogonalization: the per-step work of
a small operator is a handful of operations for all probes, not for each. Where the
bases of all probes would be large (``PROBE_BLOCK_ENTRIES``), they run in groups.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import validate as V
from ..backends import Backend, backend_of
from ..interop import as_operator
from .krylov import decompose, gkl_step, init, lanczos_step
from .problem import Problem
from .ritz import gkl_matrix, lanczos_matrix

__all__ = ["SpectralDensity", "spectral_density"]

Array = Any
KINDS = ("eig", "singular")
# The probes of a group hold at most this many basis entries together (``B * P * steps
# * n``; a single probe may hold more): 64 MB in float32, a memory the per-probe loop's
# basis of a small model already reaches and that of a large model's exceeds alone.
PROBE_BLOCK_ENTRIES = 1 << 24


@dataclass(frozen=True)
class SpectralDensity:
    """Per-probe Gauss quadratures of a spectrum (see :func:`spectral_density`).

    Attributes
    ----------
    nodes, weights : array
        ``(num_probes, num_steps)`` (batched operators: ``(B, num_probes, num_steps)``),
        of the operator's framework: eigenvalues (``kind="eig"``) or singular values
        (``kind="singular"``) of each probe's projected matrix, and their weights, which
        sum to 1 per probe.
    kind : str
        ``"eig"`` or ``"singular"``.
    n : int
        The operator's size (``kind="singular"``: its number of columns).
    backend_impl : Backend
        The backend object of the arrays (as ``LinearOperator.backend_impl``).
    """

    nodes: Array
    weights: Array
    kind: str
    n: int
    backend_impl: Backend

    @property
    def xp(self) -> Any:
        return self.backend_impl.xp

    def probe_moments(self, p: float) -> Array:
        """Each probe's estimate of ``moment(p)``: ``(num_probes,)`` (or ``(B, P)``)."""
        return self.xp.sum(self.weights * self.nodes ** p, axis=-1)

    def moment(self, p: float) -> Array:
        """The estimate of ``trace(A^p) / n`` (``kind="eig"``), or of the mean of
        ``sigma^p`` over the ``n`` singular values (``kind="singular"``)."""
        return self.xp.mean(self.probe_moments(p), axis=-1)

    def _default_width(self) -> float:
        nodes = np.asarray(self.backend_impl.to_numpy(self.nodes))
        span = float(nodes.max() - nodes.min())
        return span / 100 if span > 0 else max(abs(float(nodes.max())), 1.0) * 1e-2

    def density(self, grid: Any, width: float | None = None) -> Array:
        """The Gaussian-smoothed density on ``grid`` (any 1-D array-like, NumPy
        included): ``mean over probes of sum_i w_i N(t; theta_i, width^2)``, which
        integrates to 1. ``width`` defaults to 1% of the range of the nodes."""
        b, xp = self.backend_impl, self.xp
        w = self._default_width() if width is None else V.density_width(width)
        if backend_of(grid) is None or backend_of(grid).name != b.name:
            grid = b.from_numpy(np.asarray(grid if backend_of(grid) is None
                                           else backend_of(grid).to_numpy(grid)),
                                dtype=self.nodes.dtype, device=b.device(self.nodes))
        V.density_grid(grid)
        z = (grid[..., None, None, :] - self.nodes[..., None]) / w  # (..., P, S, G)
        kernel = xp.exp(-0.5 * z * z) / (w * math.sqrt(2 * math.pi))
        per_probe = xp.sum(self.weights[..., None] * kernel, axis=-2)
        return xp.mean(per_probe, axis=-2)

    def plot(self, ax: Any = None, log: bool = True, *, width: float | None = None,
             num_points: int = 1000) -> Any:
        """Plot the smoothed density (unbatched only; matplotlib), on a log scale by
        default as in PyHessian's density plots. Returns the axes."""
        import matplotlib.pyplot as plt

        V.density_unbatched(self.nodes)
        w = self._default_width() if width is None else V.density_width(width)
        nodes = np.asarray(self.backend_impl.to_numpy(self.nodes))
        grid = np.linspace(nodes.min() - 5 * w, nodes.max() + 5 * w, num_points)
        dens = np.asarray(self.backend_impl.to_numpy(self.density(grid, w)))
        if ax is None:
            _, ax = plt.subplots()
        ax.plot(grid, dens)
        if log:
            ax.set_yscale("log")
            ax.set_ylim(bottom=max(float(dens.max()) * 1e-12, np.finfo(float).tiny))
        ax.set_xlabel("eigenvalue" if self.kind == "eig" else "singular value")
        ax.set_ylabel("density")
        return ax


def _probes(p: Problem, count: int) -> list[Array]:
    """``count`` unit probes ``(B, n_in)``, orthonormal within groups of ``n_in`` (a
    draw of the seed each)."""
    n = p.n_in
    out: list[Array] = []
    while len(out) < count:
        g = min(n, count - len(out))
        Q = p.orthonormal(p.random((p.B, p.local_in, g), 1 + len(out) // n, axis=-2))
        out += [Q[:, :, i] for i in range(g)]
    return out


class _ProbeBlock:
    """The operator of the ``B`` problems of ``p`` applied to ``P`` probes of each at
    once: the products of ``B * P`` problems (rows ordered problem-major) as one block
    product of ``P`` columns per problem (``p.mm``)."""

    def __init__(self, p: Problem, P: int) -> None:
        self.p, self.P = p, P

    def __repr__(self) -> str:
        return repr(self.p.op)

    def _mv(self, v: Array, *, adjoint: bool = False) -> Array:
        xp, B = self.p.xp, self.p.B
        W = self.p.mm(xp.matrix_transpose(xp.reshape(v, (B, self.P, int(v.shape[-1])))),
                      adjoint=adjoint)
        return xp.reshape(xp.matrix_transpose(W), (B * self.P, int(W.shape[-2])))

    def _staged_form(self) -> Any:
        form = self.p.op._staged_form()
        if form is None:
            return None
        key, arrays, rebuild = form
        p, P = self.p, self.P
        return (("probes", p.B, P, key), arrays,
                lambda a: _ProbeBlock(dataclasses.replace(p, op=rebuild(a)), P))


def _probe_problem(p: Problem, P: int) -> Problem:
    """``p``'s operator as ``B * P`` problems whose products go through one block
    product (:class:`_ProbeBlock`)."""
    if P == 1:
        return p
    return dataclasses.replace(p, op=_ProbeBlock(p, P), adj=False, batched=True,
                               B=p.B * P)


def _group_size(p: Problem, probes: int, steps: int) -> int:
    """Probes per group: all where their bases fit ``PROBE_BLOCK_ENTRIES``, else fewer
    (at least one), in groups of equal size."""
    per_probe = p.B * steps * (p.local_in + (p.local_out if p.n_out != p.n_in else 0))
    fit = max(1, min(probes, PROBE_BLOCK_ENTRIES // max(per_probe, 1)))
    groups = -(-probes // fit)
    return -(-probes // groups)


def _quadrature(p: Problem, steps: int, kind: str, v0: Array, count: Any
                ) -> tuple[Array, Array, Any]:
    """Nodes and weights ``(B, steps)`` of one probe, and the product count after it
    (``count`` before): a piece of an eager solve (``Problem.stage``)."""
    xp = p.xp
    if kind == "eig":
        s = init(p, v0, steps, two_sided=False, count=count)
        s = decompose(p, lanczos_step, s, steps, 1)
        theta, S = xp.linalg.eigh(_finite(p, lanczos_matrix(p, s)))
        first = S[:, 0, :]
    else:
        s = init(p, v0, steps, two_sided=True, count=count)
        full = steps == p.n_in  # the last step of a full basis takes one product
        s = decompose(p, gkl_step, s, steps - full, 2)
        s = gkl_step(p, s) if full else s
        svd = xp.linalg.svd(_finite(p, gkl_matrix(p, s)))
        theta, first = svd.S, p.conj(svd.Vh[:, :, 0])  # right vectors' first entries
    weights = xp.real(p.conj(first) * first) if p.is_complex else first * first
    return theta, weights, s.count


def _finite(p: Problem, M: Array) -> Array:
    """``M``, the projected matrix, after the eager check that the products were finite
    (NaN/Inf would otherwise surface as the framework's factorization error; inside a
    compiled piece they reach the nodes, which are checked after)."""
    p.check_finite(M)
    return M


def spectral_density(op: Any, *, num_probes: int = 8, num_steps: int = 64, kind: str = "eig",
                     seed: int | None = 0) -> SpectralDensity:
    """The spectral density of an operator by stochastic Lanczos quadrature.

    Each probe runs ``num_steps`` Lanczos steps (``kind="eig"``: one product each) or
    Golub–Kahan–Lanczos steps (``kind="singular"``: two products each) and yields a
    Gauss quadrature of the spectrum (Ubaru, Chen & Saad 2017; the Hessian densities of
    Ghorbani et al. 2019 and PyHessian). Works on every operator: a dataset Hessian or
    GGN, a Jacobian (singular values), an explicit matrix, batched operators (per-sample
    densities).

    Parameters
    ----------
    op : LinearOperator or array
        ``kind="eig"``: a square symmetric (Hermitian) operator; ``kind="singular"``: any.
    num_probes : int
        Random probes (orthonormal, uniform on the sphere).
    num_steps : int
        Steps per probe, at most the size of the operator (larger values are capped).
    kind : {"eig", "singular"}
        Eigenvalue density, or singular value density.
    seed : int or None
        Seed of the probes.

    Returns
    -------
    SpectralDensity
        ``nodes``, ``weights`` ``(num_probes, num_steps)``; ``moment(p)``,
        ``density(grid, width)``, ``plot(ax=None, log=True)``.

    Examples
    --------
    >>> import numpy as np
    >>> import jacspec as js
    >>> A = np.diag(np.arange(1.0, 7.0))
    >>> sd = js.spectral_density(A, num_probes=6, num_steps=6)
    >>> sd.nodes.shape
    (6, 6)
    >>> round(float(sd.moment(2)), 8)  # trace(A^2) / 6, exact: 6 probes span R^6
    15.16666667
    >>> grid = np.linspace(0.0, 7.0, 701)
    >>> round(float(sd.density(grid, 0.2).sum() * 0.01), 4)  # integrates to 1
    1.0
    """
    op = as_operator(op)
    V.check_nonempty(op)
    kind = V.choice(kind, KINDS, "kind")
    if kind == "eig":
        V.check_square(op, "spectral_density(kind='eig')")
    probes = V.check_positive_int(num_probes, "num_probes")
    steps = V.check_positive_int(num_steps, "num_steps")
    seed = V.check_seed(seed)
    p = Problem.of(op, seed=seed)
    steps = min(steps, p.n_in)
    xp = p.xp
    with op.backend_impl.no_grad():
        vs = _probes(p, probes)
        runs, count = [], 0
        size = _group_size(p, probes, steps)
        for start in range(0, probes, size):
            group = vs[start:start + size]
            q = _probe_problem(p, len(group)).staging("density", kind, steps)
            v = xp.reshape(xp.stack(group, axis=1), (q.B, p.local_in))
            theta, weights, count = q.stage("quadrature", _quadrature, steps, kind)(
                v, q.counter(count))
            runs.append((xp.reshape(theta, (p.B, len(group), steps)),
                         xp.reshape(weights, (p.B, len(group), steps))))
    nodes = xp.concat([r[0] for r in runs], axis=1)  # (B, P, S)
    weights = xp.concat([r[1] for r in runs], axis=1)
    p.check_finite(nodes, "spectral density")
    if not op.batch_shape:
        nodes, weights = nodes[0], weights[0]
    b = op.backend_impl
    return SpectralDensity(b.stop_gradient(nodes), b.stop_gradient(weights), kind, p.n_in, b)
