"""Tests of js.conv.gram_bound (Gram iteration, Delattre et al. 2023, 2024) and of
js.penalties.conv_bound(method="gram").

The bound is checked against the dense float64 matrix of the convolution (from
``js.conv.operator`` in NumPy and ``js.dense``), against ``js.conv.spectral_norm``, and
against the authors' formulas ported to NumPy below.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jacspec as js
from _helpers import from_numpy, to_numpy

RNG = np.random.default_rng(7)
CHANNELS_LAST = {"numpy": False, "torch": False, "jax": True, "tensorflow": True}


def _weight(w_oihw, backend, dtype="float64"):
    w = w_oihw if not CHANNELS_LAST[backend] else w_oihw.transpose(2, 3, 1, 0)
    return from_numpy(w, backend, dtype)


def _dense_norm(w, n, stride, padding):
    """The norm of the conv from its dense float64 matrix (NumPy products)."""
    M = to_numpy(js.dense(js.conv.operator(w, (n, n), stride=stride, padding=padding)))
    return float(np.linalg.norm(M, 2)) if M.size else 0.0


def _value(w, backend, dtype, *args, **kw):
    return float(to_numpy(js.conv.gram_bound(_weight(w, backend, dtype), *args, **kw)))


def _examples(backend: str) -> int:
    return {"jax": 2, "tensorflow": 3}.get(backend, 12)


def _kernel(kind, shape, seed):
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(shape)
    if kind == "zero":
        return np.zeros(shape)
    if kind == "rank_one":
        return rng.standard_normal(shape[0])[:, None, None, None] * rng.standard_normal(
            shape[1:])[None]
    if kind == "delta":
        out = np.zeros(shape)
        out[:, :, shape[2] // 2, shape[3] // 2] = w[:, :, 0, 0]
        return out
    if kind == "spread":
        return w * np.logspace(0, -5, shape[0])[:, None, None, None]
    return w


PADS = ["circular", "same", "valid", 1, (0, 2)]


def test_gram_bound_is_certified_against_dense(backend):
    """Never below the dense float64 norm of the layer (float32 and float64, zero or
    circular padding, strides, kernels of every kind, scales from tiny to huge), and for
    circular padding with a stride that divides the size, within the Gram iteration's
    own factor ``rank^(1 / 2^(t+1))`` of it."""

    @settings(max_examples=_examples(backend), deadline=None)
    @given(co=st.integers(1, 4), ci=st.integers(1, 4), kh=st.integers(1, 3),
           kw=st.integers(1, 3), stride=st.integers(1, 3), extra=st.integers(0, 5),
           padding=st.sampled_from(PADS), kind=st.sampled_from(
               ["normal", "zero", "rank_one", "delta", "spread"]),
           dtype=st.sampled_from(["float32", "float64"]), t=st.integers(0, 7),
           where=st.floats(0, 1), seed=st.integers(0, 99))
    def run(co, ci, kh, kw, stride, extra, padding, kind, dtype, t, where, seed):
        n = max(kh, kw) + extra
        if padding == "circular":
            n = stride * -(-n // stride)
        lo, hi = {"float32": (-100, 100), "float64": (-900, 900)}[dtype]
        e = int(lo + where * (hi - lo))
        w = _kernel(kind, (co, ci, kh, kw), seed).astype(dtype).astype(np.float64)
        exact = _dense_norm(w, n, stride, padding) * 2.0 ** e
        got = _value(w * 2.0 ** e, backend, dtype, (n, n), stride=stride, padding=padding,
                     iterations=t)
        assert np.isfinite(got)
        assert got >= exact
        if padding == "circular":
            rank = min(co, ci * min(stride, kh) * min(stride, kw))
            slack = 1e-4 if dtype == "float32" else 1e-9
            assert got <= exact * rank ** (0.5 ** (t + 1)) * (1 + slack) + 2.0 ** (e - 60)

    run()


def test_gram_bound_any_input_size(backend):
    """Without input_size: above the norm on every input size tried (zero and circular
    padding, strides), and within the grid factor and the Gram factor of the largest."""

    @settings(max_examples=_examples(backend) // 2 + 2, deadline=None)
    @given(co=st.integers(1, 3), ci=st.integers(1, 3), k=st.integers(1, 3),
           stride=st.integers(1, 2), padding=st.sampled_from(["circular", "same", 1]),
           dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 99))
    def run(co, ci, k, stride, padding, dtype, seed):
        w = _kernel("normal", (co, ci, k, k), seed).astype(dtype).astype(np.float64)
        got = _value(w, backend, dtype, None, stride=stride, padding=padding)
        sizes = [n for n in (k, k + 1, 2 * k + 2, 3 * k + 4)
                 if padding != "circular" or n % stride == 0]
        exact = max(_dense_norm(w, n, stride, padding) for n in sizes)
        assert got >= exact

    run()


@pytest.mark.parametrize("iterations", [4, 6, 9])
def test_gram_bound_matches_spectral_norm(backend, dtype, iterations):
    """Tight on a layer whose top singular value stands out: circular padding equals
    js.conv.spectral_norm to the Gram factor, and more iterations are tighter."""
    w = RNG.standard_normal((6, 5, 3, 3))
    w[:, :, 1, 1] += 4.0 * np.outer(RNG.standard_normal(6), RNG.standard_normal(5))
    wb = _weight(w, backend, dtype)
    exact = float(to_numpy(js.conv.spectral_norm(wb, (12, 12), padding="circular")))
    got = float(to_numpy(js.conv.gram_bound(wb, (12, 12), iterations=iterations)))
    tight = {4: 1e-2, 6: 1e-3, 9: 1e-5}[iterations]
    slack = 1e-5 if dtype == "float32" else 1e-12
    assert exact * (1 - slack) <= got <= exact * (1 + tight)


def _delattre2023(w, n, n_iter):
    """The authors' circular-padding bound (``compute_delattre2023`` of lip4conv), in
    NumPy: per-frequency Gram iteration with Frobenius rescaling, no rounding terms."""
    cout, cin = w.shape[:2]
    if cin > cout:
        w = w.transpose(1, 0, 2, 3)
        cin, cout = cout, cin
    X = np.fft.rfft2(w, s=(n, n)).reshape(cout, cin, -1).transpose(2, 0, 1)
    log_norm, inv = np.zeros(X.shape[0]), 1.0
    for _ in range(n_iter):
        nrm = np.linalg.norm(X, axis=(1, 2))
        X = X / nrm[:, None, None]
        log_norm = 2 * log_norm + np.log(nrm)
        X = np.conj(X.transpose(0, 2, 1)) @ X
        inv /= 2
    return float(np.max(np.linalg.norm(X, axis=(1, 2)) ** inv * np.exp(2 * inv * log_norm)))


def _delattre2024(w, n_iter):
    """The authors' any-size bound (``compute_spectral_rescaling_conv`` of lip4conv), in
    NumPy: Gram iteration on the kernel itself (a full 2-D correlation each step, the
    kernel growing to ``2^t (k - 1) + 1`` taps) and the largest absolute row sum."""
    from scipy.signal import correlate

    if w.shape[1] > w.shape[0]:
        w = w.transpose(1, 0, 2, 3)
    K, log_norm = w, 0.0
    for _ in range(n_iter):
        nrm = np.linalg.norm(K)
        K = K / nrm
        log_norm = 2 * (log_norm + np.log(nrm))
        c = K.shape[0]
        # conv2d(K, K, padding=k-1): out[o, p] = sum_{c', a} K[o, c', p + a] K[p', c', a]
        K = np.stack([np.stack([sum(correlate(K[o, j], K[q, j], mode="full")
                                    for j in range(K.shape[1])) for q in range(c)])
                      for o in range(c)])
    inv = 2.0 ** -n_iter
    return float(np.max(np.abs(K).sum(axis=(1, 2, 3)) ** inv * np.exp(log_norm * inv)))


def test_gram_bound_agrees_with_the_authors_formula(backend):
    """Circular padding: the authors' value (same algorithm, without rounding terms)
    equals ours to float64 rounding."""
    w = RNG.standard_normal((4, 3, 3, 3))
    for n, t in [(8, 3), (11, 6)]:
        ours = _value(w, backend, "float64", (n, n), iterations=t)
        np.testing.assert_allclose(ours, _delattre2023(w, n, t), rtol=1e-10)


def test_any_size_bound_against_the_authors(backend):
    """Any input size: both the authors' spatial bound and ours are above the norm on
    every input size tried, and ours is the tighter here (NumPy only: the reference is
    NumPy code)."""
    if backend != "numpy":
        pytest.skip("numpy only")
    w = RNG.standard_normal((4, 3, 3, 3))
    exact = max(_dense_norm(w, n, 1, "same") for n in (3, 4, 7, 10))
    ours = float(js.conv.gram_bound(w, padding="same"))
    assert exact <= ours <= _delattre2024(w, 4)


def test_gram_bound_gradient(autodiff_backend):
    """The gradient is that of the exact norm (circular padding, many iterations: the
    bound converges to the norm, and so does its gradient, the envelope ``u v^T``)."""
    from test_conv import _grad

    backend = autodiff_backend
    w = RNG.standard_normal((4, 3, 3, 3))
    w[:, :, 0, 0] += 3.0 * np.outer(RNG.standard_normal(4), RNG.standard_normal(3))
    wb = _weight(w, backend)
    got = _grad(lambda v: js.conv.gram_bound(v, (6, 6), iterations=8), wb, backend)
    ref = _grad(lambda v: js.conv.spectral_norm(v, (6, 6), padding="circular"), wb, backend)
    np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6)
    pen = _grad(lambda v: js.penalties.conv_bound(v, method="gram"), wb, backend)
    assert np.all(np.isfinite(pen)) and np.linalg.norm(pen) > 0


def test_gram_bound_under_jit(backend):
    if backend != "jax":
        pytest.skip("jax only")
    import jax

    w = _weight(RNG.standard_normal((3, 2, 3, 3)), backend, "float32")
    eager = float(js.conv.gram_bound(w, (8, 8), padding="same"))
    jitted = float(jax.jit(lambda v: js.conv.gram_bound(v, (8, 8), padding="same"))(w))
    np.testing.assert_allclose(jitted, eager, rtol=1e-5)


def test_penalty_method(backend):
    w = _weight(RNG.standard_normal((3, 2, 3, 3)), backend)
    gram = float(to_numpy(js.penalties.conv_bound(w, method="gram")))
    assert gram == float(to_numpy(js.conv.gram_bound(w)))
    ff = float(to_numpy(js.penalties.conv_bound(w)))
    assert ff == float(to_numpy(js.conv.fantastic_four(w).bound))
    with pytest.raises(ValueError, match="Expected method .* Received method='power'"):
        js.penalties.conv_bound(w, method="power")


def test_gram_bound_bad_input(backend):
    w = _weight(RNG.standard_normal((3, 2, 3, 3)), backend)
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="Expected iterations"):
            js.conv.gram_bound(w, iterations=bad)
    with pytest.raises(ValueError, match="padding"):
        js.conv.gram_bound(w, (8, 8), padding="reflect")
    with pytest.raises(ValueError, match="stride"):
        js.conv.gram_bound(w, (8, 8), stride=0)
    with pytest.raises(ValueError, match="at least as large as the kernel"):
        js.conv.gram_bound(w, (2, 2), padding="valid")


def test_grid_factor():
    """The sampled maximum times the factor bounds the supremum of ||D(w)|| (checked on
    a fine grid), and a one-tap kernel needs no factor."""
    from jacspec._gram_iteration import grid_factor

    assert grid_factor((1, 1), (1, 1)) == 1.0
    assert grid_factor((5, 5), (4, 4)) == math.inf
    w = RNG.standard_normal((3, 2, 3, 3))
    fine = np.linalg.norm(np.fft.fft2(w, s=(256, 256)).transpose(2, 3, 0, 1), 2,
                          axis=(2, 3)).max()
    for N in (8, 16, 64):
        coarse = np.linalg.norm(np.fft.fft2(w, s=(N, N)).transpose(2, 3, 0, 1), 2,
                                axis=(2, 3)).max()
        assert coarse * grid_factor((3, 3), (N, N)) >= fine
