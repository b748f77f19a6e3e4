"""The adaptive driver (solvers/driver.py): basis sizes, fixed budgets (``run_budget``:
thick restarts, restart cycles, also under ``jax.jit``), the product count carried in
the states, convergence checks and screens, the acceptance rule after a breakdown and
the unconverged warning."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jacspec as js
from _helpers import counting_problem, from_numpy, make_matrix, to_numpy
from jacspec.solvers import driver, krylov
from jacspec.solvers.problem import Problem


def test_maxiter_warns(backend):
    A = make_matrix(80, 70, "clustered", seed=7)
    with pytest.warns(RuntimeWarning, match="maxiter"):
        res = js.svds(from_numpy(A, backend), k=2, method="lanczos", maxiter=6)
    assert not bool(np.all(to_numpy(res.converged)))
    assert res.num_matvecs <= 6
    with pytest.warns(RuntimeWarning, match="maxiter"):
        res = js.svds(from_numpy(A, backend), k=1, method="power", maxiter=10)
    assert not bool(np.all(to_numpy(res.converged)))
    with pytest.warns(RuntimeWarning, match="maxiter"):
        res = js.eigsh(from_numpy(A[:70] + A[:70].T, backend), k=2, method="lanczos",
                       maxiter=5)
    assert res.num_matvecs <= 5


def test_large_batch_screens(backend):
    """A batch larger than the probe set of the eager convergence screens
    (``driver.PROBES``), with samples that break down (the zero map, rank one) beside
    slowly converging ones (near-repeated top values): every sample converges to the
    dense answer, GKL and Lanczos, within one basis of products."""
    from jacspec.solvers.driver import PROBES

    rng = np.random.default_rng(8)
    B, m, n = 3 * PROBES, 40, 30
    A = rng.standard_normal((B, m, n))
    A[0] = 0.0
    A[1] = np.outer(rng.standard_normal(m), rng.standard_normal(n))
    for b in range(2, B, 3):  # top two singular values 1 % apart
        U, s, Vt = np.linalg.svd(A[b], full_matrices=False)
        s[1] = 0.99 * s[0]
        A[b] = (U * s) @ Vt
    ref = np.linalg.svd(A, compute_uv=False)[:, 0]
    r = js.svds(from_numpy(A, backend), method="lanczos", tol=1e-10)
    assert bool(np.all(to_numpy(r.converged))) and r.num_matvecs <= 2 * n
    np.testing.assert_allclose(to_numpy(r.values)[:, 0], ref, rtol=1e-9, atol=1e-12)
    S = np.einsum("bmi,bmj->bij", A, A)
    e = js.eigsh(from_numpy(S, backend), method="lanczos", tol=1e-10)
    assert bool(np.all(to_numpy(e.converged))) and e.num_matvecs <= n
    np.testing.assert_allclose(to_numpy(e.values)[:, 0], ref**2, rtol=1e-9, atol=1e-12)


def test_tiny_restart_basis_still_checks(backend):
    """With ``ncv`` below the first scheduled check (2k + 1 + FIRST_CHECK_DELAY), the
    check at every thick restart still runs: the solve converges to the dense answer
    instead of running to ``maxiter``."""
    rng = np.random.default_rng(21)
    A = rng.standard_normal((60, 50))
    ref = np.linalg.svd(A, compute_uv=False)
    evals = np.linalg.eigvalsh(A.T @ A)[::-1]
    for k, ncv in ((1, 4), (2, 6)):
        r = js.svds(from_numpy(A, backend), k=k, method="lanczos", ncv=ncv, tol=1e-8)
        assert bool(np.all(to_numpy(r.converged))) and r.num_matvecs < 400
        np.testing.assert_allclose(to_numpy(r.values), ref[:k], rtol=1e-7)
        e = js.eigsh(from_numpy(A.T @ A, backend), k=k, method="lanczos", ncv=ncv,
                     tol=1e-8)
        assert bool(np.all(to_numpy(e.converged))) and e.num_matvecs < 200
        np.testing.assert_allclose(to_numpy(e.values), evals[:k], rtol=1e-7)


def test_unconverged_warning_points_at_the_call(backend):
    """The maxiter warning names the user's line, not a line inside jacspec."""
    A = np.random.default_rng(2).standard_normal((30, 20))
    for method in ("power", "lanczos"):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            js.svds(from_numpy(A, backend), method=method, maxiter=4, tol=1e-14)
        hits = [w for w in caught if issubclass(w.category, RuntimeWarning)]
        assert hits and all(w.filename == __file__ for w in hits), method


