"""The memory rows' measurements, each run in a fresh process by
:func:`jacspec.bench.timing.run_fresh` (torch):

    python -m jacspec.bench.memory_probe lanczos
    python -m jacspec.bench.memory_probe MODE WIDTH BATCH NBATCH

``lanczos``: the Krylov basis and the rise of peak RSS of Lanczos on per-sample Jacobians
against the bytes autograd saved for the products. ``MODE`` (``forward_backward``,
``native_hvp``, ``one_batch``, ``dataset``): the rise of peak RSS of one batch's forward
and backward pass, a hand-written double-backward HVP, or one product of the dataset
Hessian on one batch or on ``NBATCH`` batches. Prints one JSON line.
"""

from __future__ import annotations

import gc
import json
import sys
from typing import Any

from .timing import peak_rss_mb, reset_peak_rss

#: Per-sample Jacobians of the ``lanczos`` measurement: batch and MLP widths.
LANCZOS_CASE = (256, (784, 2048, 2048, 2048, 512))


def lanczos() -> dict[str, Any]:
    import torch

    import jacspec as js

    from .models_torch import mlp

    B, arch = LANCZOS_CASE
    net, x = mlp(arch), torch.randn(B, arch[0])
    saved = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        op = js.jacobian(net, x, batched=True)
        op @ torch.zeros(B, arch[0])  # builds the JVP graph too
    gc.collect()
    r0 = reset_peak_rss()
    # the basis size at which Lanczos restarts: svds' documented default for k = 1
    ncv = min(min(arch[0], arch[-1]), 33)
    res = js.svds(op, method="lanczos", tol=1e-4, ncv=ncv)
    rise = peak_rss_mb() - r0
    return dict(B=B, arch="-".join(map(str, arch)), products=int(res.num_matvecs),
                activations_mb=saved[0] / 2**20, lanczos_peak_mb=max(rise, 0.0),
                basis_mb=B * (arch[0] + arch[-1]) * ncv * 4 / 2**20)


def dataset(mode: str, width: int, bsize: int, nbatch: int) -> dict[str, Any]:
    import torch

    import jacspec as js

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, width), torch.nn.Tanh(),
                                torch.nn.Linear(width, width), torch.nn.Tanh(),
                                torch.nn.Linear(width, 10))
    data = [(torch.randn(bsize, 64), torch.randint(0, 10, (bsize,))) for _ in range(nbatch)]
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict, batch: tuple) -> torch.Tensor:
        out = torch.func.functional_call(model, p, (batch[0],))
        return torch.nn.functional.cross_entropy(out, batch[1])

    v = torch.randn(sum(p.numel() for p in params.values()))
    r0 = reset_peak_rss()
    if mode == "forward_backward":
        torch.nn.functional.cross_entropy(model(data[0][0]), data[0][1]).backward()
    elif mode == "native_hvp":  # double backward by hand, one batch
        ps = list(model.parameters())
        g = torch.autograd.grad(loss(dict(model.named_parameters()), data[0]), ps,
                                create_graph=True)
        torch.autograd.grad(g, ps, [t.reshape(p.shape) for t, p in
                                    zip(v.split([p.numel() for p in ps]), ps)])
    else:  # building the operator differentiates the first batch once: counted too
        js.hessian(loss, params, data=data if mode == "dataset" else data[:1]) @ v
    return dict(mode=mode, peak_mb=peak_rss_mb() - r0)


def main(argv: list[str]) -> None:
    out = lanczos() if argv == ["lanczos"] else dataset(argv[0], *map(int, argv[1:4]))
    print(json.dumps(out))


if __name__ == "__main__":  # pragma: no cover - run by run_fresh
    main(sys.argv[1:])
