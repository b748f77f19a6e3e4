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

EXPERIMENTS = Path(__file__).resolve().parents[2] / "docs" / "experiments"
# Every script (the helper modules start with an underscore); each lists its BACKENDS.
SCRIPTS = sorted(p.stem for p in EXPERIMENTS.glob("[a-z]*.py"))


@pytest.fixture(scope="module")
def experiments_on_path():
    sys.path.insert(0, str(EXPERIMENTS))
    yield
    sys.path.remove(str(EXPERIMENTS))


def test_every_experiment_is_found():
    assert len(SCRIPTS) >= 5, SCRIPTS


@pytest.mark.parametrize("script", SCRIPTS)
def test_quick_run_writes_table_and_figure(script, autodiff_backend, experiments_on_path,
                                           tmp_path):
    try:
        module = importlib.import_module(script)
    except ModuleNotFoundError as err:  # a torch-only script in another session
        if err.name == autodiff_backend:
            raise
        pytest.skip(f"{script} needs {err.name}")
    if autodiff_backend not in module.BACKENDS:
        pytest.skip(f"{script} runs on {', '.join(module.BACKENDS)}")
    assert module.main(["--quick", "--backend", autodiff_backend, "--out", str(tmp_path)]) == 0
    name = f"{script}_{autodiff_backend}"
    table = (tmp_path / f"{name}.md").read_text(encoding="utf-8")
    assert "|---|" in table
    assert (tmp_path / f"{name}.png").stat().st_size > 0
