"""LinearOperator products and algebra on explicit matrices, in every backend."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from hypothesis import given
from hypothesis import strategies as st

import jacspec as js
from _helpers import dtype_name, from_numpy, to_numpy

TOL = {
    "float32": dict(rtol=1e-4, atol=1e-5),
    "float64": dict(rtol=1e-12, atol=1e-12),
    "complex64": dict(rtol=1e-4, atol=1e-5),
    "complex128": dict(rtol=1e-12, atol=1e-12),
}


def _close(a, b, dtype):
    np.testing.assert_allclose(to_numpy(a), b, **TOL[dtype])


def _matrix(rng, shape, dtype):
    A = rng.standard_normal(shape)
    if dtype.startswith("complex"):
        A = A + 1j * rng.standard_normal(shape)
    return A.astype(dtype)


def _dtypes(backend):
    return ["float32", "float64", "complex64", "complex128"]


# dimensions from small sets: eager JAX compiles per shape, so examples reuse programs
@given(
    m=st.sampled_from([1, 3, 6]),
    n=st.sampled_from([1, 3, 6]),
    k=st.sampled_from([1, 3]),
    batch=st.sampled_from([None, 1, 3]),
    which=st.integers(0, 3),
    seed=st.integers(0, 2**16),
)
def test_dense_operator_products(backend, m, n, k, batch, which, seed):
    dtype = _dtypes(backend)[which % len(_dtypes(backend))]
    rng = np.random.default_rng(seed)
    bshape = () if batch is None else (batch,)
    A = _matrix(rng, bshape + (m, n), dtype)
    op = js.aslinearoperator(from_numpy(A, backend, dtype))
    assert op.shape == (m, n) and op.batch_shape == bshape
    assert op.backend == backend
    assert dtype_name(op.dtype) == dtype
    AH = np.conj(np.swapaxes(A, -1, -2))
    v = _matrix(rng, bshape + (n,), dtype)
    u = _matrix(rng, bshape + (m,), dtype)
    V = _matrix(rng, bshape + (n, k), dtype)
    U = _matrix(rng, bshape + (m, k), dtype)
    _close(op.matvec(from_numpy(v, backend)), (A @ v[..., None])[..., 0], dtype)
    _close(op.rmatvec(from_numpy(u, backend)), (AH @ u[..., None])[..., 0], dtype)
    _close(op.matmat(from_numpy(V, backend)), A @ V, dtype)
    _close(op.rmatmat(from_numpy(U, backend)), AH @ U, dtype)
    _close(op @ from_numpy(v, backend), (A @ v[..., None])[..., 0], dtype)
    _close(op.H @ from_numpy(U, backend), AH @ U, dtype)
    _close(js.dense(op), A, dtype)
    _close(js.dense(op.T), AH, dtype)
    # adjoint identity
    lhs = np.vdot(u, to_numpy(op.matvec(from_numpy(v, backend))))
    rhs = np.vdot(to_numpy(op.rmatvec(from_numpy(u, backend))), v)
    assert np.isclose(lhs, rhs, rtol=TOL[dtype]["rtol"] * 10, atol=TOL[dtype]["atol"] * 100)


@given(m=st.sampled_from([1, 3, 5]), n=st.sampled_from([1, 3, 5]), p=st.sampled_from([1, 3, 5]),
       seed=st.integers(0, 999))
def test_algebra(backend, m, n, p, seed):
    dtype = "float64"
    rng = np.random.default_rng(seed)
    A, B, C = rng.standard_normal((m, n)), rng.standard_normal((m, n)), rng.standard_normal((n, p))
    a, b, c = (js.aslinearoperator(from_numpy(M, backend, dtype)) for M in (A, B, C))
    _close(js.dense(a + b), A + B, dtype)
    _close(js.dense(a - b), A - B, dtype)
    _close(js.dense(-a), -A, dtype)
    _close(js.dense(2.5 * a), 2.5 * A, dtype)
    _close(js.dense(a * 2.0), 2 * A, dtype)
    _close(js.dense(a / 4.0), A / 4, dtype)
    _close(js.dense(a @ c), A @ C, dtype)
    _close(js.dense((a @ c).T), (A @ C).T, dtype)
    _close(js.dense(a.T @ b), A.T @ B, dtype)
    _close(js.dense((a - 3 * b).H), (A - 3 * B).T, dtype)
    assert a.T.T is a
    s = from_numpy(np.array(1.5), backend, dtype)
    _close(js.dense(s * a), 1.5 * A, dtype)


def test_batched_plus_unbatched_broadcasts(backend):
    rng = np.random.default_rng(0)
    Ab = rng.standard_normal((3, 4, 2))
    T = rng.standard_normal((4, 2))
    op = js.aslinearoperator(from_numpy(Ab, backend, "float64")) - js.aslinearoperator(
        from_numpy(T, backend, "float64")
    )
    assert op.batch_shape == (3,)
    _close(js.dense(op), Ab - T, "float64")
    _close(js.dense(op.T), np.swapaxes(Ab - T, 1, 2), "float64")
    comp = js.aslinearoperator(from_numpy(T.T, backend, "float64")) @ js.aslinearoperator(
        from_numpy(Ab, backend, "float64")
    )
    _close(js.dense(comp), T.T @ Ab, "float64")


def test_complex_scalar_scaling():
    A = np.array([[1.0, 2.0], [0.0, 1.0]])
    op = 1j * js.aslinearoperator(A)
    assert op.is_complex
    np.testing.assert_allclose(js.dense(op), 1j * A)
    np.testing.assert_allclose(js.dense(op.H), -1j * A.T)


@given(m=st.integers(1, 5), seed=st.integers(0, 999))
def test_rowsum_diagonal(backend, m, seed):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((2, m, m))
    op = js.aslinearoperator(from_numpy(A, backend, "float64"))
    D = js.rowsum_diagonal(op)
    expected = np.stack([np.diag(a.sum(axis=1)) for a in A])
    _close(js.dense(D), expected, "float64")
    _close(js.dense(op - D), A - expected, "float64")
    # a diagonal matrix is its own rowsum diagonal: the difference vanishes exactly
    diag = js.aslinearoperator(from_numpy(np.diag(rng.standard_normal(m)), backend, "float64"))
    np.testing.assert_array_equal(to_numpy(js.dense(diag - js.rowsum_diagonal(diag))), 0.0)


def test_rowsum_diagonal_needs_square():
    with pytest.raises(ValueError, match=r"square.*\(2, 3\)"):
        js.rowsum_diagonal(js.aslinearoperator(np.ones((2, 3))))


@pytest.mark.parametrize("shape", [(7, 4), (4, 7), (5, 5)])
def test_to_scipy_svds_matches_numpy(backend, shape):
    rng = np.random.default_rng(1)
    A = rng.standard_normal(shape)
    op = js.aslinearoperator(from_numpy(A, backend, "float64"))
    S = js.to_scipy(op)
    assert S.shape == shape and S.dtype == np.float64
    k = min(shape) - 1
    s = spla.svds(S, k=k, return_singular_vectors=False)
    np.testing.assert_allclose(np.sort(s)[::-1], np.linalg.svd(A, compute_uv=False)[:k],
                               rtol=1e-10)
    x = rng.standard_normal(shape[1])
    np.testing.assert_allclose(S @ x, A @ x, rtol=1e-12)
    np.testing.assert_allclose(S.H @ (A @ x), A.T @ (A @ x), rtol=1e-12)
    np.testing.assert_allclose(S.matmat(np.eye(shape[1])), A, rtol=1e-12)


def test_to_scipy_of_a_jacobian(autodiff_backend):
    b = autodiff_backend
    rng = np.random.default_rng(0)
    W = rng.standard_normal((6, 4))
    Wb = from_numpy(W, b, "float32")
    J = js.jacobian(lambda x: (x[None, :] @ Wb)[0], from_numpy(np.ones(6), b, "float32"))
    S = js.to_scipy(J)
    assert S.dtype == np.float64  # float64 out, whatever the op's dtype
    s = spla.svds(S, k=2, return_singular_vectors=False)
    np.testing.assert_allclose(np.sort(s)[::-1], np.linalg.svd(W, compute_uv=False)[:2], rtol=1e-5)


@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
def test_to_scipy_complex(backend, dtype):
    A = np.array([[1 + 1j, 0], [2j, 3], [0.5, -1j]], dtype=dtype)
    op = js.aslinearoperator(from_numpy(A, backend, dtype))
    assert op.is_complex and dtype_name(op.dtype) == dtype
    S = js.to_scipy(op)
    assert S.dtype == np.complex128
    v = np.array([1.0 - 2j, 0.5j])
    np.testing.assert_allclose(S @ v, A @ v, **TOL[dtype])
    np.testing.assert_allclose(S.H @ np.ones(3), A.conj().T @ np.ones(3), **TOL[dtype])
    s = np.linalg.svd(A.astype(np.complex128), compute_uv=False)
    np.testing.assert_allclose(to_numpy(js.spectral_norm(op)), s[0], **TOL[dtype])


def test_to_scipy_complex_vector_on_a_real_operator(backend):
    """As SciPy's own operators: the complex product, not its real part."""
    rng = np.random.default_rng(3)
    A = rng.standard_normal((4, 3))
    S = js.to_scipy(js.aslinearoperator(from_numpy(A, backend, "float64")))
    ref = spla.aslinearoperator(A)
    v = rng.standard_normal(3) + 1j * rng.standard_normal(3)
    u = rng.standard_normal(4) + 1j * rng.standard_normal(4)
    V = rng.standard_normal((3, 2)) + 1j * rng.standard_normal((3, 2))
    for got, want in [(S.matvec(v), ref.matvec(v)), (S.rmatvec(u), ref.rmatvec(u)),
                      (S @ V, ref @ V), (S.H @ u, ref.H @ u)]:
        assert np.iscomplexobj(got)
        np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(S @ v.real, A @ v.real, rtol=1e-12)  # real stays real
    assert not np.iscomplexobj(S @ v.real)


