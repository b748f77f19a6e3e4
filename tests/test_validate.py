"""The argument checks (jacspec/validate.py) through the public functions, in every
backend: each bad input gets its SPEC error, and it gets it before any work (``f`` is
not called, the data not read)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse.linalg as spla

import jacspec as js
from _helpers import from_numpy, to_numpy
from jacspec import validate as V
from jacspec.backends import get_backend


def _xp(backend):
    return get_backend(backend).xp


class _Counting:
    """A function of a batch that counts its calls."""

    def __init__(self, xp):
        self.xp, self.calls = xp, 0

    def __call__(self, z):
        self.calls += 1
        return self.xp.tanh(z)


class _CountingData:
    """Re-iterable data that counts its passes."""

    def __init__(self, batches):
        self.batches, self.passes = batches, 0

    def __iter__(self):
        self.passes += 1
        return iter(self.batches)


# ----------------------------------------------------------------- operators


def test_products_take_floating_vectors_of_the_operator_framework(backend):
    op = js.aslinearoperator(from_numpy(np.ones((3, 2)), backend, "float64"))
    with pytest.raises(TypeError, match="floating-point array. Received dtype int32"):
        op.matvec(from_numpy(np.ones(2), backend, "int32"))
    with pytest.raises(TypeError, match="floating-point array"):
        op.rmatmat(from_numpy(np.ones((3, 1)), backend, "int32"))
    with pytest.raises(TypeError, match=f"Expected a {backend} array"):
        op.rmatvec([1.0, 2.0, 3.0])
    cast = op.matvec(from_numpy(np.ones(2), backend, "float32"))  # cast, not refused
    assert np.allclose(to_numpy(cast), 2.0)


def test_scaling_needs_a_scalar_of_the_operator_framework(backend):
    op = js.aslinearoperator(from_numpy(np.ones((2, 2)), backend, "float64"))
    with pytest.raises(TypeError, match=r"scalar .* Received .* of shape \(3,\)"):
        op * from_numpy(np.ones(3), backend, "float64")
    with pytest.raises(TypeError, match="scalar"):
        op * "2"
    if backend != "numpy":
        with pytest.raises(TypeError, match=f"Expected a {backend} scalar"):
            op * np.array(2.0)  # a 0-d NumPy array on another framework's operator
    assert (op * from_numpy(np.array(2.0), backend, "float64")).shape == (2, 2)


def test_operator_algebra_checks(backend):
    def op(shape):
        return js.aslinearoperator(from_numpy(np.ones(shape), backend, "float64"))

    with pytest.raises(ValueError, match=r"same shape to add. Received \(2, 3\) and \(3, 3\)"):
        op((2, 3)) - op((3, 3))
    with pytest.raises(ValueError, match=r"batch shapes \(2,\) and \(4,\)"):
        op((2, 3, 3)) @ op((4, 3, 3))
    with pytest.raises(ValueError, match="inner sizes"):
        op((2, 3)).T @ op((3, 3))
    assert (op((2, 3, 3)) + op((3, 3))).batch_shape == (2,)


def test_matrices_and_conversions(backend):
    with pytest.raises(ValueError, match=r"2-D matrix .* shape \(1, 2, 2, 2\)"):
        js.aslinearoperator(from_numpy(np.ones((1, 2, 2, 2)), backend, "float64"))
    A = from_numpy(np.array([[1.0, np.inf]]), backend, "float64")
    with pytest.raises(FloatingPointError, match="matrix contains NaN or Inf"):
        js.aslinearoperator(A)
    batched = js.aslinearoperator(from_numpy(np.ones((2, 3, 3)), backend, "float64"))
    with pytest.raises(ValueError, match=r"unbatched operator for to_scipy .* \(2,\)"):
        js.to_scipy(batched)
    with pytest.raises(TypeError, match="op to be a js.LinearOperator"):
        js.rowsum_diagonal(from_numpy(np.ones((2, 2)), backend, "float64"))
    with pytest.raises(TypeError, match="op to be a js.LinearOperator"):
        js.dense(from_numpy(np.ones((2, 2)), backend, "float64"))
    with pytest.raises(ValueError, match=r"square operator for js.rowsum_diagonal"):
        js.rowsum_diagonal(batched.T @ js.aslinearoperator(
            from_numpy(np.ones((3, 2)), backend, "float64")))


def test_solvers_take_arrays_or_operators(backend):
    with pytest.raises(TypeError, match="op to be a js.LinearOperator .* or an explicit"):
        js.svds([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(TypeError, match="op to be a js.LinearOperator"):
        js.eigsh(from_numpy(np.ones((2, 2)), backend, "int32"))
    A = from_numpy(np.diag([3.0, 1.0]), backend, "float64")
    assert float(to_numpy(js.spectral_norm(A))) == pytest.approx(3.0)


def test_scipy_operator_dtype():
    integer = spla.aslinearoperator(np.eye(2, dtype=np.int64))
    with pytest.raises(TypeError, match="floating or complex SciPy operator"):
        js.aslinearoperator(integer)


# ------------------------------------------------------------ autodiff points


def _numpy_calls():
    x = np.ones((3, 2))
    f = np.tanh
    return {
        "jacobian": lambda: js.jacobian(f, x),
        "hessian": lambda: js.hessian(lambda z: (z**2).sum(), x),
        "ggn": lambda: js.ggn(lambda p, z: z * p, lambda o, t: ((o - t) ** 2).mean(), x,
                              data=[(x, x)]),
        "slope": lambda: js.slope(f, x),
        "spectral": lambda: js.penalties.spectral(f, x),
        "frobenius": lambda: js.penalties.frobenius(f, x),
        "gradient_norm": lambda: js.penalties.gradient_norm(lambda z: (z**2).sum(), x),
    }


@pytest.mark.parametrize("entry", sorted(_numpy_calls()))
def test_every_autodiff_entry_point_refuses_numpy(entry):
    with pytest.raises(TypeError, match="NumPy has no automatic differentiation"):
        _numpy_calls()[entry]()


def test_autodiff_point_kinds():
    with pytest.raises(TypeError, match="array of torch, jax or tensorflow, or a non-empty"):
        V.point([])
    with pytest.raises(TypeError, match="Expected X to be an array of torch"):
        V.autodiff_backend("abc", "X")


# ----------------------------------------------------------- jacobian, hessian


def test_hessian_options_come_before_the_point(autodiff_backend):
    xp = _xp(autodiff_backend)
    x = from_numpy(np.ones(3), autodiff_backend, "float64")
    f = _Counting(xp)
    with pytest.raises(ValueError, match="Expected hvp to be one of"):
        js.hessian(f, x, hvp="forward")
    with pytest.raises(ValueError, match="only with data="):
        js.hessian(f, x, distributed=True)
    with pytest.raises(ValueError, match="only with data="):
        js.hessian(f, x, group=object())
    with pytest.raises(ValueError, match="Expected hvp"):
        js.hessian(f, np.ones(3), hvp="x")  # the option before the point's kind
    assert f.calls == 0


def test_dataset_flags_before_the_data_is_read(autodiff_backend):
    x = from_numpy(np.ones(3), autodiff_backend, "float64")
    data = _CountingData([x, x])

    def loss(p, batch):
        return (p * batch).sum()

    with pytest.raises(TypeError, match="Expected distributed to be a bool"):
        js.hessian(loss, x, data=data, distributed=1)
    with pytest.raises(TypeError, match="Expected progress to be a bool"):
        js.ggn(lambda p, z: p * z, loss, x, data=data, progress="yes")
    with pytest.raises(ValueError, match="group only with distributed=True"):
        js.ggn(lambda p, z: p * z, loss, x, data=data, group=object())
    with pytest.raises(TypeError, match="loss to be callable"):
        js.ggn(lambda p, z: p * z, "mse", x, data=data)
    with pytest.raises(ValueError, match="batched=False with data="):
        js.hessian(loss, x, data=data, batched=True)
    assert data.passes == 0
    with pytest.raises(ValueError, match="leading batch axis"):
        js.hessian(loss, x, data=[x[0]])


# ---------------------------------------------------------------- penalties


def test_penalty_options_before_f_runs(autodiff_backend):
    xp = _xp(autodiff_backend)
    x = from_numpy(np.ones((3, 2)), autodiff_backend, "float64")
    f = _Counting(xp)
    for bad in (dict(target="diag"), dict(derivative="hvp"), dict(method="qr"),
                dict(maxiter=0), dict(seed=1.5)):
        with pytest.raises((ValueError, TypeError)):
            js.penalties.spectral(f, x, **bad)
    with pytest.raises(TypeError, match="num_projections to be an int"):
        js.penalties.frobenius(f, x, num_projections=1.5)
    with pytest.raises(ValueError, match="non-empty batch"):
        js.penalties.frobenius(f, x[:0])
    with pytest.raises(ValueError, match="leading batch axis"):
        js.penalties.spectral(f, x[0, 0])
    with pytest.raises(ValueError, match="non-empty x"):
        js.penalties.gradient_norm(f, x[:0])
    with pytest.raises(TypeError, match="loss_fn to be callable"):
        js.penalties.gradient_norm(None, x)
    assert f.calls == 0


def test_gradient_norm_outputs(autodiff_backend):
    xp = _xp(autodiff_backend)
    x = from_numpy(np.ones((3, 2)), autodiff_backend, "float64")
    with pytest.raises(ValueError, match=r"one loss per sample, shape \(3,\). Received "
                                         r"output shape \(3, 1\)"):
        js.penalties.gradient_norm(lambda z: xp.sum(z, axis=1, keepdims=True), x)
    scalar = js.penalties.gradient_norm(lambda z: xp.sum(z), x)  # one scalar: no mean
    per_sample = js.penalties.gradient_norm(lambda z: xp.sum(z, axis=1), x)
    assert float(to_numpy(scalar)) == pytest.approx(6.0)
    assert float(to_numpy(per_sample)) == pytest.approx(2.0)


def test_conv_bound_method(backend):
    w = from_numpy(np.ones((1, 1, 3, 3)), backend, "float64")
    with pytest.raises(ValueError, match=r"method to be one of \('fantastic_four', 'gram'\)"):
        js.penalties.conv_bound(w, method="miyato")


# -------------------------------------------------------------------- slope


def test_slope_options_before_f_runs(autodiff_backend):
    xp = _xp(autodiff_backend)
    X = from_numpy(np.ones((4, 2)), autodiff_backend, "float64")
    f = _Counting(xp)
    for bad in (dict(num_between=1.0), dict(num_between=True), dict(batch_size=0),
                dict(batch_size=2.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            js.slope(f, X, **bad)
    with pytest.raises(ValueError, match="leading batch axis, shape \\(N, ...\\)"):
        js.slope(f, X[0, 0])
    assert f.calls == 0
    res = js.slope(f, X, num_between=np.int64(2), batch_size=np.int64(3))
    assert res.points_kind == ("data",) * 4 + ("between",) * 2
    with pytest.raises(ValueError, match="kind 'data', 'between' or None"):
        res.numpy("all")


# --------------------------------------------------------------------- conv


def test_conv_weight_and_geometry(backend):
    w = from_numpy(np.ones((2, 2, 3, 3)), backend, "float64")
    with pytest.raises(TypeError, match="weight of dtype float32 or float64"):
        js.conv.miyato(from_numpy(np.ones((2, 2, 3, 3)), backend, "int32"))
    with pytest.raises(FloatingPointError, match="weight contains NaN or Inf"):
        js.conv.miyato(from_numpy(np.full((2, 2, 3, 3), np.nan), backend, "float64"))
    with pytest.raises(ValueError, match="non-empty weight"):
        js.conv.miyato(from_numpy(np.ones((0, 2, 3, 3)), backend, "float64"))
    with pytest.raises(ValueError, match="non-negative padding"):
        js.conv.operator(w, (5, 5), padding=((1, -1), (0, 0)), layout="OIHW")
    with pytest.raises(ValueError, match="Expected padding 'same'"):
        js.conv.operator(w, (5, 5), padding=(1, 2, 3), layout="OIHW")
    with pytest.raises(ValueError, match="stride to be an integer >= 1"):
        js.conv.gram_bound(w, stride=(1, 0), layout="OIHW")
    with pytest.raises(ValueError, match="iterations"):
        js.conv.gram_bound(w, iterations=True, layout="OIHW")
    op = js.conv.operator(w, (5, 4), stride=2, padding=((1, 0), (0, 2)), layout="OIHW")
    assert op.shape == (2 * 2 * 2, 2 * 5 * 4)  # out (6 - 3) // 2 + 1 = 2, (6 - 3) // 2 + 1


@pytest.mark.parametrize(("shape", "padding", "out"), [
    ((7, 7), "same", (4, 4)),
    ((7, 7), "valid", (3, 3)),
    ((7, 6), 1, (4, 3)),
    ((7, 6), (0, 1), (3, 3)),
    ((6, 6), "circular", (3, 3)),
])
def test_conv_geometry_sizes(shape, padding, out):
    """Output sizes as torch/TF compute them for a 3x3 kernel at stride 2."""
    assert V.conv_geometry((3, 3), shape, 2, padding, "OIHW")[4] == out


def test_layer_report_checks_before_walking_the_model():
    torch = pytest.importorskip("torch")
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3))
    with pytest.raises(ValueError, match="input_shape to be the non-empty shape"):
        js.conv.layer_report(net, (1, 0, 8))
    with pytest.raises(ValueError, match="tol"):
        js.conv.layer_report(net, (1, 8, 8), tol=2.0)
    with pytest.raises(ValueError, match="at least one conv"):
        js.conv.layer_report(torch.nn.Sequential(torch.nn.ReLU()), (1, 8, 8))


# ---------------------------------------------------------------- lipschitz


def _dense_model(backend):
    if backend == "torch":
        import torch

        return torch.nn.Linear(3, 2).double()
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.keras.Sequential([tf.keras.Input((3,)), tf.keras.layers.Dense(2)])
    pytest.skip(f"no {backend} model here")


def test_lipschitz_data(backend):
    model = _dense_model(backend)
    good = from_numpy(np.ones((4, 3)), backend, "float32" if backend == "tensorflow"
                      else "float64")
    with pytest.raises(TypeError, match="batch of inputs, or an iterable"):
        js.lipschitz(model, (3,), data=3, refine_steps=0)
    with pytest.raises(TypeError, match=f"each batch of data to be a {backend} array"):
        js.lipschitz(model, (3,), data=[[1.0, 2.0, 3.0]], refine_steps=0)
    with pytest.raises(ValueError, match=r"with B >= 1, matching input_shape \(3,\)"):
        js.lipschitz(model, (3,), data=[good[:0]], refine_steps=0)
    with pytest.raises(ValueError, match="at least one batch"):
        js.lipschitz(model, (3,), data=[], refine_steps=0)
    with pytest.raises(TypeError, match="seed to be an int"):
        js.lipschitz(model, (3,), seed=None)
    with pytest.raises(ValueError, match="refine_steps"):
        js.lipschitz(model, (3,), refine_steps=-1)
    res = js.lipschitz(model, (3,), data=[(good, good)], refine_steps=0)
    assert 0 < res.lower <= res.upper * (1 + 1e-6)
