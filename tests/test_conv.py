"""Tests of js.conv: Fantastic Four bounds, circular singular values, conv operators.

Everything is cross-checked against an explicitly built conv matrix (pure NumPy loops
over kernel taps, ``_conv_matrix`` below) and, for the autodiff frameworks, against the
framework's own Jacobian of its conv.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jacspec as js
from _helpers import from_numpy, to_numpy

RNG = np.random.default_rng(1234)
CHANNELS_LAST = {"numpy": False, "torch": False, "jax": True, "tensorflow": True}
TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-9, atol=1e-11)}


# ------------------------------------------------------------------------- helpers


def _same(size: int, k: int, s: int) -> tuple[int, int]:
    out = -(-size // s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def _pads(padding, kh, kw, H, W, stride):
    if padding in ("same", "circular"):
        return (_same(H, kh, stride), _same(W, kw, stride))
    if padding == "valid":
        return ((0, 0), (0, 0))
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    return padding


def _conv_matrix(w, H, W, *, stride=1, padding="same", channels_last=False):
    """The dense matrix of the cross-correlation with OIHW ``w``, built tap by tap."""
    co, ci, kh, kw = w.shape
    (pt, pb), (pl, pr) = _pads(padding, kh, kw, H, W, stride)
    circular = padding == "circular"
    Ho, Wo = (H + pt + pb - kh) // stride + 1, (W + pl + pr - kw) // stride + 1
    M = np.zeros((co, Ho, Wo, ci, H, W))
    for i in range(Ho):
        for j in range(Wo):
            for a in range(kh):
                for b in range(kw):
                    r, c = i * stride + a - pt, j * stride + b - pl
                    if circular:
                        r, c = r % H, c % W
                    elif not (0 <= r < H and 0 <= c < W):
                        continue
                    M[:, i, j, :, r, c] += w[:, :, a, b]
    if channels_last:
        M = M.transpose(1, 2, 0, 4, 5, 3)
    return M.reshape(co * Ho * Wo, ci * H * W)


def _weight(w_oihw, backend, dtype="float64"):
    """The kernel in the backend's default layout."""
    w = w_oihw if not CHANNELS_LAST[backend] else w_oihw.transpose(2, 3, 1, 0)
    return from_numpy(w, backend, dtype)


def _sv(M):
    return np.linalg.svd(M, compute_uv=False)


def _grad(fn, w, backend):
    """Gradient of the scalar ``fn(w)`` in the backend's autodiff, as NumPy."""
    if backend == "torch":
        import torch

        wv = w.detach().clone().requires_grad_(True)
        (g,) = torch.autograd.grad(fn(wv), wv)
        return to_numpy(g)
    if backend == "jax":
        import jax

        return to_numpy(jax.grad(fn)(w))
    import tensorflow as tf

    wv = tf.Variable(w)
    with tf.GradientTape() as tape:
        out = fn(wv)
    return to_numpy(tape.gradient(out, wv))


def _fd_check(fn, w_oihw, backend, *, eps=1e-6):
    """Directional derivative from autodiff vs central differences (NumPy weights)."""
    g = _grad(lambda wb: fn(wb), _weight(w_oihw, backend), backend)
    if CHANNELS_LAST[backend]:
        g = g.transpose(3, 2, 0, 1)
    D = RNG.standard_normal(w_oihw.shape)
    plus = float(to_numpy(fn(_weight(w_oihw + eps * D, backend))))
    minus = float(to_numpy(fn(_weight(w_oihw - eps * D, backend))))
    fd = (plus - minus) / (2 * eps)
    np.testing.assert_allclose(np.sum(g * D), fd, rtol=1e-5, atol=1e-7)


PADDINGS = [
    ("same", 1),
    ("valid", 1),
    (1, 2),
    ("same", 2),
    ("circular", 1),
    ("circular", 2),
    (((0, 2), (1, 0)), 1),
]


# ---------------------------------------------------------------- fantastic four