def test_jax_jit_compiled_steps_with_thick_restarts(backend):
    """Inside ``jax.jit`` the steps between thick restarts run as one ``lax.fori_loop``:
    with a small ``ncv`` and a budget of several restarts (about 7 and 14), GKL and
    Lanczos still reach the dense answer, and the product count is the budget (counted
    per compiled step, not per trace)."""
    if backend != "jax":
        pytest.skip("jax.jit only")
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(5)
    C = rng.standard_normal((40, 30))
    C[:, 0] = C[:, 1]  # rank deficient: a breakdown once the basis spans the range
    ref = np.linalg.svd(C, compute_uv=False)
    counts = []

    def top_sv(z):
        r = js.svds(js.jacobian(lambda y: jnp.asarray(C) @ y, z), k=2, method="lanczos",
                    ncv=8, maxiter=80)
        counts.append(r.num_matvecs)
        return r.values

    out = jax.jit(top_sv)(jnp.asarray(rng.standard_normal(30)))
    np.testing.assert_allclose(np.asarray(out), ref[:2], rtol=1e-9)
    assert counts == [80]
    S = np.concatenate([[4.0, 4.0], np.linspace(-3.0, 3.0, 18)])
    Q, _ = np.linalg.qr(rng.standard_normal((20, 20)))
    H = (Q * S) @ Q.T

    def top_ev(z):
        r = js.eigsh(js.hessian(lambda y: 0.5 * y @ jnp.asarray(H) @ y, z), k=2,
                     method="lanczos", ncv=7, maxiter=60)
        counts.append(r.num_matvecs)
        return r.values

    np.testing.assert_allclose(np.asarray(jax.jit(top_ev)(jnp.zeros(20))), [4.0, 4.0],
                               atol=1e-9)
    assert counts[-1] == 60


def test_jax_jit_program_does_not_grow_with_the_budget(backend):
    """Under ``jax.jit`` a fixed budget's restart cycles run as one compiled loop: the
    traced program (top-level equations) is about the same for 40 products (no cycle
    after the first restart) and 400 (about 60 cycles)."""
    if backend != "jax":
        pytest.skip("jax.jit only")
    import jax
    import jax.numpy as jnp

    C = jnp.asarray(np.random.default_rng(5).standard_normal((40, 30)))

    def size(maxiter):
        def top_sv(z):
            J = js.jacobian(lambda y: C @ y, z)
            return js.svds(J, k=2, method="lanczos", ncv=8, maxiter=maxiter).values

        return len(jax.make_jaxpr(top_sv)(jnp.ones(30)).jaxpr.eqns)

    assert size(400) <= size(40) + 5


def test_jax_jit_breakdowns_inside_restart_cycles(backend):
    """Rank 3 with a basis of 6: every cycle of a traced budget breaks down and draws
    restart directions (salted per cycle); GKL and Lanczos still give the dense values."""
    if backend != "jax":
        pytest.skip("jax.jit only")
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(3)
    A = rng.standard_normal((20, 3)) @ rng.standard_normal((3, 15))
    Aj, Sj = jnp.asarray(A), jnp.asarray(A.T @ A)
    sv = jax.jit(lambda z: js.svds(js.jacobian(lambda y: Aj @ y, z), k=2, method="lanczos",
                                   ncv=6, maxiter=70).values)(jnp.ones(15))
    ev = jax.jit(lambda z: js.eigsh(js.hessian(lambda y: 0.5 * y @ Sj @ y, z), k=2,
                                    method="lanczos", ncv=6, maxiter=50).values)(jnp.ones(15))
    ref = np.linalg.svd(A, compute_uv=False)[:2]
    np.testing.assert_allclose(np.asarray(sv), ref, rtol=1e-10)
    np.testing.assert_allclose(np.asarray(ev), ref**2, rtol=1e-10)


# ------------------------------------------------------------ units of the driver


@given(r=st.integers(1, 60), k=st.integers(1, 8), ncv=st.none() | st.integers(1, 70),
       steps=st.none() | st.integers(1, 100))
def test_basis_sizes(r, k, ncv, steps):
    """``jmin <= jmax <= r``; a restart keeps fewer vectors than the basis holds and at
    least ``k`` (whenever the basis can fill before spanning the space); a fixed budget
    of ``steps`` shrinks the default basis to ``steps + 1``."""
    k = min(k, r)
    jmin, jmax, keep = driver.basis_sizes(r, k, ncv, steps)
    assert jmin == min(r, 2 * k + 1)
    assert jmin <= jmax <= r and keep < jmax
    if jmax < r:
        assert keep >= k and jmax > jmin
    if ncv is None and steps is not None:
        assert jmax <= max(jmin + 1, steps + 1)


ALGS = [(krylov.GKL, "LM"), (krylov.LANCZOS, "LA")]
C_, N_, NCV = 24, 16, 6


def _operator(alg, decay: float | None = None) -> np.ndarray:
    """A random ``(C_, N_)`` matrix (``decay``: with singular values ``decay**i``), or
    its Gram matrix for Lanczos."""
    A = make_matrix(C_, N_, "random", seed=5)
    if decay is not None:
        U, _, Vt = np.linalg.svd(A, full_matrices=False)
        A = (U * decay ** np.arange(N_)) @ Vt
    return A if alg.two_sided else A.T @ A