def test_to_scipy_complex_vector_on_a_jacobian(autodiff_backend):
    b = autodiff_backend
    W = np.random.default_rng(4).standard_normal((3, 5))
    Wb = from_numpy(W, b, "float64")
    J = js.jacobian(lambda x: (x[None, :] @ Wb)[0], from_numpy(np.ones(3), b, "float64"))
    v = np.arange(3) * (1 - 0.5j)
    np.testing.assert_allclose(js.to_scipy(J) @ v, W.T @ v, rtol=1e-12)


def test_to_scipy_rejects_batched():
    with pytest.raises(ValueError, match="unbatched"):
        js.to_scipy(js.aslinearoperator(np.ones((2, 3, 3))))


def test_scipy_and_sparse_inputs():
    A = sp.random(6, 4, density=0.5, random_state=0, format="csr")
    op = js.aslinearoperator(A)
    np.testing.assert_allclose(js.dense(op), A.toarray())
    np.testing.assert_allclose(js.dense(op.T), A.toarray().T)
    op2 = js.aslinearoperator(spla.aslinearoperator(A))
    np.testing.assert_allclose(op2 @ np.ones(4), A @ np.ones(4))
    assert js.aslinearoperator(op) is op


# ------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("bad", [[[1.0, 2.0]], "A", 3.0, None])
def test_aslinearoperator_rejects_non_arrays(bad):
    with pytest.raises(TypeError, match="Expected a 2-D/3-D array"):
        js.aslinearoperator(bad)


