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

    def from_numpy(self, a: np.ndarray, *, dtype: Any = None, device: Any = None) -> Any:
        return np.asarray(a, dtype=dtype)

    def normal(self, shape, *, dtype, device, seed):
        rng = np.random.default_rng(seed)
        dt = np.dtype(dtype)
        if dt.kind == "c":
            real = rng.standard_normal(shape) + 1j * rng.standard_normal(shape)
            return (real / np.sqrt(2)).astype(dt)
        return rng.standard_normal(shape).astype(dt)


BACKEND = NumpyBackend()
