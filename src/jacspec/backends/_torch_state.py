"""The user's torch state, kept as it was around the forward passes jacspec runs.

jacspec runs ``f`` to build the graph its products reuse; ``f`` may write to tensors the
user owns (BatchNorm's ``running_mean`` and ``num_batches_tracked`` in training mode,
spectral-norm parametrizations' power-iteration vectors, weights clamped inside
``forward``, a scratch buffer). Those writes are caught where they happen, below
autograd, whatever path ``f`` takes to the model: :class:`WriteGuard` (a
``TorchDispatchMode``) reads each operator's schema, snapshots every tensor that existed
before ``f`` ran and that the operator writes in place, and writes the snapshots back
afterwards. The graph must keep the values ``f`` computed with, so the restore never
writes into memory the graph reads: every tensor autograd saves while ``f`` runs goes
through :class:`SavedTensors` (``saved_tensors_hooks``), and those that share memory
with a written tensor are copied before the snapshots go back. Train/eval modes and
``requires_grad`` flags are Python attributes, not tensor writes: they are recorded for
every module whose forward runs (a global forward pre-hook) and every module
:func:`find_closure_objects` reaches. torch's global random generators are forked
(:func:`fixed_randomness`), so that dropout draws the same masks whenever ``f`` runs
again from the same generator states and the caller's generators do not move.

A model whose forward provably writes nothing and sets no flag skips the dispatch mode
and the module records (:func:`writes_nothing`): ``f`` is itself a module of torch's
own layers (``nn.Sequential`` of ``Linear``, ``Conv2d``, activations that are not in
place, ...), with their own ``forward``, plain tensors for parameters and buffers, and
no hooks. Everything else goes through the guard.
"""

from __future__ import annotations

import contextlib
import threading
import weakref
import zlib
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
    they are neither copied nor restored. For each written tensor the mode also records
    whether the tensor it belongs to (its base, for a view) was free of autograd history,
    so that a write recorded by autograd (``state.copy_(h)`` with ``h`` requiring grad)
    can be detached again.
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
        self._bases: dict[int, tuple[torch.Tensor, bool, bool]] = {}

    def _is_new(self, t: torch.Tensor) -> bool:
        ref = self._created.get(id(t))
        return ref is not None and ref() is t

    def _mark_new(self, t: torch.Tensor) -> None:
        self._created[id(t)] = weakref.ref(t)

    def _snapshot(self, t: torch.Tensor) -> None:
        self._saved[id(t)] = (t, t.clone())
        base = t._base if t._is_view() else t
        if id(base) not in self._bases:
            self._bases[id(base)] = (base, base.requires_grad, base.grad_fn is None)

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
                    self._snapshot(t)
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

    def written_storages(self) -> set[Any]:
        """The storages of the tensors written (see :func:`_storage_key`)."""
        return {_storage_key(t) for t, _ in self._saved.values()}

    def restore(self) -> list[torch.Tensor]:
        """Write every snapshot back, last-written first (a view and its base), and
        detach the tensors that a write gave an autograd history. Returns the written
        tensors that could not be restored: none (see :meth:`_Watch.restore`)."""
        for t, copy in reversed(list(self._saved.values())):
            _put_back(t, copy)
        for base, requires_grad, was_leaf in self._bases.values():
            _unmark(base, requires_grad, was_leaf)
        self._saved.clear()
        self._created.clear()
        self._bases.clear()
        return []


def _put_back(t: torch.Tensor, copy: torch.Tensor) -> None:
    # Through ``.data``: the version counter stays that of f's last write.
    with torch.no_grad(), torch.inference_mode(t.is_inference()):
        t.data.copy_(copy)


def _unmark(t: torch.Tensor, requires_grad: bool, was_leaf: bool) -> None:
    """Detach ``t`` from the history a write gave it, and reset its flag."""
    if was_leaf and t.grad_fn is not None:
        t.detach_()
    if t.requires_grad != requires_grad:
        t.requires_grad_(requires_grad)


