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


def test_info_says_gpu_or_not_without_imports():
    """The plain ``info`` answers the GPU question from the driver and the packages'
    metadata (no framework imported: see test_info_imports_no_framework)."""
    out = cli.info()
    assert any(line.startswith(("GPU:", "no GPU")) for line in out.splitlines())
    for line in out.splitlines():
        if line.startswith(("torch", "jax", "tensorflow")) and "not installed" not in line:
            assert "build" in line or "plugin" in line, line


BAD_DEMO_OPTIONS = [
    (["--steps", "-1"], "--steps"),
    (["--steps", "0"], "--steps"),
    (["--n-train", "0"], "--n-train"),
    (["--n-train", "1797"], "--n-train"),
    (["--seed", "-5"], "--seed"),
    (["--out", __file__], "--out"),
]


@pytest.mark.parametrize("argv, option", BAD_DEMO_OPTIONS)
def test_demo_rejects_bad_options_before_training(argv, option, capsys, monkeypatch):
    from jacspec import demo

    def no_training(*a, **k):  # pragma: no cover - reached only if the check is missing
        raise AssertionError("the demo ran")

    monkeypatch.setattr(demo, "run_args", no_training)
    for main in (cli.main, demo.main):
        with pytest.raises(SystemExit) as exc:
            main((["demo"] if main is cli.main else []) + ["--backend", "torch"] + argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert f"error: argument {option}: Expected" in err, err


def test_demo_run_checks_its_options_first():
    from jacspec import demo

    with pytest.raises(ValueError, match="n_train"):
        demo.run("torch", n_train=1797)
    with pytest.raises(ValueError, match="steps"):
        demo.run("torch", steps=-1)


def test_demo_out_may_be_a_new_folder_or_nothing_with_no_plot(tmp_path):
    from jacspec import demo

    demo.check_options(steps=1, n_train=10, seed=0, out=str(tmp_path / "a" / "b"), plot=True)
    demo.check_options(steps=1, n_train=10, seed=0, out=__file__, plot=False)


@pytest.mark.parametrize("where", ["missing folder", "a folder"])
def test_bench_json_is_checked_before_the_run(where, tmp_path, capsys):
    path = tmp_path / "missing" / "x.json" if where == "missing folder" else tmp_path
    with pytest.raises(SystemExit) as exc:
        cli.main(["bench", "--quick", "--json", str(path)])
    assert exc.value.code == 2
    assert "error: argument --json" in capsys.readouterr().err
