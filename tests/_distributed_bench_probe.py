"""Run by tests/bench/test_distributed_rows.py under ``torchrun --nproc_per_node=2``
(gloo, CPU): the distributed rows' probe (:mod:`jacspec.bench.distributed_probe`) in
its three modes in one launch, where the bench starts fresh processes for each (for its
peak-memory reading; the test checks what is measured, not how much memory). Each
mode is the probe's own command line: ``replicated`` and ``sharded`` on both ranks, in
one process group set up here (the probe uses a group it finds), then ``single`` on
rank 0 alone. Rank 0 prints one JSON line per mode, in that order.

    torchrun --standalone --nproc_per_node=2 tests/_distributed_bench_probe.py WIDTH DEPTH SAMPLES BATCHES
"""

from __future__ import annotations

import os
import sys

import torch.distributed as dist

from jacspec.bench import distributed_probe


def main(case: list[str]) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    distributed_probe.main(["replicated", *case])
    distributed_probe.main(["sharded", *case])
    dist.destroy_process_group()
    if rank == 0:
        distributed_probe.main(["single", *case])


if __name__ == "__main__":
    main(sys.argv[1:5])
    # Everything is checked and written: leave without the interpreter's teardown, in
    # which a C++ thread of the FSDP/gloo stack sometimes aborts the process
    # ("terminate called without an active exception") after the group is destroyed.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
