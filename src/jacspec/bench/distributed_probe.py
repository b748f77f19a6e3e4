"""The distributed rows' measurements (torch), each in fresh processes started by
:mod:`jacspec.bench.distributed_rows`:

    python -m jacspec.bench.distributed_probe single WIDTH DEPTH SAMPLES BATCHES
    torchrun --nproc_per_node=P -m jacspec.bench.distributed_probe MODE WIDTH DEPTH SAMPLES BATCHES

An MLP (``DEPTH`` hidden layers of ``WIDTH``, float32) and ``SAMPLES`` random samples,
split into contiguous equal shards over the processes and ``BATCHES`` batches per
process. ``single``: one process, the whole data (``distributed=False``);
``replicated``: every process holds the whole model, ``distributed=True``;
``sharded``: the model sharded by FSDP2 ``fully_shard`` per layer (built on the meta
device, so no process ever holds all parameters). Every process runs on one thread.
Measures the median time of one
dataset Hessian product (``H @ v``) and each process's peak resident set from before
the model is built to after the products (the largest over the processes). Rank 0
prints one JSON line.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any

from .timing import peak_rss_mb, reset_peak_rss

REPEATS = 3


def _model(torch: Any, width: int, depth: int) -> Any:
    sizes = [64] + [width] * depth + [10]
    layers: list[Any] = []
    for a, b in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(a, b), torch.nn.Tanh()]
    return torch.nn.Sequential(*layers[:-1])


def measure(mode: str, width: int, depth: int, samples: int, batches: int) -> dict[str, Any]:
    import torch

    import jacspec as js

    torch.set_num_threads(1)  # one core per process, as torchrun gives its workers
    dist = torch.distributed
    rank, world = 0, 1
    # a group set up by the caller is used and left as it is (torch cannot set up a
    # second default group in the same processes reliably: it reuses the first one's
    # rendezvous keys)
    own_group = mode != "single" and not dist.is_initialized()
    if own_group:
        dist.init_process_group("gloo")
    if mode != "single":
        rank, world = dist.get_rank(), dist.get_world_size()
    # imported in every mode before the measurement starts: modules are not data
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    r0 = reset_peak_rss()
    torch.manual_seed(0)
    if mode == "sharded":
        with torch.device("meta"):
            model = _model(torch, width, depth)
        mesh = init_device_mesh("cpu", (world,))
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                fully_shard(layer, mesh=mesh)
        fully_shard(model, mesh=mesh)
        model.to_empty(device="cpu")
        for layer in model:
            if isinstance(layer, torch.nn.Linear):
                layer.reset_parameters()
    else:
        model = _model(torch, width, depth)
    gen = torch.Generator().manual_seed(1)
    X, y = torch.randn(samples, 64, generator=gen), torch.randint(0, 10, (samples,), generator=gen)
    mine = slice(rank * samples // world, (rank + 1) * samples // world)
    X, y = X[mine], y[mine]
    size = -(-len(X) // batches)
    data = [(X[i:i + size], y[i:i + size]) for i in range(0, len(X), size)]
    params = dict(model.named_parameters())

    def batch_loss(p: dict, batch: tuple) -> Any:
        out = model(batch[0]) if mode == "sharded" else torch.func.functional_call(
            model, p, (batch[0],))
        return torch.nn.functional.cross_entropy(out, batch[1])

    H = js.hessian(batch_loss, params, data=data, distributed=mode != "single")
    local = H.sharding.local_n if H.sharding is not None else H.shape[0]
    v = torch.randn(local, generator=torch.Generator().manual_seed(2 + rank))
    H @ v  # warm-up
    times = []
    for _ in range(REPEATS):
        if mode != "single":
            dist.barrier()
        t = time.perf_counter()
        H @ v
        times.append(time.perf_counter() - t)
    peak = torch.tensor([peak_rss_mb() - r0, statistics.median(times)], dtype=torch.float64)
    if mode != "single":
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    if own_group:
        dist.destroy_process_group()
    return dict(mode=mode, processes=world, n=H.shape[0], local_n=local,
                product_s=float(peak[1]), peak_mb=max(float(peak[0]), 0.0), rank=rank)


def main(argv: list[str]) -> None:
    out = measure(argv[0], *map(int, argv[1:5]))
    if out.pop("rank") == 0:
        print(json.dumps(out), flush=True)


if __name__ == "__main__":  # pragma: no cover - run by distributed_rows
    main(sys.argv[1:])
