"""The NumPy adapter (backends/numpy.py): its arrays, dtypes and devices, seeded normal
draws that leave NumPy's global state alone, explicit matrices (``np.matrix`` included),
the convolution and its exact adjoint, no autodiff, and the ``Backend`` defaults the
solvers run on (row writes, branches, loops, host reads)."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import jacspec as js
from _helpers import row_writes, selected_backends
from jacspec.backends._base import Backend
from jacspec.backends.numpy import BACKEND

pytestmark = pytest.mark.skipif("numpy" not in selected_backends(),
                                reason="the NumPy backend is not selected")

DTYPES = ["float32", "float64", "complex64", "complex128"]


def test_arrays_dtypes_devices():
    b = BACKEND
    assert b.name == "numpy" and not b.has_autodiff
    assert b.is_array(np.ones(2)) and b.is_array(np.float64(1.0))
    assert not b.is_array([1.0]) and not b.is_array(1.0)
    assert b.devices() == ["cpu"] and b.device(np.ones(2)) == "cpu"
    for name in DTYPES:
        assert b.dtype_name(b.dtype_from_name(name)) == name
        x = b.from_numpy(np.arange(3.0), dtype=b.dtype_from_name(name))
        assert b.dtype_name(x.dtype) == name
        assert isinstance(b.to_numpy(x), np.ndarray)
    x = b.xp.ones((2, 3))
    assert b.xp.matmul(x, b.xp.matrix_transpose(x)).shape == (2, 2)  # array API names


@pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")
def test_explicit_matrix_subclass_reads_as_an_array():
    A = np.matrix([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    M = BACKEND.as_matrix(A)
    assert type(M) is np.ndarray and M.shape == (3, 2)
    op = js.aslinearoperator(A)
    out = op @ np.array([1.0, -1.0])
    assert type(out) is np.ndarray and out.shape == (3,)
    np.testing.assert_array_equal(out, [-1.0, -1.0, -1.0])


@pytest.mark.parametrize("dtype", DTYPES)
def test_normal_is_seeded_and_leaves_the_global_state(dtype):
    state = np.random.get_state()[1].copy()
    draw = BACKEND.normal((4000,), dtype=np.dtype(dtype), device="cpu", seed=7)
    again = BACKEND.normal((4000,), dtype=np.dtype(dtype), device="cpu", seed=7)
    other = BACKEND.normal((4000,), dtype=np.dtype(dtype), device="cpu", seed=8)
    np.testing.assert_array_equal(np.random.get_state()[1], state)
    assert draw.dtype == np.dtype(dtype) and draw.shape == (4000,)
    np.testing.assert_array_equal(draw, again)
    assert not np.array_equal(draw, other)
    # standard normal: mean 0, E|z|^2 = 1; complex: independent real and imaginary halves
    assert abs(draw.mean()) < 0.1 and abs(np.mean(np.abs(draw) ** 2) - 1) < 0.1
    if np.iscomplexobj(draw):
        assert abs(np.var(draw.real) - 0.5) < 0.05 and abs(np.var(draw.imag) - 0.5) < 0.05
        assert abs(np.mean(draw.real * draw.imag)) < 0.05


@st.composite
def _convs(draw):
    n, c, o = draw(st.integers(1, 2)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    pads = tuple((draw(st.integers(0, 2)), draw(st.integers(0, 2))) for _ in range(2))
    h = draw(st.integers(max(1, kh - pads[0][0] - pads[0][1]), 6))
    w = draw(st.integers(max(1, kw - pads[1][0] - pads[1][1]), 6))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return rng.standard_normal((n, c, h, w)), rng.standard_normal((o, c, kh, kw)), stride, pads


def _conv_reference(x, w, stride, pads):
    """The cross-correlation as its defining sum, output pixel by output pixel."""
    (pt, pb), (pl, pr) = pads
    xp_ = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr)))
    kh, kw = w.shape[-2:]
    ho = (xp_.shape[2] - kh) // stride[0] + 1
    wo = (xp_.shape[3] - kw) // stride[1] + 1
    out = np.zeros((x.shape[0], w.shape[0], ho, wo))
    for i in range(ho):
        for j in range(wo):
            patch = xp_[:, :, i * stride[0]:i * stride[0] + kh, j * stride[1]:j * stride[1] + kw]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return out


@given(case=_convs())
def test_conv2d_and_its_exact_adjoint(case):
    """``conv2d`` is the defining sum; ``conv2d_adjoint`` its exact adjoint
    (``<conv(x), y> = <x, conv^T(y)>``), strides that skip pixels included."""
    x, w, stride, pads = case
    y = BACKEND.conv2d(x, w, stride=stride, pads=pads)
    np.testing.assert_allclose(y, _conv_reference(x, w, stride, pads), rtol=1e-12, atol=1e-12)
    z = np.random.default_rng(1).standard_normal(y.shape)
    back = BACKEND.conv2d_adjoint(z, w, stride=stride, pads=pads, input_hw=x.shape[-2:])
    assert back.shape == x.shape
    np.testing.assert_allclose(np.sum(y * z), np.sum(x * back), rtol=1e-10, atol=1e-10)


def test_no_autodiff_is_a_clear_error():
    """The public functions say so in their argument check; the adapter's autodiff
    methods are never reached (and refuse)."""
    with pytest.raises(TypeError, match="aslinearoperator"):
        js.jacobian(lambda z: 2 * z, np.ones(3))
    with pytest.raises(NotImplementedError, match="no automatic differentiation"):
        BACKEND.linearize(lambda z: z, np.ones(3), batched=False)
    with pytest.raises(NotImplementedError, match="distributed"):
        BACKEND.distributed_sum(np.ones(2), group=None)


@given(case=row_writes(tuple(DTYPES)))
def test_set_row_matches_numpy(case):
    """The default row write: ``X[..., j, start:start + t] = x`` where those entries are
    zero (the contract: solver buffers fill rows that are zero), a new array (the buffer
    given is not written); NumPy's own writes in place."""
    lead, J, W, j, start, t, dtype = case
    rng = np.random.default_rng(J * 7 + W)
    X = rng.standard_normal(lead + (J, W)).astype(dtype)
    X[..., j, start:start + t] = 0
    x = rng.standard_normal(lead + (t,)).astype(dtype)
    X_before = X.copy()
    want = X.copy()
    want[..., j, start:start + t] = x
    default = functools.partial(Backend.set_row, BACKEND)
    got = default(X, j, x, start) if t < W else default(X, j, x)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(X, X_before)
    # NumPy's own writes the row in place (no copy of the buffer per step)
    got = BACKEND.set_row(X, j, x, start) if t < W else BACKEND.set_row(X, j, x)
    assert got is X
    np.testing.assert_array_equal(X, want)


