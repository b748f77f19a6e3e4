"""A small array-API namespace over TensorFlow.

array-api-compat does not cover TensorFlow. This shim gives the core the array-API names
it uses (``concat``, ``permute_dims``, ``matrix_transpose``, ``astype``, ``vecdot``,
``linalg.eigh``/``svd``/``svdvals``/``vector_norm``, ``fft.rfft2``...) on top of
``tf.experimental.numpy`` and ``tf.linalg``. Anything not defined here falls through to
``tf.experimental.numpy``. When the core needs a new function, add it here.
"""

from __future__ import annotations

import functools
from collections import namedtuple
from types import SimpleNamespace
from typing import Any

import numpy as np
import tensorflow as tf
import tensorflow.experimental.numpy as tnp

EighResult = namedtuple("EighResult", ["eigenvalues", "eigenvectors"])
SVDResult = namedtuple("SVDResult", ["U", "S", "Vh"])
QRResult = namedtuple("QRResult", ["Q", "R"])

float32 = tf.float32
float64 = tf.float64
complex64 = tf.complex64
complex128 = tf.complex128
int32 = tf.int32
int64 = tf.int64
bool = tf.bool  # noqa: A001 - array-API name
pi = np.pi
inf = np.inf
nan = np.nan
e = np.e


def _dt(dtype: Any) -> Any:
    return None if dtype is None else tf.as_dtype(dtype)


def _on(device: Any):
    import contextlib

    return tf.device(device) if device else contextlib.nullcontext()


def asarray(x: Any, /, *, dtype: Any = None, device: Any = None, copy: Any = None) -> tf.Tensor:
    with _on(device):
        if isinstance(x, (tf.Tensor, tf.Variable)):
            x = tf.convert_to_tensor(x)
            return x if dtype is None or x.dtype == _dt(dtype) else tf.cast(x, _dt(dtype))
        return tf.constant(x, dtype=_dt(dtype))


def _shape(shape: Any) -> tuple:
    return (shape,) if isinstance(shape, int) else tuple(shape)


def zeros(shape, *, dtype=None, device=None):
    with _on(device):
        return tf.zeros(_shape(shape), dtype=_dt(dtype) or tf.float32)


def ones(shape, *, dtype=None, device=None):
    with _on(device):
        return tf.ones(_shape(shape), dtype=_dt(dtype) or tf.float32)


def full(shape, fill_value, *, dtype=None, device=None):
    with _on(device):
        return tf.fill(_shape(shape), tf.constant(fill_value, dtype=_dt(dtype)))


def empty(shape, *, dtype=None, device=None):
    return zeros(shape, dtype=dtype, device=device)


def zeros_like(x, /, *, dtype=None, device=None):
    return tf.zeros_like(x, dtype=_dt(dtype))


def ones_like(x, /, *, dtype=None, device=None):
    return tf.ones_like(x, dtype=_dt(dtype))


def eye(n_rows, n_cols=None, /, *, k=0, dtype=None, device=None):
    with _on(device):
        if k:
            return tf.constant(np.eye(n_rows, n_cols, k=k), dtype=_dt(dtype) or tf.float32)
        return tf.eye(n_rows, n_cols, dtype=_dt(dtype) or tf.float32)


def arange(start, /, stop=None, step=1, *, dtype=None, device=None):
    with _on(device):
        if stop is None:
            start, stop = 0, start
        return tf.range(start, stop, step, dtype=_dt(dtype))


def linspace(start, stop, /, num, *, dtype=None, device=None, endpoint=True):
    return tf.cast(tnp.linspace(start, stop, num, endpoint=endpoint), _dt(dtype) or tf.float32)


def astype(x, dtype, /, *, copy=True, device=None):
    dtype = _dt(dtype)
    if x.dtype == dtype:
        return x
    if x.dtype.is_complex and not dtype.is_complex:
        x = tf.math.real(x)
    return tf.cast(x, dtype)


def reshape(x, /, shape, *, copy=None):
    return tf.reshape(x, _shape(shape))


def permute_dims(x, /, axes):
    return tf.transpose(x, perm=list(axes))


def matrix_transpose(x, /):
    return tf.linalg.matrix_transpose(x)


def moveaxis(x, source, destination, /):
    return tnp.moveaxis(x, source, destination)


def expand_dims(x, /, axis=0):
    return tf.expand_dims(x, axis)


def squeeze(x, /, axis):
    return tf.squeeze(x, axis)


def broadcast_to(x, /, shape):
    return tf.broadcast_to(x, _shape(shape))


def stack(arrays, /, *, axis=0):
    return tf.stack(list(arrays), axis=axis)


def concat(arrays, /, *, axis=0):
    return tf.concat(list(arrays), axis=axis)


def flip(x, /, *, axis=None):
    return tnp.flip(x, axis=axis)


def take(x, indices, /, *, axis=None):
    return tf.gather(x, indices, axis=axis or 0)


def _red(fn):
    def reduce(x, /, *, axis=None, keepdims=False, dtype=None):
        if axis is None and tf.is_tensor(x) and tf.executing_eagerly():  # all axes, made once
            axis = _axes(tuple(range(x.shape.rank)))
        elif isinstance(axis, list):
            axis = tuple(axis)
        out = fn(x, axis=axis, keepdims=keepdims)
        return out if dtype is None else tf.cast(out, _dt(dtype))

    return reduce


sum = _red(tf.reduce_sum)  # noqa: A001
prod = _red(tf.reduce_prod)
mean = _red(tf.reduce_mean)
max = _red(tf.reduce_max)  # noqa: A001
min = _red(tf.reduce_min)  # noqa: A001
all = _red(tf.reduce_all)  # noqa: A001
any = _red(tf.reduce_any)  # noqa: A001


