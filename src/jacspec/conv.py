"""Spectral norms of convolution layers: bounds, exact circular values, exact norms.

A 2-D convolution layer (cross-correlation, as in every deep-learning framework) with
kernel ``K`` of shape ``(c_out, c_in, h, w)`` is a linear map from ``c_in x H x W`` images
to ``c_out x H_out x W_out`` images. This module gives its spectral norm five ways:

- :func:`fantastic_four`: the differentiable upper bound of Singla & Feizi (2021),
  ``sqrt(h*w) * min(||R||, ||S||, ||T||, ||U||)`` over four reshapes of ``K``; valid for
  any input size (stride 1, zero or circular padding; strides and ``"valid"`` only shrink
  the norm, so it bounds those too). Cheap: Lanczos estimates of four small matrix
  norms, and one Gram matrix and Cholesky factorization to certify the smallest.
- :func:`gram_bound`: the certified Gram-iteration bound of Delattre et al. (2023,
  2024) on the kernel's frequency matrices, for the layer's own input size, stride and
  padding or for every input size; usually within a fraction of a percent of the exact
  norm, rounding accounted for (never below it, in float32 too).
- :func:`miyato`: the norm of the ``(c_out, c_in*h*w)`` reshape (a heuristic, not a bound).
- :func:`circular_singular_values`: every singular value of the circularly padded conv on
  an ``H x W`` grid, exactly (Sedghi et al. 2019): a real FFT of the kernel over the grid
  and a batched SVD of the ``c_out x c_in`` matrix at each frequency.
- :func:`operator` / :func:`spectral_norm`: the conv itself as a :class:`jacspec.LinearOperator`
  (products are the framework's conv and transposed conv), and its exact operator norm by
  Lanczos bidiagonalization, for zero (``"same"``, ``"valid"``, integer) or ``"circular"``
  padding and any stride.

:func:`layer_report` walks a ``torch.nn.Module`` or a Keras model and tabulates all of this
per layer.

Layouts
-------
Weights are read in the framework's own layout: ``"OIHW"`` for torch (and NumPy), ``"HWIO"``
for JAX and TensorFlow; pass ``layout=`` (any arrangement of the letters ``O I H W``) to
override. The *vectors* an :func:`operator` acts on are single images flattened in the
framework's own image layout: ``(C, H, W)`` for torch and NumPy (NCHW without the batch
axis), ``(H, W, C)`` for JAX and TensorFlow (NHWC without the batch axis); outputs likewise.
Norms and singular values do not depend on that choice.

Padding
-------
``"same"`` follows TensorFlow/JAX (``out = ceil(H / stride)``, the odd pixel of padding at
the bottom/right, like torch's ``padding="same"`` at stride 1); ``"valid"`` is no padding;
an integer ``p`` (or a pair ``(ph, pw)``, or ``((top, bottom), (left, right))``) pads with
zeros like torch's ``padding=p``; ``"circular"`` wraps around with the amounts of ``"same"``
(torch's ``padding_mode="circular"`` with ``padding=h // 2`` for odd kernels).

Everything is differentiable in ``weight`` in torch, JAX and TensorFlow.
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, NamedTuple

import numpy as np

from . import validate as V
from .backends import Backend, infer_backend, model_backend
from .operators import LinearOperator

__all__ = [
    "ConvBounds",
    "ConvOperator",
    "LayerRow",
    "LayerReport",
    "fantastic_four",
    "gram_bound",
    "miyato",
    "circular_singular_values",
    "operator",
    "spectral_norm",
    "layer_report",
]

Array = Any

class ConvBounds(NamedTuple):
    """The Fantastic Four bound and its ingredients (0-d arrays of the weight's framework).

    ``bound = sqrt(h*w) * min(r, s, t, u)``; ``r, s, t, u`` are the spectral norms of the
    four reshapes of Singla & Feizi (2021).
    """

    bound: Array
    r: Array
    s: Array
    t: Array
    u: Array


# --------------------------------------------------------------------------- kernel


def _weight(weight: Any, layout: str | None, what: str = "weight") -> tuple[Backend, Array]:
    """The backend and the kernel in OIHW, after validation."""
    b, weight, layout = V.conv_weight(weight, layout, what)
    if layout != "OIHW":
        weight = b.xp.permute_dims(weight, tuple(layout.index(c) for c in "OIHW"))
    return b, weight


# ------------------------------------------------------------------------ helpers


def _top_singular_value(xp: Any, M: Array) -> Array:
    return xp.linalg.svdvals(M)[..., 0]


#: Reshapes whose smaller side is at most this are certified exactly from their Gram
#: matrix (one ``eigh``); larger ones by Lanczos and a Cholesky factorization.
DENSE_SIDE = 128


class _Norm(NamedTuple):
    """A reshape's norm: ``value`` (an upper bound when ``certified``) and the singular
    vectors ``left``, ``right`` it was found with (for the envelope gradient)."""

    value: float
    left: Array
    right: Array
    certified: bool


def _reshape_plans(shape: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, int]]]:
    """The permutation and matrix shape of R, S, T, U for an OIHW kernel of ``shape``."""
    co, ci, h, wd = (int(s) for s in shape)
    return [((0, 2, 1, 3), (co * h, ci * wd)), ((0, 3, 1, 2), (co * wd, ci * h)),
            ((0, 1, 2, 3), (co, ci * h * wd)), ((0, 2, 3, 1), (co * h * wd, ci))]


def _reshape_sources(shape: tuple[int, ...]) -> list[int]:
    """For each of R, S, T, U, the first of them equal to it (size-1 kernel axes)."""
    keys = [(tuple(p for p in perm if shape[p] > 1), sh) for perm, sh in _reshape_plans(shape)]
    return [keys.index(key) for key in keys]


def _reshapes(xp: Any, w: Array) -> tuple[Array, ...]:
    """R, S, T, U (see :func:`_reshape_sources` for those equal to another)."""
    return tuple(xp.reshape(xp.permute_dims(w, perm), shape)
                 for perm, shape in _reshape_plans(tuple(w.shape)))


#: Gram matrices are built from column blocks of this width, the upper blocks only.
GRAM_BLOCK = 512


def _gram(xp: Any, M: Array) -> tuple[Array, bool]:
    """The Gram matrix of ``M``'s smaller side, and whether it is ``M^T M`` (columns)."""
    m, n = (int(s) for s in M.shape)
    cols = n <= m
    A = M if cols else xp.matrix_transpose(M)
    k = min(m, n)
    edges = list(range(0, k, GRAM_BLOCK)) + [k]
    if len(edges) <= 2:
        return xp.matmul(xp.matrix_transpose(A), A), cols
    parts = [A[:, i:j] for i, j in zip(edges[:-1], edges[1:])]
    blocks = {(i, j): xp.matmul(xp.matrix_transpose(parts[i]), parts[j])
              for i in range(len(parts)) for j in range(i, len(parts))}
    rows = [xp.concat([blocks[(i, j)] if i <= j else xp.matrix_transpose(blocks[(j, i)])
                       for j in range(len(parts))], axis=1) for i in range(len(parts))]
    return xp.concat(rows, axis=0), cols


def _pair_from(b: Backend, M: Array, x: Array, lam: float, cols: bool,
               certified: bool, value: float | None = None) -> _Norm:
    """The norm ``sqrt(lam)`` of ``M`` (or ``value``) with the vector ``x`` of its small
    Gram matrix (the right singular vector when ``cols``, else the left one) and its
    partner."""
    div = max(math.sqrt(lam), float(np.finfo(b.dtype_name(M.dtype)).tiny))
    y = _compiled(b, ("conv.partner", cols), _partner, b.xp, cols)(
        M, x, _scalar(b, div, M))
    left, right = (y, x) if cols else (x, y)
    return _Norm(math.sqrt(lam) if value is None else value, left, right, certified)


def _partner(xp: Any, cols: bool, M: Array, x: Array, div: Array) -> Array:
    """``M x / div`` (``cols``), else ``M^T x / div``."""
    return (xp.matmul(M, x) if cols else xp.matmul(xp.matrix_transpose(M), x)) / div


def _scalar(b: Backend, value: float, like: Array) -> Array:
    """``value`` as a 0-d array of ``like``'s dtype and device (an argument of a compiled
    program, where a Python float would be a constant compiled into it)."""
    return b.from_numpy(np.asarray(value), dtype=like.dtype, device=b.device(like))


def _dense_norm(b: Backend, M: Array) -> _Norm:
    """An estimate of ``||M||`` from ``eigh`` of its small Gram matrix (exact up to
    rounding, not certified)."""
    cols = int(M.shape[1]) <= int(M.shape[0])
    lam, x = _compiled(b, ("conv.top_gram_pair",), _top_gram_pair, b.xp)(M)
    return _pair_from(b, M, x, max(b.to_float(lam), 0.0), cols, False)


def _top_gram_pair(xp: Any, M: Array) -> tuple[Array, Array]:
    """The top eigenpair of ``M``'s small Gram matrix: ``(lam, x (k, 1))``."""
    lam, vecs = xp.linalg.eigh(_gram(xp, M)[0])
    return lam[-1], vecs[:, -1:]


#: Reshapes whose smaller side is at most this are estimated from ``eigh`` of their Gram
#: matrix; larger ones by a few Lanczos steps.
TINY_SIDE = 32


def _estimate(b: Backend, M: Array, tol: float, start: _Norm | None = None) -> _Norm:
    """An estimate of ``||M||``: a Lanczos Ritz value to residual ``tol`` (a lower bound
    up to rounding; warm-started from an earlier estimate's vector), or ``eigh`` of the
    Gram matrix of a tiny reshape."""
    from .solvers import svds

    if min(int(s) for s in M.shape) <= TINY_SIDE:
        return _dense_norm(b, M)
    v0 = None if start is None else start.right[:, 0]
    res = svds(M, 1, method="lanczos", tol=tol, v0=v0, return_vectors=True)
    return _Norm(b.to_float(res.values[0]), res.left, res.right, False)


def _certify(b: Backend, M: Array, est: _Norm | None, tol: float) -> _Norm:
    """A certified upper bound on ``||M||`` within ``tol`` of it (``M`` rescaled so that
    its entries are at most 1 in modulus).

    The estimate (``eigh`` of the small Gram matrix, or Lanczos) gives ``mu = est (1 +
    tol/2)``; ``mu^2 I - M^T M`` has a Cholesky factorization exactly when ``mu``
    exceeds ``||M||`` (up to rounding), which certifies ``mu``. The test runs in float64
    on the host, with the rounding of the Gram matrix and of the factorization bounded
    (:class:`jacspec._rounding.GramCertificate`), so it holds for float32 weights with
    long reshapes too. Should the estimate miss the top, ``eigh`` in float64 gives it.
    """
    from ._rounding import GramCertificate

    if est is not None and est.certified:
        return est
    if est is None:
        est = _dense_norm(b, M) if min(int(s) for s in M.shape) <= DENSE_SIDE else \
            _estimate(b, M, tol / 4)
    cert = GramCertificate(b.to_numpy(b.stop_gradient(M)))
    ub = cert.bound(est.value * (1 + tol / 2))
    if ub is not None:
        return est._replace(value=ub, certified=True)
    lam, vec = cert.top()  # the estimate missed the top: the exact route
    for margin in (tol / 4, tol / 2, tol):
        ub = cert.bound(math.sqrt(lam) * (1 + margin))
        if ub is not None:
            break
    else:  # pragma: no cover - only where LAPACK misbehaves
        ub = cert.frobenius()
    x = b.from_numpy(vec, dtype=M.dtype, device=b.device(M))
    return _pair_from(b, M, x, lam, int(M.shape[1]) <= int(M.shape[0]), True, ub)


def _envelope(b: Backend, M: Array, norm: _Norm, factor: float = 1.0,
              e: int = 0) -> Array:
    """``factor * 2**e * norm.value`` with the gradient of ``factor * left^T M right``
    (the envelope theorem; ``M`` unscaled). The value is rounded up into ``M``'s dtype,
    so that a certified bound stays one in the array returned."""
    from ._rounding import UNIT, round_up, times_pow2

    value = times_pow2(factor * norm.value * (1 + 4 * UNIT["float64"]), e)
    if norm.certified:
        value = round_up(value, b.dtype_name(M.dtype))
    return _compiled(b, ("conv.envelope", factor), _envelope_value, b, factor)(
        M, norm.left, norm.right, _scalar(b, value, M))


def _envelope_value(b: Backend, factor: float, M: Array, left: Array, right: Array,
                    value: Array) -> Array:
    from .solvers.svd import envelope

    Mtu = b.xp.matmul(b.xp.matrix_transpose(M), left)[:, 0]
    return envelope(b, factor * Mtu, right[:, 0], value)


#: Residual tolerance of the first, rough Lanczos estimates of the four norms.
ROUGH_TOL = 0.25


def _oihw_fantastic_four(b: Backend, w: Array, tol: float | None) -> ConvBounds:
    xp = b.xp
    h, wd = int(w.shape[2]), int(w.shape[3])
    scale = math.sqrt(h * wd)
    src = _reshape_sources(tuple(w.shape))
    # The four exact norms by default; under a trace too, where which reshape to certify
    # would be a data-dependent choice.
    if tol is None or b.is_traced(w):
        return ConvBounds(*_compiled(b, ("conv.exact_four", tuple(src), scale), _exact_four,
                                     xp, src, scale)(w))
    reshapes = _compiled(b, ("conv.reshapes",), _reshapes, xp)
    mats = reshapes(w)
    mats = [mats[j] for j in src]
    with b.no_grad():
        # Norms of the kernel rescaled by an exact power of two (entries of modulus < 1):
        # no Gram matrix over- or underflows at any weight scale.
        e, ws = _rescaled(b, b.stop_gradient(w))
        fixed = reshapes(ws)
        fixed = [fixed[j] for j in src]
        if len(set(src)) == 1:  # a 1x1 kernel: one matrix, nothing to compare
            norms = {0: _certify(b, fixed[0], None, tol)}
        else:
            norms = {j: _estimate(b, fixed[j], ROUGH_TOL) for j in set(src)}
        best = None
        # Certify the smallest estimate; another reshape can only lower the minimum
        # (beyond tol) if its estimate, a lower bound of its norm, is below best / (1+tol).
        for j in sorted(norms, key=lambda i: norms[i].value):
            if best is not None and norms[j].value * (1 + tol) >= norms[best].value:
                continue
            if best is not None and not norms[j].certified:
                norms[j] = _estimate(b, fixed[j], math.sqrt(tol) / 3, norms[j])
                if norms[j].value * (1 + tol) >= norms[best].value:
                    continue
            norms[j] = _certify(b, fixed[j], norms[j], tol)
            if best is None or norms[j].value < norms[best].value:
                best = j
    assert best is not None
    r, s, t, u = (_envelope(b, M, norms[i], e=e) for M, i in zip(mats, src))
    bound = _envelope(b, mats[src.index(best)], norms[best], factor=scale, e=e)
    return ConvBounds(bound, r, s, t, u)


def _exact_four(xp: Any, src: list[int], scale: float, w: Array) -> tuple[Array, ...]:
    """``(bound, r, s, t, u)`` from the exact norms of the four reshapes."""
    mats = _reshapes(xp, w)
    norms = [_top_singular_value(xp, mats[j]) for j in src]
    return (scale * xp.min(xp.stack(norms)), *norms)


def _rescaled(b: Backend, w: Array) -> tuple[int, Array]:
    """``(e, w / 2**e)`` with ``max |w| / 2**e`` in ``[0.5, 1)``; the division by a power
    of two is exact (in two steps, each factor representable in float32)."""
    from ._rounding import exponent

    e = exponent(b.to_float(b.stop_gradient(b.xp.max(b.xp.abs(w)))))
    e1 = e // 2
    return e, (w * 2.0 ** -e1) * 2.0 ** (e1 - e)


def _pad_kernel(xp: Any, w: Array, H: int, W: int) -> Array:
    co, ci, h, wd = (int(s) for s in w.shape)
    if h < H:
        w = xp.concat([w, xp.zeros((co, ci, H - h, wd), dtype=w.dtype, device=_dev(w))], axis=2)
    if wd < W:
        w = xp.concat([w, xp.zeros((co, ci, H, W - wd), dtype=w.dtype, device=_dev(w))], axis=3)
    return w


def _dev(x: Array) -> Any:
    b = infer_backend(x)
    return b.device(x)


def _circular_values(xp: Any, w: Array, H: int, W: int, *, top_only: bool = False) -> Array:
    """Singular values of the circular conv of OIHW ``w`` on ``H x W`` (Sedghi et al.),
    one compiled program per grid where the backend compiles eager work."""
    b = infer_backend(w)
    return _compiled(b, ("conv.circular_values", H, W, top_only), _circular_program, xp, H,
                     W, top_only)(w)


def _circular_program(xp: Any, H: int, W: int, top_only: bool, w: Array) -> Array:
    F = xp.fft.rfft2(_pad_kernel(xp, w, H, W))  # (co, ci, H, W//2 + 1)
    P = xp.permute_dims(F, (2, 3, 0, 1))  # one c_out x c_in matrix per frequency
    sv = xp.linalg.svdvals(P)  # (H, W//2 + 1, min(co, ci)), real
    if top_only:
        return xp.max(sv)
    r = int(sv.shape[-1])
    # Columns 1 .. (W-1)//2 stand for themselves and for their conjugate columns W - l.
    parts = [xp.reshape(sv, (-1,))]
    ndup = (W - 1) // 2
    if ndup > 0:
        parts.append(xp.reshape(sv[:, 1:ndup + 1, :], (H * ndup * r,)))
    vals = xp.concat(parts, axis=0) if len(parts) > 1 else parts[0]
    return xp.sort(vals, descending=True)


def _circ_pad(xp: Any, x: Array, pads: tuple) -> Array:
    """Wrap-around padding of ``x`` ``(N, C, H, W)``."""
    (pt, pb), (pl, pr) = pads
    H, W = int(x.shape[2]), int(x.shape[3])
    parts = ([x[:, :, H - pt:, :]] if pt else []) + [x] + ([x[:, :, :pb, :]] if pb else [])
    x = xp.concat(parts, axis=2) if len(parts) > 1 else x
    parts = ([x[:, :, :, W - pl:]] if pl else []) + [x] + ([x[:, :, :, :pr]] if pr else [])
    return xp.concat(parts, axis=3) if len(parts) > 1 else x


def _circ_pad_adjoint(xp: Any, z: Array, pads: tuple, H: int, W: int) -> Array:
    """The adjoint of :func:`_circ_pad`: fold the wrapped borders back (sum)."""
    (pt, pb), (pl, pr) = pads

    def fold(z: Array, lo: int, hi: int, n: int, axis: int) -> Array:
        take = (lambda a, b_: z[:, :, a:b_, :]) if axis == 2 else (lambda a, b_: z[:, :, :, a:b_])
        out = take(lo, lo + n)
        shape = list(z.shape)

        def zeros(k: int) -> Array:
            shape[axis] = k
            return xp.zeros(tuple(shape), dtype=z.dtype, device=_dev(z))

        if lo:
            head = take(0, lo)  # wrapped from rows n - lo .. n - 1
            out = out + (xp.concat([zeros(n - lo), head], axis=axis) if lo < n else head)
        if hi:
            tail = take(lo + n, lo + n + hi)  # wrapped from rows 0 .. hi - 1
            out = out + (xp.concat([tail, zeros(n - hi)], axis=axis) if hi < n else tail)
        return out

    return fold(fold(z, pt, pb, H, 2), pl, pr, W, 3)


# ------------------------------------------------------------------------ operator


class ConvOperator(LinearOperator):
    """A 2-D convolution as a linear operator (see :func:`operator`).

    Attributes
    ----------
    weight : array
        The kernel, OIHW.
    input_shape, output_shape : tuple of int
        The unflattened shapes of the vectors: ``(C, H, W)`` for torch/NumPy,
        ``(H, W, C)`` for JAX/TensorFlow.
    stride, pads, circular
        The geometry: stride pair, ``((top, bottom), (left, right))``, wrap-around or zeros.
    """

    def __init__(self, w: Array, backend: Backend, input_hw: tuple[int, int],
                 stride: tuple[int, int], pads: tuple, circular: bool,
                 output_hw: tuple[int, int]) -> None:
        co, ci = int(w.shape[0]), int(w.shape[1])
        H, W = input_hw
        Ho, Wo = output_hw
        super().__init__((co * Ho * Wo, ci * H * W), dtype=w.dtype, backend=backend,
                         device=backend.device(w))
        self.weight = w
        self.input_hw, self.output_hw = (H, W), (Ho, Wo)
        self.stride, self.pads, self.circular = stride, pads, circular
        self.channels_last = backend.channels_last
        if self.channels_last:
            self.input_shape, self.output_shape = (H, W, ci), (Ho, Wo, co)
        else:
            self.input_shape, self.output_shape = (ci, H, W), (co, Ho, Wo)

    def _staged_form(self):
        return self._array_form("weight", (
            "conv", tuple(self.weight.shape), self.backend_impl.dtype_name(self.dtype),
            self.input_hw, self.output_hw, self.stride, self.pads, self.circular))

    def _mm(self, V, *, adjoint=False, grad=False):
        b = self.backend_impl
        w = self.weight if grad else b.stop_gradient(self.weight)
        geo = _Geometry(self.channels_last, self.input_hw, self.output_hw, self.stride,
                        self.pads, self.circular)
        return _compiled(b, ("conv.products", geo, adjoint), _conv_products, b, geo,
                         adjoint)(w, V)


class _Geometry(NamedTuple):
    """What a conv operator's products read besides the kernel and the vectors."""

    channels_last: bool
    input_hw: tuple[int, int]
    output_hw: tuple[int, int]
    stride: tuple[int, int]
    pads: tuple
    circular: bool


def _images(xp: Any, geo: _Geometry, V: Array, c: int, hw: tuple[int, int]) -> Array:
    """The columns of ``V`` ``(n, k)`` as ``k`` NCHW images."""
    k = int(V.shape[-1])
    if geo.channels_last:
        return xp.permute_dims(xp.reshape(V, (hw[0], hw[1], c, k)), (3, 2, 0, 1))
    return xp.permute_dims(xp.reshape(V, (c, hw[0], hw[1], k)), (3, 0, 1, 2))


def _columns(xp: Any, geo: _Geometry, X: Array) -> Array:
    """NCHW images as the columns of an ``(n, k)`` array (:func:`_images` undone)."""
    k = int(X.shape[0])
    perm = (2, 3, 1, 0) if geo.channels_last else (1, 2, 3, 0)
    return xp.reshape(xp.permute_dims(X, perm), (-1, k))


def _conv_products(b: Backend, geo: _Geometry, adjoint: bool, w: Array, V: Array) -> Array:
    """The conv of OIHW ``w`` (``adjoint``: its adjoint) on the columns of ``V``."""
    xp = b.xp
    co, ci = int(w.shape[0]), int(w.shape[1])
    zero = ((0, 0), (0, 0))
    (pt, pb), (pl, pr) = geo.pads
    H, W = geo.input_hw
    if not adjoint:
        X = _images(xp, geo, V, ci, geo.input_hw)
        if geo.circular:
            Y = b.conv2d(_circ_pad(xp, X, geo.pads), w, stride=geo.stride, pads=zero)
        else:
            Y = b.conv2d(X, w, stride=geo.stride, pads=geo.pads)
        return _columns(xp, geo, Y)
    Y = _images(xp, geo, V, co, geo.output_hw)
    if geo.circular:
        Z = b.conv2d_adjoint(Y, w, stride=geo.stride, pads=zero,
                             input_hw=(H + pt + pb, W + pl + pr))
        X = _circ_pad_adjoint(xp, Z, geo.pads, H, W)
    else:
        X = b.conv2d_adjoint(Y, w, stride=geo.stride, pads=geo.pads, input_hw=(H, W))
    return _columns(xp, geo, X)


def _make_operator(b: Backend, w: Array, input_size: Any, stride: Any, padding: Any,
                   layout_hint: str, wrap: bool = False) -> ConvOperator:
    kernel_hw = (int(w.shape[2]), int(w.shape[3]))
    hw, st, pads, circ, out = V.conv_geometry(kernel_hw, input_size, stride, padding,
                                              layout_hint, wrap)
    return ConvOperator(w, b, hw, st, pads, circ, out)


# -------------------------------------------------------------------------- public


def fantastic_four(weight: Array, *, layout: str | None = None,
                   tol: float | None = None) -> ConvBounds:
    """The Fantastic Four upper bound on a conv layer's spectral norm (Singla & Feizi 2021).

    ``bound = sqrt(h*w) * min(r, s, t, u)`` over the norms of four reshapes of the kernel,
    by default each computed exactly (the singular values of the reshape).

    With ``tol``, a certified bound within ``1 + tol`` of that, several times faster on
    wide layers: only the reshape that attains the minimum needs its norm certified from
    above. Each reshape's norm is estimated (exactly, from ``eigh`` of its Gram matrix,
    when its smaller side is small; otherwise by Lanczos, whose Ritz value is a lower
    bound); the smallest estimate ``e`` is certified by checking that
    ``(e (1 + tol/2))^2 I - M^T M`` (``M^T M`` the Gram matrix of the reshape's smaller
    side) has a Cholesky factorization, and every reshape whose estimate could still be
    the minimum (below the certified value over ``1 + tol``) is certified in turn. The
    test runs in float64 on the kernel rescaled by an exact power of two, with the
    rounding of the Gram matrix (which grows with the reshape's long side) and of the
    factorization bounded and added, so the bound holds for float32 and float64 kernels
    at every scale where the norm is finite (see the theory notes).
    Inside ``jax.jit`` / ``tf.function`` the four norms are always exact.

    Parameters
    ----------
    weight : array
        The 4-D kernel (numpy, torch, jax or tensorflow; float32/float64).
    layout : str, optional
        ``"OIHW"`` (default for torch and NumPy) or ``"HWIO"`` (default for JAX and
        TensorFlow), or any arrangement of those letters.
    tol : float, optional
        ``None`` (default): the four norms exactly. Otherwise the relative accuracy of
        the certified ``bound``: ``sqrt(h*w) * min <= bound <= (1 + tol) * sqrt(h*w) *
        min`` with ``min`` the exact smallest reshape norm (up to the rounding of the
        dtype), e.g. ``1e-3``.

    Returns
    -------
    ConvBounds
        ``bound`` and the norms ``r, s, t, u`` of the four reshapes ``(c_out*h, c_in*w)``,
        ``(c_out*w, c_in*h)``, ``(c_out, c_in*h*w)``, ``(c_out*h*w, c_in)``: 0-d arrays of
        the weight's framework, differentiable in it (the gradient of a norm is that of
        ``u^T M v`` for its singular vectors ``u, v`` held fixed). With ``tol``,
        ``bound`` is ``sqrt(h*w)`` times the certified norm of the reshape it comes
        from, which is among ``r, s, t, u``; the others are estimates (Ritz values, lower
        bounds to Lanczos accuracy) that exceed ``bound / sqrt(h*w) / (1 + tol)``. ``bound`` is
        at least the operator norm of the conv on any input size, with zero or circular
        padding (and any stride); for a 1x1 kernel it is exact to ``tol``.

    Examples
    --------
    >>> import numpy as np
    >>> import jacspec as js
    >>> w = np.zeros((2, 3, 1, 1)); w[0, 0, 0, 0] = 3.0
    >>> round(float(js.conv.fantastic_four(w).bound), 6)
    3.0
    >>> w = np.ones((1, 1, 3, 3))
    >>> [round(float(v), 6) for v in js.conv.fantastic_four(w)]
    [9.0, 3.0, 3.0, 3.0, 3.0]
    """
    b, w = _weight(weight, layout)
    return _oihw_fantastic_four(b, w, V.check_tol(tol))


#: Without ``input_size``, the frequency grid has this many points per kernel tap
#: beyond the first, in each axis (``1.0098`` from the grid's maximum to the supremum
#: for a 3x3 kernel; see :func:`jacspec._gram_iteration.grid_factor`).
GRID_PER_TAP = 32


def gram_bound(weight: Array, input_size: Any = None, *, stride: Any = 1,
               padding: Any = "circular", iterations: int = 6,
               layout: str | None = None) -> Array:
    """A certified upper bound on a conv layer's operator norm by Gram iteration.

    Delattre et al. (2023, 2024): the circular conv on an ``H x W`` grid is
    block-diagonalized by the 2-D DFT, so its norm is the largest norm of the ``c_out x
    c_in`` matrices ``D(xi)`` of the kernel's DFT (Sedghi et al. 2019); Gram iteration
    bounds each by ``||G_t||_F^(1/2^t)`` with ``G_0 = D``, ``G_{j+1} = G_j^H G_j``,
    which decreases to ``||D||_2`` as ``t = iterations`` grows (the Schatten-``2^(t+1)``
    norm: at most ``rank^(1/2^(t+1))`` times the norm, and much closer when the top
    singular value stands out). Which grid, and why it bounds the layer:

    - ``padding="circular"`` with ``input_size``: the layer's own grid, exactly; a
      stride that divides the size is reduced to stride 1 by the polyphase
      decomposition (the ``s^2`` phases of the input become channels, the kernel
      ``ceil(k/s)`` taps), which is exact; another stride keeps every ``s``-th output of
      the stride-1 conv, whose norm bounds it.
    - zero padding (``"same"``, ``"valid"``, integers) with ``input_size``: the layer is
      a submatrix of the circular conv on a grid of ``N >= H + max(pad_top,
      pad_bottom)`` (the input embedded in zeros; no tap wraps onto it), ``N`` a
      multiple of the stride for the polyphase reduction, so that conv's norm bounds
      the layer's. The bound is tight when the input is large against the kernel
      (within 0.1% at 28x28 for 3x3 kernels) and looser on small maps (about 3% at 7x7).
    - ``input_size=None``: a bound for every input size: the supremum of ``||D(w)||``
      over all frequencies ``w``, from its maximum on a grid of ``32 (k - 1)`` points per
      axis times ``1 / sqrt(1 - pi^2 (n1/N1 + n2/N2)^2 / 2)`` (``n = k - 1``; a
      second-order Bernstein argument at the maximizer, about 1% for 3x3 kernels). With
      zero padding the strided symbol is used (valid for every size); with circular
      padding the stride-1 symbol (valid for every size and stride).

    Every floating-point operation's rounding is bounded and carried through (the DFT,
    each Gram product and normalization, the final Frobenius norm), and the kernel is
    first divided by an exact power of two, so the value is never below the exact norm
    of the layer, in float32 or float64, at any scale where that norm is finite. Each
    ``G_j`` is divided by its Frobenius norm before the next product (no overflow).
    Frequencies whose bound falls below another's norm are dropped between steps
    (except under ``jax.jit`` / ``tf.function``), which does not change the value.

    Parameters
    ----------
    weight : array
        The 4-D kernel (see :func:`fantastic_four` for ``layout``).
    input_size : int or (int, int), optional
        ``(H, W)`` of the inputs; ``None`` for a bound valid on every input size.
    stride : int or (int, int)
        ``>= 1``.
    padding : {"circular", "same", "valid"}, int, pair or ((top, bottom), (left, right))
        See the module docstring; ``"circular"`` uses the amounts of ``"same"``.
    iterations : int
        Gram steps ``t >= 0`` (``0`` is the largest Frobenius norm of the ``D(xi)``).
        Each costs one batched ``c x c`` complex product per frequency
        (``c = min(c_out, c_in s^2)``).

    Returns
    -------
    array
        A 0-d array of the weight's framework and dtype, differentiable in ``weight``.

    Examples
    --------
    >>> import numpy as np
    >>> import jacspec as js
    >>> w = np.zeros((1, 1, 3, 3)); w[0, 0, 1, 1] = 2.0  # 2 * identity
    >>> bound = float(js.conv.gram_bound(w, (8, 8)))
    >>> 2.0 <= bound < 2.0 * (1 + 1e-12)
    True
    >>> w = np.random.default_rng(0).standard_normal((8, 4, 3, 3))
    >>> exact = float(js.conv.spectral_norm(w, (16, 16), padding="circular"))
    >>> 1.0 <= float(js.conv.gram_bound(w, (16, 16))) / exact < 1.01
    True
    """
    from . import _gram_iteration as gi

    b, w = _weight(weight, layout)
    iterations = V.gram_iterations(iterations)
    kh, kw = int(w.shape[2]), int(w.shape[3])
    factor = 1.0
    if input_size is None:
        st = V.pair(stride, "stride", minimum=1)
        _, _, _, circ, _ = V.conv_geometry((kh, kw), (kh + 8 * st[0], kw + 8 * st[1]), st,
                                           padding, _hint(b, layout))
        phases = (1, 1) if circ else st
        taps = tuple(-(-k // s) for k, s in zip((kh, kw), phases))  # polyphase's
        grid = tuple(GRID_PER_TAP * (t - 1) if t > 1 else 1 for t in taps)
        factor = gi.grid_factor(taps, grid)
    else:
        hw, st, pads, circ, out = V.conv_geometry((kh, kw), input_size, stride, padding,
                                                  _hint(b, layout))
        phases, grid = [], []
        for n, s, (lo, hi), o in zip(hw, st, pads, out):
            if circ:
                s = s if n % s == 0 else 1  # else: every s-th row of the stride-1 conv
                N = n
            else:
                N = max(n + lo, n + hi, (o - 1) * s + 1)
                N = s * -(-N // s)
            phases.append(s)
            grid.append(N // s)
    config = (tuple(phases), tuple(grid), iterations, factor)
    return _compiled(b, ("conv.gram_bound", *config, b.has_float64()), _gram_program, b,
                     *config)(w)


def _compiled(b: Backend, key: tuple, fn: Any, *static: Any) -> Any:
    """``fn(*static, *arrays)`` as a function of the arrays: one compiled program per
    ``key`` (``static`` and the backend's dtype settings) where the backend compiles eager
    work (``Backend.should_compile``; eager JAX otherwise compiles every operation for
    every new shape); else ``fn`` as it is."""
    call = functools.partial(fn, *static)
    return b.compile(call, key) if b.should_compile(key) else call


def _gram_program(b: Backend, phases: tuple[int, int], grid: tuple[int, int],
                  iterations: int, factor: float, w: Array) -> Array:
    """The Gram bound of OIHW ``w`` (see :func:`gram_bound`): of the circular conv on
    ``grid`` of its polyphase kernel for ``phases``, times ``factor``."""
    from . import _gram_iteration as gi

    K = gi.polyphase(b, w, phases)
    return _gram_value(b, gi, K, grid, iterations, factor)


def _gram_value(b: Backend, gi: Any, K: Array, grid: tuple[int, int], iterations: int,
                factor: float) -> Array:
    """``factor`` times the Gram bound of the circular conv of ``K`` on ``grid``, on the
    kernel rescaled by a power of two, rounded up. A float32 kernel has its DFT and first
    Gram steps computed in float64 where the backend has it (their rounding bound grows
    like ``c^2 u``)."""
    from ._rounding import TINIEST, UNIT

    xp = b.xp
    real = b.dtype_name(K.dtype)
    e, Ks = _rescaled_traced(b, K)
    narrow = None
    if real == "float32" and b.has_float64():
        Ks = xp.astype(Ks, b.dtype_from_name("float64"))  # exact
        narrow = b.dtype_from_name("complex64")
    D, eps = gi.symbol(b, Ks, grid)
    u = UNIT[b.dtype_name(Ks.dtype)]
    val = (gi.gram_norms(b, D, iterations, narrow) + eps) * (factor * (1 + 8 * u))
    # back to the kernel's scale: exact but for a subnormal result (one unit up covers it)
    val = _times_pow2(b, val, e)
    if b.dtype_name(val.dtype) != real:  # the cast rounds to nearest: raise it first
        val = xp.astype(val * (1 + 2 * UNIT[real]), K.dtype)
    return val + TINIEST[real]


def _rescaled_traced(b: Backend, w: Array) -> tuple[Any, Array]:
    """:func:`_rescaled`, with the power of two computed on the device under a trace."""
    if not b.is_traced(w):
        return _rescaled(b, w)
    xp = b.xp
    m = b.stop_gradient(xp.max(xp.abs(w)))
    e = xp.where(m > 0, xp.floor(xp.log2(xp.where(m > 0, m, xp.ones_like(m)))) + 1,
                 xp.zeros_like(m))
    return e, _times_pow2(b, w, -e)


def _times_pow2(b: Backend, x: Array, e: Any) -> Array:
    """``x * 2**e`` in two exact steps (``e`` an int, or a traced integer-valued array)."""
    if isinstance(e, int):
        e1 = e // 2
        return (x * 2.0 ** e1) * 2.0 ** (e - e1)
    xp = b.xp
    e1 = xp.floor(e / 2)
    two = xp.asarray(2.0, dtype=x.dtype, device=b.device(x))
    return (x * two ** xp.astype(e1, x.dtype)) * two ** xp.astype(e - e1, x.dtype)



def miyato(weight: Array, *, layout: str | None = None) -> Array:
    """The spectral norm of the ``(c_out, c_in*h*w)`` reshape of the kernel.

    The normalization of Miyato et al. (2018), common in practice; it is *not* an upper
    bound on the conv's operator norm by itself (the bound needs a factor up to
    ``sqrt(h*w)``, see :func:`fantastic_four`).

    Examples
    --------
    >>> import numpy as np
    >>> import jacspec as js
    >>> float(js.conv.miyato(np.ones((1, 1, 3, 3))))
    3.0
    """
    b, w = _weight(weight, layout)
    xp = b.xp
    co = int(w.shape[0])
    return _top_singular_value(xp, xp.reshape(w, (co, -1)))


def circular_singular_values(weight: Array, input_size: Any, *,
                             layout: str | None = None) -> Array:
    """All singular values of the circularly padded conv on an ``H x W`` input, exactly.

    Sedghi et al. (2019): the conv is block-diagonalized by the 2-D DFT, so its singular
    values are the union, over the ``H*W`` frequencies, of the singular values of the
    ``c_out x c_in`` matrices of the kernel's DFT. Computed with a real FFT (each of the
    ``W//2 - 1`` interior column frequencies also stands for its conjugate) and one batched
    SVD, on the weight's device.

    Parameters
    ----------
    weight : array
        The 4-D kernel (see :func:`fantastic_four` for ``layout``).
    input_size : int or (int, int)
        ``(H, W)``; the kernel must fit: ``h <= H``, ``w <= W``.

    Returns
    -------
    array
        ``(H * W * min(c_out, c_in),)`` values, descending, differentiable in ``weight``.
        The stride is 1 and the result does not depend on where the padding goes.

    Examples
    --------
    >>> import numpy as np
    >>> import jacspec as js
    >>> w = np.zeros((1, 1, 3, 3)); w[0, 0, 1, 1] = 2.0  # 2 * identity
    >>> js.conv.circular_singular_values(w, (4, 4)).tolist() == [2.0] * 16
    True
    """
    b, w = _weight(weight, layout)
    kh, kw = int(w.shape[2]), int(w.shape[3])
    hw, _, _, _, _ = V.conv_geometry((kh, kw), input_size, 1, "circular", _hint(b, layout))
    return _circular_values(b.xp, w, hw[0], hw[1])


def _hint(b: Backend, layout: str | None) -> str:
    return f"layout={layout!r}" if layout else f"default layout {b.conv_layout!r}"


def operator(weight: Array, input_size: Any, *, stride: Any = 1, padding: Any = "same",
             layout: str | None = None) -> ConvOperator:
    """The conv layer as a :class:`jacspec.LinearOperator`.

    ``matvec`` is the framework's own conv (cross-correlation, no bias) of one image,
    ``rmatvec`` the exact adjoint (a transposed conv). Vectors are single images flattened
    in the framework's layout: ``(C, H, W)`` for torch and NumPy, ``(H, W, C)`` for JAX and
    TensorFlow (``op.input_shape``, ``op.output_shape``). NumPy products run in pure
    NumPy (sliding windows).

    Parameters
    ----------
    weight : array
        The 4-D kernel (see :func:`fantastic_four` for ``layout``).
    input_size : int or (int, int)
        ``(H, W)`` of the input images.
    stride : int or (int, int)
        ``>= 1``.
    padding : {"same", "valid", "circular"}, int, pair or ((top, bottom), (left, right))
        See the module docstring.

    Returns
    -------
    ConvOperator
        Shape ``(c_out * H_out * W_out, c_in * H * W)``; products with ``grad=True`` are
        differentiable in ``weight``.

    Examples
    --------
    >>> import numpy as np
    >>> import jacspec as js
    >>> w = np.ones((1, 1, 3, 3))
    >>> op = js.conv.operator(w, (4, 4), padding="valid")
    >>> op.shape, op.output_shape
    ((4, 16), (1, 2, 2))
    >>> (op @ np.ones(16)).tolist()
    [9.0, 9.0, 9.0, 9.0]
    """
    b, w = _weight(weight, layout)
    return _make_operator(b, w, input_size, stride, padding, _hint(b, layout))


def spectral_norm(weight: Array, input_size: Any, *, stride: Any = 1,
                  padding: Any = "same", layout: str | None = None,
                  tol: float | None = None, method: str = "auto") -> Array:
    """The exact operator norm of a conv layer on ``input_size`` inputs.

    For ``padding="circular"`` and stride 1 it is the largest value of
    :func:`circular_singular_values` (FFT, exact); otherwise it is the largest singular
    value of :func:`operator`, found by :func:`jacspec.spectral_norm` from conv /
    transposed-conv products, to relative accuracy ``tol``. ``method`` is passed on:
    ``"auto"`` (default) materializes small convs (an exact SVD from ``min(m, n)``
    products in one block) and runs Lanczos bidiagonalization on the others (every real
    layer); ``"lanczos"``, ``"dense"``, ``"power"`` force a method.

    Returns
    -------
    array
        A 0-d array of the weight's framework, differentiable in ``weight`` (envelope
        theorem: the gradient of ``u^T K v`` with the singular vectors held fixed).

    Examples
    --------
    >>> import numpy as np
    >>> import jacspec as js
    >>> w = np.ones((1, 1, 3, 3))
    >>> round(float(js.conv.spectral_norm(w, (8, 8), padding="circular")), 6)
    9.0
    >>> bool(js.conv.spectral_norm(w, (8, 8)) < 9.0)  # zero padding loses a little
    True
    """
    b, w = _weight(weight, layout)
    op = _make_operator(b, w, input_size, stride, padding, _hint(b, layout))
    return _conv_norm(op, method=method, tol=tol)


def _conv_norm(op: ConvOperator, *, method: str = "auto", tol: float | None = None) -> Array:
    if op.circular and op.stride == (1, 1):
        H, W = op.input_hw
        return _circular_values(op.xp, op.weight, H, W, top_only=True)
    from .solvers import spectral_norm as _spectral_norm

    return _spectral_norm(op, method=method, tol=tol)


# --------------------------------------------------------------------- layer report


class LayerRow(NamedTuple):
    """One row of :func:`layer_report` (plain Python values)."""

    name: str
    kind: str  #: "conv" or "dense"
    kernel_shape: tuple
    stride: tuple | None
    padding: str | None
    input_size: tuple
    bound: float  #: Fantastic Four bound (dense: the exact norm)
    exact: float  #: exact operator norm on ``input_size`` (nan when unsupported)
    product: float  #: product of ``exact`` over this row and all before it
    seconds: float  #: time spent on this row's bound and exact norm


class LayerReport(list):
    """A list of :class:`LayerRow` that prints as a table."""

    def __str__(self) -> str:
        head = ["layer", "kind", "kernel", "stride", "padding", "input", "fantastic4",
                "exact", "prod exact"]
        body = []
        for r in self:
            body.append([
                r.name, r.kind, "x".join(str(s) for s in r.kernel_shape),
                "-" if r.stride is None else "x".join(str(s) for s in r.stride),
                "-" if r.padding is None else str(r.padding),
                "x".join(str(s) for s in r.input_size),
                f"{r.bound:.4g}", f"{r.exact:.4g}", f"{r.product:.4g}",
            ])
        widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
        fmt = "  ".join(("{:<" if i < 6 else "{:>") + f"{wd}}}"
                        for i, wd in enumerate(widths))
        lines = [fmt.format(*head), fmt.format(*("-" * wd for wd in widths))]
        lines += [fmt.format(*row) for row in body]
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"LayerReport({list.__repr__(self)})"

    def to_dicts(self) -> list[dict]:
        return [r._asdict() for r in self]


def _expand_kernel(xp: Any, w: Array, dilation: tuple[int, int], groups: int) -> Array:
    """A dense OIHW kernel equivalent to a grouped and/or dilated one."""
    dev = _dev(w)
    if groups > 1:
        co, cig, h, wd = (int(s) for s in w.shape)
        og, ci = co // groups, cig * groups
        blocks = []
        for j in range(groups):
            parts = []
            if j:
                parts.append(xp.zeros((og, j * cig, h, wd), dtype=w.dtype, device=dev))
            parts.append(w[j * og:(j + 1) * og])
            if groups - j - 1:
                parts.append(xp.zeros((og, ci - (j + 1) * cig, h, wd), dtype=w.dtype,
                                      device=dev))
            blocks.append(xp.concat(parts, axis=1))
        w = xp.concat(blocks, axis=0)
    for axis, d in ((3, dilation[1]), (2, dilation[0])):
        if d > 1:
            co, ci, h, wd = (int(s) for s in w.shape)
            n = int(w.shape[axis])
            z = xp.zeros(w.shape, dtype=w.dtype, device=dev)
            st = xp.stack([w] + [z] * (d - 1), axis=axis + 1)  # (..., n, d, ...)
            shape = list(w.shape)
            shape[axis] = n * d
            w = xp.reshape(st, tuple(shape))
            keep = (n - 1) * d + 1
            w = w[:, :, :keep, :] if axis == 2 else w[:, :, :, :keep]
    return w


def layer_report(model: Any, input_shape: Any, *, tol: float | None = None) -> LayerReport:
    """Spectral norms of every conv and dense layer of a model, in forward order.

    The model runs once (inference mode, no gradients, state restored) on a zero batch
    of one sample of shape ``input_shape``, to see which ``Conv2d``/``Linear`` (torch) or
    ``Conv2D``/``Dense`` (Keras) layers it calls, in which order, and on which input sizes.
    Grouped and dilated convs are expanded to an equivalent plain kernel.

    Parameters
    ----------
    model : torch.nn.Module or keras.Model
    input_shape : tuple of int
        The shape of ONE input sample, without the batch axis: ``(C, H, W)`` for torch,
        ``(H, W, C)`` for Keras (channels-last).
    tol : float, optional
        Relative accuracy of the exact norms (see :func:`spectral_norm`).

    Returns
    -------
    LayerReport
        A list of :class:`LayerRow` (``name, kind, kernel_shape, stride, padding,
        input_size, bound, exact, product, seconds``) that prints as a table. ``bound`` is
        the :func:`fantastic_four` bound (for a dense layer: its exact norm); ``exact`` is
        the exact operator norm of the layer on the input size it sees (``nan`` for
        ``reflect``/``replicate`` padding); ``product`` multiplies the exact norms so far:
        an upper bound on the Lipschitz constant of the network up to that layer when the
        layers in between are 1-Lipschitz.

    Examples
    --------
    >>> import torch
    >>> import jacspec as js
    >>> net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3, padding=1), torch.nn.ReLU(),
    ...                           torch.nn.Flatten(), torch.nn.Linear(2 * 8 * 8, 10))
    >>> rep = js.conv.layer_report(net, (1, 8, 8))
    >>> [(r.name, r.kind, r.input_size) for r in rep]
    [('0', 'conv', (8, 8)), ('3', 'dense', (128,))]
    >>> bool(rep[0].bound >= rep[0].exact)
    True
    """
    b = model_backend(model)
    shape = V.sample_shape(input_shape)
    tol = V.check_tol(tol)
    layers = V.conv_layers(b.conv_layers(model, shape), model, shape)
    xp = b.xp
    rows = LayerReport()
    product = 1.0
    for L in layers:
        t0 = time.perf_counter()
        with b.no_grad():
            if L["kind"] == "dense":
                exact = float(b.to_numpy(_top_singular_value(xp, L["weight"])))
                bound = exact
                stride = padding = None
            else:
                w = _expand_kernel(xp, L["weight"], L["dilation"], L["groups"])
                bound = float(b.to_numpy(_oihw_fantastic_four(b, w, None).bound))
                stride, padding = L["stride"], L["padding"]
                if L["mode"] in ("zeros", "circular") and L["pads"] is not None:
                    op = _make_operator(b, w, L["input_size"], L["stride"], L["pads"],
                                        "OIHW", wrap=L["mode"] == "circular")
                    exact = float(b.to_numpy(b.stop_gradient(_conv_norm(op, tol=tol))))
                else:
                    exact = float("nan")
        product *= exact
        rows.append(LayerRow(L["name"], L["kind"], tuple(L["kernel_shape"]), stride,
                             padding, tuple(L["input_size"]), bound, exact, product,
                             time.perf_counter() - t0))
    return rows
