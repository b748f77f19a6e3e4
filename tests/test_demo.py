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


def test_demo_runs_on_its_threads_and_restores_them(autodiff_backend, monkeypatch):
    """The torch demo trains and evaluates on its own intra-op thread count and gives
    the caller's setting back afterwards (also when a run fails)."""
    if autodiff_backend != "torch":
        pytest.skip("torch only")
    import io

    import torch

    from jacspec import demo
    from jacspec._demo import _torch

    seen = []
    fit = _torch.Trainer.fit

    def spy(self, *a, **k):
        seen.append(torch.get_num_threads())
        return fit(self, *a, **k)

    monkeypatch.setattr(_torch.Trainer, "fit", spy)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        demo.run("torch", quick=True, steps=2, n_test=20, num_between=2, penalties={},
                 plot=False, progress=False, stream=io.StringIO())
        assert seen == [_torch.THREADS] and torch.get_num_threads() == 2

        def boom(self, *a, **k):
            raise RuntimeError("boom")

        monkeypatch.setattr(_torch.Trainer, "fit", boom)
        with pytest.raises(RuntimeError, match="boom"):
            demo.run("torch", quick=True, steps=2, penalties={}, plot=False,
                     progress=False, stream=io.StringIO())
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_python_dash_m_help():
    out = subprocess.run([sys.executable, "-m", "jacspec.demo", "--help"],
                         capture_output=True, text=True, check=True).stdout
    assert "--backend" in out and "--quick" in out
