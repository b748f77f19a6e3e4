"""Golub–Kahan–Lanczos and Lanczos steps (solvers/krylov.py)."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js


def test_jax_jit_krylov_hard_cases(backend):
    """Inside ``jax.jit`` the Krylov loops run a fixed budget with hash-based restart
    vectors and in-place buffer writes: breakdowns (rank deficiency, the zero map,
    repeated values) must still give the dense answer, batched and unbatched."""
    if backend != "jax":
        pytest.skip("jax.jit only")
    import jax
    import jax.numpy as jnp

    rng = np.random.default_rng(11)
    B, m, n = 3, 9, 7
    A = rng.standard_normal((B, m, n))
    A[0] = np.outer(rng.standard_normal(m), rng.standard_normal(n))  # rank 1
    A[1] = 0.0  # the zero map
    U, _, Vt = np.linalg.svd(rng.standard_normal((m, n)), full_matrices=False)
    A[2] = (U * np.array([3.0, 3.0, 3.0, 1.0, 0.5, 1e-3, 0.0])) @ Vt  # repeated top
    Aj = jnp.asarray(A)

    def f(x):
        return jnp.einsum("bmn,bn->bm", Aj, x)

    x = jnp.asarray(rng.standard_normal((B, n)))
    ref = np.linalg.svd(A, compute_uv=False)[:, :3]
    out = jax.jit(lambda x: js.svds(js.jacobian(f, x, batched=True), k=3,
                                    method="lanczos").values)(x)
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-10)
    # a budget smaller than the basis (the basis shrinks to it): still a lower bound
    # that has converged for the well-separated top value of the random sample
    C = rng.standard_normal((30, 20))
    g = jax.jit(lambda z: js.svds(js.jacobian(lambda y: jnp.asarray(C) @ y, z), k=1,
                                  method="lanczos", maxiter=30).values)
    top = float(np.linalg.svd(C, compute_uv=False)[0])
    val = float(g(jnp.asarray(rng.standard_normal(20)))[0])
    assert val <= top * (1 + 1e-12) and val > 0.9 * top
    # Hessian with a repeated top eigenvalue (three copies), full budget
    S = np.diag([5.0, 5.0, 5.0, 2.0, -1.0, 0.0])
    Q, _ = np.linalg.qr(rng.standard_normal((6, 6)))
    H = Q @ S @ Q.T
    h = jax.jit(lambda z: js.eigsh(js.hessian(lambda y: 0.5 * y @ jnp.asarray(H) @ y, z),
                                   k=3, method="lanczos").values)
    np.testing.assert_allclose(np.asarray(h(jnp.zeros(6))), [5.0, 5.0, 5.0], atol=1e-10)
