"""Tests of ``js.slope``: dense cross-checks, the 1/c rescaling property, points between
data, chunking, the summary statistics, plotting, and bad input."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js
from _helpers import backend_of, from_numpy, rtol_for, to_numpy
from jacspec.backends import get_backend


def _xp(backend):
    return get_backend(backend).xp


def _softmax_linear(backend, W):
    xp = _xp(backend)

    def f(x):
        z = xp.matmul(x, xp.matrix_transpose(W))
        z = z - xp.max(z, axis=-1, keepdims=True)
        e = xp.exp(z)
        return e / xp.sum(e, axis=-1, keepdims=True)

    return f


def _softmax_linear_slopes(W: np.ndarray, X: np.ndarray) -> np.ndarray:
    out = []
    for x in X:
        z = W @ x
        s = np.exp(z - z.max())
        s /= s.sum()
        J = (np.diag(s) - np.outer(s, s)) @ W
        out.append(np.linalg.norm(J, 2))
    return np.array(out)


def test_slope_of_softmax_matches_dense(autodiff_backend, dtype):
    backend = autodiff_backend
    rng = np.random.default_rng(0)
    W0 = 2 * rng.standard_normal((5, 7))
    X0 = rng.standard_normal((9, 7))
    res = js.slope(_softmax_linear(backend, from_numpy(W0, backend, dtype)),
                   from_numpy(X0, backend, dtype))
    assert backend_of(res.values) == backend
    assert get_backend(backend).dtype_name(res.values.dtype) == dtype
    assert res.points_kind == ("data",) * 9
    ref = _softmax_linear_slopes(W0, X0)
    np.testing.assert_allclose(to_numpy(res.values), ref, rtol=10 * rtol_for(dtype))
    np.testing.assert_allclose(float(to_numpy(res.mean)), ref.mean(), rtol=10 * rtol_for(dtype))
    np.testing.assert_allclose(float(to_numpy(res.std)), ref.std(), rtol=1e-2, atol=1e-6)
    np.testing.assert_allclose(to_numpy(res.quantiles),
                               np.quantile(ref, res.quantile_levels), rtol=10 * rtol_for(dtype))


@pytest.mark.parametrize("c", [0.5, 4.0])
def test_slope_rescaling(autodiff_backend, c):
    """slope(x -> f(x / c)) at c X equals slope(f) at X divided by c (Johansson et al. 2021)."""
    backend = autodiff_backend
    rng = np.random.default_rng(1)
    W0, X0 = rng.standard_normal((4, 6)), rng.standard_normal((8, 6))
    f = _softmax_linear(backend, from_numpy(W0, backend, "float64"))
    X = from_numpy(X0, backend, "float64")
    base = js.slope(f, X, num_between=5, seed=3)
    scaled = js.slope(lambda x: f(x / c), X * c, num_between=5, seed=3)
    np.testing.assert_allclose(to_numpy(scaled.values), to_numpy(base.values) / c, rtol=1e-7)


def test_between_points(autodiff_backend):
    backend = autodiff_backend
    xp = _xp(backend)
    rng = np.random.default_rng(2)
    X0 = rng.standard_normal((6, 3))
    X = from_numpy(X0, backend, "float64")
    f = lambda x: x**2  # noqa: E731  # slope 2 max|x_i|: convex along segments
    res = js.slope(f, X, num_between=20, seed=7)
    vals = to_numpy(res.values)
    assert vals.shape == (26,)
    assert res.points_kind == ("data",) * 6 + ("between",) * 20
    np.testing.assert_allclose(res.numpy("data"), 2 * np.abs(X0).max(axis=1), rtol=1e-7)
    assert np.all(res.numpy("between") <= 2 * np.abs(X0).max() + 1e-9)
    again = js.slope(f, X, num_between=20, seed=7)
    other = js.slope(f, X, num_between=20, seed=8)
    np.testing.assert_array_equal(to_numpy(again.values), vals)
    assert not np.allclose(other.numpy("between"), res.numpy("between"))
    # chunked computation gives the same values
    chunked = js.slope(f, X, num_between=20, seed=7, batch_size=4)
    np.testing.assert_allclose(to_numpy(chunked.values), vals, rtol=1e-12)
    assert xp is not None


def test_summary_histogram_and_progress(autodiff_backend, capsys):
    backend = autodiff_backend
    rng = np.random.default_rng(3)
    X = from_numpy(rng.standard_normal((10, 4)), backend, "float32")
    res = js.slope(lambda x: x**3, X, num_between=6, progress=True, batch_size=7)
    counts, edges = res.histogram(bins=5)
    assert counts.sum() == 16 and edges.shape == (6,)
    counts_d, _ = res.histogram(bins=5, kind="between")
    assert counts_d.sum() == 6
    s = res.summary("data")
    assert s["count"] == 10 and s["q05"] <= s["q50"] <= s["q95"] <= s["max"]
    assert "between" in str(res)
    with pytest.raises(ValueError, match="kind"):
        res.numpy("other")
    err = capsys.readouterr().err
    assert "16" in err  # the progress display counted every point


def test_plot(autodiff_backend, tmp_path):
    if autodiff_backend != "torch":
        pytest.skip("plotting is backend-independent: checked once")
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import torch

    res = js.slope(torch.tanh, torch.randn(20, 3), num_between=10)
    ax = res.plot()
    ax.figure.savefig(tmp_path / "slope.png")
    assert (tmp_path / "slope.png").stat().st_size > 0
    assert len(ax.patches) > 0


def test_slope_of_a_torch_module_has_no_side_effects(autodiff_backend):
    if autodiff_backend != "torch":
        pytest.skip("torch-specific")
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 5), torch.nn.Tanh(), torch.nn.Linear(5, 2))
    X = torch.randn(7, 3, requires_grad=True)
    res = js.slope(model, X, num_between=3)
    assert not res.values.requires_grad
    assert all(p.grad is None for p in model.parameters()) and X.grad is None


def test_bad_input(autodiff_backend):
    backend = autodiff_backend
    X = from_numpy(np.ones((4, 3)), backend, "float64")
    f = lambda x: x * 2.0  # noqa: E731
    with pytest.raises(ValueError, match="non-empty"):
        js.slope(f, X[:0])
    with pytest.raises(ValueError, match="batch size"):
        js.slope(lambda x: x[:2], X)
    with pytest.raises(ValueError, match="at least 2"):
        js.slope(f, X[:1], num_between=3)
    with pytest.raises(ValueError, match="num_between"):
        js.slope(f, X, num_between=-1)
    with pytest.raises(ValueError, match="batch_size"):
        js.slope(f, X, batch_size=0)


def test_numpy_input_is_type_error():
    with pytest.raises(TypeError, match="numpy"):
        js.slope(lambda x: x, np.ones((3, 2)))
    with pytest.raises(TypeError):
        js.slope(lambda x: x, [[1.0, 2.0]])
