"""The transformer rows on a tiny decoder: their products equal dense references, and
each row carries its measurements (no timing is asserted)."""

from __future__ import annotations

import numpy as np
import pytest

TINY = (16, 8, 1, 2, 4, 2)  # vocabulary, width, layers, heads, context, batch


def _check_rows(rows, backend, quick=False):
    names = [r["name"] for r in rows]
    products = ("HVP", "GGN") if quick else ("HVP", "GGN", "JVP", "VJP")
    assert names[:len(products)] == [f"transformer: {p}/forward+backward ({backend})"
                                      for p in products]
    for r in rows:
        assert r["ratio"] > 0, r
    if quick:  # the target rows only
        assert len(rows) == len(products)
        return
    fd = rows[-1]
    assert fd["name"].startswith("transformer: finite-difference")
    assert fd["details"]["relative_error"] < 1e-2


def _only(backend, name):
    if backend != name:
        pytest.skip(f"run in the {name} session")


@pytest.mark.slow
# the dense references (torch.func.jacrev over the fused kernel, torch.func.hessian's
# forward mode) raise torch's own notices, not jacspec's
@pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")
@pytest.mark.filterwarnings("ignore:.*torch.jit.script.* is deprecated:DeprecationWarning")
def test_torch_rows_and_their_products(autodiff_backend):
    _only(autodiff_backend, "torch")
    import torch

    import jacspec as js
    from jacspec.bench import transformer_rows as tr

    c = tr._torch_case(TINY)
    products = tr._torch_products(js, torch, c)
    names, values = list(c["params"]), list(c["params"].values())
    tokens, targets = c["data"][0]

    def flat_logits(theta):
        ps = [t.reshape(p.shape) for t, p in zip(theta.split([p.numel() for p in values]),
                                                   values)]
        return c["logits"](dict(zip(names, ps)), tokens)

    theta = torch.cat([p.reshape(-1) for p in values]).double()
    c["model"].double()
    J = torch.func.jacrev(flat_logits)(theta).reshape(-1, theta.numel())
    z = flat_logits(theta)
    Hz = torch.func.hessian(lambda o: torch.nn.functional.cross_entropy(
        o.reshape(z.shape), targets))(z.reshape(-1)).reshape(z.numel(), z.numel())
    c["model"].float()
    G = js.ggn(c["logits"], torch.nn.functional.cross_entropy, c["params"],
               data=c["data"][:1])
    np.testing.assert_allclose(js.dense(G).double().numpy(), (J.T @ Hz @ J).numpy(),
                               rtol=1e-3, atol=1e-5)
    for fn in products.values():  # every timed product runs
        fn()
    _check_rows(tr.transformer_torch(False, size=TINY), "torch")
    _check_rows(tr.transformer_torch(True, size=TINY), "torch", quick=True)


@pytest.mark.slow
def test_jax_rows_and_memory_rows(autodiff_backend):
    _only(autodiff_backend, "jax")
    from jacspec.bench import transformer_rows as tr

    _check_rows(tr.transformer_jax(False, size=TINY), "jax")
    rows = tr.transformer_memory_jax(False, size=TINY)
    assert len(rows) == 6
    assert all(r["details"]["step"] > 0 for r in rows)


def test_peers_row_skips_without_curvlinops(autodiff_backend):
    _only(autodiff_backend, "torch")
    from jacspec.bench import transformer_rows as tr

    try:
        import curvlinops  # noqa: F401
    except ImportError:
        assert "skipped" in tr.transformer_peers_torch(True, size=TINY)[0]


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:.*torch.jit.script.* is deprecated:DeprecationWarning")
def test_torch_memory_measurements_in_turn(autodiff_backend):
    _only(autodiff_backend, "torch")
    from jacspec.bench import transformer_rows as tr

    # --quick measures the targets' modes only
    assert tr.memory_modes(True) == ("step", "HVP", "GGN", "HVP_dataset", "GGN_dataset")
    assert tr.memory_modes(False) == tr.MEMORY_MODES
    mb = tr._torch_memory(list(tr.MEMORY_MODES), TINY, TINY)
    assert set(mb) == set(tr.MEMORY_MODES)
    assert all(isinstance(v, float) for v in mb.values())
    rows = tr._memory_rows("torch", {**mb, "step": 1.0, "HVP": 1.0, "GGN": 1.0}, "MB", "")
    assert len(rows) == 6 and all(r["ratio"] is not None for r in rows)
