"""The ``jacspec`` command line: info, argument handling."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jacspec import cli


def test_info_lists_every_backend(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for name in ("numpy", "torch", "jax", "tensorflow"):
        assert any(line.startswith(name) for line in out.splitlines()), name
    assert "jacspec" in out.splitlines()[0]


def test_info_reports_installed_versions(backend, capsys):
    if backend == "numpy":
        import numpy as mod
    else:
        mod = pytest.importorskip(backend)
    cli.main(["info"])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(backend))
    assert mod.__version__ in line
    assert "GPU" in line  # "[GPU]" or "[no GPU]"


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "jacspec", "info"], capture_output=True,
                         text=True, check=True).stdout
    assert "numpy" in out


def test_unknown_command_and_backend_are_rejected(capsys):
    with pytest.raises(SystemExit):
        cli.main(["frobnicate"])
    with pytest.raises(SystemExit):
        cli.main(["demo", "--backend", "mxnet"])
    assert "invalid choice" in capsys.readouterr().err