class _Watch:
    """The light guard of a pass (see :class:`Passes`): no dispatch mode, but the
    version counters of the parameters, buffers and other tensors reachable from ``f``
    before it runs (and of the modules it runs), and copies of the modules' buffers. A
    write shows as a moved version counter; :meth:`restore` puts the copies back.
    Parameters (most of a model's memory) and the other tensors ``f`` reaches (data it
    captures, which may be large) are not copied."""

    def __init__(self) -> None:
        # (tensor, version, copy or None, requires_grad, free of history), by id
        self._watched: dict[int, tuple[torch.Tensor, int, Any, bool, bool]] = {}

    def add(self, t: torch.Tensor, *, copy: bool = False) -> None:
        if id(t) in self._watched or t.is_inference():  # no version counter; and no
            return  # write outside inference mode, where f runs
        kept = None
        if copy and not t.requires_grad:
            with torch.no_grad():
                kept = t.detach().clone()
        self._watched[id(t)] = (t, t._version, kept, t.requires_grad, t.grad_fn is None)

    def add_module(self, m: torch.nn.Module) -> None:
        d = m.__dict__
        for copy, tensors in ((False, d.get("_parameters", {})), (True, d.get("_buffers", {}))):
            for t in tensors.values():
                if t is not None:
                    self.add(t, copy=copy)

    def _written(self) -> list[tuple[torch.Tensor, int, Any, bool, bool]]:
        return [w for w in self._watched.values() if w[0]._version != w[1]]

    def written_storages(self) -> set[Any]:
        """The storages of the tensors written so far (see :func:`_storage_key`)."""
        return {_storage_key(w[0]) for w in self._written()}

    def restore(self) -> list[torch.Tensor]:
        """Put the copies of the written tensors back; returns the written tensors
        without a copy."""
        lost = []
        for t, _, kept, requires_grad, was_leaf in reversed(self._written()):
            if kept is None:
                lost.append(t)
                continue
            _put_back(t, kept)
            _unmark(t, requires_grad, was_leaf)
        self._watched.clear()
        return lost

    def __enter__(self) -> _Watch:
        return self

    def __exit__(self, *exc: Any) -> None:
        pass


def _storage_key(t: torch.Tensor) -> Any:
    """What identifies ``t``'s memory: its device and storage address (``None`` for a
    tensor without an accessible storage, e.g. a tensor subclass)."""
    try:
        return (t.device, t.untyped_storage().data_ptr())
    except (RuntimeError, NotImplementedError, TypeError):
        return None


class _Saved:
    """A tensor autograd saved while ``f`` ran, and its version counter then."""

    __slots__ = ("tensor", "version")

    def __init__(self, tensor: torch.Tensor) -> None:
        # The tensor itself while f runs: a detach here would go through WriteGuard.
        self.tensor = tensor
        self.version = tensor._version

    def release(self, frozen: bool) -> None:
        """Hold a detached alias (autograd re-attaches the history on unpacking; the
        tensor itself would keep an output alive through its own graph) or, when
        ``frozen``, a copy of the current value (unless ``f`` wrote the tensor after
        saving it: unpacking then raises as autograd would)."""
        t = self.tensor.detach()
        if frozen and t._version == self.version:
            t = t.clone()
            self.version = t._version
        self.tensor = t


def _unpack(saved: _Saved) -> torch.Tensor:
    t = saved.tensor
    if t._version != saved.version:  # the check autograd makes without hooks
        raise RuntimeError(
            "one of the variables needed for gradient computation has been modified by "
            f"an inplace operation: a tensor of shape {tuple(t.shape)} is at version "
            f"{t._version}; expected version {saved.version} instead. f (or code after "
            "it) wrote in place to a tensor f's forward pass had used."
        )
    return t


class SavedTensors:
    """Every tensor autograd saves while ``f`` runs (``saved_tensors_hooks``).

    :meth:`release` gives the graph its own copy of each saved tensor that shares memory
    with a tensor ``f`` wrote in place, before those tensors get their old values back:
    the products then read the values ``f`` computed with, whatever is restored.
    """

    def __init__(self) -> None:
        self._saved: list[_Saved] = []

    def _pack(self, t: torch.Tensor) -> _Saved:
        saved = _Saved(t)
        self._saved.append(saved)
        return saved

    def hooks(self) -> contextlib.AbstractContextManager[Any]:
        return torch.autograd.graph.saved_tensors_hooks(self._pack, _unpack)

    def release(self, storages: set[Any]) -> None:
        """After ``f``: detach every saved tensor, and copy those that share memory with
        the written tensors' ``storages`` (see :func:`_storage_key`)."""
        everything = None in storages  # a written tensor of unknown memory
        for saved in self._saved:
            key = _storage_key(saved.tensor) if storages else 0
            saved.release(everything or key is None or key in storages)
        self._saved.clear()


