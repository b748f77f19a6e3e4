"""The models of ``jacspec bench`` in PyTorch: tanh MLPs (random or trained on digits),
the digits CNNs and a ResNet-18 for 32x32 images (He et al. 2016, CIFAR variant: 3x3
stem, no max-pool, a base width). Framework-specific bench code: imports torch at module
level, so import it only where torch is wanted.

Examples
--------
>>> import torch
>>> from jacspec.bench.models_torch import ResNet18, mlp
>>> ResNet18(width=8).eval()(torch.zeros(2, 3, 32, 32)).shape
torch.Size([2, 10])
>>> mlp([64, 32, 10])(torch.zeros(5, 64)).shape
torch.Size([5, 10])
"""

from __future__ import annotations

import contextlib
import copy
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .models import CNN_ARCH, cnn_input_sizes, digit_images, digits

__all__ = ["describe", "threads", "mlp", "train", "trained_mlp", "design_mlp",
           "hessian_problem", "penalty_models", "digits_cnn", "train_digits_cnn", "BasicBlock",
           "ResNet18", "GPT", "token_batches"]


def describe() -> dict[str, Any]:
    """The framework's part of the bench's configuration."""
    return {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": "cpu"}


@contextlib.contextmanager
def threads() -> Iterator[None]:
    """torch's intra-op threads while the bench runs, restored afterwards: torch's
    default on a quiet machine, one thread where the machine is busy when the bench
    starts (a 1-minute load average of at least half the cores). On a busy machine each
    operation split over threads waits for the thread that lost its core, a scheduler's
    time slice: the rows then time mostly the waiting (see the "load" rows), and both
    sides of a ratio run on the same setting either way."""
    before = torch.get_num_threads()
    if os.getloadavg()[0] >= (os.cpu_count() or 1) / 2:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def mlp(sizes: Sequence[int], dtype: torch.dtype = torch.float32, seed: int = 0,
        act: type[nn.Module] = nn.Tanh, frozen: bool = True) -> nn.Sequential:
    """A random MLP (torch's default initialization from ``seed``); ``frozen``: no
    parameter gradients (input Jacobians only)."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(act())
    net = nn.Sequential(*layers).to(dtype)
    for p in net.parameters():
        p.requires_grad_(not frozen)
    return net


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, *, lr: float,
          steps: int = 0, epochs: int = 0, batch: int = 128) -> nn.Module:
    """Adam on the cross-entropy: ``steps`` full-batch steps, then ``epochs`` passes in
    batches of ``batch``, in order."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step(xb: torch.Tensor, yb: torch.Tensor) -> None:
        opt.zero_grad()
        nn.functional.cross_entropy(model(xb), yb).backward()
        opt.step()

    for _ in range(steps):
        step(X, y)
    for _ in range(epochs):
        for i in range(0, len(X), batch):
            step(X[i:i + batch], y[i:i + batch])
    return model


def _freeze(model: nn.Module) -> nn.Module:
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def trained_mlp(dtype: torch.dtype, epochs: int = 10, hidden: int = 128
                ) -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    """A 64-hidden-hidden-10 tanh MLP trained ``epochs`` epochs on all digits (no
    parameter gradients): ``(model, X, y, training accuracy)``."""
    X, y = digits()
    Xt, yt = torch.tensor(X, dtype=dtype), torch.tensor(y)
    model = train(mlp([64, hidden, hidden, 10], dtype, frozen=False), Xt, yt, lr=1e-2,
                  epochs=epochs)
    _freeze(model)
    with torch.no_grad():
        acc = float((model(Xt).argmax(1) == yt).double().mean())
    return model, Xt, yt, acc


_DESIGN_CACHE: dict[Any, Any] = {}


def design_mlp(dtype: torch.dtype, steps: int = 300, hidden: int = 256, ntrain: int = 1500
               ) -> tuple[nn.Module, torch.Tensor, float]:
    """The design model: a 64-256-256-10 tanh MLP trained with Adam on digits (``steps``
    full-batch steps on the first ``ntrain`` samples), trained once per process. Returns
    a copy in ``dtype`` (no parameter gradients), the held-out inputs and the test
    accuracy."""
    key = (steps, hidden, ntrain)
    if key not in _DESIGN_CACHE:
        X, y = digits()
        Xt, yt = torch.tensor(X), torch.tensor(y)
        model = train(mlp([64, hidden, hidden, 10], frozen=False), Xt[:ntrain], yt[:ntrain],
                      lr=1e-3, steps=steps)
        _freeze(model)
        with torch.no_grad():
            acc = float((model(Xt[ntrain:]).argmax(1) == yt[ntrain:]).double().mean())
        _DESIGN_CACHE[key] = model, Xt[ntrain:], acc
    model, Xte, acc = _DESIGN_CACHE[key]
    return copy.deepcopy(model).to(dtype), Xte.to(dtype), acc


def hessian_problem(dtype: torch.dtype, hidden: int = 32, nsamp: int = 256
                    ) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 64-hidden-10 tanh MLP on ``nsamp`` digits after 30 full-batch Adam steps, with
    its inputs and labels: small enough for a dense Hessian, real enough to have a
    spread spectrum."""
    X, y = digits()
    Xt, yt = torch.tensor(X[:nsamp], dtype=dtype), torch.tensor(y[:nsamp])
    model = train(mlp([64, hidden, 10], dtype, frozen=False), Xt, yt, lr=1e-2, steps=30)
    return model, Xt, yt


def penalty_models(batch: int) -> dict[str, tuple[nn.Module, torch.Tensor]]:
    """The penalty rows' models and inputs (``batch`` digits): the design-size MLP and a
    small CNN (two 3x3 convolutions, 10 outputs), random, with parameter gradients."""
    X, _ = digits()
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 256), nn.Tanh(),
                        nn.Linear(256, 10))
    cnn = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.Tanh(),
                        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.Tanh(), nn.Flatten(),
                        nn.Linear(32 * 4 * 4, 10))
    x = torch.tensor(X[:batch])
    return {"MLP": (net, x), "CNN": (cnn, x.reshape(batch, 1, 8, 8))}


def digits_cnn(epochs: int, seed: int = 0) -> tuple[nn.Module, float]:
    """The CNN of :data:`~jacspec.bench.models.CNN_ARCH` trained on digits (batches of
    64, shuffled), in eval mode, and its training accuracy."""
    X, y = digit_images()
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for co, ci, k, s in CNN_ARCH:
        layers += [nn.Conv2d(ci, co, k, stride=s, padding=k // 2), nn.ReLU()]
    last = cnn_input_sizes()[-1]
    h = last // CNN_ARCH[-1][3] if CNN_ARCH[-1][3] > 1 else last
    net = nn.Sequential(*layers, nn.Flatten(), nn.Linear(CNN_ARCH[-1][0] * h * h, 10))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    Xt, yt = torch.from_numpy(X[:, None]), torch.from_numpy(y)
    for _ in range(epochs):
        perm = torch.randperm(len(Xt))
        for i in range(0, len(Xt), 64):
            idx = perm[i:i + 64]
            loss = nn.functional.cross_entropy(net(Xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        acc = float((net(Xt).argmax(1) == yt).float().mean())
    return net.eval(), acc


def train_digits_cnn(epochs: int, seed: int = 0) -> tuple[list[torch.Tensor], float]:
    """:func:`digits_cnn`'s conv kernels (OIHW) and its training accuracy."""
    net, acc = digits_cnn(epochs, seed)
    return [m.weight.detach() for m in net if isinstance(m, nn.Conv2d)], acc


class BasicBlock(nn.Module):
    """Two 3x3 convs with batch norm and a (1x1 conv when the shape changes) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.Sequential()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet18(nn.Module):
    """ResNet-18 for 32x32 images; stages of ``width``, 2, 4 and 8 times ``width``
    channels (64 is the usual network, 11.2M parameters)."""

    def __init__(self, num_classes: int = 10, width: int = 64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        blocks, c_in = [], width
        for c_out, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1))


class _DecoderBlock(nn.Module):
    """Pre-norm causal self-attention (``F.scaled_dot_product_attention``, torch's
    default fused kernel) and a GELU MLP, each with a residual connection."""

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.out = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        B, T, D = h.shape
        q, k, v = (t.reshape(B, T, self.heads, D // self.heads).transpose(1, 2)
                   for t in self.qkv(self.ln1(h)).split(D, dim=-1))
        a = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = h + self.proj(a.transpose(1, 2).reshape(B, T, D))
        return h + self.out(nn.functional.gelu(self.fc(self.ln2(h))))


class GPT(nn.Module):
    """A GPT-style decoder: token and position embeddings, ``layers`` pre-norm blocks
    of ``heads``-head causal attention and a 4x GELU MLP, a final norm and a linear
    head. ``forward(tokens (B, T)) -> logits (B * T, vocab)``, one row per predicted
    token (so that ``F.cross_entropy`` takes them as they are).

    >>> GPT(vocab=16, d=8, layers=1, heads=2, context=4)(torch.zeros(3, 4, dtype=torch.long)).shape
    torch.Size([12, 16])
    """

    def __init__(self, vocab: int, d: int, layers: int, heads: int, context: int,
                 seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.vocab = vocab
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(context, d)
        self.blocks = nn.ModuleList([_DecoderBlock(d, heads) for _ in range(layers)])
        self.ln, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.wte(tokens) + self.wpe(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln(h)).reshape(-1, self.vocab)


def token_batches(vocab: int, context: int, batch: int, count: int, seed: int = 0
                  ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` batches of random token sequences and their next tokens, flat
    (``GPT``'s rows): ``(tokens (batch, context), targets (batch * context,))``."""
    g = torch.Generator().manual_seed(seed)
    seqs = torch.randint(0, vocab, (count, batch, context + 1), generator=g)
    return [(s[:, :-1], s[:, 1:].reshape(-1)) for s in seqs]
