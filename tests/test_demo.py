"""Smoke tests of ``jacspec demo`` (quick mode): the table is printed, the plot saved."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytest.importorskip("sklearn")


def test_demo_quick_torch(autodiff_backend, tmp_path, capsys):
    if autodiff_backend != "torch":
        pytest.skip("the demo smoke test runs with torch (the default backend)")
    from jacspec import demo

    rc = demo.main(["--backend", "torch", "--quick", "--steps", "5", "--out", str(tmp_path),
                    "--no-progress"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "test acc" in out and "between q05/q50/q95" in out
    for name in ("plain", "spectral", "frobenius", "gradient_norm"):
        assert any(line.startswith(name) for line in out.splitlines()), name
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return
    assert (tmp_path / "jacspec_demo_torch.png").stat().st_size > 0


def test_demo_results_and_bad_backend(autodiff_backend):
    if autodiff_backend != "torch":
        pytest.skip("torch only")
    import io

    from jacspec import demo

    buf = io.StringIO()
    res = demo.run("torch", quick=True, steps=5, n_test=100, num_between=5, penalties={"spectral": 0.01},
                   plot=False, progress=False, stream=buf)
    assert [r.name for r in res] == ["plain", "spectral"]
    assert all(0.0 <= r.accuracy <= 1.0 and r.jac_max >= r.jac_mean > 0 for r in res)
    assert "spectral" in buf.getvalue()
    with pytest.raises(ValueError, match="backend"):
        demo.run("mxnet", plot=False)
    with pytest.raises(ValueError, match="penalty"):
        demo.run("torch", steps=1, penalties={"l2": 1.0}, plot=False, progress=False,
                 stream=buf)


def test_python_dash_m_help():
    out = subprocess.run([sys.executable, "-m", "jacspec.demo", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--backend" in out and "--quick" in out
