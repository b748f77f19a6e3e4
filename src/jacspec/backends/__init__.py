"""Backend registry with lazy framework detection.

A framework is never imported to check a type: an object can only be a torch tensor if
``torch`` is already in ``sys.modules`` (the einops approach). Adapters are small classes,
one module per framework, instantiated once and cached.

Examples
--------
>>> import numpy as np
>>> from jacspec.backends import infer_backend
>>> infer_backend(np.ones(3)).name
'numpy'
"""

from __future__ import annotations

import sys
from typing import Any

from ._base import (
    COMPLEX_DTYPES,
    FLOAT_DTYPES,
    HALF_DTYPES,
    HALF_EPS,
    Backend,
    Linearization,
    ShardedProduct,
    Sharding,
)

__all__ = [
    "FLOAT_DTYPES",
    "HALF_DTYPES",
    "HALF_EPS",
    "COMPLEX_DTYPES",
    "Backend",
    "Linearization",
    "Sharding",
    "ShardedProduct",
    "BACKEND_NAMES",
    "get_backend",
    "backend_of",
    "infer_backend",
    "available_backends",
    "collection_leaves",
    "plain_collection",
    "model_backend",
    "host_backend",
]

#: Supported backends, by name, and the top-level module that must be imported for an
#: object to belong to them.
BACKEND_NAMES: dict[str, str] = {
    "numpy": "numpy",
    "torch": "torch",
    "jax": "jax",
    "tensorflow": "tensorflow",
}

_CACHE: dict[str, Backend] = {}


def get_backend(name: str) -> Backend:
    """The adapter for backend ``name`` (imports the framework).

    Raises
    ------
    ValueError
        For an unknown name.
    ImportError
        When the framework is not installed.
    """
    if name not in BACKEND_NAMES:
        raise ValueError(f"Expected a backend in {sorted(BACKEND_NAMES)}. Received {name!r}.")
    if name not in _CACHE:
        # The builtin __import__, not importlib.import_module: this may run first inside a
        # tf.function, whose AutoGraph would try (and warn) to convert importlib's code.
        module = __import__(f"jacspec.backends.{name}", fromlist=["BACKEND"])
        _CACHE[name] = module.BACKEND
    return _CACHE[name]


def _array_kind(x: Any) -> str | None:
    """The backend name an array belongs to, checking only imported frameworks."""
    mod = type(x).__module__.split(".", 1)[0]
    # Fast path on the defining module, then isinstance for subclasses.
    candidates = [mod] if mod in ("numpy", "torch", "jax", "jaxlib", "tensorflow") else []
    candidates += ["torch", "jax", "tensorflow", "numpy"]
    for name in candidates:
        name = "jax" if name == "jaxlib" else name
        if BACKEND_NAMES[name] not in sys.modules:
            continue
        if get_backend(name).is_array(x):
            return name
    return None


def backend_of(x: Any) -> Backend | None:
    """The backend of an array, or ``None`` for a non-array (lists, scalars...)."""
    name = _array_kind(x)
    return None if name is None else get_backend(name)


def infer_backend(*objs: Any, what: str = "arrays") -> Backend:
    """The single backend of the arrays among ``objs`` (``None`` entries are skipped).

    Raises
    ------
    TypeError
        If arrays of two frameworks are mixed, or none of ``objs`` is a supported array.
    """
    found: dict[str, Backend] = {}
    for obj in objs:
        if obj is None:
            continue
        b = backend_of(obj)
        if b is None:
            raise TypeError(
                f"Expected {what} to be arrays of one of {sorted(BACKEND_NAMES)} "
                f"(numpy.ndarray, torch.Tensor, jax.Array, tf.Tensor). "
                f"Received {type(obj).__module__}.{type(obj).__qualname__}."
            )
        found[b.name] = b
    if len(found) > 1:
        raise TypeError(
            f"Expected {what} from a single framework. Received arrays from "
            f"{' and '.join(sorted(found))} in one call; convert them to one framework."
        )
    if not found:
        raise TypeError(f"Expected {what} to include at least one array. Received none.")
    return next(iter(found.values()))


def host_backend() -> Backend:
    """The NumPy adapter: the backend of SciPy operators and sparse matrices."""
    return get_backend("numpy")


def model_backend(model: Any) -> Backend:
    """The backend whose framework ``model`` belongs to (``torch.nn.Module``, Keras),
    asking only frameworks already imported."""
    for name, module in BACKEND_NAMES.items():
        if module in sys.modules and get_backend(name).owns_model(model):
            return get_backend(name)
    raise TypeError(
        "Expected a torch.nn.Module or a Keras model. Received "
        f"{type(model).__module__}.{type(model).__qualname__}."
    )


def available_backends() -> dict[str, str | None]:
    """Installed backends and their versions (``None`` when not installed).

    This imports each installed framework; it is meant for ``jacspec info``.
    """
    out: dict[str, str | None] = {}
    for name in BACKEND_NAMES:
        try:
            out[name] = get_backend(name).version()
        except ImportError:
            out[name] = None
    return out


def plain_collection(x: Any) -> Any:
    """A framework's own container of parameters (torch ``ParameterList`` and
    ``ParameterDict``) as the plain list or dict of its entries; anything else as it is.
    Asks only frameworks already imported."""
    name = type(x).__module__.split(".", 1)[0]
    if name in BACKEND_NAMES and BACKEND_NAMES[name] in sys.modules:
        return get_backend(name).plain_collection(x)
    return x


def collection_leaves(x: Any) -> list:
    """The leaves of a parameter collection: nested dicts, lists and tuples, or (once
    JAX is imported) any JAX pytree. A non-collection is its own single leaf."""
    if "jax" in sys.modules:
        return get_backend("jax").tree_leaves(x)
    if isinstance(x, dict):
        x = list(x.values())
    if isinstance(x, (list, tuple)):
        return [leaf for v in x for leaf in collection_leaves(v)]
    return [x]
