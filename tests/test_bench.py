"""``jacspec bench`` plumbing: table/JSON formatting and one cheap real row.

No timed assertions: only structure, finiteness and that ratios are computed.
"""

from __future__ import annotations

import json

import pytest

from jacspec import bench
from jacspec.bench import rows as R

FAKE = [
    dict(name="overhead: lanczos (torch)", jacspec="12.0 ms", reference="10.0 ms",
         ratio=1.2, target="<= 1.10", met=False, configuration="fake", details={}),
    dict(name="conv: conv0", jacspec="bound 1.0", reference="exact 0.5", ratio=None,
         target="report", met=None, details={"x": float("inf")}),
]


def test_format_table():
    text = bench.format_table(FAKE)
    lines = text.splitlines()
    assert lines[0].split("|")[1].strip() == "row"
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "row", "jacspec", "reference", "ratio", "target", "met"]
    assert len(lines) == 2 + len(FAKE)
    assert "NO" in lines[2] and "1.2" in lines[2]
    assert lines[3].rstrip().endswith("| -   |") or "| - " in lines[3]
    assert len({len(line) for line in lines}) == 1  # aligned columns


def test_write_json(tmp_path):
    path = tmp_path / "b.json"
    bench.write_json(str(path), {"backend": "torch"}, FAKE, 1.5)
    data = json.loads(path.read_text())
    assert data["configuration"]["backend"] == "torch"
    assert data["rows"][0]["ratio"] == 1.2
    assert data["rows"][1]["details"]["x"] == "inf"


def test_unknown_backend():
    assert bench.main(backend="numpy", quick=True) == 2


def test_median_time():
    calls = []
    t = R.median_time(lambda: calls.append(1), 3)
    assert len(calls) == 4 and t >= 0


def test_one_real_row(tmp_path, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    path = tmp_path / "b.json"
    assert bench.main(backend="torch", quick=True, json_path=str(path),
                      only=["lanczos"]) == 0
    out = capsys.readouterr().out
    assert "configuration" in out and "lanczos/power products" in out
    # progress as whole lines in a log: what starts, then what is done
    assert "jacspec bench: 0/1 group (0%), 0 s lanczos (torch)\n" in out
    assert "jacspec bench: 1/1 group (100%)" in out and "\r" not in out
    rows = json.loads(path.read_text())["rows"]
    assert len(rows) == 1
    d = rows[0]["details"]
    # per-sample product counts (None: not reached within the cap)
    assert all(n is None or n >= 1 for n in d["lanczos"] + d["power"])
    assert len(d["lanczos"]) == len(d["power"]) >= 2
    assert rows[0]["ratio"] > 0


def test_dataset_rows_small():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from jacspec.bench import rows_data

    rows = rows_data.dataset_peers_torch(True, sizes=[64, 8, 10], nsamples=300)
    ran = [r for r in rows if "skipped" not in r]
    for r in ran:
        d = r["details"]
        assert r["ratio"] > 0 and d["jacspec_products"] >= 1
        assert d["jacspec_err"] <= rows_data.ERR  # jacspec reaches the required accuracy
        assert "300 samples" in r["configuration"]
    mem = rows_data.dataset_memory_torch(True, shape=(64, 64, 2))
    assert {r["name"] for r in mem} == {"dataset memory: product/forward+backward (torch)",
                                        "dataset memory: product/one-batch HVP (torch)"}
    assert all(r["details"]["dataset"] >= 0 for r in mem)
    (dens,) = rows_data.dataset_density_torch(True, sizes=[64, 8, 10], nsamples=300)
    assert dens["ratio"] > 0 and dens["details"]["hvp_s"] > 0
