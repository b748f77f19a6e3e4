"""Native training loops for ``jacspec demo``, one module per framework (internal).

These are applications of the library, not part of its framework-agnostic core: each
module imports its framework and is itself imported only when ``jacspec demo`` runs with
that backend (``import jacspec`` imports none of them).

Every trainer has the same interface::

    trainer = make_trainer(weights, dtype)   # weights: list of NumPy (W, b), W (out, in)
    trainer.fit(X, y, penalty=None | "spectral" | "frobenius" | "gradient_norm",
                lam=..., steps=..., lr=..., callback=lambda step, loss: ...)
    trainer.model      # f(x) -> logits on framework arrays (batched)
    trainer.asarray(a) # NumPy -> framework array of the trainer's dtype

A module may also define ``threads()``, a context manager in which the demo runs (the
framework's thread count for its small model; see :func:`threads`).
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Iterator
from typing import Any

MODULES = {"torch": "._torch", "jax": "._jax", "tensorflow": "._tensorflow"}


def make_trainer(backend: str, weights: Any, dtype: str = "float32") -> Any:
    mod = importlib.import_module(MODULES[backend], __name__)
    return mod.Trainer(weights, dtype)


@contextlib.contextmanager
def threads(backend: str) -> Iterator[None]:
    """The demo's thread setting of ``backend`` while the block runs (the module's
    ``threads()``, if it has one), restored afterwards."""
    mod = importlib.import_module(MODULES[backend], __name__)
    with getattr(mod, "threads", contextlib.nullcontext)():
        yield


def penalty(js_penalties: Any, name: str, f: Any, x: Any, per_sample_loss: Any, seed: Any) -> Any:
    """The named penalty of ``f`` on the batch ``x`` (shared by the three trainers)."""
    if name == "spectral":
        return js_penalties.spectral(f, x)
    if name == "frobenius":
        return js_penalties.frobenius(f, x, num_projections=1, seed=seed)
    if name == "gradient_norm":
        return js_penalties.gradient_norm(per_sample_loss, x)
    raise ValueError(
        "Expected a penalty among None, 'spectral', 'frobenius', 'gradient_norm'. "
        f"Received {name!r}."
    )
