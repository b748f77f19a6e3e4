"""Run by tests/test_datasets.py under ``torchrun --nproc_per_node=2`` (gloo, CPU).

A small transformer (embedding, one encoder layer, a linear head; float64) is sharded
over the two processes with FSDP2's ``fully_shard``; each rank holds every other batch
of one dataset (as many batches on each rank, of uneven sizes). The distributed dataset
Hessian and GGN (finite-difference routes) are compared on rank 0 with the
single-process operators of the whole dataset (autodiff, the unsharded copy of the
model): products with one vector, the top eigenvalues, trace estimates (Hutchinson and
Hutch++) and a spectral density's moments, the last two against the same estimators
evaluated with the dense reference on the probes the processes drew (each process draws
its own part of a probe). Every Krylov vector a process holds has the size of its
shards, and the model's parameters and ``.grad`` are as they were. Writes
``fsdp.npz`` (rank 0) into the directory given as the first argument.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import distribute_tensor

import jacspec as js
from jacspec.solvers.problem import Problem


class TinyTransformer(torch.nn.Module):
    def __init__(self, vocab: int = 7, width: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, width)
        self.block = torch.nn.TransformerEncoderLayer(width, nhead=2, dim_feedforward=8,
                                                      dropout=0.0, batch_first=True)
        self.head = torch.nn.Linear(width, classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(self.embed(tokens)).mean(dim=1))


def main(out: Path) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = TinyTransformer().double()
    reference = copy.deepcopy(model)
    mesh = init_device_mesh("cpu", (world,))
    fully_shard(model.block, mesh=mesh)
    fully_shard(model, mesh=mesh)

    gen = torch.Generator().manual_seed(1)
    sizes = [5, 8, 3, 6]  # uneven batches; two per rank
    data = [(torch.randint(0, 7, (s, 5), generator=gen), torch.randint(0, 3, (s,), generator=gen))
            for s in sizes]
    shard = data[rank::world]
    loss = torch.nn.functional.cross_entropy

    def batch_loss(p, batch):  # FSDP's model is called as it is (p: its DTensors)
        return loss(model(batch[0]), batch[1])

    def apply(p, tokens):
        return model(tokens)

    params = dict(model.named_parameters())
    locals_before = {k: v.to_local().clone() for k, v in params.items()}
    grad_before = torch.ones_like(params["head.weight"])
    params["head.weight"].grad = grad_before

    H = js.hessian(batch_loss, params, data=shard, distributed=True)
    G = js.ggn(apply, loss, params, data=shard, distributed=True)
    local_n = H.sharding.local_n
    _expect(NotImplementedError, "autodiff", lambda: js.hessian(
        batch_loss, params, data=shard, distributed=True, hvp="autodiff"))
    _expect(ValueError, "same number of batches", lambda: js.hessian(
        batch_loss, params, data=shard[:rank + 1], distributed=True))
    _expect(ValueError, "sharded", lambda: js.dense(H))
    _expect(ValueError, "distributed=True", lambda: js.hessian(batch_loss, params, data=shard))
    assert local_n < H.shape[0] and G.sharding.local_n == local_n

    # where each of this rank's entries sits in the flat vector of all parameters
    index, offset = [], 0
    for p in params.values():
        full = torch.arange(p.numel(), dtype=torch.float64).reshape(p.shape) + offset
        index.append(distribute_tensor(full, p.device_mesh, p.placements).to_local().reshape(-1))
        offset += p.numel()
    index = torch.cat(index).long()
    assert index.numel() == local_n

    v = torch.randn(H.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    hv, gv = H @ v[index], G @ v[index]
    top_h = js.eigsh(H, k=2, which="LA", tol=1e-6, return_vectors=True)
    top_g = js.eigsh(G, k=2, which="LA", tol=1e-6)
    assert tuple(top_h.vectors.shape) == (local_n, 2), top_h.vectors.shape
    power = js.eigsh(H, k=1, method="power", tol=1e-4, maxiter=40).values
    hutch = js.trace(H, num_probes=4, method="hutchinson", seed=3)
    hutchpp = js.trace(H, num_probes=7, seed=4)
    density = js.spectral_density(H, num_probes=2, num_steps=6, seed=5)

    # the probes each rank drew, as the solvers draw them
    def drawn(seed, cols, draw):
        return Problem.of(H, seed=seed).random((1, local_n, cols), draw)[0]

    probes = dict(hutch=drawn(3, 4, 1), sketch=drawn(4, 2, 1), rest=drawn(4, 3, 2),
                  density=drawn(5, 2, 1))
    for k, p in params.items():
        assert torch.equal(p.to_local(), locals_before[k]), k
    assert params["head.weight"].grad is grad_before
    assert all(p.grad is None for k, p in params.items() if k != "head.weight")

    gathered = [None] * world if rank == 0 else None
    mine = dict(index=index, hv=hv, gv=gv, x=top_h.vectors, **probes)
    dist.gather_object({k: t.numpy() for k, t in mine.items()}, gathered, dst=0)
    results = dict(top_h=top_h.values.numpy(), top_g=top_g.values.numpy(),
                   power=power.numpy(), hutch=hutch.numpy(), hutchpp=hutchpp.numpy(),
                   moments=np.array([float(density.moment(q)) for q in (1, 2, 3)]))
    everyone = [None] * world
    dist.all_gather_object(everyone, results)
    for other in everyone:  # the same results on every rank
        for k in results:
            np.testing.assert_array_equal(other[k], results[k], err_msg=k)
    if rank == 0:
        np.savez(out / "fsdp.npz", **results, **_reference(reference, data, gathered, v))
    dist.barrier()
    dist.destroy_process_group()


def _expect(kind, text, run) -> None:
    try:
        run()
    except kind as err:
        assert text in str(err), err
    else:
        raise AssertionError(f"expected {kind.__name__}")


def _reference(model, data, gathered, v) -> dict:
    """The single-process operators of the whole data, and the estimators evaluated on
    the probes the ranks drew (assembled into whole vectors here, for the test only)."""
    loss = torch.nn.functional.cross_entropy
    params = dict(model.named_parameters())

    def apply(p, tokens):
        return torch.func.functional_call(model, p, (tokens,))

    H = js.hessian(lambda p, b: loss(apply(p, b[0]), b[1]), params, data=data)
    G = js.ggn(apply, loss, params, data=data)
    Hd, Gd = js.dense(H).numpy(), js.dense(G).numpy()
    n = Hd.shape[0]

    def whole(key):
        out = np.zeros((n,) + gathered[0][key].shape[1:])
        for part in gathered:
            out[part["index"]] = part[key]
        return out

    sign = np.sign
    Z = sign(whole("hutch"))
    S, R = sign(whole("sketch")), sign(whole("rest"))
    Q = np.linalg.qr(Hd @ S)[0]
    R = R - Q @ (Q.T @ R)
    Pd = np.linalg.qr(whole("density"))[0]
    X = whole("x")
    return dict(
        ref_hv=Hd @ v.numpy(), ref_gv=Gd @ v.numpy(), hv=whole("hv"), gv=whole("gv"),
        ref_top_h=np.linalg.eigvalsh(Hd)[::-1][:2], ref_top_g=np.linalg.eigvalsh(Gd)[::-1][:2],
        ref_hutch=np.trace(Z.T @ Hd @ Z) / Z.shape[1],
        ref_hutchpp=np.trace(Q.T @ Hd @ Q) + np.trace(R.T @ Hd @ R) / R.shape[1],
        ref_moments=np.array([np.mean(np.einsum("ij,ij->j", Pd, np.linalg.matrix_power(Hd, q) @ Pd))
                              for q in (1, 2, 3)]),
        residual=np.linalg.norm(Hd @ X - X * np.linalg.eigvalsh(Hd)[::-1][:2], axis=0),
        orthonormal=X.T @ X,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
    # Everything is checked and written: leave without the interpreter's teardown, in
    # which a C++ thread of the FSDP/gloo stack sometimes aborts the process
    # ("terminate called without an active exception") after the group is destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
