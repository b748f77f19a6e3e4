"""``jacspec bench`` plumbing: table/JSON formatting and one cheap real row.

No timed assertions: only structure, finiteness and that ratios are computed.
"""

from __future__ import annotations

import json

import pytest

from jacspec import bench
from jacspec.bench import registry, timing

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
    t = timing.median_time(lambda: calls.append(1), 3)
    assert len(calls) == 4 and t >= 0


def test_interleaved_times_rotate():
    """Every side runs once per round, the first round a warm-up, the order rotating."""
    calls = []
    t = timing.interleaved_times({k: (lambda k=k: calls.append(k)) for k in "abc"}, 2)
    assert set(t) == {"a", "b", "c"} and all(v >= 0 for v in t.values())
    assert calls == list("abc") + list("bca") + list("cab")


def test_registry_lists_every_group():
    """The registry finds every ``*_rows`` module; --quick keeps every group with a
    target but "dataset" (its kind of target, faster than the peers at equal accuracy,
    stays in --quick through "peers")."""
    for backend in registry.BACKENDS:
        full = registry.groups(backend, quick=False)
        quick = registry.groups(backend, quick=True)
        assert {g.backend for g in full} == {backend}
        assert set(quick) <= set(full)
        rank = [registry.ORDER.index(g.name) if g.name in registry.ORDER else 99
                for g in full]
        assert rank == sorted(rank)
        dropped = {g.name for g in full if g.target and g not in quick}
        assert dropped <= {"dataset"}, dropped
    torch_groups = {g.name for g in registry.groups("torch", quick=False)}
    assert torch_groups >= {"overhead", "lanczos", "batched", "auto", "dense", "penalty",
                            "peers", "conv", "memory", "dataset", "dataset-memory",
                            "density", "scaling", "arpack", "slq"}
    assert [g.name for g in registry.groups("torch", False, only=["auto"])] == ["auto"]
    with pytest.raises(ValueError, match="Expected backend"):
        registry.register("x", "numpy")


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, from ``/proc/PID/stat``."""
    import os

    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_busy_process_spins_only_when_on():
    """The busy process takes CPU time while on, none while off, and ends with the
    block."""
    import os
    import time

    if not os.path.exists("/proc/self/stat"):
        pytest.skip("reads /proc")
    with timing.BusyProcess() as busy:
        pid = busy._proc.pid
        t0 = time.perf_counter()
        while _cpu_seconds(pid) < 0.05:  # spinning (on a loaded machine, slowly)
            assert time.perf_counter() - t0 < 30
            time.sleep(0.05)
        busy.off()
        time.sleep(0.1)
        c0 = _cpu_seconds(pid)
        time.sleep(0.5)
        assert _cpu_seconds(pid) - c0 < 0.02  # stopped
    assert busy._proc.poll() is not None  # ended


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


@pytest.mark.slow
def test_dataset_rows_small():
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from jacspec.bench import dataset_rows as rows_data

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
    # over a training step the row reports; the target is against one batch's HVP
    assert [(r["target"], r["met"] is None) for r in mem] == [("report", True), ("<= 1.2", False)]
    (dens,) = rows_data.dataset_density_torch(True, sizes=[64, 8, 10], nsamples=300)
    assert dens["ratio"] > 0 and dens["details"]["hvp_s"] > 0


def _tiny_scaling(batches=(2, 3)):
    from jacspec.bench import scaling_rows

    return scaling_rows, scaling_rows.Sizes(widths=(2, 4), batches=batches, base=(2, 2),
                                            eig=(2, 3), eig_products=6, sigma=(2, 3),
                                            reps=1)


def _check_scaling(rows, backend, batches=(2, 3)):
    names = [r["name"] for r in rows]
    series = ["width series"] + (["batch series"] if len(batches) > 1 else [])
    assert names == [f"scaling: {k} ({backend})" for k in (
        "JVP/fwd+bwd", "VJP/fwd+bwd", "HVP/fwd+bwd", "top Hessian eigenvalue",
        "per-sample sigma_max", *series)]
    assert all(r["ratio"] > 0 for r in rows)
    eig, sigma = rows[3]["details"], rows[4]["details"]
    # Extreme Ritz values of the same Hessian after the same products; not the same
    # Krylov space (js.eigsh adds a random direction to a warm start), so close, not equal
    assert 0.5 <= abs(eig["jacspec_value"]) / abs(eig["native_value"]) <= 2
    assert eig["products"] >= 1 and sigma["max_rel_diff"] < 1e-3
    for r, axis, xs in zip(rows[5:], ("width", "batch"), ([2, 4], list(batches))):
        pts = r["details"]["points"]
        assert r["details"]["axis"] == axis and [p[axis] for p in pts] == xs
        assert all(p["fwd_bwd_s"] > 0 and p["hvp_s"] > 0 and p["hvp_mb"] > 0 for p in pts)
        assert pts[0]["params"] < pts[-1]["params"] or axis == "batch"


@pytest.mark.filterwarnings("ignore:Lanczos stopped")  # 6 products: a tiny, timed budget
def test_scaling_rows_small_torch():
    torch = pytest.importorskip("torch")
    rows_scaling, tiny = _tiny_scaling()
    threads = torch.get_num_threads()
    rows = rows_scaling.scaling_torch(True, config=tiny)
    assert torch.get_num_threads() == threads  # restored
    _check_scaling(rows, "torch")


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Lanczos stopped")
def test_scaling_rows_small_jax():
    pytest.importorskip("jax")
    # two points (JAX compiles each): a batch series of one point is no row
    rows_scaling, tiny = _tiny_scaling(batches=(2,))
    _check_scaling(rows_scaling.scaling_jax(True, config=tiny), "jax", batches=(2,))


def test_resnet_torch_and_jax_agree():
    """The two ResNet-18s are one network: torch's weights in the JAX pytree give the
    same logits."""
    torch = pytest.importorskip("torch")
    jax = pytest.importorskip("jax")
    import numpy as np

    jnp = jax.numpy
    from jacspec.bench.models_jax import resnet18_apply, resnet18_init
    from jacspec.bench.models_torch import ResNet18

    torch.manual_seed(0)
    net = ResNet18(width=2).eval()
    sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}

    def conv(k):
        return jnp.asarray(np.transpose(sd[k], (2, 3, 1, 0)))

    def bn(k):
        return {"scale": jnp.asarray(sd[k + ".weight"]), "bias": jnp.asarray(sd[k + ".bias"])}

    blocks = []
    for i in range(8):
        pre = f"layers.{i}."
        blk = {"conv1": conv(pre + "conv1.weight"), "bn1": bn(pre + "bn1"),
               "conv2": conv(pre + "conv2.weight"), "bn2": bn(pre + "bn2")}
        if pre + "shortcut.0.weight" in sd:
            blk["short"], blk["short_bn"] = conv(pre + "shortcut.0.weight"), bn(
                pre + "shortcut.1")
        blocks.append(blk)
    params = {"conv1": conv("conv1.weight"), "bn1": bn("bn1"), "blocks": blocks,
              "fc": {"w": jnp.asarray(sd["fc.weight"].T), "b": jnp.asarray(sd["fc.bias"])}}
    ref = resnet18_init(0, width=2)
    assert [np.shape(a) for a in jax.tree_util.tree_leaves(params)] == [
        np.shape(a) for a in jax.tree_util.tree_leaves(ref)]
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    with torch.no_grad():
        want = net(torch.as_tensor(x)).numpy()
    got = np.asarray(jax.jit(resnet18_apply)(params, jnp.asarray(np.transpose(x, (0, 2, 3, 1)))))
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_scaling_plot(tmp_path):
    pytest.importorskip("matplotlib")
    from jacspec.bench import scaling_plot

    def point(w, b):
        return dict(width=w, batch=b, params=100 * w * w, fwd_bwd_s=1e-3 * w * b,
                    hvp_s=3e-3 * w * b, fwd_bwd_mb=0.1 * w * b, hvp_mb=0.3 * w * b)

    rows = [dict(name=f"scaling: {axis} series ({be})", group="scaling", backend=be,
                 details=dict(axis=axis, points=[point(w, b) for w, b in pts]))
            for be in ("torch", "jax")
            for axis, pts in (("width", [(2, 4), (4, 4)]), ("batch", [(2, 4), (2, 8)]))]
    path = tmp_path / "b.json"
    bench.write_json(str(path), {}, rows + [dict(name="other", group="peers")], 1.0)
    png = tmp_path / "s.png"
    assert scaling_plot.main([str(path), "-o", str(png)]) == 0
    assert png.stat().st_size > 1000
    table = scaling_plot.markdown_table(scaling_plot.series_rows([json.loads(path.read_text())]))
    assert len(table.splitlines()) == 2 + 8 and "| jax | batch | 2 | 8 | 400 |" in table
