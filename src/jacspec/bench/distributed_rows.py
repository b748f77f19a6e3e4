"""Row "distributed" (torch): dataset products across processes, simulated with CPU
processes under torchrun (gloo). Each measurement runs in fresh processes
(:mod:`jacspec.bench.distributed_probe`) on one MLP and one dataset:

* ``one product, 2 processes / 1``: the time of one dataset Hessian product with the
  data split over two processes (each holding the whole model, ``distributed=True``)
  against one process holding all the data;
* ``one product, FSDP 2 processes / 1``: the same with the parameters sharded by FSDP2
  (finite differences of FSDP's gradients: two backward passes per vector);
* ``peak memory per process, sharded / replicated``: the peak resident set of a process
  (model, data, operator and products) with FSDP-sharded parameters against replicated
  ones.

On a machine with fewer cores than processes the times measure contention as much as
the distribution: the rows report, they set no target.
"""

from __future__ import annotations

from .registry import Row, register
from .timing import run_fresh

#: The MLP's hidden width and depth, the samples and the batches per process.
CASE = (1024, 12, 256, 2)
PROCESSES = 2


def _probe(mode: str, processes: int, case: tuple[int, ...]) -> dict:
    args = [mode, *map(str, case)]
    if mode == "single":
        return run_fresh("jacspec.bench.distributed_probe", args, timeout=900)
    return run_fresh("torch.distributed.run", ["--standalone", f"--nproc_per_node={processes}",
                                               "-m", "jacspec.bench.distributed_probe", *args],
                     timeout=900)


@register("distributed", "torch", quick=False)
def distributed_torch(quick: bool, *, case: tuple[int, ...] = CASE) -> list[Row]:
    """Times of one product and peak memory per process; ``case`` shrinks the problem
    (tests)."""
    width, depth, samples, batches = case
    one = _probe("single", 1, case)
    rep = _probe("replicated", PROCESSES, case)
    shard = _probe("sharded", PROCESSES, case)
    config = (f"MLP 64-{width}x{depth}-10 float32 ({one['n']:,} parameters), "
              f"{samples} samples, {batches} batches per process, {PROCESSES} CPU processes "
              "(torchrun, gloo)")
    details = dict(single=one, replicated=rep, sharded=shard)

    def row(name: str, mine: float, ref: float, unit: str, what: str) -> Row:
        fmt = (lambda x: f"{x * 1e3:.0f} ms") if unit == "s" else (lambda x: f"{x:.0f} MB")
        return dict(name=f"distributed: {name} (torch)", jacspec=fmt(mine), reference=fmt(ref),
                    ratio=mine / ref if ref else float("nan"), target="report", met=None,
                    configuration=f"{config}; {what}", details=details)

    return [
        row(f"one product, {PROCESSES} processes / 1", rep["product_s"], one["product_s"], "s",
            "median time of H @ v, data split over the processes vs all data in one"),
        row(f"one product, FSDP {PROCESSES} processes / 1", shard["product_s"],
            one["product_s"], "s", "parameters sharded by fully_shard (finite-difference "
            "products) vs one process with all data (double backward)"),
        row("peak memory per process, sharded / replicated", shard["peak_mb"], rep["peak_mb"],
            "MB", f"peak RSS from before the model is built, largest over the processes; "
            f"{shard['local_n']:,} of {shard['n']:,} vector entries per process when sharded"),
    ]