# torch's layers whose forward writes no tensor and sets no attribute (given the
# conditions of ``_writes_when``), with the forward each had when jacspec was imported:
# a patched class or an instance's own ``forward`` is not this code.
_nn = torch.nn
_PURE_LAYERS: dict[type, Callable] = {
    cls: cls.forward for cls in (
        _nn.Sequential, _nn.Identity, _nn.Linear, _nn.Bilinear, _nn.Flatten, _nn.Unflatten,
        _nn.Conv1d, _nn.Conv2d, _nn.Conv3d, _nn.ConvTranspose1d, _nn.ConvTranspose2d,
        _nn.ConvTranspose3d, _nn.Tanh, _nn.Sigmoid, _nn.Softplus, _nn.Softmax,
        _nn.LogSoftmax, _nn.GELU, _nn.Softsign, _nn.LogSigmoid, _nn.ReLU, _nn.ReLU6,
        _nn.LeakyReLU, _nn.ELU, _nn.SELU, _nn.CELU, _nn.SiLU, _nn.Mish, _nn.Hardtanh,
        _nn.Hardswish, _nn.Hardsigmoid, _nn.Dropout, _nn.Dropout1d, _nn.Dropout2d,
        _nn.Dropout3d, _nn.AlphaDropout, _nn.LayerNorm, _nn.GroupNorm, _nn.BatchNorm1d,
        _nn.BatchNorm2d, _nn.BatchNorm3d, _nn.MaxPool1d, _nn.MaxPool2d, _nn.MaxPool3d,
        _nn.AvgPool1d, _nn.AvgPool2d, _nn.AvgPool3d, _nn.AdaptiveAvgPool1d,
        _nn.AdaptiveAvgPool2d, _nn.AdaptiveAvgPool3d, _nn.AdaptiveMaxPool1d,
        _nn.AdaptiveMaxPool2d, _nn.AdaptiveMaxPool3d, _nn.Embedding)
}
_PLAIN = (torch.Tensor, torch.nn.Parameter)
_MODULE_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks",
                 "_backward_pre_hooks")
_GLOBAL_HOOKS = ("_global_forward_hooks", "_global_forward_pre_hooks",
                 "_global_backward_hooks", "_global_backward_pre_hooks")


def _writes_when(m: torch.nn.Module) -> bool:
    """Whether a layer of ``_PURE_LAYERS`` writes in place as configured: in-place
    activations and dropout (they may write ``f``'s input), batch norm in training mode
    (its running statistics), an embedding with ``max_norm`` (it renormalizes rows)."""
    # From the instance's dict (or its class): a missing attribute would go through
    # Module.__getattr__, which raises and catches an AttributeError per layer.
    if m.__dict__.get("inplace", getattr(type(m), "inplace", False)):
        return True
    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
        return m.training
    return isinstance(m, torch.nn.Embedding) and m.max_norm is not None


def _plain_layer(m: torch.nn.Module) -> bool:
    """One module of :func:`writes_nothing`'s walk (its children aside)."""
    cls, d = type(m), m.__dict__
    forward = _PURE_LAYERS.get(cls)
    if forward is None or cls.forward is not forward or "forward" in d:
        return False
    if any(map(d.get, _MODULE_HOOKS)) or _writes_when(m):
        return False
    for tensors in (d.get("_parameters", {}), d.get("_buffers", {})):
        for t in tensors.values():
            if t is not None and type(t) not in _PLAIN:
                return False
    return True


def writes_nothing(f: Any) -> bool:
    """Whether ``f`` is a module of torch's own layers (``_PURE_LAYERS``) that writes no
    tensor and sets no flag when it runs: each layer with its class's original
    ``forward``, no hooks (its own or global ones), plain tensors for parameters and
    buffers, and none of the in-place configurations of :func:`_writes_when`.

    Every linearization asks (a model may change between calls), so the walk reads
    the modules' dicts directly, as ``Module.modules()`` would visit them."""
    if not isinstance(f, torch.nn.Module):
        return False
    glob = torch.nn.modules.module
    if any(getattr(glob, name, None) for name in _GLOBAL_HOOKS):
        return False
    stack, seen = [f], set()
    while stack:
        m = stack.pop()
        if id(m) in seen:
            continue
        seen.add(id(m))
        if not _plain_layer(m):
            return False
        stack.extend(c for c in m.__dict__.get("_modules", {}).values() if c is not None)
    return True


