"""Backend-agnostic helpers for the test suite.

Import them in test modules with ``from _helpers import from_numpy, to_numpy, rtol_for``
(``pythonpath`` in pyproject.toml puts ``tests/`` on ``sys.path``).

Nothing here imports a framework at module level: each framework is imported only when
an array of it is built or converted.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

ALL_BACKENDS: tuple[str, ...] = ("numpy", "torch", "jax", "tensorflow")

# The module each backend needs (what must be importable for its tests to run).
FRAMEWORK_MODULE: dict[str, str] = {
    "numpy": "numpy",
    "torch": "torch",
    "jax": "jax",
    "tensorflow": "tensorflow",
}


def selected_backends() -> list[str]:
    """Backends named in ``JACSPEC_TEST_BACKENDS`` (comma list; default all four)."""
    raw = os.environ.get("JACSPEC_TEST_BACKENDS", "").strip()
    if not raw or raw.lower() == "all":
        return list(ALL_BACKENDS)
    names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL_BACKENDS]
    if unknown:
        raise ValueError(
            f"Expected JACSPEC_TEST_BACKENDS to name backends among {ALL_BACKENDS}. "
            f"Received {unknown!r}."
        )
    # keep order, drop duplicates
    return list(dict.fromkeys(names))


def backend_available(backend: str) -> bool:
    """Whether ``backend``'s framework imports (imports it as a side effect)."""
    try:
        importlib.import_module(FRAMEWORK_MODULE[backend])
    except Exception:  # ImportError, or a broken install raising something else
        return False
    return True


def backend_of(x: Any) -> str:
    """Name of the framework an array belongs to, from its type's module."""
    mod = type(x).__module__.split(".")[0]
    if mod == "torch":
        return "torch"
    if mod in ("jax", "jaxlib"):
        return "jax"
    if mod in ("tensorflow", "keras", "tf_keras"):
        return "tensorflow"
    if mod == "numpy" or isinstance(x, (int, float, complex, bool, np.generic)):
        return "numpy"
    raise TypeError(f"Expected an array of a known backend. Received {type(x).__name__}.")


# ----------------------------------------------------------------------------- dtypes


def dtype_name(dtype: Any) -> str:
    """Canonical NumPy-style name ("float32", "complex128", ...) of any backend's dtype."""
    if dtype is None:
        raise TypeError("dtype_name() needs a dtype, not None")
    if isinstance(dtype, str):
        return np.dtype(dtype.removeprefix("torch.").removeprefix("tf.")).name
    mod = type(dtype).__module__.split(".")[0]
    if mod == "torch":  # torch.float32 -> "torch.float32"
        return str(dtype).removeprefix("torch.")
    name = getattr(dtype, "name", None)  # tf.DType and np.dtype both have .name
    if isinstance(name, str) and mod != "numpy":
        return name
    return np.dtype(dtype).name


def numpy_dtype(dtype: Any) -> np.dtype:
    return np.dtype(dtype_name(dtype))


def framework_dtype(dtype: Any, backend: str) -> Any:
    """The ``backend``'s own dtype object for ``dtype`` (any backend's dtype or a name)."""
    name = dtype_name(dtype)
    if backend == "torch":
        import torch

        return getattr(torch, name)
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.dtype(name)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.as_dtype(name)
    if backend == "numpy":
        return np.dtype(name)
    raise ValueError(f"Expected a backend among {ALL_BACKENDS}. Received {backend!r}.")


_RTOL = {"float32": 1e-3, "complex64": 1e-3, "float64": 1e-7, "complex128": 1e-7}
_ATOL = {"float32": 1e-5, "complex64": 1e-5, "float64": 1e-11, "complex128": 1e-11}


def rtol_for(dtype: Any) -> float:
    """Relative tolerance for comparing a solver result (default ``tol``) with a dense
    reference: 1e-3 in single precision, 1e-7 in double precision."""
    return _RTOL[dtype_name(dtype)]


def atol_for(dtype: Any) -> float:
    """Absolute tolerance to pair with :func:`rtol_for` (scaled by the matrix norm in
    comparisons of values that may be zero)."""
    return _ATOL[dtype_name(dtype)]


def eps_for(dtype: Any) -> float:
    return float(np.finfo(numpy_dtype(dtype)).eps)


# ------------------------------------------------------------------------- conversion