def test_aslinearoperator_rejects_bad_shapes_and_dtypes(backend):
    with pytest.raises(ValueError, match=r"Received an array of shape \(3,\)"):
        js.aslinearoperator(from_numpy(np.ones(3), backend, "float64"))
    with pytest.raises(TypeError, match="dtype"):
        js.aslinearoperator(from_numpy(np.ones((2, 2)), backend, "int32"))
    with pytest.raises(FloatingPointError):
        js.aslinearoperator(from_numpy(np.full((2, 2), np.nan), backend, "float64"))


def test_wrong_vector_shape(backend):
    op = js.aslinearoperator(from_numpy(np.ones((3, 2)), backend, "float64"))
    with pytest.raises(ValueError, match=r"Expected an array of shape \(2,\). Received \(3,\)"):
        op.matvec(from_numpy(np.ones(3), backend, "float64"))
    with pytest.raises(ValueError, match=r"Expected an array of shape \(3,\). Received \(2,\)"):
        op.rmatvec(from_numpy(np.ones(2), backend, "float64"))
    with pytest.raises(ValueError, match=r"Expected an array of shape \(2, k\)"):
        op.matmat(from_numpy(np.ones((3, 1)), backend, "float64"))
    with pytest.raises(TypeError, match="Expected a"):
        op.matvec([1.0, 2.0])


def test_mixed_frameworks():
    torch = pytest.importorskip("torch")
    a = js.aslinearoperator(np.ones((2, 2)))
    t = js.aslinearoperator(torch.ones(2, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="numpy and torch|torch and numpy"):
        a + t
    with pytest.raises(TypeError, match="numpy and torch|torch and numpy"):
        a @ t
    with pytest.raises(TypeError, match="torch"):
        a.matvec(torch.ones(2, dtype=torch.float64))


def test_incompatible_shapes():
    a, b = js.aslinearoperator(np.ones((2, 3))), js.aslinearoperator(np.ones((3, 3)))
    with pytest.raises(ValueError, match="same shape"):
        a + b
    with pytest.raises(ValueError, match="inner sizes"):
        a @ a
    with pytest.raises(ValueError, match="batch shape"):
        js.aslinearoperator(np.ones((2, 3, 3))) + js.aslinearoperator(np.ones((4, 3, 3)))
    with pytest.raises(TypeError, match="scalar"):
        np.ones(3) * b if False else b * np.ones(3)


@pytest.mark.filterwarnings("ignore:overflow encountered in matmul:RuntimeWarning")
def test_nan_product_is_reported():  # NumPy warns of the overflow it was made to do
    op = js.aslinearoperator(np.array([[1e308, 1e308]]))
    with pytest.raises(FloatingPointError, match="NaN or Inf"):
        op.matvec(np.array([1e308, 1e308]))
