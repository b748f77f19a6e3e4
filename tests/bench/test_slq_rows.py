"""The density peer rows run (or say why not) on tiny sizes (torch)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")


def test_slq_rows_run_or_skip():
    from jacspec.bench import slq_rows

    rows = (slq_rows.density_numpy_vs_curvlinops(True, n=70)
            + slq_rows.density_torch_vs_pyhessian(True, hidden=2))
    assert len(rows) == 2
    for r in rows:
        assert "skipped" in r or (r["ratio"] > 0 and r["met"] == (r["ratio"] <= 1))
