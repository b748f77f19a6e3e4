"""Gram iteration on the frequency matrices of a convolution (Delattre et al. 2023, 2024).

A stride-1 circular convolution on an ``M1 x M2`` grid is block-diagonalized by the 2-D
DFT: its norm is the largest of the norms of the ``c_out x c_in`` matrices ``D(xi) =
sum_q K_q exp(-2 pi i <xi, q> / M)``. Gram iteration bounds each from above: with ``G_0 =
D`` and ``G_{j+1} = G_j^H G_j``, ``||D||_2 <= ||G_t||_F^(1 / 2^t)``, converging to
``||D||_2`` as ``t`` grows (the Schatten-``2^(t+1)`` norm). Each ``G_j`` is divided by its
Frobenius norm before the next product, so nothing overflows.

Rounding is bounded at every step and carried through (see :func:`_upper`), so the value
returned is an upper bound on the norm of the exact matrices in the arithmetic it is
computed in. Frequencies whose bound falls below another frequency's norm (a Rayleigh
quotient) are dropped between steps when not tracing; the maximum is unchanged.

Strided convolutions are reduced to stride 1 by the polyphase decomposition
(:func:`polyphase`), and the supremum over all frequencies (any input size) is bounded
from a grid of them (:func:`grid_factor`).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._rounding import TINIEST, UNIT, gamma

Array = Any


def polyphase(b: Any, w: Array, stride: tuple[int, int]) -> Array:
    """The stride-1 kernel of a strided conv: ``(c_out, c_in * r_h * r_w, q_h, q_w)``.

    ``y[i] = sum_a K[a] x[s i + a]``; with ``a = s q + r``, ``x[s (i + q) + r]`` is the
    ``r``-th polyphase component of ``x`` at ``i + q``, so the strided conv on an
    ``s M``-periodic grid is the stride-1 conv on ``M`` of the ``s^2`` components with
    the kernel ``K'[o, (c, r), q] = K[o, c, s q + r]`` (phases ``r >= k`` are all zero
    and left out). ``q = ceil(k / s)``.
    """
    co, ci, kh, kw = (int(s) for s in w.shape)
    sh, sw = stride
    if (sh, sw) == (1, 1):
        return w
    xp, dev = b.xp, b.device(w)
    qh, qw = -(-kh // sh), -(-kw // sw)
    rh, rw = min(sh, kh), min(sw, kw)
    if qh * sh > kh:
        w = xp.concat([w, xp.zeros((co, ci, qh * sh - kh, kw), dtype=w.dtype, device=dev)],
                      axis=2)
    if qw * sw > kw:
        w = xp.concat([w, xp.zeros((co, ci, qh * sh, qw * sw - kw), dtype=w.dtype,
                                   device=dev)], axis=3)
    w = xp.reshape(w, (co, ci, qh, sh, qw, sw))
    w = xp.permute_dims(w, (0, 1, 3, 5, 2, 4))[:, :, :rh, :rw]
    return xp.reshape(w, (co, ci * rh * rw, qh, qw))


def grid_factor(taps: tuple[int, int], grid: tuple[int, int]) -> float:
    """``1 / sqrt(1 - pi^2 (n1 / N1 + n2 / N2)^2 / 2)`` with ``n = taps - 1``: the factor
    from the largest norm on an ``N1 x N2`` grid of frequencies to the largest over all.

    At the maximizer ``w*`` of ``||D(w)||``, with ``u, v`` its singular vectors, ``q(w) =
    |u^H D(w) v|^2`` is a non-negative trigonometric polynomial of degree ``n_d`` in
    each variable, maximal (``M``) at ``w*``, so its gradient vanishes there and, by
    Bernstein's inequality, its second derivatives are at most ``n_d n_e M``: ``q(w) >= M
    (1 - (n1 |d1| + n2 |d2|)^2 / 2)`` at ``w = w* + d``, and some grid point has ``|d_d| <=
    pi / N_d``.
    """
    x = math.pi * sum((t - 1) / n for t, n in zip(taps, grid))
    if x * x / 2 >= 1:
        return math.inf
    return 1.0 / math.sqrt(1.0 - x * x / 2)


def _twiddles(M: int, q: int, half: bool) -> np.ndarray:
    """``exp(-2 pi i xi a / M)`` for ``xi`` in ``0..M-1`` (``0..M//2`` when ``half``),
    ``a`` in ``0..q-1``; the angle is reduced modulo ``M`` in integers first."""
    xi = np.arange(M // 2 + 1 if half else M)
    return np.exp(-2j * np.pi * (np.outer(xi, np.arange(q)) % M) / M)


def symbol(b: Any, K: Array, grid: tuple[int, int]) -> tuple[Array, Array]:
    """The frequency matrices ``D(xi)`` of OIHW ``K`` on the grid, ``(F, c_out, c_in)``
    complex, and the bound ``eps`` on ``||fl(D) - D||_2`` at every frequency.

    A kernel axis of one tap gives a constant along that frequency axis (one frequency
    kept); the conjugate half of the grid has the same norms and is left out. The DFT
    is two small complex matrix products with exact-angle twiddles, so ``|fl(D) - D|
    <= gamma_D sum_q |K_q|`` entrywise.
    """
    xp = b.xp
    co, ci, qh, qw = (int(s) for s in K.shape)
    Mh, Mw = grid
    nh, nw = (Mh if qh > 1 else 1), (Mw if qw > 1 else 1)
    half_w = nw > 1
    Th = _twiddles(Mh, qh, half=not half_w) if nh > 1 else np.ones((1, qh))
    Tw = _twiddles(Mw, qw, half=True) if nw > 1 else np.ones((1, qw))
    real = b.dtype_name(K.dtype)
    cdt = b.dtype_from_name("complex64" if real == "float32" else "complex128")
    dev = b.device(K)
    Th = b.from_numpy(Th.T.astype(np.complex128), dtype=cdt, device=dev)  # (qh, Fh)
    Tw = b.from_numpy(Tw.T.astype(np.complex128), dtype=cdt, device=dev)  # (qw, Fw)
    Kc = xp.astype(xp.reshape(K, (co * ci * qh, qw)), cdt)
    A = xp.reshape(xp.matmul(Kc, Tw), (co * ci, qh, -1))  # (co ci, qh, Fw)
    A = xp.matmul(xp.matrix_transpose(A), Th)  # (co ci, Fw, Fh)
    fh, fw = int(Th.shape[1]), int(Tw.shape[1])
    D = xp.reshape(xp.permute_dims(xp.reshape(A, (co, ci, fw, fh)), (3, 2, 0, 1)),
                   (fh * fw, co, ci))
    u = UNIT[real]
    P = xp.sum(xp.abs(K), axis=(2, 3))
    eps = 2.0 * (gamma(qh + 2, u) + gamma(qw + 8, u) + 6 * u) * _fro_up(b, P, real)
    return D, eps


def _fro_up(b: Any, X: Array, real: str) -> Array:
    """An upper bound on ``||X||_F`` from its computed value (0-d, no gradient)."""
    xp = b.xp
    s = b.stop_gradient(xp.sum(xp.abs(X) ** 2))
    n = int(np.prod(X.shape))
    u = UNIT[real]
    return xp.sqrt((s + 4 * n * TINIEST[real]) * (1 + gamma(2 * n + 8, u))) * (1 + 4 * u)


def _fro2(xp: Any, X: Array) -> Array:
    """``||X_f||_F^2`` per leading index of the complex ``(F, m, n)`` ``X``."""
    return xp.sum(xp.real(X) ** 2 + xp.imag(X) ** 2, axis=(1, 2))


class _Step:
    """What one step left for the back-substitution: the divisor ``c`` (per frequency),
    a bound ``f`` on ``||N||_F``, ``g`` and ``und`` with ``||fl(N^H N) - N^H N||_2 <= g
    f^2 + und``, and ``u``, the relative rounding of ``N = fl(G / c)`` entrywise."""

    def __init__(self, c: Array, f: Array, g: float, und: float, u: float) -> None:
        self.c, self.f, self.g, self.und, self.u = c, f, g, und, u

    def take(self, xp: Any, idx: Array) -> _Step:
        return _Step(xp.take(self.c, idx, axis=0), xp.take(self.f, idx, axis=0), self.g,
                     self.und, self.u)


def _upper(xp: Any, beta: Array, steps: list[_Step]) -> Array:
    """Back-substitution: from ``beta >= ||fl(G_j)||_2`` to a bound on ``||fl(G_0)||_2``.

    ``N = fl(G / c)`` is ``G / c + Delta`` with ``||Delta||_2 <= u ||N||_F / (1 - u)``,
    and ``fl(N^H N) = N^H N + E``, so ``||G||_2 <= c (||N||_2 + ||Delta||_2)`` and
    ``||N||_2^2 = ||N^H N||_2 <= ||fl(N^H N)||_2 + ||E||_2``. Each step computes in its
    own dtype (``beta`` is raised to it exactly).
    """
    for st in reversed(steps):
        beta = xp.astype(beta, st.c.dtype)
        beta = st.c * (xp.sqrt(beta + st.g * st.f ** 2 + st.und) + (st.u / (1 - st.u)) * st.f)
    return beta


#: Frequencies are pruned only while more than this many remain (fewer cost little).
PRUNE_MIN = 2
#: With a narrower dtype given, the first steps (whose rounding weighs most: the
#: spectrum is still flat, ``||N||_F^2`` far above ``||N||_2^2``) run in ``D``'s dtype.
WIDE_STEPS = 2


def _dtypes(b: Any, X: Array) -> tuple[str, float, float]:
    real = "float32" if b.dtype_name(X.dtype) == "complex64" else "float64"
    return real, UNIT[real], TINIEST[real]


def gram_norms(b: Any, D: Array, iterations: int, narrow: Any = None) -> Array:
    """A 0-d upper bound on ``max_xi ||D(xi)||_2`` (rounding included), by
    ``iterations`` Gram steps per frequency; differentiable in ``D``. With ``narrow``
    (complex64 for a complex128 ``D``), the steps after the first :data:`WIDE_STEPS`
    run in that dtype."""
    xp = b.xp
    F, m, n = (int(s) for s in D.shape)
    G = D if m >= n else xp.conj(xp.matrix_transpose(D))  # tall: G^H G is the small side
    prune = not b.is_traced(D)
    floor = 0.0  # a norm attained at a pruned-against frequency (stop-gradient)
    steps: list[_Step] = []
    for j in range(iterations + 1):
        real, u, tiny = _dtypes(b, G)
        fro2 = _fro2(xp, G)
        rows, cols = int(G.shape[1]), int(G.shape[2])
        up = xp.sqrt((fro2 + 4 * rows * cols * tiny) * (1 + gamma(2 * rows * cols + 8, u)))
        up = up * (1 + 4 * u)
        if j == iterations:
            break
        if prune and int(G.shape[0]) > PRUNE_MIN:
            idx, floor = _prune(b, G, steps, up, floor)
            if idx is not None:
                G, fro2, up = (xp.take(a, idx, axis=0) for a in (G, fro2, up))
                steps = [st.take(xp, idx) for st in steps]
        c = b.stop_gradient(xp.sqrt(fro2))
        c = xp.where(c > 0, c, xp.ones_like(c))
        N = G / xp.astype(c, G.dtype)[:, None, None]
        f = b.stop_gradient(up) / c * (1 + 4 * u)  # ||N||_F <= ||G||_F / c (1 + u)
        u_div = u
        if narrow is not None and j == WIDE_STEPS:
            N = xp.astype(N, narrow)  # one more relative rounding of each entry
            real, u_n, tiny = _dtypes(b, N)
            u_div, u = u + u_n * (1 + u), u_n
            f = f * (1 + 2 * u)
        steps.append(_Step(c, f, math.sqrt(2.0) * gamma(rows + 2, u), 4 * cols * rows * tiny,
                           u_div))
        G = xp.matmul(xp.conj(xp.matrix_transpose(N)), N)
    bound = xp.max(_upper(xp, up, steps)) * (1 + 32 * u)
    if floor == 0.0:
        return bound
    return xp.maximum(bound, xp.asarray(floor, dtype=bound.dtype, device=b.device(bound)))


def _prune(b: Any, G: Array, steps: list[_Step], up: Array, floor: float
           ) -> tuple[Array | None, float]:
    """The frequencies to keep (None: all): those whose certified bound is not below
    another's norm estimate; and the floor, the largest estimate so far.

    ``G`` is ``(D^H D)^(2^(j-1))`` up to the divisors so far (``j >= 1``), so the
    estimate ``(||G x|| / ||x||)^(1 / 2^j)`` times the divisors, ``x = G^2 r`` for a
    fixed random ``r``, is a lower bound on ``||D||_2`` up to rounding. The result keeps
    the largest estimate as a floor, so that it is never below a dropped frequency's
    bound, even where rounding lifted the estimate above the norm it estimates.
    """
    xp = b.xp
    j = len(steps)
    if j == 0:
        return None, floor
    with b.no_grad():
        Gs = b.stop_gradient(G)
        n = int(Gs.shape[-1])
        r = b.normal((n, 1), dtype=Gs.dtype, device=b.device(Gs), seed=0)
        x = xp.matmul(Gs, xp.matmul(Gs, r))
        Gx = xp.matmul(Gs, x)
        low = (_fro2(xp, Gx) / _fro2(xp, x)) ** (0.5 / 2 ** j)
        for i, st in enumerate(steps):
            low = xp.astype(low, st.c.dtype) * st.c ** (1.0 / 2 ** i)
        low_np = b.to_numpy(low)
        best = float(np.max(np.where(np.isfinite(low_np), low_np, 0.0)))
        keep = np.nonzero(b.to_numpy(_upper(xp, b.stop_gradient(up), steps)) >= best)[0]
    if len(keep) == int(G.shape[0]):
        return None, floor
    return b.from_numpy(keep.astype(np.int64), device=b.device(G)), max(floor, best)
