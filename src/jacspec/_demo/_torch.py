"""The ``jacspec demo`` MLP and training loop in PyTorch (``torch.optim.Adam``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import torch

from .. import penalties as js_penalties
from . import penalty

#: Intra-op threads of the demo. Its operations are small (a 64-64-10 MLP on 200
#: samples: each matmul well under a millisecond), so more threads gain nothing, while
#: on a busy machine every operation that enters a contended thread pool waits for a
#: time slice of the scheduler: with two other busy processes on two cores, torch's
#: default pool made the spectral run 4-30x slower (docs/benchmarks.md, "load" rows).
THREADS = 1


@contextlib.contextmanager
def threads() -> Iterator[None]:
    """torch's intra-op threads set to :data:`THREADS` while the demo runs, restored
    afterwards (the demo is an application; the library never changes the setting)."""
    before = torch.get_num_threads()
    torch.set_num_threads(min(THREADS, before))
    try:
        yield
    finally:
        torch.set_num_threads(before)


class MLP(torch.nn.Module):
    def __init__(self, weights) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList()
        for W, b in weights:
            lin = torch.nn.Linear(W.shape[1], W.shape[0])
            with torch.no_grad():
                lin.weight.copy_(torch.as_tensor(W))
                lin.bias.copy_(torch.as_tensor(b))
            self.layers.append(lin)

    def forward(self, x):
        for i, lin in enumerate(self.layers):
            x = lin(x)
            if i < len(self.layers) - 1:
                x = torch.tanh(x)
        return x


class Trainer:
    def __init__(self, weights, dtype: str = "float32") -> None:
        self.dtype = getattr(torch, dtype)
        self.net = MLP(weights).to(self.dtype)

    def asarray(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a), dtype=self.dtype)

    @property
    def model(self):
        return self.net

    def fit(self, X, y, *, penalty_name=None, lam=0.0, steps=300, lr=1e-2, callback=None):
        X = self.asarray(X)
        y = torch.as_tensor(np.asarray(y), dtype=torch.long)
        opt = torch.optim.Adam(self.net.parameters(), lr=lr)
        ce = torch.nn.functional.cross_entropy
        for step in range(steps):
            opt.zero_grad()
            loss = ce(self.net(X), y)
            if penalty_name is not None:
                per_sample = lambda z: ce(self.net(z), y, reduction="none")  # noqa: E731
                loss = loss + lam * penalty(js_penalties, penalty_name, self.net, X,
                                            per_sample, seed=step)
            loss.backward()
            opt.step()
            if callback is not None:
                callback(step, loss.detach())  # a value to print, not part of a graph
        self.net.eval()
        return self
