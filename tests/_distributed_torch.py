"""Run by tests/test_datasets.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

Each rank holds every other batch of one dataset; the distributed dataset Hessian and
GGN must equal the single-process operators of the whole dataset (rank 0 computes those
too) and give identical results on every rank. Writes ``rank{r}.npz`` (and
``single.npz``) into the directory given as the first argument.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

import jacspec as js


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                                torch.nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(1)
    sizes = [5, 8, 3, 8, 1, 7, 4]  # uneven batches, uneven shards
    data = [(torch.randn(s, 4, generator=gen, dtype=torch.float64),
             torch.randint(0, 3, (s,), generator=gen)) for s in sizes]
    params = dict(model.named_parameters())

    def apply(p, x):
        return torch.func.functional_call(model, p, (x,))

    def batch_loss(p, batch):
        return torch.nn.functional.cross_entropy(apply(p, batch[0]), batch[1])

    loss = torch.nn.functional.cross_entropy

    def results(shard, distributed):
        H = js.hessian(batch_loss, params, data=shard, distributed=distributed)
        G = js.ggn(apply, loss, params, data=shard, distributed=distributed)
        top = js.eigsh(H, k=2, method="lanczos", tol=1e-10).values
        return dict(dense=js.dense(H).numpy(), ggn=js.dense(G).numpy(), top=top.numpy())

    # The docs' recipe for a map-style dataset: an unpadded strided shard per rank
    # (DistributedSampler pads or drops samples to equalize the shards).
    inputs, targets = torch.cat([b[0] for b in data]), torch.cat([b[1] for b in data])
    dataset = torch.utils.data.TensorDataset(inputs, targets)
    shard = torch.utils.data.Subset(dataset, range(rank, len(dataset), world))
    loader = torch.utils.data.DataLoader(shard, batch_size=4)
    H = js.hessian(batch_loss, params, data=loader, distributed=True)
    assert H.num_samples == len(dataset), (H.num_samples, len(dataset))
    np.savez(out / f"rank{rank}.npz", **results(data[rank::world], True),
             loader=js.dense(H).numpy())
    if rank == 0:
        np.savez(out / "single.npz", **results(data, False))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
