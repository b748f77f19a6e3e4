"""The distributed bench rows run end to end on a tiny case, and their measurements are
of the problem they name.

The probe runs under torchrun in its three modes (one launch: the launches, not the
tiny products, are what costs); the rows are then built from its output, and the
commands the rows start the probe with are checked as they are.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[2]
CASE = (16, 1, 64, 2)


def _probe_all_modes() -> dict[str, dict]:
    # the timeout guards against a hang; on a 2-core machine shared by several busy
    # processes a normal run takes minutes
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "_distributed_bench_probe.py"), *map(str, CASE)],
        env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [d["mode"] for d in lines] == ["replicated", "sharded", "single"], proc.stdout
    return {d["mode"]: d for d in lines}


@pytest.mark.slow
def test_distributed_rows_tiny(monkeypatch):
    from jacspec.bench import distributed_rows as D

    measured = _probe_all_modes()
    asked = []

    def probe(mode, processes, case):
        asked.append((mode, processes, case))
        return measured[mode]

    monkeypatch.setattr(D, "_probe", probe)
    rows = D.distributed_torch(True, case=CASE)
    assert sorted(asked) == sorted((m, p, CASE) for m, p in
                                   (("single", 1), ("replicated", 2), ("sharded", 2)))
    assert [r["name"] for r in rows] == [
        "distributed: one product, 2 processes / 1 (torch)",
        "distributed: one product, FSDP 2 processes / 1 (torch)",
        "distributed: peak memory per process, sharded / replicated (torch)"]
    d = rows[0]["details"]
    n = 64 * 16 + 16 + 16 * 10 + 10
    assert d["single"]["n"] == d["replicated"]["n"] == d["sharded"]["n"] == n
    assert d["replicated"]["local_n"] == n and d["sharded"]["local_n"] < n
    assert d["replicated"]["processes"] == d["sharded"]["processes"] == 2
    assert d["single"]["processes"] == 1
    assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in rows[:2])


def test_rows_start_the_probe_fresh(monkeypatch):
    """Each mode in fresh processes: ``single`` as a module, the others under torchrun."""
    from jacspec.bench import distributed_rows as D

    started = []
    monkeypatch.setattr(D, "run_fresh", lambda module, args, timeout: started.append(
        (module, list(args))) or {})
    D._probe("single", 1, CASE)
    D._probe("sharded", 2, CASE)
    case = [str(c) for c in CASE]
    assert started == [
        ("jacspec.bench.distributed_probe", ["single", *case]),
        ("torch.distributed.run", ["--standalone", "--nproc_per_node=2", "-m",
                                   "jacspec.bench.distributed_probe", "sharded", *case])]
