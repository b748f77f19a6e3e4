"""PyTorch side of the experiments: models from NumPy specs, the training loop with a
named penalty, accuracy, and the FGSM / L2 PGD attacks. ``_jax_kit`` mirrors it."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from _common import IMAGE_SHAPE, CNNSpec, MLPSpec, batches
from torch import nn

import jacspec as js

DTYPE = torch.float32


def asarray(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a), dtype=DTYPE)


def to_numpy(a: torch.Tensor) -> np.ndarray:
    return a.detach().cpu().numpy()


no_grad = torch.no_grad


def _linear(W: np.ndarray, b: np.ndarray) -> nn.Linear:
    lin = nn.Linear(W.shape[1], W.shape[0])
    with torch.no_grad():
        lin.weight.copy_(asarray(W))
        lin.bias.copy_(asarray(b))
    return lin


class Residual(nn.Module):
    """``x + body(x)``: a square map whose Jacobian is ``I + J_body``."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def build(spec: MLPSpec | CNNSpec) -> nn.Module:
    """An ``nn.Sequential`` on flat ``(B, 64)`` inputs with the spec's initial weights."""
    act = {"relu": nn.ReLU, "tanh": nn.Tanh}
    if isinstance(spec, MLPSpec):
        mods: list[nn.Module] = []
        for i, (W, b) in enumerate(spec.layers):
            mods.append(_linear(W, b))
            if i < len(spec.layers) - 1:
                mods.append(act[spec.activation]())
        net: nn.Module = nn.Sequential(*mods)
        return Residual(net) if spec.residual else net
    mods = [nn.Unflatten(1, IMAGE_SHAPE)]
    for w, b, s in spec.convs:
        conv = nn.Conv2d(w.shape[1], w.shape[0], w.shape[2], stride=s, padding=1)
        with torch.no_grad():
            conv.weight.copy_(asarray(w))
            conv.bias.copy_(asarray(b))
        mods += [conv, nn.ReLU()]
    mods += [nn.Flatten(), _linear(*spec.dense)]
    return nn.Sequential(*mods)


def fn(model: nn.Module) -> Callable:
    """The callable jacspec differentiates (the module itself)."""
    return model


def layer_norms(model: nn.Module) -> list[torch.Tensor]:
    """Differentiable per-layer norms: the exact spectral norm of each dense weight and
    the Fantastic Four bound of each conv kernel."""
    out = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            out.append(torch.linalg.matrix_norm(m.weight, ord=2))
        elif isinstance(m, nn.Conv2d):
            out.append(js.penalties.conv_bound(m.weight))
    return out


def _norm_product(model: nn.Module) -> torch.Tensor:
    return torch.stack(layer_norms(model)).prod()


def layer_norm_product(model: nn.Module) -> float:
    """The product of :func:`layer_norms`: an upper bound on every ``||J_f(x)||_2``."""
    with torch.no_grad():
        return float(_norm_product(model))


def _ce(model: nn.Module, y: torch.Tensor) -> Callable:
    return lambda z: F.cross_entropy(model(z), y, reduction="none")


#: Penalties by name: ``(model, x, y) -> scalar``. Spectral penalties use jacspec's
#: defaults (plus ``target``), so that the configuration is the library's.
PENALTIES: dict[str, Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "spectral": lambda m, x, y: js.penalties.spectral(m, x),
    "bound": lambda m, x, y: _norm_product(m) ** 2,
    "layer_sum": lambda m, x, y: torch.stack(layer_norms(m)).sum(),
    "frobenius": lambda m, x, y: js.penalties.frobenius(m, x),
    "gradient_norm": lambda m, x, y: js.penalties.gradient_norm(_ce(m, y), x),
    "transpose": lambda m, x, y: js.penalties.spectral(m, x, target="transpose"),
    "rowsum_diagonal": lambda m, x, y: js.penalties.spectral(m, x, target="rowsum_diagonal"),
}
penalty_names = tuple(PENALTIES)


