"""jacspec makes no framework print a warning in normal use: the PyTorch and TensorFlow
tutorials (a ``tf.function`` training loop, a Keras ``train_step``) and the demo's code
path run under warnings-as-errors with TensorFlow's logger captured (AutoGraph reports
functions it cannot convert there), in a fresh process, so that jacspec's first call may
happen inside a trace. Each block runs on its own (its own namespace, from its own file:
AutoGraph converts only functions whose source it can read)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
PAGES = {"tensorflow": "docs/tutorials/tensorflow.md", "torch": "docs/tutorials/torch.md"}


@pytest.mark.slow
def test_tutorials_and_demo_run_quietly(autodiff_backend, tmp_path):
    if autodiff_backend not in PAGES:
        pytest.skip("checked for torch and tensorflow")
    pytest.importorskip("sklearn")
    blocks = _BLOCK.findall((ROOT / PAGES[autodiff_backend]).read_text())
    assert blocks
    # blocks with a tf.function first: they trace jacspec before any eager call has
    # imported its adapter
    order = sorted(range(len(blocks)), key=lambda i: "@tf.function" not in blocks[i])
    scripts = []
    for i in order:
        path = tmp_path / f"block_{i}.py"
        path.write_text(blocks[i])
        scripts.append(str(path))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "_quiet_run.py"), autodiff_backend, *scripts,
         "demo"],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=1800,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