def std(x, /, *, axis=None, correction=0.0, keepdims=False):
    n = tf.cast(tf.size(x) if axis is None else tf.shape(x)[axis], x.dtype)
    var = tf.math.reduce_variance(x, axis=axis, keepdims=keepdims) * n / (n - correction)
    return tf.sqrt(var)


def var(x, /, *, axis=None, correction=0.0, keepdims=False):
    return std(x, axis=axis, correction=correction, keepdims=keepdims) ** 2


def cumulative_sum(x, /, *, axis=None):
    return tf.cumsum(x, axis=axis or 0)


def vecdot(x1, x2, /, *, axis=-1):
    return tf.reduce_sum(tf.math.conj(x1) * x2, axis=axis)


def matmul(x1, x2, /):
    return tf.linalg.matmul(x1, x2)


def argsort(x, /, *, axis=-1, descending=False, stable=True):
    return tf.argsort(x, axis=axis, direction="DESCENDING" if descending else "ASCENDING",
                      stable=stable)


def sort(x, /, *, axis=-1, descending=False, stable=True):
    return tf.sort(x, axis=axis, direction="DESCENDING" if descending else "ASCENDING")


def where(condition, x1, x2, /):
    return tf.where(condition, x1, x2)


def clip(x, /, min=None, max=None):  # noqa: A002
    if min is not None:
        x = tf.maximum(x, tf.cast(min, x.dtype))
    if max is not None:
        x = tf.minimum(x, tf.cast(max, x.dtype))
    return x


def real(x, /):
    return tf.math.real(x)


def imag(x, /):
    return tf.math.imag(x)


def conj(x, /):
    return tf.math.conj(x)


def isfinite(x, /):
    return tf.math.is_finite(x)


def isnan(x, /):
    return tf.math.is_nan(x)


def finfo(dtype):
    return np.finfo(tf.as_dtype(dtype).as_numpy_dtype)


def isdtype(dtype, kind):
    dt = tf.as_dtype(dtype)
    kinds = kind if isinstance(kind, tuple) else (kind,)
    for k in kinds:
        if k == "real floating" and dt.is_floating:
            return True
        if k == "complex floating" and dt.is_complex:
            return True
        if k in ("integral", "signed integer") and dt.is_integer:
            return True
        if k == "bool" and dt == tf.bool:
            return True
        if not isinstance(k, str) and dt == tf.as_dtype(k):
            return True
    return False


# -- linalg -------------------------------------------------------------------------
def _eigh(x, /):
    w, v = tf.linalg.eigh(x)
    return EighResult(w, v)


def _eigvalsh(x, /):
    return tf.linalg.eigvalsh(x)


def _svd(x, /, *, full_matrices=True):
    s, u, v = tf.linalg.svd(x, full_matrices=full_matrices)
    return SVDResult(u, s, tf.linalg.adjoint(v))


def _svdvals(x, /):
    return tf.linalg.svd(x, compute_uv=False)


def _qr(x, /, *, mode="reduced"):
    q, r = tf.linalg.qr(x, full_matrices=(mode == "complete"))
    return QRResult(q, r)


def _vector_norm(x, /, *, axis=None, keepdims=False, ord=2):  # noqa: A002
    if ord == 2 and axis is not None and not x.dtype.is_complex:
        # one op instead of three (each a Python dispatch eagerly)
        return tf.raw_ops.EuclideanNorm(input=x, axis=_axes(axis), keep_dims=keepdims)
    if ord == 2:
        return tf.sqrt(tf.reduce_sum(tf.math.real(tf.math.conj(x) * x), axis=axis,
                                     keepdims=keepdims))
    return tf.norm(x, ord=ord, axis=axis, keepdims=keepdims)


@functools.lru_cache(maxsize=64)
def _axis_constant(axis: int | tuple[int, ...]) -> tf.Tensor:
    return tf.constant(axis, tf.int32)


def _axes(axis: int | tuple[int, ...] | list[int]) -> Any:
    """Reduction axes as a tensor made once per value eagerly (converting a Python
    value costs more than a small reduction); as given inside a graph."""
    axis = tuple(axis) if isinstance(axis, list) else axis
    return _axis_constant(axis) if tf.executing_eagerly() else axis


def _matrix_norm(x, /, *, keepdims=False, ord="fro"):  # noqa: A002
    if ord == 2:
        out = tf.linalg.svd(x, compute_uv=False)[..., 0]
    elif ord == "fro":
        out = _vector_norm(x, axis=(-2, -1))
    else:
        out = tf.norm(x, ord=ord, axis=[-2, -1])
    if keepdims:
        out = out[..., None, None]
    return out


linalg = SimpleNamespace(
    eigh=_eigh,
    eigvalsh=_eigvalsh,
    svd=_svd,
    svdvals=_svdvals,
    qr=_qr,
    vector_norm=_vector_norm,
    matrix_norm=_matrix_norm,
    matmul=matmul,
    matrix_transpose=matrix_transpose,
    solve=lambda a, b: tf.linalg.solve(a, b),
    cholesky=lambda x, upper=False: tf.linalg.cholesky(x),
)


# -- fft (last two axes) ------------------------------------------------------------
def _rfft2(x, /, s=None, axes=(-2, -1)):
    return tf.signal.rfft2d(x, fft_length=s)


def _fft2(x, /, s=None, axes=(-2, -1)):
    if not x.dtype.is_complex:
        x = tf.cast(x, tf.complex128 if x.dtype == tf.float64 else tf.complex64)
    return tf.signal.fft2d(x)


fft = SimpleNamespace(rfft2=_rfft2, fft2=_fft2)


def __getattr__(name: str) -> Any:
    return getattr(tnp, name)
