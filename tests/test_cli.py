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
    cli.main(["info", "--devices"])
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith(backend))
    assert mod.__version__ in line and "GPU" in line  # "[GPU]" or "[no GPU]"


def test_info_imports_no_framework():
    """Versions come from package metadata: the answer does not wait for imports."""
    code = ("import sys; from jacspec import cli; cli.main(['info']); "
            "print(sorted(m for m in ('torch', 'jax', 'tensorflow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.splitlines()[-1] == "[]"


def test_info_suggests_the_pinned_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "torch" else real(name, *a))
    line = next(ln for ln in cli.info().splitlines() if ln.startswith("torch"))
    assert "not installed" in line
    assert "-r backends/torch/requirements.txt" in line and "jacspec[torch]" not in line


def test_demo_help_documents_every_option():
    from jacspec import demo

    parser = demo.build_parser()
    for action in parser._actions:
        if action.option_strings and action.dest != "help":
            assert action.help and "default" in action.help, action.option_strings


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
