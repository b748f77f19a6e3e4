"""The ARPACK rows compare what they claim: both sides' values against the dense
Hessian's, product counts as taken (torch)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("sklearn")


def test_arpack_rows_count_and_check_accuracy():
    from jacspec.bench import arpack_rows

    rows = arpack_rows.arpack_products_torch(True, hidden=4)
    assert [r["details"]["k"] for r in rows] == list(arpack_rows.KS)
    for r in rows:
        d = r["details"]
        assert d["jacspec_err"] < 1e-10 and d["peer_err"] < 1e-10
        assert r["ratio"] == d["jacspec_products"] / d["peer_products"]
        assert d["peer_products"] >= 20  # ARPACK's first basis: ncv = 20
        # medians over the seeded starts, as counted
        assert len(d["jacspec_counts"]) == len(d["peer_counts"]) == arpack_rows.STARTS
        assert d["peer_products"] == int(np.median(d["peer_counts"]))
        assert d["jacspec_products"] == int(np.median(d["jacspec_counts"]))
