"""``import jacspec`` works with NumPy/SciPy only and imports no framework."""

from __future__ import annotations

import subprocess
import sys


def test_import_jacspec_imports_no_framework():
    code = (
        "import sys, jacspec, numpy as np\n"
        "op = jacspec.aslinearoperator(np.eye(3))\n"
        "jacspec.dense(op - 2 * op)\n"
        "loaded = [m for m in ('torch', 'jax', 'tensorflow', 'matplotlib') if m in sys.modules]\n"
        "print(','.join(loaded))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_public_names():
    import jacspec as js

    for name in ["LinearOperator", "jacobian", "hessian", "aslinearoperator", "rowsum_diagonal",
                 "dense", "to_scipy", "svds", "eigsh", "spectral_norm", "frobenius_norm",
                 "trace", "slope", "conv", "penalties"]:
        assert hasattr(js, name), name
    for name in ["fantastic_four", "miyato", "circular_singular_values", "operator",
                 "spectral_norm", "layer_report"]:
        assert hasattr(js.conv, name), name
    for name in ["spectral", "frobenius", "gradient_norm", "conv_bound"]:
        assert hasattr(js.penalties, name), name
