"""Smoke tests of the experiment scripts in docs/experiments (``--quick`` mode).

Each script must run and write its markdown table and its figure; the numbers are the
docs' business (full mode), so none is asserted here. torch runs every script, JAX the
two that take ``--backend jax``.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
pytest.importorskip("matplotlib")

EXPERIMENTS = Path(__file__).resolve().parents[1] / "docs" / "experiments"
#: script -> backends it runs on
SCRIPTS = {
    "exact_vs_bound": ("torch", "jax"),
    "slope_width": ("torch", "jax"),
    "gradreg_data_size": ("torch",),
    "fantastic_four": ("torch",),
    "cui_targets": ("torch",),
}


@pytest.fixture(scope="module")
def experiments_on_path():
    sys.path.insert(0, str(EXPERIMENTS))
    yield
    sys.path.remove(str(EXPERIMENTS))


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_quick_run_writes_table_and_figure(script, autodiff_backend, experiments_on_path,
                                           tmp_path):
    if autodiff_backend not in SCRIPTS[script]:
        pytest.skip(f"{script} runs on {', '.join(SCRIPTS[script])}")
    module = importlib.import_module(script)
    assert module.main(["--quick", "--backend", autodiff_backend, "--out", str(tmp_path)]) == 0
    name = f"{script}_{autodiff_backend}"
    table = (tmp_path / f"{name}.md").read_text(encoding="utf-8")
    assert "|---|" in table
    assert (tmp_path / f"{name}.png").stat().st_size > 0
