"""Dataset products of a torch model whose parameters FSDP2 shards across processes.

``torch.distributed.fsdp.fully_shard`` keeps each parameter as a ``DTensor`` of which
every process holds one shard; its forward pass all-gathers the parameters and its
backward pass reduce-scatters the gradients into the shards' ``.grad``. The gradient
is thus the only derivative FSDP delivers: ``torch.autograd.grad`` does not reach the
sharded parameters (they are not in the graph; FSDP's hooks are), so there is no
double backward and no forward-mode tangent. The products are therefore built from what
FSDP's own engine runs:

* Hessian: central differences of gradients, ``H v ~ (g(x + t v) - g(x - t v)) / 2t``
  (``Backend.finite_difference_hessian``'s step), each gradient one forward and one
  backward pass of FSDP with the local shards moved in place;
* GGN ``J^T H_loss J v``: the JVP ``J v`` by central differences of the outputs (two
  forward passes), the loss's output Hessian on it, and the exact VJP ``J^T u`` as the
  gradient of ``<f(x), u>`` (one forward and one backward pass).

Vectors are this process's shards, flattened and joined in the parameters' order; FSDP's
reduce-scatter sums the processes' contributions (each process scales its batch's loss
by the batch's share of the whole data), so every product returns the local part of the
operator of all processes' data. The shards and ``.grad`` are restored exactly (copies
of the local shards) after every batch.
"""

from __future__ import annotations

import contextlib
import gc
import math
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch

from ._base import ShardedProduct, Sharding, _fd_step, central_difference, check_scalar_output
from ._torch_state import fixed_randomness, generator_states


def _dtensor_type() -> Any:
    """``DTensor``, or None where nobody imported it (then no tensor is one)."""
    return getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)


def sharded_values(params: Any) -> list[Any] | None:
    """The parameters as a list where any is a ``DTensor`` (sharded), else None."""
    dtensor = _dtensor_type()
    if dtensor is None:
        return None
    values = list(params.values()) if isinstance(params, dict) else (
        [params] if isinstance(params, torch.Tensor) else list(params))
    return values if any(isinstance(v, dtensor) for v in values) else None


class _Shards:
    """The local shards of sharded parameters as one flat vector, moved in place and
    restored exactly; their ``.grad`` read and restored likewise."""

    def __init__(self, params: list[Any], group: Any) -> None:
        dtensor = _dtensor_type()
        for p in params:
            if not isinstance(p, dtensor) or not p.is_leaf:
                raise TypeError(
                    "Expected every parameter to be a sharded DTensor parameter (a model "
                    "wrapped by torch.distributed.fsdp.fully_shard, its "
                    "named_parameters()). Received a mix of sharded and plain tensors "
                    f"or a non-leaf tensor ({type(p).__name__}).")
        self.params = params
        with torch.no_grad():
            self.local = [p.to_local() for p in params]  # views of FSDP's storage
        self.sizes = [t.numel() for t in self.local]
        self.local_n = sum(self.sizes)
        self.n = sum(p.numel() for p in params)
        self.group = group
        self.world = torch.distributed.get_world_size(group)
        self.modules = _fsdp_modules(params)

    def sum(self, x: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) of a copy of ``x`` over the group."""
        out = x.clone()
        torch.distributed.all_reduce(out, group=self.group)
        return out

    def flat(self, tensors: list[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
        parts = [torch.zeros(s, dtype=like.dtype, device=like.device) if t is None
                 else t.reshape(-1).to(like.dtype) for t, s in zip(tensors, self.sizes)]
        return torch.cat(parts)

    @contextlib.contextmanager
    def moved(self) -> Iterator[Callable[[torch.Tensor | None], None]]:
        """``move(d)`` sets the local shards to ``x + d`` (``None``: ``x``); the shards
        are ``x`` again afterwards, bit for bit."""
        with torch.no_grad():
            saved = [t.clone() for t in self.local]

        def move(d: torch.Tensor | None) -> None:
            # FSDP keeps the parameters of a module gathered after a forward pass that
            # no backward follows (the root always): free them, so that the next pass
            # gathers the moved shards.
            for m in self.modules:
                m.reshard()
            with torch.no_grad():
                parts = [None] * len(saved) if d is None else torch.split(d, self.sizes)
                for t, x, p in zip(self.local, saved, parts):
                    t.copy_(x if p is None else x + p.reshape(x.shape).to(x.dtype))

        try:
            yield move
        finally:
            move(None)

    @contextlib.contextmanager
    def own_grads(self) -> Iterator[Callable[[], list[Any]]]:
        """A fresh ``.grad`` for jacspec's backward passes; ``take()`` returns the local
        gradients of the last pass and clears them; the user's ``.grad`` afterwards."""
        kept = [p.grad for p in self.params]

        def take() -> list[Any]:
            out = [None if p.grad is None else p.grad.to_local() for p in self.params]
            for p in self.params:
                p.grad = None
            return out

        for p in self.params:
            p.grad = None
        try:
            yield take
        finally:
            for p, g in zip(self.params, kept):
                p.grad = g


def refuse_sharded(values: list[Any]) -> None:
    """A clear error for sharded parameters outside a ``distributed=True`` dataset
    operator, whose products would differentiate through FSDP (zero, silently)."""
    if sharded_values(values) is not None:
        raise ValueError(
            "Expected parameters sharded by FSDP (DTensors) only in a dataset operator "
            "with distributed=True: js.hessian(f, params, data=..., distributed=True) or "
            "js.ggn(..., distributed=True), whose products run FSDP's own passes. "
            "Received sharded parameters without data= and distributed=True.")


