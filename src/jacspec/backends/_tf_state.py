"""The user's TensorFlow variables, kept as they were around the forward passes jacspec
runs.

``f`` may write to variables the user owns: a ``tf.Module``'s moving mean or step
counter, a Keras 2 layer's batch statistics, weights clamped inside the forward pass.
Two mechanisms write them back when ``f`` returns (Keras 3 variables never change: ``f``
runs in ``keras.StatelessScope``, see ``tensorflow.run_without_side_effects``):

- :func:`writes_undone`: while ``f`` runs in this thread, the write methods of
  ``tf.Variable`` (``assign``, ``assign_add``, ``scatter_update``...) record each
  variable's value before its first write, however ``f`` reaches the variable. The
  products are those of ``f`` as it ran (the tape holds the values ``f`` read).
- :func:`module_state_kept`: writes that run inside an already traced ``tf.function``
  execute no Python, so the state variables (not trainable, or not floating) of the
  ``tf.Module`` objects ``f`` reaches (:func:`find_closure_objects`) are also saved and
  written back.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf
from tensorflow.python.ops import resource_variable_ops

from ._base import find_closure_objects

_VARIABLE = resource_variable_ops.BaseResourceVariable
_WRITES = ("assign", "assign_add", "assign_sub", "batch_scatter_update", "scatter_add",
           "scatter_div", "scatter_max", "scatter_min", "scatter_mul", "scatter_nd_add",
           "scatter_nd_max", "scatter_nd_min", "scatter_nd_sub", "scatter_nd_update",
           "scatter_sub", "scatter_update")
_lock = threading.Lock()
_installed: list[tuple[type, str, Any]] = []  # (class, name, original) while active
_active = 0
_local = threading.local()  # .levels: the saved values of the guards active in a thread


def _recording(original: Callable) -> Callable:
    @functools.wraps(original)
    def write(self: Any, *args: Any, **kwargs: Any) -> Any:
        levels = getattr(_local, "levels", None)
        if levels and not getattr(_local, "restoring", False):
            graph, saved = levels[-1]
            if id(self) not in saved:
                value = _value_before(self, graph)
                if value is not None:
                    saved[id(self)] = (self, value)
        return original(self, *args, **kwargs)

    return write


def _graph() -> Any:
    """The graph being built, or None when executing eagerly."""
    return None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()


def _value_before(variable: Any, graph: Any) -> Any:
    """``variable``'s value before the write being made, as the guard entered in
    ``graph`` can write it back: read in place, or, for a write traced into a
    ``tf.function`` that ``f`` calls in an eager guard, read eagerly now (the function
    runs after its trace). None for a write into a function traced inside a guard that
    is itself in a graph (not restorable from there)."""
    if _graph() is graph:
        return tf.identity(variable.read_value())
    if graph is None:
        with tf.init_scope():
            return tf.identity(variable.read_value())
    return None


def _install() -> None:
    global _active
    with _lock:
        if _active == 0:
            for cls in _variable_classes():
                for name in _WRITES:
                    original = cls.__dict__.get(name)
                    if original is not None:  # defined (or wrapped by TensorFlow) here
                        _installed.append((cls, name, original))
                        setattr(cls, name, _recording(original))
        _active += 1


def _uninstall() -> None:
    global _active
    with _lock:
        _active -= 1
        if _active == 0:
            for cls, name, original in reversed(_installed):
                setattr(cls, name, original)
            _installed.clear()


def _variable_classes() -> list[type]:
    """``tf.Variable``'s resource class and its subclasses (``ResourceVariable``
    re-wraps the write methods)."""
    out, todo = [], [_VARIABLE]
    while todo:
        cls = todo.pop()
        if cls not in out:
            out.append(cls)
            todo.extend(cls.__subclasses__())
    return out


@contextlib.contextmanager
def writes_undone() -> Iterator[None]:
    """Every ``tf.Variable`` written from Python in this thread inside the block holds
    its old value afterwards (the write methods record it; other threads' writes are
    not recorded)."""
    _install()
    levels = _local.__dict__.setdefault("levels", [])
    saved: dict[int, tuple[Any, Any]] = {}
    levels.append((_graph(), saved))
    try:
        yield
    finally:
        try:
            _write_back(saved.values())
        finally:
            levels.pop()
            _uninstall()


def _write_back(saved: Any) -> None:
    """``v.assign(value)`` for each pair, not recorded by an enclosing guard (which
    keeps the value from before its own block)."""
    restoring = getattr(_local, "restoring", False)
    _local.restoring = True
    try:
        for variable, value in saved:
            variable.assign(value)
    finally:
        _local.restoring = restoring


def _is_state(v: Any) -> bool:
    return not v.trainable or not v.dtype.is_floating


@contextlib.contextmanager
def module_state_kept(f: Callable) -> Iterator[None]:
    """The state variables of the ``tf.Module`` objects ``f`` reaches (Keras 2 layers
    among them) hold their old values afterwards."""
    roots = [f, getattr(f, "python_function", None)]  # a tf.function: its Python function
    modules = find_closure_objects(roots, lambda o: isinstance(o, tf.Module))
    seen: set[int] = set()
    saved = []
    for module in modules:
        for v in module.variables:
            if id(v) not in seen and _is_state(v):
                seen.add(id(v))
                saved.append((v, tf.identity(v.read_value())))
    try:
        yield
    finally:
        _write_back(saved)


@contextlib.contextmanager
def kept(f: Callable) -> Iterator[None]:
    """Both guards around a run of ``f``."""
    with module_state_kept(f), writes_undone():
        yield