def _loss(kind: str) -> Callable:
    if kind == "ce":
        return F.cross_entropy
    return lambda out, target: (out - target).square().sum(dim=1).mean()


def train(model: nn.Module, X: np.ndarray, y: np.ndarray, *, loss: str = "ce",
          penalty: str | None = None, lam: float = 0.0, epochs: int = 30,
          batch_size: int | None = None, lr: float = 1e-3, seed: int = 0,
          until_loss: float | None = None) -> dict[str, float]:
    """Adam on ``loss + lam * penalty``; with ``until_loss``, stop at the first epoch
    whose full training loss (without penalty) is at most that.

    Returns the final training loss (without penalty) and the number of steps taken.
    """
    torch.manual_seed(seed)  # the random projections of the Frobenius penalty
    Xt = asarray(X)
    yt = torch.as_tensor(y) if loss == "ce" else asarray(y)
    data_loss = _loss(loss)
    pen = PENALTIES[penalty] if penalty else None
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    per_epoch = max(1, len(Xt) // batch_size) if batch_size else 1
    steps = 0
    for idx in batches(len(Xt), batch_size, epochs, seed):
        xb, yb = Xt[idx], yt[idx]
        value = data_loss(model(xb), yb)
        if pen is not None and lam:
            value = value + lam * pen(model, xb, yb)
        opt.zero_grad()
        value.backward()
        opt.step()
        steps += 1
        if until_loss is not None and steps % per_epoch == 0 and (
                full_loss(model, X, y, loss) <= until_loss):
            break
    return {"loss": full_loss(model, X, y, loss), "steps": steps}


def full_loss(model: nn.Module, X: np.ndarray, y: np.ndarray, loss: str = "ce") -> float:
    with torch.no_grad():
        target = torch.as_tensor(y) if loss == "ce" else asarray(y)
        return float(_loss(loss)(model(asarray(X)), target))


def spectral_penalty(model: nn.Module, X: np.ndarray) -> float:
    """``js.penalties.spectral(model, X, squared=False)``: the mean ``sigma_max`` the
    training penalty sees, to compare with the exact norms."""
    return float(js.penalties.spectral(model, asarray(X), squared=False).detach())


def predict(model: nn.Module, X: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(asarray(X)).numpy()


def accuracy(model: nn.Module, X: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predict(model, X).argmax(1) == y))


def _input_grad(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    X = X.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(model(X), y, reduction="sum"), X)
    return g


def fgsm(model: nn.Module, X: np.ndarray, y: np.ndarray, eps: float) -> np.ndarray:
    """Fast gradient sign attack (L-infinity ``eps``), clipped to the data range [0, 1]."""
    Xt, yt = asarray(X), torch.as_tensor(y)
    return (Xt + eps * _input_grad(model, Xt, yt).sign()).clamp(0, 1).numpy()


def pgd_l2(model: nn.Module, X: np.ndarray, y: np.ndarray, eps: float,
           steps: int = 10) -> np.ndarray:
    """Projected gradient ascent on the loss in the L2 ball of radius ``eps``
    (step ``2.5 eps / steps``), kept in [0, 1]."""
    Xt, yt = asarray(X), torch.as_tensor(y)
    delta = torch.zeros_like(Xt)
    alpha = 2.5 * eps / steps
    for _ in range(steps):
        g = _input_grad(model, Xt + delta, yt)
        g = g / g.norm(dim=1, keepdim=True).clamp_min(1e-12)
        delta = delta + alpha * g
        delta = delta * (eps / delta.norm(dim=1, keepdim=True).clamp_min(1e-12)).clamp(max=1)
        delta = (Xt + delta).clamp(0, 1) - Xt
    return (Xt + delta).numpy()


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())



@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (restored afterwards): on a shared machine one
    thread per process avoids oversubscribing the cores, which small ops suffer from."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
