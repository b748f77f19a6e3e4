"""The user's torch state, kept as it was around the forward passes jacspec runs.

jacspec runs ``f`` to build the graph its products reuse; ``f`` may write to tensors the
user owns (BatchNorm's ``running_mean`` and ``num_batches_tracked`` in training mode,
spectral-norm parametrizations' power-iteration vectors). Those writes are caught where
they happen, below autograd, whatever path ``f`` takes to the model:
:class:`WriteGuard` (a ``TorchDispatchMode``) reads each operator's schema, snapshots
every tensor that existed before ``f`` ran and that the operator writes in place, and
writes the snapshots back afterwards. Train/eval modes and ``requires_grad`` flags are
Python attributes, not tensor writes: they are recorded for every module whose forward
runs (a global forward pre-hook) and every module :func:`find_closure_objects` reaches.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ._base import find_closure_objects

# Batch-norm kernels (native_batch_norm, cudnn_batch_norm, batch_norm_gather_stats, ...)
# update their running statistics in place without declaring the write in their schema
# (where the kernel has a ``training`` argument, only when it is true).
_UNDECLARED_WRITES = ("running_mean", "running_var")

_Written = list[tuple[int, str, int | None]]


def _schema_facts(func: Any) -> tuple[_Written, list[int | None]]:
    """Which arguments ``func`` writes, and which argument each output aliases.

    Returns ``(written, aliases)``: ``written`` lists ``(position, name, condition)`` of
    the arguments written in place, ``condition`` the position of a boolean argument
    the write depends on (or None); ``aliases[j]`` is the position of the argument that
    output ``j`` is a view of (or ``None`` for a fresh tensor).
    """
    schema = func._schema
    names = [arg.name for arg in schema.arguments]
    training = names.index("training") if "training" in names else None
    written: _Written = []
    alias_sets: dict[str, int] = {}
    for i, arg in enumerate(schema.arguments):
        info = arg.alias_info
        if info is not None:
            for name in info.before_set:
                alias_sets.setdefault(name, i)
        if info is not None and info.is_write:
            written.append((i, arg.name, None))
        elif arg.name in _UNDECLARED_WRITES:
            written.append((i, arg.name, training))
    aliases = []
    for ret in schema.returns:
        info = ret.alias_info
        source = None
        if info is not None:
            source = next((alias_sets[s] for s in info.before_set if s in alias_sets), None)
        aliases.append(source)
    return written, aliases


_FACTS: dict[Any, tuple[_Written, list[int | None]]] = {}


def _argument(position: int, name: str, args: tuple, kwargs: dict) -> Any:
    if name in kwargs:
        return kwargs[name]
    return args[position] if position < len(args) else None


def _tensors(value: Any) -> list[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for t in value if isinstance(t, torch.Tensor)]
    return []


class WriteGuard(TorchDispatchMode):
    """Snapshots tensors that existed before the mode was entered when an operator run
    under the mode writes them in place; :meth:`restore` writes the snapshots back.

    Tensors created under the mode (and views of them) are ``f``'s own intermediates:
    they are neither copied nor restored, so autograd's saved values stay intact.
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # The default wraps __torch_dispatch__ in torch._dynamo.disable, whose first call
        # imports torch._dynamo (seconds) although no compilation happens here.
        return False

    def __init__(self) -> None:
        super().__init__()
        self._created: dict[int, weakref.ref] = {}
        self._saved: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def _is_new(self, t: torch.Tensor) -> bool:
        ref = self._created.get(id(t))
        return ref is not None and ref() is t

    def _mark_new(self, t: torch.Tensor) -> None:
        self._created[id(t)] = weakref.ref(t)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        facts = _FACTS.get(func)
        if facts is None:
            facts = _FACTS[func] = _schema_facts(func)
        written, aliases = facts
        for position, name, condition in written:
            if condition is not None and not _argument(condition, "training", args, kwargs):
                continue
            for t in _tensors(_argument(position, name, args, kwargs)):
                if id(t) not in self._saved and not self._is_new(t):
                    self._saved[id(t)] = (t, t.clone())
        out = func(*args, **kwargs)
        outs = out if isinstance(out, (list, tuple)) else (out,)
        for j, o in enumerate(outs):
            if not isinstance(o, torch.Tensor):
                continue
            source = aliases[j] if j < len(aliases) else None
            if source is None:
                self._mark_new(o)
            else:  # a view (or the written argument itself): new iff its base is
                base = args[source] if source < len(args) else None
                if isinstance(base, torch.Tensor) and self._is_new(base):
                    self._mark_new(o)
        return out

    def restore(self) -> None:
        """Write every snapshot back, last-written first (a view and its base)."""
        for t, copy in reversed(list(self._saved.values())):
            # Through ``.data`` so the version counter is untouched: the retained graph
            # may have saved this tensor for backward.
            with torch.no_grad(), torch.inference_mode(t.is_inference()):
                t.data.copy_(copy)
        self._saved.clear()
        self._created.clear()


def _is_module(obj: Any) -> bool:
    return isinstance(obj, torch.nn.Module)


class ModuleFlags:
    """Train/eval modes and ``requires_grad`` flags of modules, recorded once each."""

    def __init__(self) -> None:
        self._modes: dict[int, tuple[torch.nn.Module, bool]] = {}
        self._flags: dict[int, tuple[torch.Tensor, bool]] = {}
        self._thread = threading.get_ident()

    def record(self, root: torch.nn.Module) -> None:
        for m in root.modules():
            if id(m) in self._modes:
                continue
            self._modes[id(m)] = (m, m.training)
            for p in m.parameters(recurse=False):
                self._flags.setdefault(id(p), (p, p.requires_grad))

    def pre_hook(self, module: torch.nn.Module, args: Any) -> None:
        if threading.get_ident() == self._thread and id(module) not in self._modes:
            self.record(module)

    def restore(self) -> None:
        for m, mode in self._modes.values():
            if m.training != mode:
                m.training = mode
        for p, flag in self._flags.values():
            if p.requires_grad != flag:
                p.requires_grad_(flag)


@contextlib.contextmanager
def state_guard(f: Callable) -> Iterator[None]:
    """Run the body (``f``'s forward) without lasting effect on the user's tensors,
    modules' train/eval modes and parameters' ``requires_grad`` flags."""
    flags = ModuleFlags()
    for root in find_closure_objects(f, _is_module):
        flags.record(root)
    hook = torch.nn.modules.module.register_module_forward_pre_hook(flags.pre_hook)
    writes = WriteGuard()
    try:
        with writes:
            yield
    finally:
        hook.remove()
        writes.restore()
        flags.restore()