@pytest.mark.parametrize(("alg", "which"), ALGS)
def test_run_budget_counts_and_restarts(backend, monkeypatch, alg, which):
    """A fixed budget (thick restarts every few steps, then whole restart cycles): the
    count in the state is the products taken, within the budget (one step at least,
    the products before the start included), and enough cycles reach the dense top
    values."""
    A = _operator(alg, decay=0.7)  # fast convergence: a short budget reaches it
    p = counting_problem(A, backend, monkeypatch)
    k = 2
    _, jmax, keep = driver.basis_sizes(N_, k, NCV)
    for start, limit in ((0, 1), (0, 7), (3, 30), (0, 61)):
        p.tally[0] = 0
        s = krylov.init(p, None, jmax, two_sided=alg.two_sided, count=start)
        s = driver.run_budget(p, alg, s, limit, keep, which)
        assert s.count == start + p.tally[0]
        assert s.count <= max(limit, start + alg.per_step)
        assert s.count > limit - alg.per_step
    with warnings.catch_warnings():  # flags right after a breakdown stay False: a warning
        warnings.simplefilter("ignore", RuntimeWarning)
        res = driver.finish(p, alg, s, k, 1e-8, which, 2 * k + 1, True)
    ref = (np.linalg.svd(A, compute_uv=False) if alg.two_sided
           else np.linalg.eigvalsh(A)[::-1])[:k]
    np.testing.assert_allclose(to_numpy(res.values)[0], ref, rtol=1e-8)
    assert res.num_matvecs == 61 - (61 % alg.per_step) and np.all(
        to_numpy(res.residuals) <= 1e-8 * ref[0])


@pytest.mark.parametrize(("alg", "which"), ALGS)
def test_krylov_solve_counts_what_it_takes(backend, monkeypatch, alg, which):
    """To ``tol`` with thick restarts and checks: ``num_matvecs`` is the products the
    solve took (after ``count`` products spent before it); with ``maxiter``, at most
    that and a warning."""
    A = _operator(alg)
    p = counting_problem(A, backend, monkeypatch)
    res = driver.krylov_solve(p, alg, 2, tol=1e-8, maxiter=None, ncv=NCV, which=which,
                              count=5)
    assert bool(np.all(to_numpy(res.converged)))
    assert res.num_matvecs == 5 + p.tally[0]
    assert res.num_matvecs > 2 * NCV * alg.per_step  # restarts happened
    p.tally[0] = 0
    with pytest.warns(RuntimeWarning, match="maxiter"):
        res = driver.krylov_solve(p, alg, 2, tol=1e-8, maxiter=15, ncv=NCV, which=which)
    assert res.num_matvecs == p.tally[0] and 15 - alg.per_step < res.num_matvecs <= 15


def test_fresh_ok(backend):
    """After a breakdown at row ``f``, a problem may be accepted once ``min(room,
    2k + 1)`` rows follow (``room``: the dimension left after ``f``)."""
    p = Problem.of(js.aslinearoperator(from_numpy(np.zeros((3, 10, 10)), backend)))
    s = krylov.init(p, None, 10, two_sided=False)
    s = s._replace(fresh_from=from_numpy(np.array([0.0, 3.0, 8.0]), backend))
    ok = [to_numpy(driver.fresh_ok(p, s._replace(j=j), 2))[:, 0].tolist() for j in (7, 10)]
    assert ok == [[True, False, False], [True, True, True]]


@pytest.mark.parametrize("k", [1, 3])
def test_products_against_arpack(backend, k):
    """On a long operator with a Hessian-like spectrum (a few outliers over a bulk near
    0), float64, default tol: Lanczos takes no more products than ARPACK
    (``scipy.sparse.linalg.eigsh``, ncv 20) for ``k = 1``, and for ``k >= 2`` no more
    than ARPACK plus its check restart (``2k + 1`` products), at ARPACK's accuracy
    against the exact values."""
    if backend != "numpy":
        pytest.skip("an explicit NumPy operator against SciPy's ARPACK")
    import scipy.sparse as sp
    import scipy.sparse.linalg as sla

    rng = np.random.default_rng(0)
    n = 100_000
    bulk = rng.uniform(-0.05, 0.6, n - 8) * rng.uniform(0, 1, n - 8) ** 4
    d = np.concatenate([[3.4, 2.95, 2.74, 2.2, 1.9, 1.5, 1.2, 1.0], bulk])
    res = js.eigsh(sp.diags(d), k=k, method="lanczos")
    count = [0]

    def mv(v):
        count[0] += 1
        return d * v

    tol = float(np.sqrt(np.finfo(np.float64).eps))
    arpack = sla.eigsh(sla.LinearOperator((n, n), matvec=mv, dtype=np.float64), k=k,
                       tol=tol, return_eigenvectors=False)
    exact = np.sort(d)[::-1][:k]
    err_arpack = np.abs(np.sort(arpack)[::-1] - exact).max()
    assert np.abs(to_numpy(res.values) - exact).max() <= max(err_arpack, 1e-14) * 4
    assert res.num_matvecs <= count[0] + (2 * k + 1 if k > 1 else 0)