def _is_module(obj: Any) -> bool:
    return isinstance(obj, torch.nn.Module)


class ModuleFlags:
    """Train/eval modes and ``requires_grad`` flags of modules, recorded once each;
    ``watch`` (if set) is shown every module recorded."""

    def __init__(self, watch: _Watch | None = None) -> None:
        self._modes: dict[int, tuple[torch.nn.Module, bool]] = {}
        self._flags: dict[int, tuple[torch.Tensor, bool]] = {}
        self._thread = threading.get_ident()
        self._watch = watch

    def record(self, root: torch.nn.Module) -> None:
        """``root`` and its submodules (a recorded module's were recorded with it). The
        walk reads the modules' dicts, as ``Module.modules()`` would, without its
        generators' cost (it runs on every pass)."""
        stack = [root]
        while stack:
            m = stack.pop()
            if id(m) in self._modes:
                continue
            self._modes[id(m)] = (m, m.training)
            d = m.__dict__
            for p in d.get("_parameters", {}).values():
                if p is not None:
                    self._flags.setdefault(id(p), (p, p.requires_grad))
            if self._watch is not None:
                self._watch.add_module(m)
            stack.extend(c for c in d.get("_modules", {}).values() if c is not None)

    def pre_hook(self, module: torch.nn.Module, args: Any) -> None:
        if threading.get_ident() == self._thread and id(module) not in self._modes:
            self.record(module)

    def modes(self) -> tuple[tuple[torch.nn.Module, bool], ...]:
        """The recorded ``(module, training)`` pairs."""
        return tuple(self._modes.values())

    def restore(self) -> bool:
        """Reset every mode and flag; returns whether any had changed."""
        changed = False
        for m, mode in self._modes.values():
            if m.training != mode:
                m.training, changed = mode, True
        for p, flag in self._flags.values():
            if p.requires_grad != flag:
                p.requires_grad_(flag)
                changed = True
        return changed


def _generators() -> list[torch.Generator]:
    """torch's global generators: the CPU's, and each CUDA device's once CUDA is
    initialized (before, no CUDA randomness can have been drawn)."""
    gens = [torch.default_generator]
    if torch.cuda.is_initialized():
        gens += list(torch.cuda.default_generators)
    return gens


#: Generator states to start from: ``(generator, state)`` pairs.
States = list[tuple[torch.Generator, torch.Tensor]]


def generator_states() -> States:
    """The current states of torch's global generators (reading them moves nothing)."""
    return [(g, g.get_state()) for g in _generators()]


class _Fork:
    """See :func:`fixed_randomness` (a class: cheaper than a generator-based context)."""

    __slots__ = ("_seed", "_start", "_saved")

    def __init__(self, seed: int | None, start: States | None) -> None:
        self._seed, self._start = seed, start

    def __enter__(self) -> None:
        self._saved = generator_states()
        if self._start is not None:
            for g, state in self._start:
                g.set_state(state)
        elif self._seed is not None:
            for g, _ in self._saved:
                g.manual_seed(self._seed)

    def __exit__(self, *exc: Any) -> None:
        for g, state in self._saved:
            g.set_state(state)


def fixed_randomness(seed: int | None = None, start: States | None = None) -> _Fork:
    """Context in which torch's global generators start from the states ``start``, or
    are seeded with ``seed``, or else are as they are; afterwards they are in the
    caller's state again."""
    return _Fork(seed, start)


def random_seed() -> int:
    """A seed derived from the state of torch's global CPU generator, which does not
    move: the same after the same ``torch.manual_seed``, new after the user's draws."""
    return zlib.crc32(torch.default_generator.get_state().numpy().tobytes())


class Guard:
    """What :func:`state_guard` yields: :meth:`result` hands ``f``'s output over."""

    pure = False

    def __init__(self, writes: WriteGuard | _Watch) -> None:
        self._writes = writes

    def result(self, y: Any) -> Any:
        """``y``, or a copy of it where it shares memory with a tensor ``f`` wrote in
        place (``f`` returned the user's buffer itself), which gets its old value back."""
        if isinstance(y, torch.Tensor) and self._writes.written_storages() & {_storage_key(y)}:
            return y.clone()
        return y