def to_numpy(x: Any) -> Any:
    """A NumPy array (or nested structure of them) from any backend's array.

    Works on detached/non-detached torch tensors on any device (conjugation resolved),
    jax arrays, tf tensors and variables, NumPy arrays and Python scalars; tuples, lists,
    dicts and NamedTuples are converted element-wise (``None`` stays ``None``).
    """
    if x is None:
        return None
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, (bool, int, float, complex, np.generic)):
        return np.asarray(x)
    if isinstance(x, Mapping):
        return {k: to_numpy(v) for k, v in x.items()}
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # NamedTuple results
        return type(x)(*(to_numpy(v) for v in x))
    if isinstance(x, (list, tuple)):
        return type(x)(to_numpy(v) for v in x)
    mod = type(x).__module__.split(".")[0]
    if mod == "torch":
        return x.detach().resolve_conj().resolve_neg().cpu().numpy()
    if mod in ("tensorflow", "keras", "tf_keras"):
        return x.numpy() if hasattr(x, "numpy") else np.asarray(x)
    # jax arrays and anything else exposing __array__
    return np.asarray(x)


def from_numpy(a: Any, backend: str, dtype: Any = None, *, device: Any = None) -> Any:
    """An array of ``backend`` holding a copy of ``a``.

    ``dtype`` may be a name ("float64"), a NumPy dtype or any backend's dtype; the
    default keeps ``a``'s dtype. For jax, float64 needs x64 enabled (``tests/conftest.py``
    does that). ``device`` is passed to torch (``"cuda"``) / used as a jax device / a
    ``tf.device`` string; default: the framework's default device.
    """
    arr = np.array(a, dtype=None if dtype is None else numpy_dtype(dtype), copy=True)
    if backend == "numpy":
        return arr
    if backend == "torch":
        import torch

        t = torch.from_numpy(arr)
        return t if device is None else t.to(device)
    if backend == "jax":
        import jax

        out = jax.device_put(arr, device)  # compiles nothing (jnp.asarray compiles a copy)
        if out.dtype != arr.dtype:
            raise RuntimeError(
                f"jax made {out.dtype} from {arr.dtype}: enable x64 "
                "(jax.config.update('jax_enable_x64', True)) before creating arrays"
            )
        return out
    if backend == "tensorflow":
        import tensorflow as tf

        if device is None:
            return tf.convert_to_tensor(arr)
        with tf.device(device):
            return tf.identity(tf.convert_to_tensor(arr))
    raise ValueError(f"Expected a backend among {ALL_BACKENDS}. Received {backend!r}.")


# ---------------------------------------------------------------- solver references

# Kinds of spectra for ``make_matrix``: the hard cases every solver must handle.
SPECTRA = ["random", "repeated", "clustered", "rankdef", "zero", "ones", "wide"]
# Dimensions the solver hypothesis tests draw (one, small, odd, the largest): eager JAX
# compiles per shape, so a few shapes let examples and tests reuse compiled programs;
# the variety that matters (square, tall, wide, a single row or column) stays.
DIMS = [1, 3, 8, 14]