def test_fantastic_four_matches_reshape_norms(backend, dtype):
    w = RNG.standard_normal((4, 3, 3, 2))
    res = js.conv.fantastic_four(_weight(w, backend, dtype))
    co, ci, h, wd = w.shape
    R = w.transpose(0, 2, 1, 3).reshape(co * h, ci * wd)
    S = w.transpose(0, 3, 1, 2).reshape(co * wd, ci * h)
    T = w.reshape(co, ci * h * wd)
    U = w.transpose(0, 2, 3, 1).reshape(co * h * wd, ci)
    ref = [_sv(M)[0] for M in (R, S, T, U)]
    got = [float(to_numpy(v)) for v in res[1:]]
    np.testing.assert_allclose(got, ref, **TOL[dtype])
    np.testing.assert_allclose(float(to_numpy(res.bound)), np.sqrt(h * wd) * min(ref),
                               **TOL[dtype])
    assert to_numpy(res.bound).shape == ()
    assert type(res.bound).__module__.split(".")[0] in {
        "numpy": ("numpy",), "torch": ("torch",), "jax": ("jax", "jaxlib"),
        "tensorflow": ("tensorflow",)}[backend]
    np.testing.assert_allclose(float(to_numpy(js.conv.miyato(_weight(w, backend, dtype)))),
                               ref[2], **TOL[dtype])


@pytest.mark.parametrize("padding", ["same", "circular", "valid", 2])
@pytest.mark.parametrize("shape", [(3, 2, 3, 3), (2, 4, 2, 3), (5, 5, 1, 3)])
def test_bound_is_above_exact_norm(backend, padding, shape):
    w = RNG.standard_normal(shape)
    bound = float(to_numpy(js.conv.fantastic_four(_weight(w, backend)).bound))
    for H, W in [(4, 5), (7, 6)]:
        exact = _sv(_conv_matrix(w, H, W, padding=padding))[0]
        assert bound >= exact * (1 - 1e-12)


@pytest.mark.parametrize("padding", ["same", "circular", "valid"])
def test_bound_is_exact_for_1x1(backend, padding):
    w = RNG.standard_normal((3, 5, 1, 1))
    wb = _weight(w, backend)
    bound = float(to_numpy(js.conv.fantastic_four(wb).bound))
    exact = _sv(_conv_matrix(w, 4, 3, padding=padding))[0]
    np.testing.assert_allclose(bound, exact, rtol=1e-10)
    np.testing.assert_allclose(float(to_numpy(js.conv.spectral_norm(wb, (4, 3),
                                                                    padding=padding))),
                               exact, rtol=1e-7)


# ------------------------------------------- fantastic four: estimate and certify

# (TINY_SIDE, DENSE_SIDE): every reshape by eigh of its Gram matrix, or every reshape by
# Lanczos estimates and a Cholesky certificate (the route of wide layers).
FF_ROUTES = {"dense": (10**9, 10**9), "certified": (0, 0)}
KINDS = ["normal", "zero", "rank_one", "dead_inputs", "delta", "spread"]


@pytest.fixture(params=sorted(FF_ROUTES))
def ff_route(request, monkeypatch):
    tiny, dense = FF_ROUTES[request.param]
    monkeypatch.setattr(js.conv, "TINY_SIDE", tiny)
    monkeypatch.setattr(js.conv, "DENSE_SIDE", dense)
    return request.param


def _examples(backend: str) -> int:
    """JAX eager compiles every new shape and TF eager is slow: fewer examples there."""
    return {"jax": 3, "tensorflow": 4}.get(backend, settings().max_examples)


