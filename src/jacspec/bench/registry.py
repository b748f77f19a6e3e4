"""The list of benchmark groups: each ``*_rows`` module of :mod:`jacspec.bench`
registers its row functions here with :func:`register`, and :func:`groups` loads every
such module and returns the groups of a backend and mode.

A row function takes ``quick`` and returns a list of :data:`Row` dicts: ``name``,
``jacspec``, ``reference``, ``ratio``, ``target`` (e.g. ``"<= 1.10"``, or ``"report"``),
``met`` (``None`` for report rows), ``configuration`` and ``details`` (the raw
measurements); a row that cannot run (a peer not installed) is ``dict(name=...,
skipped=reason)``.

Examples
--------
>>> from jacspec.bench import registry
>>> [g.name for g in registry.groups("tensorflow", quick=True)][:2]
['overhead', 'batched']
"""

from __future__ import annotations

import importlib
import os
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Row", "Group", "register", "groups", "BACKENDS", "ORDER"]

Row = dict[str, Any]
RowFunction = Callable[[bool], list[Row]]

#: The backends ``jacspec bench`` runs.
BACKENDS = ("torch", "jax", "tensorflow")

#: Where the groups stand in the table; groups not named here follow, in the order the
#: modules register them.
ORDER = ("overhead", "eager", "lanczos", "batched", "auto", "dense", "penalty", "peers",
         "arpack", "conv", "gram", "memory", "dataset", "dataset-memory", "density", "slq",
         "distributed", "transformer", "transformer-memory", "transformer-peers", "scaling", "load")


@dataclass(frozen=True)
class Group:
    """Rows that run together: ``name`` (what ``only=`` selects), the ``backend``
    they measure, the function, whether ``--quick`` runs them, and ``target``: the
    targets of its rows in a few words (``None``: report rows only)."""

    name: str
    backend: str
    run: RowFunction
    quick: bool
    target: str | None


_GROUPS: list[Group] = []


def register(name: str, backend: str, *, quick: bool = True, target: str | None = None
             ) -> Callable[[RowFunction], RowFunction]:
    """Decorator: the function's rows join the table as group ``name`` of ``backend``
    (``quick=False``: the full run only)."""
    if backend not in BACKENDS:
        raise ValueError(f"Expected backend among {BACKENDS}. Received {backend!r}.")

    def add(fn: RowFunction) -> RowFunction:
        _GROUPS.append(Group(name, backend, fn, quick, target))
        return fn

    return add


def _load_row_modules() -> None:
    """Import every ``*_rows`` module of this package (each registers on import)."""
    for mod in pkgutil.iter_modules([os.path.dirname(__file__)]):
        if mod.name.endswith("_rows"):
            importlib.import_module(f"{__package__}.{mod.name}")


def groups(backend: str, quick: bool, only: list[str] | None = None) -> list[Group]:
    """The groups of ``backend`` in table order: those of ``--quick`` when ``quick``,
    those named in ``only`` when given."""
    _load_row_modules()
    rank = {name: i for i, name in enumerate(ORDER)}
    found = [g for g in _GROUPS if g.backend == backend and (g.quick or not quick)
             and (only is None or g.name in only)]
    return sorted(found, key=lambda g: rank.get(g.name, len(ORDER)))