def make_matrix(m: int, n: int, kind: str, seed: int) -> np.ndarray:
    """An ``(m, n)`` float64 matrix with a spectrum of the given kind (``SPECTRA``)."""
    rng = np.random.default_rng(seed)
    r = min(m, n)
    if kind == "zero":
        return np.zeros((m, n))
    if kind == "ones":
        return np.ones((m, n))
    if kind == "random":
        return rng.standard_normal((m, n))
    U = np.linalg.qr(rng.standard_normal((m, r)))[0]
    V = np.linalg.qr(rng.standard_normal((n, r)))[0]
    s = np.sort(rng.uniform(0.1, 1.0, r))[::-1]
    if kind == "repeated":
        s[: min(3, r)] = 2.0
    elif kind == "clustered":
        s[: min(3, r)] = 2.0 + 1e-6 * np.arange(min(3, r))[::-1]
    elif kind == "rankdef":
        s[max(1, r // 2):] = 0.0
    elif kind == "wide":
        s = np.logspace(0, -10, r)
    return (U * s) @ V.T


def check_svd(A, res, k, dtype, *, vectors=True):
    """``res`` (an ``svds`` result) holds the top ``k`` singular triplets of ``A``: values
    against NumPy, orthonormal vectors, small residuals ``A R - L diag(s)``."""
    s_ref = np.linalg.svd(A, compute_uv=False)
    scale = np.maximum(s_ref[..., :1], 1e-300)
    vals = to_numpy(res.values)
    assert vals.shape == A.shape[:-2] + (k,)
    assert np.all(np.isfinite(vals))
    tol = 20 * rtol_for(dtype)
    assert np.all(np.abs(vals - s_ref[..., :k]) <= tol * scale + 1e-300), (vals, s_ref)
    if vectors:
        L, R = to_numpy(res.left), to_numpy(res.right)
        eye = np.eye(k)
        np.testing.assert_allclose(np.swapaxes(L.conj(), -1, -2) @ L, np.broadcast_to(eye, L.shape[:-2] + (k, k)), atol=tol)
        np.testing.assert_allclose(np.swapaxes(R.conj(), -1, -2) @ R, np.broadcast_to(eye, R.shape[:-2] + (k, k)), atol=tol)
        err = np.abs(A @ R - L * vals[..., None, :]).max(axis=(-2, -1))
        assert np.all(err <= tol * scale[..., 0] * 10 + 1e-300)


def solver_examples(backend: str) -> int:
    """Hypothesis examples per backend: JAX eager compiles every new shape and TF eager
    is slow, so they get fewer (the "ci" profile gives 15 to the others)."""
    from hypothesis import settings

    return {"jax": 5, "tensorflow": 6}.get(backend, settings().max_examples)


def counting_problem(A: Any, backend: str, monkeypatch: Any, **kwargs: Any) -> Any:
    """The solvers' ``Problem`` of the explicit matrix ``A`` that also tallies the
    products it is asked for in ``.tally[0]`` (one per single-vector product, ``k`` per
    block of ``k``): the count a solver's states carry must be this. Every step runs as
    it is (``monkeypatch`` turns compiled pieces off: a compiled piece would tally its
    products once, when traced)."""
    import dataclasses

    import jacspec as js
    from jacspec.solvers.problem import Problem

    @dataclasses.dataclass(frozen=True, eq=False)
    class Counted(Problem):
        tally: list = dataclasses.field(default_factory=lambda: [0])

        def mv(self, v: Any, *, adjoint: bool = False) -> Any:
            self.tally[0] += 1
            return super().mv(v, adjoint=adjoint)

        def mm(self, V: Any, *, adjoint: bool = False) -> Any:
            self.tally[0] += int(V.shape[-1])
            return super().mm(V, adjoint=adjoint)

    p = Problem.of(js.aslinearoperator(from_numpy(A, backend)), **kwargs)
    monkeypatch.setattr(p.backend, "should_compile", lambda key: False)
    return Counted(**{f.name: getattr(p, f.name) for f in dataclasses.fields(Problem)})


def row_writes(dtypes: tuple[str, ...] = ("float32", "float64")) -> Any:
    """A hypothesis strategy of row writes into a solver work buffer (``Backend.set_row``):
    ``(lead, J, W, j, start, t, dtype)``, i.e. ``X[..., j, start:start + t] = x`` with
    ``X`` of shape ``lead + (J, W)``."""
    from hypothesis import strategies as st

    @st.composite
    def case(draw: Any) -> tuple:
        lead = draw(st.lists(st.integers(1, 3), max_size=2))
        J, W = draw(st.integers(1, 6)), draw(st.integers(1, 6))
        j = draw(st.integers(0, J - 1))
        start = draw(st.integers(0, W - 1))
        t = draw(st.integers(1, W - start))
        return tuple(lead), J, W, j, start, t, draw(st.sampled_from(dtypes))

    return case()


# ------------------------------------------------------------------------------- GPU

_GPU_CACHE: dict[str, bool] = {}


def has_gpu(backend: str) -> bool:
    """Whether ``backend`` sees a GPU (CUDA/ROCm) device. NumPy never does."""
    if backend in _GPU_CACHE:
        return _GPU_CACHE[backend]
    ok = False
    try:
        if backend == "torch":
            import torch

            ok = bool(torch.cuda.is_available())
        elif backend == "jax":
            import jax

            try:
                ok = len(jax.devices("gpu")) > 0
            except RuntimeError:  # no GPU platform
                ok = False
        elif backend == "tensorflow":
            import tensorflow as tf

            ok = len(tf.config.list_physical_devices("GPU")) > 0
    except ImportError:
        ok = False
    _GPU_CACHE[backend] = ok
    return ok


def gpu_device(backend: str) -> Any:
    """The ``device=`` argument of :func:`from_numpy` for the first GPU of ``backend``."""
    if backend == "torch":
        return "cuda"
    if backend == "jax":
        import jax

        return jax.devices("gpu")[0]
    if backend == "tensorflow":
        return "/GPU:0"
    raise ValueError(f"Backend {backend!r} has no GPU device.")