def _kernel(kind: str, shape: tuple, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    co, ci, h, wd = shape
    w = rng.standard_normal(shape)
    if kind == "zero":
        return np.zeros(shape)
    if kind == "rank_one":  # w[o, i, a, b] = x[o] y[i, a, b]: T has rank one
        return rng.standard_normal(co)[:, None, None, None] * rng.standard_normal(
            (ci, h, wd))[None]
    if kind == "dead_inputs":  # rank-deficient in every reshape
        w[:, : (ci + 1) // 2] = 0.0
        return w
    if kind == "delta":  # one tap: the conv is a channel mixing, FF is loose by sqrt(hw)
        out = np.zeros(shape)
        out[:, :, h // 2, wd // 2] = w[:, :, 0, 0]
        return out
    if kind == "spread":  # singular values over six orders of magnitude
        return w * np.logspace(0, -6, co)[:, None, None, None]
    return w


def _reshape_norms(w: np.ndarray) -> list[float]:
    co, ci, h, wd = w.shape
    mats = [w.transpose(0, 2, 1, 3).reshape(co * h, ci * wd),
            w.transpose(0, 3, 1, 2).reshape(co * wd, ci * h),
            w.reshape(co, ci * h * wd), w.transpose(0, 2, 3, 1).reshape(co * h * wd, ci)]
    return [_sv(M)[0] for M in mats]


def test_fantastic_four_bound_is_certified(backend, ff_route):
    """bound >= the conv's norm (explicit conv matrices) and equals sqrt(hw) min of the
    exact reshape norms to ``tol``; each of r, s, t, u is at least bound / sqrt(hw) /
    (1 + tol), and the reshape the bound comes from is among them."""

    @settings(max_examples=_examples(backend))
    @given(co=st.integers(1, 6), ci=st.integers(1, 6), h=st.integers(1, 3),
           wd=st.integers(1, 3), kind=st.sampled_from(KINDS),
           dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 99),
           tol=st.sampled_from([1e-3, 1e-2]))
    def run(co, ci, h, wd, kind, dtype, seed, tol):
        w = _kernel(kind, (co, ci, h, wd), seed).astype(dtype).astype(np.float64)
        res = js.conv.fantastic_four(_weight(w, backend, dtype), tol=tol)
        got = np.array([float(to_numpy(v)) for v in res])
        norms = _reshape_norms(w)
        ref = np.sqrt(h * wd) * min(norms)
        slack = 1e-4 if dtype == "float32" else 1e-10
        tiny = slack * np.abs(w).max(initial=0.0)
        bound = got[0]
        assert ref * (1 - slack) - tiny <= bound <= ref * (1 + tol) * (1 + slack) + tiny
        assert np.any(np.abs(np.sqrt(h * wd) * got[1:] - bound) <= slack * bound + tiny)
        assert np.all(got[1:] * np.sqrt(h * wd) * (1 + tol) * (1 + slack) + tiny >= bound)
        assert np.all(got[1:] <= np.array(norms) * (1 + tol) * (1 + slack) + tiny)
        for padding in ("same", "circular"):
            H, W = h + 2, wd + 1
            exact = _sv(_conv_matrix(w, H, W, padding=padding))[0]
            assert bound >= exact * (1 - slack) - tiny

    run()


@pytest.mark.parametrize("shape", [(5, 4, 3, 2), (3, 6, 2, 3), (4, 4, 1, 1)])
def test_fantastic_four_gradient_matches_dense_svd(autodiff_backend, ff_route, shape):
    """The envelope gradient of the bound is the framework's own autodiff of
    ``sqrt(hw) * svdvals(M)[0]`` for the reshape ``M`` the bound comes from."""
    backend = autodiff_backend
    w = RNG.standard_normal(shape)
    co, ci, h, wd = shape
    j = int(np.argmin(_reshape_norms(w)))
    perms = [(0, 2, 1, 3), (0, 3, 1, 2), (0, 1, 2, 3), (0, 2, 3, 1)]
    sizes = [(co * h, ci * wd), (co * wd, ci * h), (co, ci * h * wd), (co * h * wd, ci)]

    def reference(wb):
        xp = js.backends.infer_backend(wb).xp
        oihw = xp.permute_dims(wb, (3, 2, 0, 1)) if CHANNELS_LAST[backend] else wb
        M = xp.reshape(xp.permute_dims(oihw, perms[j]), sizes[j])
        if backend == "tensorflow":
            import tensorflow as tf

            return np.sqrt(h * wd) * tf.linalg.svd(M)[0][0]  # svd, not svdvals: gradient
        return np.sqrt(h * wd) * xp.linalg.svdvals(M)[0]

    wb = _weight(w, backend)
    got = _grad(lambda v: js.conv.fantastic_four(v, tol=1e-9).bound, wb, backend)
    ref = _grad(reference, wb, backend)
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-8)
    pen = _grad(lambda v: js.penalties.conv_bound(v), wb, backend)
    np.testing.assert_allclose(pen, ref, rtol=2e-2, atol=2e-3)


def test_fantastic_four_mixed_routes_float32(backend, monkeypatch):
    """float32, thresholds set so that the reshapes of one kernel take different routes
    (T tiny, U and S dense, R Lanczos + Cholesky): the bound is certified against float64
    SVDs of the reshapes."""
    monkeypatch.setattr(js.conv, "TINY_SIDE", 12)
    monkeypatch.setattr(js.conv, "DENSE_SIDE", 20)
    w = RNG.standard_normal((12, 22, 3, 2))
    res = js.conv.fantastic_four(_weight(w, backend, "float32"), tol=1e-3)
    ref = np.sqrt(6.0) * min(_reshape_norms(w.astype(np.float32).astype(np.float64)))
    bound = float(to_numpy(res.bound))
    assert ref * (1 - 1e-5) <= bound <= ref * (1 + 1e-3) * (1 + 1e-4)


def test_gram_certificate(dtype):
    """The host Cholesky test behind the certificate: no bound below the norm, a bound
    just above it, and an all-zero matrix certified as 0."""
    from jacspec._rounding import GramCertificate

    M = RNG.standard_normal((30, 7)).astype(dtype).astype(np.float64)
    M /= np.abs(M).max()
    norm = _sv(M)[0]
    cert = GramCertificate(M)
    assert cert.bound(norm * (1 - 1e-6)) is None
    ub = cert.bound(norm * (1 + 1e-9))
    assert ub is not None and norm <= ub <= norm * (1 + 1e-8)
    assert cert.frobenius() >= np.linalg.norm(M)
    assert GramCertificate(np.zeros((3, 2))).bound(1.0) == 0.0


def test_fantastic_four_falls_back_when_not_certified(backend, ff_route, monkeypatch):
    """Where the estimate is too low for the Cholesky test, float64 ``eigh`` of the Gram
    matrix gives the top, and the bound is still within tol of the exact value."""
    low = lambda f: (lambda *a, **k: f(*a, **k)._replace(value=f(*a, **k).value / 2))
    monkeypatch.setattr(js.conv, "_dense_norm", low(js.conv._dense_norm))
    monkeypatch.setattr(js.conv, "_estimate", low(js.conv._estimate))
    w = RNG.standard_normal((3, 4, 2, 2))
    bound = float(to_numpy(js.conv.fantastic_four(_weight(w, backend), tol=1e-3).bound))
    ref = 2.0 * min(_reshape_norms(w))
    assert ref <= bound <= ref * (1 + 1e-3)


@pytest.mark.parametrize("shape", [(20000, 1, 1, 1), (8192, 2, 1, 1), (2, 8192, 1, 1),
                                   (600, 40, 1, 1)])
def test_fantastic_four_long_reshapes_float32(backend, shape):
    """1x1 kernels with a long side in float32: the Gram matrix accumulates over the long
    side, and the certified bound still never falls below the exact norm (float64 SVD of
    the same float32 numbers)."""
    for seed in range(3):
        w = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        bound = float(to_numpy(js.conv.fantastic_four(_weight(w, backend, "float32"),
                                                      tol=1e-3).bound))
        exact = _sv(w.astype(np.float64)[:, :, 0, 0])[0]
        assert exact <= bound <= exact * (1 + 1e-3)


def _scaled_exact(w: np.ndarray, scale: float) -> float:
    """sqrt(hw) min of the reshape norms of ``w * scale`` (``w`` of moderate entries)."""
    return float(np.sqrt(w.shape[2] * w.shape[3]) * min(_reshape_norms(w)) * scale)


def test_fantastic_four_certified_at_every_scale(backend, ff_route):
    """From the subnormal range to near overflow, in float32 and float64, the certified
    bound is finite, never below the exact value and within tol of it (the kernel is
    rescaled by an exact power of two before any Gram matrix is formed)."""

    @settings(max_examples=_examples(backend), deadline=None)
    @given(dtype=st.sampled_from(["float32", "float64"]), log2=st.floats(-1, 1),
           where=st.floats(0, 1), seed=st.integers(0, 99),
           shape=st.sampled_from([(3, 2, 3, 3), (5, 1, 1, 1), (2, 4, 2, 3)]))
    def run(dtype, log2, where, seed, shape):
        lo, hi = {"float32": (-120, 120), "float64": (-1000, 1000)}[dtype]
        e = int(lo + where * (hi - lo))
        base = (np.random.default_rng(seed).standard_normal(shape) * 2.0 ** log2)
        w = base.astype(dtype)
        scale = 2.0 ** e  # exact: w * scale holds the same significands
        wb = _weight(w.astype(np.float64) * scale, backend, dtype)
        bound = float(to_numpy(js.conv.fantastic_four(wb, tol=1e-3).bound))
        exact = _scaled_exact(w.astype(np.float64), scale)
        assert np.isfinite(bound)
        assert exact <= bound
        # Entries in the subnormal range carry few significant bits (and XLA/TF CPU
        # kernels flush them to zero), so the rounding slack of the bound grows there.
        subnormal = np.abs(w.astype(np.float64) * scale).min() < np.finfo(dtype).tiny
        assert bound <= exact * (1 + 1e-3) * (1 + (1e-2 if subnormal else 1e-6))

    run()


def test_fantastic_four_bad_tol(backend):
    w = _weight(RNG.standard_normal((2, 2, 3, 3)), backend)
    with pytest.raises(ValueError, match="tol"):
        js.conv.fantastic_four(w, tol=0.0)
    with pytest.raises(TypeError, match="tol"):
        js.conv.fantastic_four(w, tol="1e-3")


# ------------------------------------------------------------ circular (Sedghi)


@pytest.mark.parametrize("H, W, shape", [(4, 4, (2, 3, 3, 3)), (5, 6, (3, 2, 2, 3)),
                                         (3, 7, (2, 2, 3, 1)), (2, 1, (3, 1, 2, 1))])
def test_circular_singular_values_equal_dense_svd(backend, dtype, H, W, shape):
    w = RNG.standard_normal(shape)
    vals = to_numpy(js.conv.circular_singular_values(_weight(w, backend, dtype), (H, W)))
    ref = _sv(_conv_matrix(w, H, W, padding="circular"))
    assert vals.shape == ref.shape == (H * W * min(shape[:2]),)
    np.testing.assert_allclose(vals, ref, **TOL[dtype])
    assert np.all(np.diff(vals) <= 0)


# --------------------------------------------------------------------- operator


@pytest.mark.parametrize("padding, stride", PADDINGS)
def test_operator_dense_and_adjoint(backend, padding, stride):
    w = RNG.standard_normal((3, 2, 3, 2))
    H, W = 5, 6
    op = js.conv.operator(_weight(w, backend), (H, W), stride=stride, padding=padding)
    M = _conv_matrix(w, H, W, stride=stride, padding=padding,
                     channels_last=CHANNELS_LAST[backend])
    assert op.shape == M.shape
    assert op.backend == backend
    np.testing.assert_allclose(to_numpy(js.dense(op)), M, atol=1e-12)
    np.testing.assert_allclose(to_numpy(js.dense(op.T)), M.T, atol=1e-12)
    # the adjoint identity <A x, y> = <x, A^T y> on random vectors
    x = RNG.standard_normal(op.shape[1])
    y = RNG.standard_normal(op.shape[0])
    Ax = to_numpy(op.matvec(from_numpy(x, backend)))
    ATy = to_numpy(op.rmatvec(from_numpy(y, backend)))
    np.testing.assert_allclose(Ax @ y, x @ ATy, rtol=1e-10)


def _framework_conv(backend, w, stride, padding):
    """``x -> conv(x)`` for ONE image in the framework's own conv API."""
    if backend == "torch":
        import torch
        import torch.nn.functional as F

        wt = torch.from_numpy(w)

        def f(x):
            if padding == "circular":
                kh, kw = w.shape[-2:]
                x = F.pad(x[None], (kw // 2, kw // 2, kh // 2, kh // 2), mode="circular")[0]
                return F.conv2d(x[None], wt, stride=stride)[0]
            return F.conv2d(x[None], wt, stride=stride, padding=padding)[0]

        return f
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        wj = jnp.asarray(w.transpose(2, 3, 1, 0))

        def f(x):
            return jax.lax.conv_general_dilated(
                x[None], wj, (stride, stride), padding.upper(),
                dimension_numbers=("NHWC", "HWIO", "NHWC"),
                precision=jax.lax.Precision.HIGHEST)[0]

        return f
    import tensorflow as tf

    wtf = tf.constant(w.transpose(2, 3, 1, 0))

    def f(x):
        return tf.nn.conv2d(x[None], wtf, strides=stride, padding=padding.upper())[0]

    return f


@pytest.mark.parametrize("padding, stride", [("same", 1), ("valid", 1), ("valid", 2),
                                             ("same", 2), ("circular", 1)])
def test_operator_equals_framework_jacobian(autodiff_backend, padding, stride):
    backend = autodiff_backend
    if padding == "circular" and backend != "torch":
        pytest.skip("circular padding is native to torch only")
    if backend == "torch" and padding == "same" and stride > 1:
        pytest.skip("torch has no padding='same' with stride > 1")
    w = RNG.standard_normal((2, 3, 3, 3))
    H, W = 5, 4
    f = _framework_conv(backend, w, stride, padding)
    shape = (3, H, W) if backend == "torch" else (H, W, 3)
    x = from_numpy(RNG.standard_normal(shape), backend)
    J = js.dense(js.jacobian(f, x))
    op = js.conv.operator(_weight(w, backend), (H, W), stride=stride, padding=padding)
    np.testing.assert_allclose(to_numpy(js.dense(op)), to_numpy(J), atol=1e-12)


@pytest.mark.parametrize("padding, stride", PADDINGS)
def test_spectral_norm_equals_dense(backend, padding, stride):
    w = RNG.standard_normal((3, 2, 3, 3))
    H, W = 6, 5
    got = js.conv.spectral_norm(_weight(w, backend), (H, W), stride=stride, padding=padding)
    ref = _sv(_conv_matrix(w, H, W, stride=stride, padding=padding))[0]
    assert to_numpy(got).shape == ()
    np.testing.assert_allclose(float(to_numpy(got)), ref, rtol=1e-6)


@pytest.mark.slow
def test_spectral_norm_lanczos(backend):
    """The Krylov path (what real layers take), value and gradient."""
    w = RNG.standard_normal((2, 1, 3, 3))
    ref = _sv(_conv_matrix(w, 4, 4, stride=1, padding=1))[0]
    got = js.conv.spectral_norm(_weight(w, backend), (4, 4), padding=1, method="lanczos")
    np.testing.assert_allclose(float(to_numpy(got)), ref, rtol=1e-6)
    if backend != "numpy":
        _fd_check(lambda wb: js.conv.spectral_norm(wb, (4, 4), padding=1, method="lanczos"),
                  w, backend)


def test_float32(backend):
    w = RNG.standard_normal((3, 2, 3, 3))
    wb = _weight(w, backend, "float32")
    ref = _sv(_conv_matrix(w, 6, 6, padding="same"))[0]
    got = js.conv.spectral_norm(wb, (6, 6))
    assert "float32" in str(got.dtype)
    np.testing.assert_allclose(float(to_numpy(got)), ref, rtol=1e-3)
    op = js.conv.operator(wb, (6, 6), stride=2, padding=1)
    M = _conv_matrix(w, 6, 6, stride=2, padding=1, channels_last=CHANNELS_LAST[backend])
    np.testing.assert_allclose(to_numpy(js.dense(op)), M, rtol=1e-4, atol=1e-5)


def test_layouts_agree_across_frameworks(backend):
    """The same kernel, converted to each layout, gives the numbers NumPy gives in OIHW."""
    w = RNG.standard_normal((4, 3, 3, 2))
    ref = js.conv.fantastic_four(w, layout="OIHW")
    ref_circ = js.conv.circular_singular_values(w, (5, 4), layout="OIHW")
    ref_norm = js.conv.spectral_norm(w, (5, 4), stride=2, padding="valid", layout="OIHW")
    for layout, arr in [("OIHW", w), ("HWIO", w.transpose(2, 3, 1, 0)),
                        ("IOWH", w.transpose(1, 0, 3, 2))]:
        wb = from_numpy(arr, backend)
        got = js.conv.fantastic_four(wb, layout=layout)
        np.testing.assert_allclose(np.array(to_numpy(list(got))), np.array(list(ref)),
                                   rtol=1e-10)
        circ = js.conv.circular_singular_values(wb, (5, 4), layout=layout)
        np.testing.assert_allclose(to_numpy(circ), ref_circ, rtol=1e-10, atol=1e-12)
        norm = js.conv.spectral_norm(wb, (5, 4), stride=2, padding="valid", layout=layout)
        np.testing.assert_allclose(float(to_numpy(norm)), float(ref_norm), rtol=1e-6)


# -------------------------------------------------------------------- gradients


@pytest.mark.slow
def test_gradients_match_finite_differences(autodiff_backend):
    backend = autodiff_backend
    w = RNG.standard_normal((3, 2, 3, 3))
    _fd_check(lambda wb: js.conv.fantastic_four(wb).bound, w, backend)
    _fd_check(lambda wb: js.conv.miyato(wb), w, backend)
    _fd_check(lambda wb: js.conv.spectral_norm(wb, (5, 5), padding="same"), w, backend)
    _fd_check(lambda wb: js.conv.spectral_norm(wb, (5, 5), stride=2, padding="valid"),
              w, backend)
    _fd_check(lambda wb: js.conv.spectral_norm(wb, (5, 4), padding="circular"), w, backend)
    xp_sum = {"torch": lambda v: v.sum(), "jax": lambda v: v.sum()}

    def circ_sum(wb):
        v = js.conv.circular_singular_values(wb, (4, 5))
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.reduce_sum(v[:7])
        return xp_sum[backend](v[:7])

    _fd_check(circ_sum, w, backend)


def test_jax_jit(backend):
    if backend != "jax":
        pytest.skip("jax only")
    import jax

    w = _weight(RNG.standard_normal((2, 2, 3, 3)), "jax")
    f = jax.jit(lambda wb: js.conv.fantastic_four(wb).bound)
    np.testing.assert_allclose(float(f(w)), float(js.conv.fantastic_four(w).bound))
    g = jax.jit(lambda wb: js.conv.circular_singular_values(wb, (4, 4))[0])
    np.testing.assert_allclose(float(g(w)),
                               float(js.conv.circular_singular_values(w, (4, 4))[0]))


# -------------------------------------------------------------------- bad input


def test_bad_input(backend):
    w = _weight(RNG.standard_normal((2, 3, 3, 3)), backend)
    with pytest.raises(ValueError, match=r"\(2, 3, 3\)"):
        js.conv.fantastic_four(from_numpy(np.ones((2, 3, 3)), backend))
    with pytest.raises(ValueError, match="OIH"):
        js.conv.fantastic_four(w, layout="OIH")
    with pytest.raises(ValueError, match="NCHW"):
        js.conv.miyato(w, layout="NCHW")
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        js.conv.operator(w, (2, 2), padding="valid")
    with pytest.raises(ValueError, match=r"\(2, 5\)"):
        js.conv.circular_singular_values(w, (2, 5))
    with pytest.raises(ValueError, match="0"):
        js.conv.operator(w, (5, 5), stride=0)
    with pytest.raises(ValueError, match="-1"):
        js.conv.spectral_norm(w, (5, 5), stride=-1)
    with pytest.raises(ValueError, match="reflect"):
        js.conv.operator(w, (5, 5), padding="reflect")
    with pytest.raises(ValueError, match="input_size"):
        js.conv.operator(w, (5, 0))
    with pytest.raises(TypeError):
        js.conv.fantastic_four([[[[1.0]]]])
    with pytest.raises(TypeError, match="int"):
        js.conv.fantastic_four(from_numpy(np.ones((1, 1, 1, 1), dtype=np.int32), backend))


def test_layout_mismatch_is_reported(backend):
    # An OIHW torch-style kernel (8, 4, 3, 3) read as HWIO is a 8x4 kernel: too large for
    # a 5x5 input with "valid" padding; the error names the shape and the layout.
    w = from_numpy(RNG.standard_normal((8, 4, 3, 3)), backend)
    with pytest.raises(ValueError, match="layout"):
        js.conv.spectral_norm(w, (5, 5), padding="valid", layout="HWIO")


# ------------------------------------------------------------------ layer report


def test_layer_report_torch(backend):
    if backend != "torch":
        pytest.skip("torch models")
    import torch
    from torch import nn

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode="circular"), nn.ReLU(),
        nn.Conv2d(6, 6, 3, groups=2, dilation=2, padding="same"), nn.ReLU(),
        nn.Flatten(), nn.Linear(6 * 4 * 4, 10),
    ).double()
    net.train()
    before = [b.clone() for b in net.buffers()]
    rep = js.conv.layer_report(net, (1, 8, 8))
    assert net.training and all(torch.equal(a, b) for a, b in zip(before, net.buffers()))
    assert [r.name for r in rep] == ["0", "3", "5", "8"]
    assert [r.input_size for r in rep] == [(8, 8), (8, 8), (4, 4), (96,)]
    ws = [net[0].weight, net[3].weight, net[5].weight]
    H = [8, 8, 4]
    # reference: the dense matrix of each conv, from torch's own Jacobian
    import torch.nn.functional as F

    for row, conv, h in zip(rep, [net[0], net[3], net[5]], H):
        x = torch.zeros(1, conv.in_channels, h, h, dtype=torch.float64)

        def f(v, conv=conv):
            return conv._conv_forward(v[None], conv.weight, None)[0]

        J = torch.autograd.functional.jacobian(f, x[0]).reshape(-1, x[0].numel())
        exact = torch.linalg.matrix_norm(J, ord=2).item()
        np.testing.assert_allclose(row.exact, exact, rtol=1e-6)
        assert row.bound >= row.exact * (1 - 1e-9)
    assert rep[3].exact == pytest.approx(torch.linalg.matrix_norm(net[8].weight, ord=2).item())
    assert rep[-1].product == pytest.approx(np.prod([r.exact for r in rep]))
    text = str(rep)
    assert "fantastic4" in text and "circular" in text and len(text.splitlines()) == 6
    del ws, F
    with pytest.raises(ValueError, match="no"):
        js.conv.layer_report(nn.Sequential(nn.ReLU()), (3, 4))


def test_layer_report_keras(backend):
    if backend != "tensorflow":
        pytest.skip("keras models")
    import tensorflow as tf

    keras = tf.keras
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(4, 3, padding="same", name="c1"),
        keras.layers.ReLU(),
        keras.layers.Conv2D(5, 3, strides=2, padding="valid", name="c2"),
        keras.layers.Flatten(),
        keras.layers.Dense(10, name="d"),
    ])
    rep = js.conv.layer_report(model, (8, 8, 1))
    assert [r.name for r in rep] == ["c1", "c2", "d"]
    assert [r.input_size for r in rep] == [(8, 8), (8, 8), (45,)]
    for row, layer, pad, step in [(rep[0], model.layers[0], "same", 1),
                                  (rep[1], model.layers[2], "valid", 2)]:
        w = layer.kernel.numpy().astype(np.float64).transpose(3, 2, 0, 1)
        ref = _sv(_conv_matrix(w, 8, 8, stride=step, padding=pad))[0]
        np.testing.assert_allclose(row.exact, ref, rtol=1e-4)
        assert row.bound >= row.exact * (1 - 1e-5)
    np.testing.assert_allclose(rep[2].exact, _sv(model.layers[-1].kernel.numpy())[0],
                               rtol=1e-5)
    assert "c2" in str(rep)
    with pytest.raises(ValueError, match="no"):
        js.conv.layer_report(keras.Sequential([keras.Input((4,)), keras.layers.ReLU()]), (4,))