def test_solver_primitives():
    """The defaults the solvers' loops use: Gram–Schmidt products, a host-read branch
    and loops, host reads, no compilation and no trace."""
    b, rng = BACKEND, np.random.default_rng(0)
    Q = rng.standard_normal((2, 3, 5))
    W = rng.standard_normal((2, 1, 5))
    QH = np.swapaxes(Q, -1, -2)
    C = b.row_coefs(W, Q)
    np.testing.assert_allclose(C, W @ QH)
    Qc = Q + 1j * rng.standard_normal(Q.shape)  # complex rows: conjugated
    np.testing.assert_allclose(b.row_coefs(W, Qc), W @ np.conj(np.swapaxes(Qc, -1, -2)))
    np.testing.assert_allclose(b.sub_matmul(W, C, Q), W - C @ Q)
    assert b.cond(np.array(True), lambda: "yes", lambda: "no") == "yes"
    assert b.cond(np.array(False), lambda: "yes", lambda: "no") == "no"
    assert b.fori_loop(2, 5, lambda i, c: c + i, 0) == 9
    assert b.while_loop(lambda c: c[0] < 4, lambda c: (c[0] + 1, c[1] * 2), (0, 1)) == (4, 16)
    assert b.to_bool(np.array(True)) is True and b.to_float(np.array(2.5)) == 2.5
    assert b.any_true(np.array([False, True])) and not b.all_true(np.array([False, True]))
    assert b.all_finite(np.ones(3)) and not b.all_finite(np.array([1.0, np.nan]))
    assert not b.all_finite(np.array([np.inf]))
    assert b.dynamic_shapes and not b.is_traced(np.ones(2))
    assert not b.should_compile(("key",))
    f = lambda a: a  # noqa: E731
    assert b.compile(f, "key") is f
    with pytest.raises(NotImplementedError):
        b.traced_cond(np.array(True), lambda: 1, lambda: 0)
    h = b.hash_uniform((2, 3), dtype=np.dtype("float32"), seed=3)
    assert h.shape == (2, 3) and h.dtype == np.float32