def _fsdp_modules(params: list[Any]) -> list[Any]:
    """The ``fully_shard`` modules that hold ``params``, found among the live objects
    (once per operator): ``f`` may reach the model in any way, and FSDP leaves no link
    from a parameter to its module."""
    from torch.distributed.fsdp import FSDPModule

    ids = {id(p) for p in params}
    # type(o), not isinstance: isinstance reads ``__class__``, which on torch's
    # deprecated module proxies (``torch.distributed.reduce_op``) warns
    return [o for o in gc.get_objects() if issubclass(type(o), FSDPModule)
            and any(id(p) in ids for p in o.parameters())]


def _check_route(hvp: str, loss: Callable | None) -> None:
    if loss is None and hvp == "autodiff":
        raise NotImplementedError(
            "Expected hvp='finite_difference' or 'auto' for parameters sharded by FSDP: "
            "torch.autograd.grad does not reach DTensor parameters sharded by "
            "fully_shard (FSDP delivers gradients through .grad only), so there is no "
            "double backward. Received hvp='autodiff'.")


def sharded_product(f: Callable, loss: Callable | None, params: Any, values: list[Any],
                    summary: Any, *, hvp: str, group: Any,
                    loss_hessian: Callable[[Callable], Callable]) -> ShardedProduct:
    """The :class:`ShardedProduct` of the Hessian of ``f`` (``loss`` None) or of the GGN
    of ``loss`` after ``f`` on FSDP-sharded ``values`` (see the module docstring)."""
    _check_route(hvp, loss)
    shards = _Shards(values, group)
    _check_lockstep(shards, summary.num_batches)
    first = summary.first
    start = generator_states()
    with torch.no_grad(), fixed_randomness(None, start):
        if loss is None:
            y = f(params, first)
            what = "f(params, batch)"
        else:
            inputs, targets = first
            y = loss(f(params, inputs), targets)
            what = "loss(outputs, targets)"
    for m in shards.modules:  # gathered by a pass without backward (see _Shards.moved)
        m.reshard()
    try:
        check_scalar_output(tuple(y.shape), ())
    except ValueError as err:
        raise ValueError(f"Expected {what} to return a scalar, the mean loss of the batch. "
                         "Received" + str(err).split("Received", 1)[-1]) from err
    dtype, device = shards.local[0].dtype, shards.local[0].device
    with torch.no_grad():
        sq = sum(torch.sum(torch.square(t.double())) for t in shards.local)
        point_norm = float(torch.sqrt(shards.sum(sq.reshape(1).to(device)))[0])
    step = _fd_step(str(dtype).removeprefix("torch.")) * (1.0 + point_norm)
    sharding = Sharding(local_n=shards.local_n, rank=torch.distributed.get_rank(group),
                        sum=shards.sum)
    column = (_hessian_column(f, params, shards) if loss is None
              else _ggn_column(f, params, shards, loss_hessian(loss)))

    def product(batch: Any, V: torch.Tensor, weight: float) -> torch.Tensor:
        # FSDP's reduce-scatter averages over the processes: a process's backward on
        # ``world * weight * loss`` contributes ``weight * gradient`` to the sum.
        scale = shards.world * weight
        V = V.to(dtype)
        norms = torch.sqrt(shards.sum(torch.sum(torch.square(V), dim=0)))
        state = generator_states()  # every pass of this batch draws the same (dropout)
        cols = []
        with shards.moved() as move, shards.own_grads() as take:
            for j in range(V.shape[-1]):
                nv = float(norms[j])
                t = step / (nv if nv > 0 else 1.0)
                cols.append(column(batch, V[:, j], t, scale, move, take, state))
        return torch.stack(cols, dim=-1)

    return ShardedProduct(n=shards.n, dtype=dtype, device=device, sharding=sharding,
                          product=product)


def _check_lockstep(shards: _Shards, num_batches: int) -> None:
    """Every process must iterate as many batches: FSDP's collectives run per pass."""
    counts = torch.tensor([num_batches, -num_batches], dtype=torch.int64)
    torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.MAX, group=shards.group)
    high, low = int(counts[0]), -int(counts[1])
    if high != low:
        raise ValueError(
            "Expected every process to hold the same number of batches with sharded "
            "parameters (FSDP's collectives run in every forward and backward pass). "
            f"Received {num_batches} batches on this process, between {low} and {high} "
            "over the group; split the data into equal numbers of batches (their sizes "
            "may differ).")


def _backward(y: torch.Tensor, scale: float) -> None:
    if not math.isfinite(float(y.detach())):
        raise FloatingPointError("A forward pass of the sharded model produced NaN or Inf.")
    (y * scale).backward()


def _hessian_column(f: Callable, params: Any, shards: _Shards) -> Callable:
    def gradient(batch, d, scale, move, take, state):
        move(d)
        with torch.enable_grad(), fixed_randomness(None, state):
            _backward(f(params, batch), scale)
        return shards.flat(take(), d)

    def column(batch, v, t, scale, move, take, state):
        return central_difference(lambda d: gradient(batch, d, scale, move, take, state),
                                  v, t)

    return column


def _ggn_column(f: Callable, params: Any, shards: _Shards, loss_hvp: Callable) -> Callable:
    def outputs(inputs, d, move, state):
        move(d)
        with torch.no_grad(), fixed_randomness(None, state):
            return f(params, inputs)

    def column(batch, v, t, scale, move, take, state):
        inputs, targets = batch
        jv = central_difference(lambda d: outputs(inputs, d, move, state), v, t)
        move(None)
        with torch.enable_grad(), fixed_randomness(None, state):
            z = f(params, inputs)
            hz = loss_hvp(z.detach(), jv, targets)
            _backward(torch.sum(z * hz), scale)
        return shards.flat(take(), v)

    return column