class _Plain(Guard):
    """The :class:`Guard` of a forward that writes nothing (see :func:`writes_nothing`)."""

    pure = True

    def __init__(self) -> None:
        pass

    def result(self, y: Any) -> Any:
        return y


class Passes:
    """The passes of one ``f`` that one operator runs (a dataset operator's products,
    the tangent and recorded passes of a GGN product, a linearization's reruns), and
    the guard each gets.

    Passes run under :class:`WriteGuard` until one of them writes no tensor that
    existed before it and changes no mode or flag. Later passes, while the modules that
    pass ran are in the same train/eval modes, run under :class:`_Watch`, which costs
    nothing per operation: ``f`` ran the same code on the same state before and wrote
    nothing. Their modes, flags and tensors are recorded before they run, from the
    modules that pass ran and those ``f`` reaches (no global forward hook, which would
    put every module call on torch's slow path; a module that only a later pass runs
    is not recorded). A light pass that writes anyway (a write that depends on the
    batch) is undone as a guarded one would be, and the passes after it are guarded
    again; only a parameter or a captured tensor written then cannot be restored
    (neither is copied), which is an error.
    """

    __slots__ = ("_modes",)

    def __init__(self) -> None:
        self._modes: tuple[tuple[torch.nn.Module, bool], ...] | None = None

    def light(self) -> bool:
        """Whether the next pass may run under the light guard."""
        return self._modes is not None and all(m.training == t for m, t in self._modes)

    def modules(self) -> list[torch.nn.Module]:
        """The modules of the pass that wrote nothing."""
        return [m for m, _ in self._modes or ()]

    def learn(self, clean: bool, flags: ModuleFlags) -> None:
        """After a pass: whether it wrote nothing and changed no mode or flag."""
        self._modes = flags.modes() if clean else None


def _is_module_or_tensor(obj: Any) -> bool:
    return isinstance(obj, (torch.nn.Module, torch.Tensor))


def _lost_error(lost: list[torch.Tensor]) -> RuntimeError:
    shapes = ", ".join(str(tuple(t.shape)) for t in lost)
    return RuntimeError(
        f"f wrote in place to tensors of shape {shapes} (parameters, or tensors f "
        "captures) in a pass after earlier passes of the same operator had written "
        "nothing. Such passes run without the per-operation write guard and keep "
        "copies of the modules' buffers only, so those tensors keep the values f wrote. "
        "Write them on every pass or on none (e.g. clamp weights outside f), or build "
        "a new operator per batch."
    )


@contextlib.contextmanager
def state_guard(f: Callable, start: States | None, passes: Passes | None = None
                ) -> Iterator[Guard]:
    """Run the body (``f``'s forward) without lasting effect on the user's tensors,
    modules' train/eval modes, parameters' ``requires_grad`` flags and torch's global
    random generators (which start from ``start`` inside, unless ``None``).

    The autograd graph built inside keeps the values ``f`` computed with: tensors it
    saved that share memory with tensors ``f`` wrote are copied before the writes are
    undone (:class:`SavedTensors`). A module that writes nothing (:func:`writes_nothing`)
    runs with the random generators fixed only. ``passes``: the operator's earlier
    passes of ``f``, which may let this one run under the light guard.
    """
    if writes_nothing(f):
        with fixed_randomness(start=start):
            yield _Plain()
        return
    light = passes is not None and passes.light()
    writes: WriteGuard | _Watch = _Watch() if light else WriteGuard()
    flags = ModuleFlags(writes if light else None)
    for root in find_closure_objects(f, _is_module_or_tensor if light else _is_module):
        if isinstance(root, torch.nn.Module):
            flags.record(root)
        elif light:  # a tensor f reaches (not through a module)
            writes.add(root)
    if light:
        for m in passes.modules():
            flags.record(m)
    else:
        hook = torch.nn.modules.module.register_module_forward_pre_hook(flags.pre_hook)
    saved = SavedTensors()
    finished = False  # a pass that raised teaches nothing about the next one
    try:
        with fixed_randomness(start=start), saved.hooks(), writes:
            yield Guard(writes)
        finished = True
    finally:
        if not light:
            hook.remove()
        written = writes.written_storages()
        saved.release(written)
        lost = writes.restore()
        changed = flags.restore()
        if passes is not None:
            passes.learn(finished and not written and not changed, flags)
    if lost:
        raise _lost_error(lost)
