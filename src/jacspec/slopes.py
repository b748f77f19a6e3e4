"""Slope estimation (work in progress: issue 5)."""

from __future__ import annotations

from typing import Any, NamedTuple


class SlopeResult(NamedTuple):
    values: Any


def slope(*args, **kwargs):
    raise NotImplementedError("slope is not implemented yet")
