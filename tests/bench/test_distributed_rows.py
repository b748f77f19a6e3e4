"""The distributed bench rows run end to end on a tiny case (fresh processes under
torchrun), and their measurements are of the problem they name."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch")


@pytest.mark.slow
def test_distributed_rows_tiny():
    from jacspec.bench import distributed_rows as D

    rows = D.distributed_torch(True, case=(16, 1, 64, 2))
    assert [r["name"] for r in rows] == [
        "distributed: one product, 2 processes / 1 (torch)",
        "distributed: one product, FSDP 2 processes / 1 (torch)",
        "distributed: peak memory per process, sharded / replicated (torch)"]
    d = rows[0]["details"]
    n = 64 * 16 + 16 + 16 * 10 + 10
    assert d["single"]["n"] == d["replicated"]["n"] == d["sharded"]["n"] == n
    assert d["replicated"]["local_n"] == n and d["sharded"]["local_n"] < n
    assert d["replicated"]["processes"] == d["sharded"]["processes"] == 2
    assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in rows[:2])
