"""Dataset operators on parameters sharded by torch FSDP2 (backends/_torch_distributed.py):
two processes under torchrun (gloo, CPU) against the single-process operators, and the
docs' runnable script as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


#: What torch 2.13 (FSDP2, gloo, CPU) prints when a process aborts at exit, after its
#: work: rare once the script frees the sharded model before destroying the group.
_EXIT_ABORT = "terminate called without an active exception"


def _torchrun(script: Path, *args: str, done: str | None = None) -> str:
    """stdout of ``script`` under torchrun with two processes. ``done``: the pattern of
    a line each process prints at the end of its work; a run that printed it twice and
    then aborted at exit (see ``_EXIT_ABORT``) runs once more."""
    # the timeout guards against a hang; on a 2-core machine shared by several busy
    # processes a normal run takes minutes
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    for _ in range(2):
        proc = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", "--standalone",
             "--nproc_per_node=2", str(script), *args],
            env=env, capture_output=True, text=True, timeout=1800, cwd=ROOT)
        finished = done is not None and len(re.findall(done, proc.stdout)) == 2
        if proc.returncode == 0 or not (finished and _EXIT_ABORT in proc.stderr):
            break
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_fsdp_two_processes_equal_one(tmp_path):
    pytest.importorskip("torch")
    _torchrun(ROOT / "tests" / "_distributed_torch_fsdp.py", str(tmp_path))
    out = np.load(tmp_path / "fsdp.npz")
    # finite differences of float64 gradients: ~1e-9 relative
    close = dict(rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(out["hv"], out["ref_hv"], **close)
    np.testing.assert_allclose(out["gv"], out["ref_gv"], **close)
    np.testing.assert_allclose(out["top_h"], out["ref_top_h"], **close)
    np.testing.assert_allclose(out["top_g"], out["ref_top_g"], **close)
    np.testing.assert_allclose(out["power"], out["ref_top_h"][:1], rtol=1e-6)
    np.testing.assert_allclose(out["hutch"], out["ref_hutch"], **close)
    np.testing.assert_allclose(out["hutchpp"], out["ref_hutchpp"], **close)
    np.testing.assert_allclose(out["moments"], out["ref_moments"], **close)
    # the eigenvectors the ranks hold, joined: orthonormal eigenvectors of the reference
    np.testing.assert_allclose(out["orthonormal"], np.eye(2), atol=1e-8)
    assert np.all(out["residual"] <= 1e-5 * abs(out["ref_top_h"][0]))


def _docs_script() -> str:
    text = (ROOT / "docs" / "distributed.md").read_text()
    block = re.search(r"Save this as `hessian_fsdp.py`.*?```python\n(.*?)```", text, re.S)
    assert block is not None
    return block.group(1)


@pytest.mark.slow
def test_docs_fsdp_script_runs_as_written(tmp_path):
    pytest.importorskip("torch")
    script = tmp_path / "hessian_fsdp.py"
    script.write_text(_docs_script())
    result = r"rank (\d): [^\n]*?top eigenvalues (\[[^\]]*\])"
    out = _torchrun(script, done=result)
    # the two processes share stdout: their lines may run together
    lines = sorted(re.findall(result, out))
    assert [rank for rank, _ in lines] == ["0", "1"], out
    assert lines[0][1] == lines[1][1], lines  # the same operator on both ranks
