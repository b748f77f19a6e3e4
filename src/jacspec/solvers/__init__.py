"""Spectral solvers (work in progress: issue 3)."""

from __future__ import annotations

from typing import Any, NamedTuple


class SVDResult(NamedTuple):
    values: Any
    left: Any
    right: Any
    converged: Any
    num_matvecs: int
    residuals: Any


class EighResult(NamedTuple):
    values: Any
    vectors: Any
    converged: Any
    num_matvecs: int
    residuals: Any


def _todo(*args, **kwargs):
    raise NotImplementedError("spectral solvers are not implemented yet")


svds = eigsh = spectral_norm = frobenius_norm = trace = _todo
