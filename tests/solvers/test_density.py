"""js.spectral_density (stochastic Lanczos quadrature) against dense spectra: exact
moments when the probes span the space and num_steps >= n, within three standard errors
for random probes, singular values vs numpy's SVD, in every backend."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jacspec as js
from _helpers import from_numpy, to_numpy

RTOL = {"float32": 2e-4, "float64": 1e-9}


def _spectrum(draw_kind: str, n: int, rng) -> np.ndarray:
    ev = rng.standard_normal(n)
    if draw_kind == "repeated":
        ev[: max(1, n // 2)] = ev[0]
    elif draw_kind == "rank_deficient":
        ev[: n // 2] = 0.0
    elif draw_kind == "clustered":
        ev = 1.0 + 1e-6 * ev
    return ev


def _moments_close(sd, exact_of_p, dtype, scale):
    for p in (1, 2, 3, 4):
        got = float(to_numpy(sd.moment(p)))
        np.testing.assert_allclose(got, exact_of_p(p), rtol=RTOL[dtype],
                                   atol=RTOL[dtype] * scale**p)


# dimensions from small sets: eager JAX compiles per shape, so examples reuse programs
@given(n=st.sampled_from([1, 4, 9]), extra_steps=st.sampled_from([0, 3]),
       kind=st.sampled_from(["generic", "repeated", "rank_deficient", "clustered"]),
       seed=st.integers(0, 2**16))
def test_eig_moments_exact_with_spanning_probes(backend, dtype, n, extra_steps, kind, seed):
    rng = np.random.default_rng(seed)
    ev = _spectrum(kind, n, rng)
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * ev) @ Q.T
    sd = js.spectral_density(from_numpy(A, backend, dtype), num_probes=n,
                             num_steps=n + extra_steps, seed=seed)
    assert tuple(sd.nodes.shape) == (n, n) and tuple(sd.weights.shape) == (n, n)
    np.testing.assert_allclose(to_numpy(sd.weights).sum(-1), 1.0, rtol=1e-5)
    _moments_close(sd, lambda p: np.mean(ev**p), dtype, np.abs(ev).max())


@given(m=st.sampled_from([1, 4, 7]), n=st.sampled_from([1, 4, 7]), seed=st.integers(0, 2**16))
def test_singular_moments_match_svd(backend, dtype, m, n, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    if n > 1:
        A[:, 0] = A[:, -1]  # rank-deficient
    sv = np.linalg.svd(A, compute_uv=False)
    sv = np.concatenate([sv, np.zeros(n - len(sv))])  # the n singular values of A^T A
    sd = js.spectral_density(from_numpy(A, backend, dtype), num_probes=n, num_steps=n,
                             kind="singular", seed=seed)
    assert float(to_numpy(sd.nodes).min()) >= -1e-6
    _moments_close(sd, lambda p: np.mean(sv**p), dtype, sv.max())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_probes_within_three_standard_errors(backend, seed):
    rng = np.random.default_rng(100 + seed)
    n = 60
    ev = rng.standard_normal(n) + 0.5
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = from_numpy((Q * ev) @ Q.T, backend, "float64")
    # s steps give each probe's Gauss quadrature exactly to degree 2s - 1: 4 steps give
    # its moments v^T A^p v (p <= 2) exactly, as n steps would
    sd = js.spectral_density(A, num_probes=30, num_steps=4, seed=seed)
    for p in (1, 2):
        per_probe = np.asarray(to_numpy(sd.probe_moments(p)))
        se = per_probe.std(ddof=1) / np.sqrt(len(per_probe))
        assert abs(float(to_numpy(sd.moment(p))) - np.mean(ev**p)) <= 3 * se + 1e-12


def test_density_integrates_to_one_and_plots(backend):
    rng = np.random.default_rng(3)
    A = rng.standard_normal((30, 30))
    A = from_numpy(A + A.T, backend, "float64")
    sd = js.spectral_density(A, num_probes=4, num_steps=12)
    nodes = np.asarray(to_numpy(sd.nodes))
    grid = np.linspace(nodes.min() - 3, nodes.max() + 3, 4001)
    dens = np.asarray(to_numpy(sd.density(grid, width=0.3)))
    assert dens.shape == grid.shape and dens.min() >= 0
    np.testing.assert_allclose(np.sum(dens) * (grid[1] - grid[0]), 1.0, rtol=1e-6)
    assert dens.shape == np.asarray(to_numpy(sd.density(list(grid)))).shape
    pytest.importorskip("matplotlib")
    ax = sd.plot()
    assert ax.get_yscale() == "log"


def test_batched_operator_gives_per_sample_densities(backend):
    rng = np.random.default_rng(4)
    A = rng.standard_normal((3, 5, 5))
    A = A + np.swapaxes(A, 1, 2)
    sd = js.spectral_density(from_numpy(A, backend, "float64"), num_probes=5, num_steps=5)
    assert tuple(sd.nodes.shape) == (3, 5, 5)
    got = np.asarray(to_numpy(sd.moment(2)))
    np.testing.assert_allclose(got, [np.mean(np.linalg.eigvalsh(a) ** 2) for a in A], rtol=1e-9)


@pytest.mark.slow
def test_dataset_hessian_and_jacobian(autodiff_backend):
    b = autodiff_backend
    from _models import ParamMLP, mlp_weights

    rng = np.random.default_rng(5)
    net = ParamMLP(b, mlp_weights(rng, [3, 3, 2]), "float64")
    data = [from_numpy(rng.standard_normal((s, 3)), b, "float64") for s in (4, 3)]

    def batch_loss(p, X):
        out = net.apply(p, X)
        return (out * out).sum() / out.shape[0] if b != "tensorflow" else \
            __import__("tensorflow").reduce_sum(out * out) / out.shape[0]

    H = js.hessian(batch_loss, net.params, data=data)
    dense = np.asarray(to_numpy(js.dense(H)))
    n = dense.shape[0]
    sd = js.spectral_density(H, num_probes=n, num_steps=n)
    np.testing.assert_allclose(float(to_numpy(sd.moment(1))), np.trace(dense) / n, rtol=1e-8,
                               atol=1e-12)
    J = js.jacobian(lambda p: net.apply(p, data[0]), net.params)
    Jd = np.asarray(to_numpy(js.dense(J).detach() if b == "torch" else js.dense(J)))
    sj = js.spectral_density(J, num_probes=n, num_steps=n, kind="singular")
    sv = np.linalg.svd(Jd, compute_uv=False)
    np.testing.assert_allclose(float(to_numpy(sj.moment(2))), np.sum(sv**2) / n, rtol=1e-8)


def test_bad_input():
    A = np.eye(3)
    with pytest.raises(ValueError, match="kind"):
        js.spectral_density(A, kind="svd")
    with pytest.raises(ValueError, match="square"):
        js.spectral_density(np.ones((3, 2)))
    with pytest.raises(ValueError, match="num_probes"):
        js.spectral_density(A, num_probes=0)
    with pytest.raises(ValueError, match="num_steps"):
        js.spectral_density(A, num_steps=0)
    with pytest.raises(ValueError, match="width"):
        js.spectral_density(A).density(np.linspace(0, 1, 5), width=0.0)


# The overflowing operator is the point of the test: NumPy warns while it overflows.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize("kind", ["eig", "singular"])
def test_nan_or_inf_products_are_a_floating_point_error(backend, kind):
    """Products that overflow (an explicit matrix) or are infinite (the derivative of
    sqrt at 0) raise FloatingPointError, not the small factorization's error."""
    huge = from_numpy(np.full((6, 6), 1e308), backend, "float64")
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        js.spectral_density(huge, num_probes=2, num_steps=4, kind=kind)
    if backend != "numpy":
        J = js.jacobian(lambda z: z**0.5, from_numpy(np.zeros(5), backend, "float64"))
        with pytest.raises(FloatingPointError, match="NaN or Inf"):
            js.spectral_density(J, num_probes=2, num_steps=4, kind=kind)


