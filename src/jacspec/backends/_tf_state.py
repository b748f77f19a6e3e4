"""The user's TensorFlow variables, kept as they were around the forward passes jacspec
runs.

``f`` may write to variables the user owns: a ``tf.Module``'s moving mean or step
counter, a Keras 2 layer's batch statistics, weights clamped inside the forward pass.
They are caught where they happen, however ``f`` reaches the variable, and written
back when ``f`` returns (:func:`writes_undone`; Keras 3 variables never change: ``f``
runs in ``keras.StatelessScope``, see ``tensorflow.run_without_side_effects``): while
``f`` runs in this thread, the write methods of ``tf.Variable`` (``assign``,
``assign_add``, ``scatter_update``...) record a variable's value before its first
write, and so does a call of a traced ``tf.function`` (which runs no Python) for the
variables its graph may write (any use of a captured variable but a read). The
products are those of ``f`` as it ran: the tape holds the values ``f`` read.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import tensorflow as tf
from tensorflow.python.eager.polymorphic_function import concrete_function
from tensorflow.python.ops import resource_variable_ops

_VARIABLE = resource_variable_ops.BaseResourceVariable
_WRITES = ("assign", "assign_add", "assign_sub", "batch_scatter_update", "scatter_add",
           "scatter_div", "scatter_max", "scatter_min", "scatter_mul", "scatter_nd_add",
           "scatter_nd_max", "scatter_nd_min", "scatter_nd_sub", "scatter_nd_update",
           "scatter_sub", "scatter_update")
# Operations that only read a variable; any other use of a function's captured variable
# counts as a write (nested function calls included).
_READS = frozenset({"ReadVariableOp", "VariableShape", "ResourceGather", "ResourceGatherNd",
                    "VarIsInitializedOp"})
_written: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()
_installed: list[tuple[type, str, Any]] = []  # (class, name, original) while active
_active = 0
_local = threading.local()  # .levels: the saved values of the guards active in a thread


def _record(variable: Any) -> None:
    """Save ``variable``'s value in the innermost active guard of this thread, before
    its first write there."""
    levels = getattr(_local, "levels", None)
    if not levels or getattr(_local, "restoring", False):
        return
    graph, saved = levels[-1]
    if id(variable) not in saved:
        value = _value_before(variable, graph)
        if value is not None:
            saved[id(variable)] = (variable, value)


def _recording(original: Callable) -> Callable:
    @functools.wraps(original)
    def write(self: Any, *args: Any, **kwargs: Any) -> Any:
        _record(self)
        return original(self, *args, **kwargs)

    return write


def _written_captures(function: Any) -> list[int]:
    """Positions of the captured inputs of a concrete function that its graph may
    write (cached per function)."""
    out = _written.get(function)
    if out is None:
        out = [i for i, t in enumerate(function.graph.internal_captures)
               if t.dtype == tf.resource
               and any(op.type not in _READS for op in t.consumers())]
        _written[function] = out
    return out


def _calling(original: Callable) -> Callable:
    @functools.wraps(original)
    def call(self: Any, tensor_inputs: Any, captured_inputs: Any) -> Any:
        if getattr(_local, "levels", None):
            written = _written_captures(self)
            if written:
                by_handle = {id(v.handle): v for v in self.graph.variables}
                for i in written:
                    variable = by_handle.get(id(captured_inputs[i]))
                    if variable is not None:
                        _record(variable)
        return original(self, tensor_inputs, captured_inputs)

    return call


def _graph() -> Any:
    """The graph being built, or None when executing eagerly."""
    return None if tf.executing_eagerly() else tf.compat.v1.get_default_graph()


def _value_before(variable: Any, graph: Any) -> Any:
    """``variable``'s value before the write being made, as the guard entered in
    ``graph`` can write it back: read in place, or, for a write traced into a
    ``tf.function`` that ``f`` calls in an eager guard, read eagerly now (the function
    runs after its trace). None for a write into a function traced inside a guard that
    is itself in a graph (not restorable from there)."""
    try:
        if _graph() is graph:
            return tf.identity(variable.read_value())
        if graph is None:
            with tf.init_scope():
                return tf.identity(variable.read_value())
    except (tf.errors.FailedPreconditionError, ValueError):  # not initialized yet
        pass
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
            function = concrete_function.ConcreteFunction
            _installed.append((function, "_call_flat", function.__dict__["_call_flat"]))
            function._call_flat = _calling(function.__dict__["_call_flat"])
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
