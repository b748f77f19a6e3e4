"""NumPy adapter: explicit operators (dense matrices, SciPy operators); no autodiff."""

from __future__ import annotations

from typing import Any

import array_api_compat.numpy as xp_numpy
import numpy as np

from ._base import Backend


class NumpyBackend(Backend):
    name = "numpy"
    module_name = "numpy"
    has_autodiff = False

    @property
    def xp(self) -> Any:
        return xp_numpy

    def is_array(self, x: Any) -> bool:
        return isinstance(x, (np.ndarray, np.generic))

    def devices(self) -> list[str]:
        return ["cpu"]

    def device(self, x: Any) -> str:
        return "cpu"

    def to_numpy(self, x: Any) -> np.ndarray:
        return np.asarray(x)

    def as_matrix(self, A: Any) -> np.ndarray:
        """A plain ``ndarray`` (an ``ndarray`` subclass such as ``np.matrix`` reads as
        one)."""
        return np.asarray(A)

    def from_numpy(self, a: np.ndarray, *, dtype: Any = None, device: Any = None) -> Any:
        return np.asarray(a, dtype=dtype)

    def set_row(self, X, j, x, start=0):
        """In place (the rows written belong to solver work buffers, zero before): the
        functional default copies the whole buffer at every step; returns ``X``."""
        X[..., j, start:start + x.shape[-1]] = x
        return X

    def normal(self, shape, *, dtype, device, seed):
        rng = np.random.default_rng(seed)
        dt = np.dtype(dtype)
        if dt.kind == "c":
            real = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
            return (real / np.sqrt(2)).astype(dt)
        return rng.standard_normal(shape).astype(dt)

    # -- convolutions (js.conv) ------------------------------------------------------
    def conv2d(self, x, w, *, stride, pads):
        """Cross-correlation of ``x`` ``(N, C, H, W)`` with ``w`` ``(O, C, h, w)``.

        ``pads = ((top, bottom), (left, right))`` zeros, ``stride = (sh, sw)``; pure
        NumPy (sliding windows and one ``tensordot``).
        """
        (pt, pb), (pl, pr) = pads
        xp_ = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        kh, kw = w.shape[-2:]
        win = np.lib.stride_tricks.sliding_window_view(xp_, (kh, kw), axis=(2, 3))
        win = win[:, :, :: stride[0], :: stride[1]]  # (N, C, Ho, Wo, kh, kw)
        out = np.tensordot(win, w, axes=([1, 4, 5], [1, 2, 3]))  # (N, Ho, Wo, O)
        return np.ascontiguousarray(np.moveaxis(out, -1, 1))

    def conv2d_adjoint(self, y, w, *, stride, pads, input_hw):
        """The exact adjoint of :meth:`conv2d` (a transposed conv), ``(N, C, H, W)``."""
        (pt, pb), (pl, pr) = pads
        H, W = input_hw
        (sh, sw), (kh, kw) = stride, w.shape[-2:]
        ho, wo = y.shape[-2:]
        dtype = np.result_type(y.dtype, w.dtype)
        z = np.zeros((y.shape[0], w.shape[1], H + pt + pb, W + pl + pr), dtype=dtype)
        for a in range(kh):
            for b in range(kw):
                z[:, :, a:a + sh * (ho - 1) + 1:sh, b:b + sw * (wo - 1) + 1:sw] += np.einsum(
                    "nohw,oc->nchw", y, w[:, :, a, b])
        return z[:, :, pt:pt + H, pl:pl + W]


BACKEND = NumpyBackend()