@pytest.mark.parametrize("kind", ["eig", "singular"])
def test_probe_groups_give_the_probes_of_one_block(backend, monkeypatch, kind):
    """Probes run side by side in one block, or in groups where their bases would be
    large: the same probes, the same quadratures (batched operators too), and the
    dense spectrum's moments when the probes span the space."""
    from jacspec.solvers import density

    rng = np.random.default_rng(3)
    n = 7
    A = rng.standard_normal((2, n + 2, n)) if kind == "singular" else None
    if A is None:
        A = rng.standard_normal((2, n, n))
        A = A + np.swapaxes(A, -1, -2)
    op = js.aslinearoperator(from_numpy(A, backend, "float64"))
    one = js.spectral_density(op, num_probes=n, num_steps=n, kind=kind)
    monkeypatch.setattr(density, "PROBE_BLOCK_ENTRIES", 3 * 2 * n * (2 * n + 2))
    assert 1 < density._group_size(density.Problem.of(op), n, n) < n
    groups = js.spectral_density(op, num_probes=n, num_steps=n, kind=kind)
    for a, b in ((one.nodes, groups.nodes), (one.weights, groups.weights)):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), atol=1e-9)
    w = (np.linalg.svd(A, compute_uv=False) if kind == "singular"
         else np.linalg.eigvalsh(A))
    for p in (1, 2, 3):
        np.testing.assert_allclose(to_numpy(groups.moment(p)), np.mean(w**p, axis=-1),
                                   rtol=1e-9, atol=1e-9 * np.abs(w).max() ** p)
