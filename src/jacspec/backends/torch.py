"""PyTorch adapter.

Products reuse one forward pass: ``f`` runs once, its graph is retained, a VJP is one
``torch.autograd.grad`` call on it, and a JVP is the derivative of that VJP with respect to
its (dummy) cotangent — a second backward on a gradient graph built once ("double-VJP").
Blocks of vectors go through ``is_grads_batched`` (one vmapped backward). Hessian-vector
products differentiate the retained gradient graph, the fastest formulation on CPU (see
the benchmarks page). ``f`` runs under :func:`jacspec.backends._torch_state.state_guard`:
tensors it writes in place (BatchNorm running statistics), modules' train/eval modes and
``requires_grad`` flags are as they were afterwards, however ``f`` reaches the model.
Inside ``torch.inference_mode()`` or ``torch.no_grad()`` the forward pass and the products
still record what autograd needs, so results are those outside.

Fused attention: the forward passes that products differentiate twice (or carry
forward-mode tangents through) run with the math kernel of
``scaled_dot_product_attention``, whose flash and memory-efficient kernels have no
second derivative and no forward mode on CPU; the user's kernel choice is back
afterwards. A GGN product is one forward pass carrying a forward-mode tangent plus one
recorded forward and backward pass (no graph of a graph); in its tangent pass,
``scaled_dot_product_attention`` (without dropout, float32/float64) is formed by its
definition with a closed-form forward derivative (:class:`_AttentionTangent`), cheaper
than forward mode through the math kernel's composite. ``hvp="finite_difference"``
differences two gradients taken with the user's own kernels.

GPU: install a CUDA build of torch (see ``backends/torch/README.md``); every product runs on
the device of ``x``.
"""

from __future__ import annotations

import cmath
import contextlib
import functools
import math
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import array_api_compat.torch as xp_torch
import numpy as np
import torch

from ._base import (
    Backend,
    GradientOracle,
    Linearization,
    check_input,
    check_output,
    check_scalar_output,
)
from ._torch_distributed import refuse_sharded
from ._torch_state import (
    Guard,
    Passes,
    States,
    fixed_randomness,
    generator_states,
    random_seed,
    state_guard,
)

# What torch says when an operation lacks the derivative a product needs: the flash and
# memory-efficient attention kernels have no double backward and no forward mode.
_MISSING_DERIVATIVE = (
    "is not implemented",
    "does not support it because it has not been implemented",
    "forward AD is not implemented",
    "marked with @once_differentiable",
)


# The code of every backward that torch.autograd.function.once_differentiable wraps.
_ONCE_DIFFERENTIABLE = torch.autograd.function.once_differentiable(lambda ctx: None).__code__


def _refuse_once_differentiable(y: torch.Tensor) -> None:
    """Raise where ``y``'s graph holds a custom function whose backward is marked
    ``@once_differentiable``. Given a cotangent that needs no gradient (the first
    backward of a scalar), torch runs such a backward without recording it and the
    gradient's graph ends there: the second backward would silently see a zero block.
    The message is one :func:`_missing_derivative` knows (``hvp="auto"`` then takes
    finite differences)."""
    seen, stack = set(), [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        cls = getattr(node, "_forward_cls", None)
        if getattr(getattr(cls, "backward", None), "__code__", None) is _ONCE_DIFFERENTIABLE:
            raise RuntimeError(
                f"f calls the custom autograd function {cls.__name__}, whose backward is "
                "marked with @once_differentiable: it has no second derivative, so an "
                "exact Hessian product cannot be formed. Use hvp='finite_difference' (or "
                "the default hvp='auto', which falls back to it with a warning).")
        stack.extend(n for n, _ in node.next_functions)


def _outside_inference_mode() -> contextlib.AbstractContextManager[Any]:
    """Leave ``torch.inference_mode()`` where the caller is in it: products need autograd
    (the results are the same as outside the mode)."""
    if torch.is_inference_mode_enabled():
        return torch.inference_mode(False)
    return contextlib.nullcontext()


def _autograd_on(fn: Callable) -> Callable:
    """``fn`` run outside ``torch.inference_mode()`` (see :func:`_outside_inference_mode`).
    A plain closure: ``functools.wraps`` costs more than a product's own Python work,
    and every linearization wraps its products anew."""

    def run(*args: Any) -> Any:
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                return fn(*args)
        return fn(*args)

    return run


def _leaf(x: torch.Tensor) -> torch.Tensor:
    """The tensor ``f`` is differentiated at: ``x`` itself when it requires grad, else a
    detached view (or, for a tensor created in inference mode, a copy) that does."""
    if x.requires_grad:
        return x
    with _outside_inference_mode():
        return (x.clone() if x.is_inference() else x.detach()).requires_grad_(True)


@contextlib.contextmanager
def _forward_mode(f: Callable, start: States | None, passes: Passes | None = None
                  ) -> Iterator[Guard]:
    """Where ``f``'s forward runs: autograd on, the user's state protected (``passes``:
    the operator's earlier passes of ``f``), torch's random generators starting from
    ``start`` (see :func:`state_guard`), and a clear error for parameters created in
    inference mode (autograd cannot use them)."""
    try:
        with _outside_inference_mode(), torch.enable_grad(), \
                state_guard(f, start, passes) as guard:
            yield guard
    except RuntimeError as err:
        if "Inference tensors cannot be saved for backward" not in str(err):
            raise
        raise TypeError(
            "Expected f to use tensors that autograd can differentiate. Received tensors "
            "created inside torch.inference_mode() (e.g. a model built or loaded there), "
            "which autograd refuses: create the model and the tensors f uses outside "
            "the mode (torch.no_grad() is fine)."
        ) from err


def _cols_first(V: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """``batch + (n, k)`` -> ``(k,) + shape``."""
    k = V.shape[-1]
    return torch.movedim(V, -1, 0).reshape((k,) + tuple(shape))


def _cols_last(R: torch.Tensor, batch_shape: tuple[int, ...], size: int) -> torch.Tensor:
    """``(k,) + anything`` -> ``batch + (size, k)``."""
    k = R.shape[0]
    return torch.movedim(R.reshape((k,) + batch_shape + (size,)), 0, -1)


def _depends_on_other_leaves(y: torch.Tensor, own: list[torch.Tensor]) -> bool:
    """Whether ``y``'s graph reaches a tensor requiring grad other than ``own``.

    Decides if ``grad=True`` products need a differentiable graph at all: when ``x`` does
    not require grad and ``f`` closes over nothing that does, they can stay detached.
    """
    if y.grad_fn is None:
        return False
    own_ids = {id(t) for t in own}
    seen: set[int] = set()
    stack = [y.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        var = getattr(node, "variable", None)
        if var is not None and id(var) not in own_ids:
            return True
        stack.extend(nxt for nxt, _ in node.next_functions)
    return False


def _as_shape(t: torch.Tensor, shape: tuple) -> torch.Tensor:
    """``t`` reshaped to ``shape``, itself where the shapes agree: a view handed to
    ``autograd.grad`` costs a noticeable part of a small backward pass."""
    return t if tuple(t.shape) == shape else t.reshape(shape)


def _differentiable(y: torch.Tensor, leaves: list, values: list) -> bool:
    """Whether ``grad=True`` products need a graph: the user's own tensors require grad,
    or ``f`` closes over something that does."""
    own = [leaf for leaf, orig in zip(leaves, values) if leaf is not orig]
    return len(own) < len(leaves) or _depends_on_other_leaves(y, leaves)


class _Layout:
    """Flat vectors ``batch_shape + (n,)`` cut into the leaves' shapes and joined back,
    in the leaves' order; a single leaf is a view (no split, no concatenation)."""

    def __init__(self, leaves: list[torch.Tensor], batch_shape: tuple[int, ...]) -> None:
        self.bshape = batch_shape
        self.shapes = [tuple(v.shape) for v in leaves]
        self.sizes = [math.prod(s[len(batch_shape):]) for s in self.shapes]
        self.n = sum(self.sizes)

    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """``bshape + (n,)`` -> one tensor per leaf, of the leaf's shape."""
        if len(self.shapes) == 1:
            return [_as_shape(v, self.shapes[0])]
        return [p.reshape(s) for p, s in zip(torch.split(v, self.sizes, dim=-1), self.shapes)]

    def split_cols(self, V: torch.Tensor) -> list[torch.Tensor]:
        """``bshape + (n, k)`` -> one ``(k,) + leaf shape`` tensor per leaf."""
        if len(self.shapes) == 1:
            return [_cols_first(V, self.shapes[0])]
        k = V.shape[-1]
        parts = torch.split(torch.movedim(V, -1, 0), self.sizes, dim=-1)
        return [p.reshape((k,) + s) for p, s in zip(parts, self.shapes)]

    def join(self, rs, like: torch.Tensor) -> torch.Tensor:
        """Per-leaf results (``None``: zero) -> ``bshape + (n,)``."""
        cols = [torch.zeros(self.bshape + (size,), dtype=like.dtype, device=like.device)
                if r is None else _as_shape(r, self.bshape + (size,))
                for r, size in zip(rs, self.sizes)]
        return cols[0] if len(cols) == 1 else torch.cat(cols, dim=-1)

    def join_cols(self, rs, k: int, like: torch.Tensor) -> torch.Tensor:
        """Per-leaf ``(k,) + leaf shape`` results (``None``: zero) -> ``bshape + (n, k)``."""
        cols = [torch.zeros((k,) + self.bshape + (size,), dtype=like.dtype, device=like.device)
                if r is None else r.reshape((k,) + self.bshape + (size,))
                for r, size in zip(rs, self.sizes)]
        out = cols[0] if len(cols) == 1 else torch.cat(cols, dim=-1)
        return torch.movedim(out, 0, -1)


def _retry_freed(run: Callable[[], Any], rebuild: Callable[[], None]) -> Any:
    """Run a product; if autograd freed the retained graph, rebuild it once and retry."""
    try:
        return run()
    except RuntimeError as err:
        if "backward through the graph a second time" not in str(err):
            raise
        rebuild()
        return run()


def _missing_derivative(err: BaseException) -> bool:
    return isinstance(err, (RuntimeError, NotImplementedError)) and any(
        m in str(err) for m in _MISSING_DERIVATIVE)


def _math_kernels() -> contextlib.AbstractContextManager[Any]:
    """The math kernel of ``scaled_dot_product_attention`` (composite, so it has every
    derivative) for the duration of the context; the caller's choice afterwards.

    Every forward pass whose graph a product differentiates twice (a JVP formed by
    double backward, a Hessian product, a gradient taken through a product's result)
    or carries forward-mode tangents through runs inside it: the flash and
    memory-efficient kernels have neither. Gradients alone (finite differences) keep
    the user's kernels."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


class _AttentionTangent(torch.autograd.Function):
    """``softmax(q k^T scale + bias) v`` by its definition, with the closed-form forward
    derivative ``dO = (P * (dS - rowsum(P * dS))) v + P dv``, ``dS = (dq k^T + q dk^T)
    scale + dbias``: five products with the attention matrix, where forward mode through
    the math kernel's composite (masked softmax included) costs several times that. Run
    only in forward-mode passes without a recorded graph (no ``backward``)."""

    @staticmethod
    def forward(ctx: Any, q, k, v, bias, scale: float):
        s = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)
        if bias is not None:
            s = s.add_(bias)
        # rows that mask every key give zeros, as the math kernel's softmax does
        p = torch.ops.aten._safe_softmax(s, -1)
        ctx.save_for_forward(q, k, v, p)
        ctx.scale = scale
        return torch.matmul(p, v)

    @staticmethod
    def jvp(ctx: Any, tq, tk, tv, tbias, _):
        q, k, v, p = ctx.saved_tensors
        ds = None
        for a, b in ((tq, k), (q, tk)):
            if a is not None and b is not None:
                t = torch.matmul(a, b.transpose(-2, -1))
                ds = t if ds is None else ds.add_(t)
        if ds is not None:
            ds = ds.mul_(ctx.scale)
        if tbias is not None:
            ds = tbias.expand_as(p).clone() if ds is None else ds.add_(tbias)
        out = None if tv is None else torch.matmul(p, tv)
        if ds is not None:
            pds = ds.mul_(p)
            pds = pds.sub_(p * pds.sum(-1, keepdim=True))
            out = torch.matmul(pds, v) if out is None else out.add_(torch.matmul(pds, v))
        return out  # jvp runs only where an input has a tangent: never None


_SDPA = torch.nn.functional.scaled_dot_product_attention


def _attention_operands(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False,
                       scale=None, enable_gqa=False) -> tuple | None:
    """``(q, k, v, bias, scale)`` of a ``scaled_dot_product_attention`` call, the mask
    as an additive bias and grouped keys repeated, or ``None`` where a case is left to
    the math kernel: dropout, dtypes other than float32/float64, nested tensors,
    ``torch.func`` transforms."""
    if (dropout_p or not all(isinstance(t, torch.Tensor) and not t.is_nested
                             and t.dtype in (torch.float32, torch.float64)
                             for t in (q, k, v))
            or torch._C._functorch.maybe_current_level() is not None):
        return None
    L, S = q.shape[-2], k.shape[-2]
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    bias = None
    if is_causal:  # keys after the query masked (a comparison: torch's triu of a
        # boolean matrix takes milliseconds at a context of 128)
        later = (torch.arange(S, device=q.device)[None, :]
                 > torch.arange(L, device=q.device)[:, None])
        bias = torch.zeros(L, S, dtype=q.dtype, device=q.device).masked_fill_(later,
                                                                              -math.inf)
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            mask = torch.zeros(attn_mask.shape, dtype=q.dtype, device=q.device)
            mask = mask.masked_fill_(attn_mask.logical_not(), -math.inf)
        else:
            mask = attn_mask
        bias = mask if bias is None else bias + mask
    if enable_gqa:
        k = k.repeat_interleave(q.shape[-3] // k.shape[-3], -3)
        v = v.repeat_interleave(q.shape[-3] // v.shape[-3], -3)
    return q, k, v, bias, scale


def _attention_tangent(*args, **kwargs) -> torch.Tensor | None:
    """``scaled_dot_product_attention`` through :class:`_AttentionTangent` (the math
    kernel's definition), or ``None`` (see :func:`_attention_operands`)."""
    operands = _attention_operands(*args, **kwargs)
    return None if operands is None else _AttentionTangent.apply(*operands)


class _TangentAttention(torch.overrides.TorchFunctionMode):
    """``scaled_dot_product_attention`` calls in a forward-mode pass go through
    :func:`_attention_tangent`; every other call runs as it is. ``seen`` records
    whether a call came (a model without attention then skips the mode, whose
    per-call cost is a few microseconds)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen = False

    #: The calls replaced, each by a function that returns ``None`` for a case it leaves
    #: to the call itself.
    routes: dict[Any, Callable[..., torch.Tensor | None]] = {_SDPA: _attention_tangent}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        route = self.routes.get(func)
        if route is not None:
            self.seen = True
            out = route(*args, **(kwargs or {}))
            if out is not None:
                return out
        return func(*args, **(kwargs or {}))


def _kernels_for(guard: Guard) -> contextlib.AbstractContextManager[Any]:
    """:func:`_math_kernels`, unless ``f`` is a module of torch's plain layers (see
    ``Guard.pure``), which call no fused attention."""
    return contextlib.nullcontext() if guard.pure else _math_kernels()


def _with_leaves(x: Any, leaves: list) -> Any:
    """The argument ``f`` takes, of ``x``'s structure, holding ``leaves``."""
    if isinstance(x, torch.Tensor):
        return leaves[0]
    if isinstance(x, dict):
        return dict(zip(x.keys(), leaves))
    return type(x)(leaves) if isinstance(x, (list, tuple)) else leaves


def _grad(outputs, inputs, grad_outputs, *, create_graph: bool, batched: bool):
    return torch.autograd.grad(
        outputs,
        inputs,
        grad_outputs,
        retain_graph=True,
        create_graph=create_graph,
        allow_unused=True,
        is_grads_batched=batched,
    )


def _second_order_only() -> None:
    """Refuse to differentiate a second-order backward of :class:`_LeanSecondOrder`
    (``f`` takes a gradient itself, e.g. a gradient penalty): the products fall back
    to torch's own kernels (see :meth:`TorchBackend.batch_hessian_product`).
    ``once_differentiable`` would instead hand back constants where the incoming
    cotangent needs no gradient, a wrong Hessian without an error."""
    if torch.is_grad_enabled():
        raise RuntimeError("A third derivative through jacspec's second-order attention "
                           "and GELU is not implemented.")


def _softmax_backward(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """``p * (g - rowsum(p * g))``: the cotangent of a softmax's input from that of its
    output ``p`` (rows of ``p`` that are zero give zeros)."""
    return p * (g - (p * g).sum(-1, keepdim=True))


class _AttentionBackward(torch.autograd.Function):
    """``(dq, dk, dv)`` of ``o = p v``, ``p = softmax(q k^T scale + bias)``, for the
    cotangent ``g`` of ``o``; ``p`` comes as a constant, its dependence on ``q`` and
    ``k`` is in the backward. A Hessian product's graph then holds ``g, q, k, v, p``
    per attention call (torch's double backward of the math kernel also keeps the
    cotangents of ``p`` and of the scores, two more tensors of ``p``'s size), and the
    backward forms its products of ``p``'s size one layer at a time. Differentiable
    once (see :func:`_second_order_only`)."""

    @staticmethod
    def forward(ctx: Any, g, q, k, v, p, scale: float):
        ctx.save_for_backward(g, q, k, v, p)
        ctx.scale = scale
        ds = _softmax_backward(torch.matmul(g, v.transpose(-2, -1)), p).mul_(scale)
        return (torch.matmul(ds, k), torch.matmul(ds.transpose(-2, -1), q),
                torch.matmul(p.transpose(-2, -1), g))

    @staticmethod
    def backward(ctx: Any, a, b, c):
        _second_order_only()
        # a, b, c: cotangents of dq, dk, dv. With ds = softmax_backward(g v^T, p) and
        # m = scale (a k^T + q b^T): dq = scale ds k and dk = scale ds^T q give
        # scale (ds b, ds^T a) directly; <ds, m> and <c, p^T g> reach g and v through
        # n = softmax_backward(m, p) and p c, and p through z; z reaches the scores.
        # Products with a, b, c are out of place (blocks: a vmapped backward).
        g, q, k, v, p = ctx.saved_tensors
        scale = ctx.scale
        dp = torch.matmul(g, v.transpose(-2, -1))
        r = (p * dp).sum(-1, keepdim=True)
        ds = (dp - r).mul_(p)
        gq = torch.matmul(ds, b) * scale
        gk = torch.matmul(ds.transpose(-2, -1), a) * scale
        del ds
        m = (torch.matmul(a, k.transpose(-2, -1)) + torch.matmul(q, b.transpose(-2, -1))) * scale
        mp = (m * p).sum(-1, keepdim=True)
        n = (m - mp) * p
        gg = torch.matmul(n, v) + torch.matmul(p, c)
        gv = torch.matmul(n.transpose(-2, -1), g)
        del n
        z = (m * (dp - r)).sub_(mp * dp).add_(torch.matmul(g, c.transpose(-2, -1)))
        del m, dp
        gs = _softmax_backward(z, p).mul_(scale)
        gq = gq + torch.matmul(gs, k)
        gk = gk + torch.matmul(gs.transpose(-2, -1), q)
        return gg, gq, gk, gv, None, None


class _Attention(torch.autograd.Function):
    """``softmax(q k^T scale + bias) v`` (rows that mask every key give zeros, as the
    math kernel's do), its backward through :class:`_AttentionBackward`."""

    @staticmethod
    def forward(ctx: Any, q, k, v, bias, scale: float):
        s = torch.matmul(q, k.transpose(-2, -1)).mul_(scale)
        p = torch.ops.aten._safe_softmax(s if bias is None else s.add_(bias), -1)
        ctx.save_for_backward(q, k, v, p)
        ctx.scale = scale
        return torch.matmul(p, v)

    @staticmethod
    def backward(ctx: Any, g):
        q, k, v, p = ctx.saved_tensors
        return (*_AttentionBackward.apply(g, q, k, v, p, ctx.scale), None, None)


_GELU = torch.nn.functional.gelu
_PDF = 1 / math.sqrt(2 * math.pi)


class _GeluBackward(torch.autograd.Function):
    """``g * gelu'(x)`` (exact GELU), whose own backward forms three temporaries of ``x``'s
    size where torch's forms about six (the peak of a Hessian product through an MLP's
    GELU). Differentiable once (see :func:`_second_order_only`)."""

    @staticmethod
    def forward(ctx: Any, g, x):
        ctx.save_for_backward(g, x)
        return torch.ops.aten.gelu_backward(g, x)

    @staticmethod
    def backward(ctx: Any, gg):
        _second_order_only()
        g, x = ctx.saved_tensors
        # gelu''(x) = pdf(x) (2 - x^2), gelu'(x) = Phi(x) + x pdf(x); each temporary
        # released once used (``gg`` may carry a batch: no products in place on it)
        pdf = x.square().mul_(-0.5).exp_().mul_(_PDF)
        second = x.square().neg_().add_(2).mul_(pdf).mul_(g)
        first = torch.mul(x, math.sqrt(0.5)).erf_().add_(1).mul_(0.5).addcmul_(x, pdf)
        del pdf
        dg = gg * first
        del first
        return dg, gg * second


class _Gelu(torch.autograd.Function):
    """Exact GELU, its backward through :class:`_GeluBackward`."""

    @staticmethod
    def forward(ctx: Any, x):
        ctx.save_for_backward(x)
        return _GELU(x)

    @staticmethod
    def backward(ctx: Any, g):
        (x,) = ctx.saved_tensors
        return _GeluBackward.apply(g, x)


def _lean_gelu(x, approximate: str = "none") -> torch.Tensor | None:
    """``gelu`` through :class:`_Gelu`, or ``None`` (tanh approximation, dtypes other
    than float32/float64: torch's own)."""
    if (approximate != "none" or not isinstance(x, torch.Tensor)
            or x.dtype not in (torch.float32, torch.float64)):
        return None
    return _Gelu.apply(x)


def _lean_attention(*args, **kwargs) -> torch.Tensor | None:
    """``scaled_dot_product_attention`` through :class:`_Attention`, or ``None`` (see
    :func:`_attention_operands`; a mask that requires grad: the math kernel)."""
    operands = _attention_operands(*args, **kwargs)
    if operands is None or (operands[3] is not None and operands[3].requires_grad):
        return None
    return _Attention.apply(*operands)


class _LeanSecondOrder(_TangentAttention):
    """Attention and exact GELU in a forward pass that a Hessian product without
    gradient differentiates twice go through :func:`_lean_attention` and
    :func:`_lean_gelu`: the same values and derivatives, with a double backward that
    holds fewer temporaries at its peak."""

    routes = {_SDPA: _lean_attention, _GELU: _lean_gelu}


def _hvp(grads, leaves: list[torch.Tensor], lay: _Layout, V: torch.Tensor,
         like: torch.Tensor, *, create_graph: bool = False, retain_graph: bool = True
         ) -> torch.Tensor:
    """Hessian-vector products by double backward: ``H V`` from ``grads``, the
    gradients (taken with ``create_graph``) of a scalar with respect to ``leaves``. ``V``
    is one vector ``bshape + (n,)`` or ``k`` columns ``bshape + (n, k)`` (one batched
    backward); leaves the gradient does not reach give zeros."""
    live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
    if not live:
        return torch.zeros(V.shape, dtype=like.dtype, device=like.device)
    single = V.ndim == len(lay.bshape) + 1
    parts = lay.split(V) if single else lay.split_cols(V)
    res = torch.autograd.grad([grads[i] for i in live], leaves, [parts[i] for i in live],
                              retain_graph=retain_graph, create_graph=create_graph,
                              allow_unused=True, is_grads_batched=not single)
    return lay.join(res, like) if single else lay.join_cols(res, int(V.shape[-1]), like)


class BlockRoutes:
    """How a block of ``k`` vectors goes through a backward pass: one vmapped backward
    (``is_grads_batched``, ``"vmap"``) or a loop of ``k`` single backward passes
    (``"loop"``); both give the same products.

    Which is faster depends on the model: torch's batching rules make the vmapped call
    the faster one on dense layers and small batches, and the slower one on
    convolutions (the batching rule of the convolution backward). So the first block
    of each configuration (the function, the side, the block's shape, dtype and device,
    with or without gradient) runs both routes ``WARMUP + TRIALS`` times, in turn (the
    order alternating), the last ``TRIALS`` rounds timed (a route's first calls pay
    one-time costs: torch's first vmapped call imports and sets up functorch), and
    returns the faster route's product; every later block takes that route. So a
    configuration's products come from one route from the first, and repeated calls
    give the same values to the last bit. The choice outlives the linearization: a
    training loop linearizes anew every step, with the same configuration.
    :func:`block_route` forces one route (tests, benchmarks).
    """

    WARMUP = 1
    TRIALS = 2
    MAX_ENTRIES = 1024

    def __init__(self) -> None:
        self.forced: str | None = None
        self._choice: dict[Any, str] = {}

    def choice(self, key: Any) -> str | None:
        """The route of ``key``'s configuration, or None before its first block."""
        return self.forced or self._choice.get(key)

    def run(self, key: Any, routes: dict[str, Callable[[], torch.Tensor]],
            device: torch.device) -> torch.Tensor:
        """The block's product by the configuration's route, chosen by timing both
        routes on its first block."""
        route = self.choice(key)
        if route is not None:
            return routes[route]()
        if len(self._choice) >= self.MAX_ENTRIES:
            self._choice.clear()
        best = {"vmap": math.inf, "loop": math.inf}
        out: dict[str, torch.Tensor] = {}
        for trial in range(self.WARMUP + self.TRIALS):
            for name in (("vmap", "loop") if trial % 2 == 0 else ("loop", "vmap")):
                seconds, out[name] = _timed(routes[name], device)
                if trial >= self.WARMUP:
                    best[name] = min(best[name], seconds)
        route = "vmap" if best["vmap"] <= best["loop"] else "loop"
        self._choice[key] = route
        return out[route]


def _timed(run: Callable[[], torch.Tensor], device: torch.device
           ) -> tuple[float, torch.Tensor]:
    """``(seconds, run())``, the device's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


_ROUTES = BlockRoutes()


@contextlib.contextmanager
def block_route(route: str | None) -> Iterator[None]:
    """Blocks of vectors take ``route`` (``"vmap"`` or ``"loop"``; ``None``: chosen by
    timing, the default) inside the context.

    Examples
    --------
    >>> import torch
    >>> import jacspec as js
    >>> from jacspec.backends.torch import block_route
    >>> J = js.jacobian(lambda z: z ** 2, torch.ones(3))
    >>> with block_route("loop"):
    ...     J.matmat(torch.eye(3))
    tensor([[2., 0., 0.],
            [0., 2., 0.],
            [0., 0., 2.]])
    """
    if route not in (None, "vmap", "loop"):
        raise ValueError(f"Expected route 'vmap', 'loop' or None. Received {route!r}.")
    before, _ROUTES.forced = _ROUTES.forced, route
    try:
        yield
    finally:
        _ROUTES.forced = before


def _function_key(f: Any) -> Any:
    """What identifies ``f`` across calls for :class:`BlockRoutes`: a function's code
    and what it closes over (a lambda or ``functools.partial`` made anew per call is the
    same function), else the object itself."""
    if isinstance(f, functools.partial):  # made anew per call, like a lambda
        return ("partial", _function_key(f.func), tuple(map(id, f.args)),
                tuple((k, id(v)) for k, v in f.keywords.items()))
    code = getattr(f, "__code__", None)
    if code is None:
        return ("object", id(f))
    cells = []
    for cell in getattr(f, "__closure__", None) or ():
        try:
            cells.append(id(cell.cell_contents))
        except ValueError:  # an empty cell
            cells.append(None)
    return ("function", code, id(getattr(f, "__self__", None)), tuple(cells))


def _blocks(once: Callable[[torch.Tensor, bool], torch.Tensor],
            single: Callable[[torch.Tensor, bool], torch.Tensor], fkey: Any, side: str
            ) -> Callable[[torch.Tensor, bool], torch.Tensor]:
    """``once`` (one vmapped backward for a block) or a loop of ``single`` over the
    block's columns, as :class:`BlockRoutes` chooses."""

    def looped(V: torch.Tensor, grad: bool) -> torch.Tensor:
        return torch.stack([single(V[..., i], grad) for i in range(V.shape[-1])], dim=-1)

    def apply(V: torch.Tensor, grad: bool) -> torch.Tensor:
        if V.shape[-1] == 1:  # one vector: no batched-gradient machinery
            return single(V[..., 0], grad)[..., None]
        key = (fkey, side, tuple(V.shape), V.dtype, V.device, grad)
        return _ROUTES.run(key, {"vmap": lambda: once(V, grad),
                                 "loop": lambda: looped(V, grad)}, V.device)

    return apply


class _SolverLinalg:
    """``array_api_compat.torch.linalg`` with ``vector_norm`` bound to torch directly."""

    @staticmethod
    def vector_norm(x, /, *, axis=None, keepdims=False, ord=2):
        return torch.linalg.vector_norm(x, ord=ord, dim=axis, keepdim=keepdims)

    def __getattr__(self, name: str) -> Any:
        value = getattr(xp_torch.linalg, name)
        setattr(self, name, value)
        return value


class _SolverNamespace:
    """``array_api_compat.torch`` with a few hot functions bound to torch directly.

    The compat wrappers of ``matmul``, ``where``, ``maximum``, ``minimum``,
    ``matrix_transpose``, ``expand_dims``, ``squeeze`` and ``linalg.vector_norm`` resolve
    type promotion or check their arguments on every call (a
    sizeable part of a Krylov step on small problems). Inside the solvers all arrays
    already share one dtype and device, so torch's own functions give the same results."""

    matmul = staticmethod(torch.matmul)
    where = staticmethod(torch.where)

    @staticmethod
    def any(x, /, *, axis=None, keepdims=False):  # noqa: A003 - array-API name
        return torch.any(x) if axis is None else torch.any(x, dim=axis, keepdim=keepdims)

    @staticmethod
    def all(x, /, *, axis=None, keepdims=False):  # noqa: A003 - array-API name
        return torch.all(x) if axis is None else torch.all(x, dim=axis, keepdim=keepdims)
    maximum = staticmethod(torch.maximum)
    minimum = staticmethod(torch.minimum)
    linalg = _SolverLinalg()

    @staticmethod
    def expand_dims(x, /, *, axis=0):
        return torch.unsqueeze(x, axis)

    @staticmethod
    def squeeze(x, /, axis):
        return torch.squeeze(x, axis)

    @staticmethod
    def matrix_transpose(x, /):
        return x.mT

    def __getattr__(self, name: str) -> Any:  # the rest of the namespace, cached
        value = getattr(xp_torch, name)
        setattr(self, name, value)
        return value


_SOLVER_XP = _SolverNamespace()


def _loss_hessian_product(loss: Callable) -> Callable:
    """``(z, u, targets) -> H u`` for ``H`` the Hessian of ``loss(., targets)`` at the
    outputs ``z``: closed form for softmax cross-entropy with class-index targets and
    for the squared error (``F.cross_entropy``, ``F.mse_loss`` and their modules with
    default options), else a double backward through the loss alone (small: it acts on
    the outputs only)."""
    F = torch.nn.functional
    kind = None
    if loss is F.cross_entropy or (
            isinstance(loss, torch.nn.CrossEntropyLoss) and loss.weight is None
            and loss.reduction == "mean" and loss.label_smoothing == 0.0):
        kind = "ce"
    elif loss is F.mse_loss or (isinstance(loss, torch.nn.MSELoss)
                                and loss.reduction == "mean"):
        kind = "mse"
    ignore = getattr(loss, "ignore_index", -100)

    def autodiff(z, u, targets):
        with _outside_inference_mode(), torch.enable_grad():
            z = z.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss(z, targets), z, create_graph=True)
            (h,) = torch.autograd.grad(g, z, u, allow_unused=True)
        return torch.zeros_like(u) if h is None else h

    def closed(z, u, targets):
        if kind == "mse" and z.shape == targets.shape:
            return u * (2.0 / u.numel())
        if kind == "ce" and not targets.is_floating_point() and z.ndim >= 2:
            with torch.no_grad():  # in place: a few buffers of the outputs' size
                p = torch.softmax(z, dim=1)
                keep = (targets != ignore).unsqueeze(1).to(z.dtype)
                pu = p * u
                hu = pu.sub_(p.mul_(pu.sum(dim=1, keepdim=True)))
                return hu.mul_(keep).div_(keep.sum().clamp(min=1))
        return autodiff(z, u, targets)

    return closed if kind is not None else autodiff


@contextlib.contextmanager
def _quiet_forward_mode() -> Iterator[None]:
    """torch's forward mode scripts a helper with the deprecated ``torch.jit.script`` on
    first use; that warning is torch's own business, not the caller's."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated",
                                category=DeprecationWarning)
        yield


class TorchBackend(Backend):
    name = "torch"
    module_name = "torch"

    @property
    def xp(self) -> Any:
        return xp_torch

    @property
    def solver_xp(self) -> Any:
        return _SOLVER_XP

    def is_array(self, x: Any) -> bool:
        return isinstance(x, torch.Tensor)

    def version(self) -> str:
        return torch.__version__

    def devices(self) -> list[str]:
        out = ["cpu"]
        if torch.cuda.is_available():
            out += [f"cuda:{i} ({torch.cuda.get_device_name(i)})" for i in range(torch.cuda.device_count())]
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            out.append("mps")
        return out

    def dtype_name(self, dtype: Any) -> str:
        return str(dtype).removeprefix("torch.")

    def device(self, x: Any) -> Any:
        return x.device

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.detach().resolve_conj().cpu().numpy()

    def from_numpy(self, a, *, dtype=None, device=None):
        return torch.as_tensor(np.asarray(a), dtype=dtype, device=device)

    def normal(self, shape, *, dtype, device, seed):
        gen = torch.Generator(device=device or "cpu")
        if seed is None:
            gen.seed()
        else:
            gen.manual_seed(int(seed))
        return torch.randn(tuple(shape), generator=gen, dtype=dtype, device=device)

    def stop_gradient(self, x):
        return x.detach()

    def all_finite(self, x) -> bool:
        if x.is_floating_point() or x.is_complex():
            # A finite sum proves every entry finite (NaN and Inf propagate): one
            # reduction instead of the elementwise test's four kernels.
            total = x.sum().item()
            if cmath.isfinite(total):
                return True
        return bool(torch.isfinite(x).all())

    def to_bool(self, x) -> bool:
        return bool(x)

    def to_float(self, x) -> float:
        return float(x)

    def any_true(self, x) -> bool:
        return bool(torch.any(x))

    def all_true(self, x) -> bool:
        return bool(torch.all(x))

    def sub_matmul(self, W, C, Q):
        if W.ndim == 3 and C.ndim == 3 and Q.ndim == 3:
            return torch.baddbmm(W, C, Q, alpha=-1)  # one kernel instead of two
        return W - torch.matmul(C, Q)

    def no_grad(self):
        return torch.no_grad()

    def set_row(self, X, j, x, start=0):
        """In place (solver work buffers never require grad: the solvers run under
        ``no_grad``); returns ``X``."""
        X[..., j, start:start + x.shape[-1]] = x
        return X

    def plain_collection(self, x):
        if isinstance(x, torch.nn.ParameterList):
            return list(x)
        if isinstance(x, torch.nn.ParameterDict):
            return dict(x.items())
        return x

    def owns_model(self, model) -> bool:
        return isinstance(model, torch.nn.Module)

    # -- autodiff ------------------------------------------------------------------
    def _point(self, x: Any, *, batched: bool) -> tuple[list, list, Any]:
        """``(values, leaves, arg)`` for an array or a parameter collection: the user's
        tensors, the tensors products differentiate (the user's own where they already
        require grad, so that closures over a model's parameters see them), and the
        argument ``f`` is called with."""
        if self.is_array(x):
            check_input(self, x, batched=batched)
            leaf = _leaf(x)
            return [x], [leaf], leaf
        if batched:
            raise ValueError(
                "Expected an array x with batched=True. Received a parameter collection "
                f"({type(x).__name__}); batched derivatives are per-sample input derivatives."
            )
        values = list(x.values()) if isinstance(x, dict) else list(x)
        for v in values:
            check_input(self, v, batched=False, what="each parameter")
        refuse_sharded(values)
        leaves = [_leaf(v) for v in values]
        if isinstance(x, dict):
            return values, leaves, dict(zip(x.keys(), leaves))
        return values, leaves, type(x)(leaves) if isinstance(x, (list, tuple)) else leaves

    def linearize(self, f, x, *, batched):
        values_in, leaves, arg = self._point(x, batched=batched)
        st: dict[str, Any] = {}
        start = generator_states()  # every run of f draws what this one would
        passes = Passes()

        def forward() -> None:
            # The graph is retained for every product. If the user backpropagates through
            # a result built on it (``js.spectral_norm(J).backward()``), autograd frees it;
            # the next product then runs this again (at the current parameter values,
            # with the same random draws).
            st.clear()
            with _forward_mode(f, start, passes) as guard, _kernels_for(guard):
                st["y"] = guard.result(f(arg))

        forward()
        y = st["y"]
        bshape = (int(x.shape[0]),) if batched else ()
        check_output(self, y, bshape[0] if batched else None, what="f")
        lay = _Layout(leaves, bshape)
        n = lay.n
        m = self.sizes(tuple(y.shape)[len(bshape):])
        needs_graph: list[bool] = []  # a walk of y's graph, at the first grad=True product

        def differentiable() -> bool:
            if not needs_graph:
                needs_graph.append(_differentiable(y, leaves, values_in))
            return needs_graph[0]

        def zeros(size: int, k: int) -> torch.Tensor:
            return torch.zeros(bshape + (size, k), dtype=y.dtype, device=y.device)

        def vjp_vec(u: torch.Tensor, grad: bool) -> torch.Tensor:
            """``J^T u`` for single vectors ``bshape + (m,)``, no reshape where the shapes
            already agree (the Krylov solvers' steps)."""
            y = st["y"]
            gs = _grad(y, leaves, _as_shape(u, tuple(y.shape)), create_graph=grad,
                       batched=False)
            if len(gs) == 1 and gs[0] is not None:  # one leaf: a view, no list
                return _as_shape(gs[0], lay.bshape + (lay.n,))
            return lay.join(gs, y)

        def jvp_graph() -> tuple[torch.Tensor, list[int]]:
            """The gradient graph a JVP differentiates (built on first use), and the
            leaves it reaches."""
            if "g" not in st:
                u0 = torch.zeros_like(st["y"], requires_grad=True)
                with torch.enable_grad():
                    gs = torch.autograd.grad(
                        st["y"], leaves, u0, retain_graph=True, create_graph=True,
                        allow_unused=True,
                    )
                st["u0"], st["g"] = u0, gs
                st["live"] = [i for i, g in enumerate(gs) if g is not None and g.requires_grad]
            return st["g"], st["live"]

        def jvp_vec(v: torch.Tensor, grad: bool) -> torch.Tensor:
            """``J v`` for single vectors ``bshape + (n,)`` (see :func:`vjp_vec`)."""
            gs, live = jvp_graph()
            r = None
            if len(live) == 1 and len(leaves) == 1:  # one leaf: no split, no lists
                (r,) = _grad(gs[0], st["u0"], _as_shape(v, lay.shapes[0]),
                             create_graph=grad, batched=False)
            elif live:
                parts = lay.split(v)
                (r,) = _grad([gs[i] for i in live], st["u0"], [parts[i] for i in live],
                             create_graph=grad, batched=False)
            if r is None:
                return torch.zeros(bshape + (m,), dtype=y.dtype, device=y.device)
            return _as_shape(r, bshape + (m,))

        def rmm_once(U: torch.Tensor, grad: bool) -> torch.Tensor:
            k = U.shape[-1]
            gs = _grad(st["y"], leaves, _cols_first(U, tuple(st["y"].shape)),
                       create_graph=grad, batched=True)
            return lay.join_cols(gs, k, y)

        def mm_once(V: torch.Tensor, grad: bool) -> torch.Tensor:
            k = V.shape[-1]
            gs, live = jvp_graph()
            if not live:
                return zeros(m, k)
            parts = lay.split_cols(V)
            (r,) = _grad([gs[i] for i in live], st["u0"], [parts[i] for i in live],
                         create_graph=grad, batched=True)
            if r is None:
                return zeros(m, k)
            return _cols_last(r, bshape, m)

        def product(once, size):
            @_autograd_on
            def apply(V: torch.Tensor, grad: bool) -> torch.Tensor:
                grad = grad and torch.is_grad_enabled() and differentiable()
                if not y.requires_grad:
                    return zeros(size, V.shape[-1])
                return _retry_freed(lambda: once(V, grad), forward)

            return apply

        def vector(vec, size):  # single vectors without gradient
            # The Krylov solvers' product, once per step: one flat closure (no
            # decorator, no retry lambda), whose Python is a visible part of a small
            # product's time.
            def apply(v: torch.Tensor) -> torch.Tensor:
                if not y.requires_grad:
                    return torch.zeros(bshape + (size,), dtype=y.dtype, device=y.device)
                if torch.is_inference_mode_enabled():
                    with torch.inference_mode(False):
                        return _retry_freed(lambda: vec(v, False), forward)
                try:
                    return vec(v, False)
                except RuntimeError as err:
                    if "backward through the graph a second time" not in str(err):
                        raise
                    forward()
                    return vec(v, False)

            return apply

        fkey = _function_key(f)
        mm = product(_blocks(mm_once, jvp_vec, fkey, "jvp"), m)
        rmm = product(_blocks(rmm_once, vjp_vec, fkey, "vjp"), n)
        return Linearization(y=y, n=n, m=m, batch_shape=bshape, mm=mm, rmm=rmm,
                             mv=vector(jvp_vec, m), rmv=vector(vjp_vec, n))

    def linearize_gradient(self, f, x, *, batched):
        values_in, leaves, arg = self._point(x, batched=batched)
        st: dict[str, Any] = {}
        start = generator_states()  # every run of f draws what this one would
        passes = Passes()

        def forward() -> None:  # rebuilt if the user's backward frees the graph
            with _forward_mode(f, start, passes) as guard, _math_kernels():
                y = guard.result(f(arg))
            _refuse_once_differentiable(y)
            with _outside_inference_mode(), torch.enable_grad():
                st["y"] = y
                st["grads"] = torch.autograd.grad(
                    y.sum(), leaves, create_graph=True, allow_unused=True
                ) if y.requires_grad and y.numel() else [None] * len(leaves)

        forward()
        y = st["y"]
        bshape = (int(x.shape[0]),) if batched else ()
        check_output(self, y, bshape[0] if batched else None, what="f")
        check_scalar_output(tuple(y.shape), bshape)
        lay = _Layout(leaves, bshape)
        n = lay.n
        differentiable = _differentiable(y, leaves, values_in)

        def hvp(V: torch.Tensor, grad: bool) -> torch.Tensor:
            return _retry_freed(
                lambda: _hvp(st["grads"], leaves, lay, V, y, create_graph=grad), forward)

        blocks = _blocks(hvp, hvp, _function_key(f), "hvp")

        @_autograd_on
        def mm(V: torch.Tensor, grad: bool) -> torch.Tensor:
            return blocks(V, grad and differentiable and torch.is_grad_enabled())

        @_autograd_on
        def mv(v: torch.Tensor) -> torch.Tensor:  # single vectors, no gradient
            return hvp(v, False)

        return Linearization(y=y, n=n, m=n, batch_shape=bshape, mm=mm, rmm=mm, mv=mv,
                             rmv=mv)

    # -- dataset operators (js.hessian(..., data=), js.ggn) ----------------------------
    def batch_hessian_product(self, f, params):
        """One forward, one backward with ``create_graph`` and one double backward per
        batch, the graph released as the last backward runs (a linearization retains it
        for further products, which a dataset product never asks for). Attention and
        exact GELU go through :class:`_LeanSecondOrder`, whose double backward holds
        fewer temporaries at the product's peak of memory; where ``f`` differentiates
        them itself, torch's kernels from then on."""
        _, leaves, arg = self._point(params, batched=False)
        lay = _Layout(leaves, ())
        lean = [True]  # emptied once a pass of f calls none of _LeanSecondOrder's ops
        passes = Passes()
        checked: list[bool] = []  # filled once a graph had no once-differentiable node

        def exact(batch, V, start, mode):
            # The caller fixes the randomness of each batch (see fixed_randomness).
            with _forward_mode(f, start, passes) as guard, _math_kernels(), mode:
                y = guard.result(f(arg, batch))
            if lean and not mode.seen:
                lean.clear()
            if not checked:  # the first batch's graph (a walk costs a few percent)
                _refuse_once_differentiable(y)
                checked.append(True)
            # the backward passes outside the guard, whose dispatch mode costs a few
            # microseconds per operation (f's writes happen in its forward pass)
            with _outside_inference_mode(), torch.enable_grad():
                grads = torch.autograd.grad(y, leaves, create_graph=True, allow_unused=True)
            if V.shape[-1] == 1:
                return _hvp(grads, leaves, lay, V[:, 0], V, retain_graph=False)[:, None]
            return _hvp(grads, leaves, lay, V, V, retain_graph=False)

        def prod(batch, V):
            if not lean:
                return exact(batch, V, None, contextlib.nullcontext())
            start = generator_states()  # a rerun draws what this pass draws
            try:
                return exact(batch, V, start, _LeanSecondOrder())
            except (RuntimeError, NotImplementedError) as err:
                if not _missing_derivative(err):
                    raise
                lean.clear()
                return exact(batch, V, start, contextlib.nullcontext())

        return prod

    def batch_ggn_product(self, f, loss, params):
        """``J^T H J V`` of one batch: per column, a forward pass carrying the tangent
        ``J v`` (forward-mode AD, nothing recorded; attention by
        :class:`_AttentionTangent`, else the math kernel), the
        loss's output Hessian on it (closed form for the common losses, else autodiff
        of the loss alone); then one forward pass recording the graph (the caller's
        kernels) and one backward pass per column through it. The graph holds a
        training step's activations and no tangent: about a training step's memory, no
        second derivative of the model. Where the model has no forward mode, the base
        class's route (double backward)."""
        _, leaves, arg = self._point(params, batched=False)
        lay = _Layout(leaves, ())
        loss_hvp = _loss_hessian_product(loss)
        base = super().batch_ggn_product(f, loss, params)
        forward_mode = [True]  # emptied where an operation has no forward mode
        attention = [True]  # emptied once a pass of f calls no attention
        passes = Passes()  # both passes of every product

        def tangent(inputs, v, start):
            import torch.autograd.forward_ad as fwad

            mode = _TangentAttention() if attention else contextlib.nullcontext()
            with _outside_inference_mode(), torch.no_grad(), _quiet_forward_mode(), \
                    fwad.dual_level():
                # jacspec's own tensors, made outside the state guard, whose per-operation
                # cost would double that of a small model's pass
                duals = [fwad.make_dual(leaf.detach(), t)
                         for leaf, t in zip(leaves, lay.split(v))]
                # every pass draws what the first does (the batch's dropout masks)
                with _forward_mode(f, start, passes) as guard, torch.no_grad(), \
                        _math_kernels(), mode:
                    y = guard.result(f(_with_leaves(arg, duals), inputs))
                out = fwad.unpack_dual(y)
            if attention and not mode.seen:
                attention.clear()
            return out

        def vjps(inputs, HZ, start, V):
            with _forward_mode(f, start, passes) as guard:
                z = guard.result(f(arg, inputs))
            with _outside_inference_mode(), torch.enable_grad():
                return [lay.join(torch.autograd.grad(z, leaves, hz, allow_unused=True,
                                                     retain_graph=j < len(HZ) - 1), V[:, j])
                        for j, hz in enumerate(HZ)]

        def output_hessian(inputs, targets, V, start):
            """``H J v`` per column (``None`` where ``J v`` is zero); the outputs and
            their tangents are released column by column, before the recorded pass."""
            HZ = []
            for j in range(V.shape[-1]):
                z, zt = tangent(inputs, V[:, j], start)
                HZ.append(None if zt is None else loss_hvp(z, zt, targets))
            return HZ, z

        def prod(batch, V):
            if not forward_mode:
                return base(batch, V)
            inputs, targets = batch
            try:
                start = generator_states()
                HZ, z = output_hessian(inputs, targets, V, start)
            except (RuntimeError, NotImplementedError) as err:
                if not _missing_derivative(err):
                    raise
                forward_mode.clear()
                return base(batch, V)
            if all(hz is None for hz in HZ):
                return torch.zeros_like(V)
            HZ = [torch.zeros_like(z) if hz is None else hz for hz in HZ]
            del z
            return torch.stack(vjps(inputs, HZ, start, V), dim=-1)

        return prod

    # -- routes of Hessian products (hvp=) --------------------------------------------
    def missing_derivative(self, err):
        return _missing_derivative(err)

    def second_order_kernels(self):
        return _math_kernels()

    def gradient_oracle(self, f, x, *, batched):
        """Gradients at ``x + d``: fresh leaves ``x + d`` (the user's tensors untouched),
        one forward and one backward pass under the state guard, the user's kernels."""
        values, _, arg = self._point(x, batched=batched)
        bshape = (int(x.shape[0]),) if batched else ()
        lay = _Layout(values, bshape)
        start = generator_states()  # every gradient draws what this run does (dropout)
        passes = Passes()
        with _forward_mode(f, start, passes) as guard, torch.no_grad():
            y = guard.result(f(arg))
        check_output(self, y, bshape[0] if batched else None, what="f")
        check_scalar_output(tuple(y.shape), bshape)
        with torch.no_grad():
            sq = sum(torch.sum(torch.square(v.detach().float()).reshape(bshape + (-1,)),
                               dim=-1) for v in values)
            point_norm = torch.sqrt(sq).to(y.dtype)

        def grad(d):
            with _outside_inference_mode(), torch.no_grad():
                pts = [(v.detach() + p).requires_grad_(True)
                       for v, p in zip(values, lay.split(d))]
            with _forward_mode(f, start, passes) as guard:
                out = guard.result(f(_with_leaves(arg, pts)))
                gs = (torch.autograd.grad(out.sum(), pts, allow_unused=True)
                      if out.requires_grad else [None] * len(pts))
            return lay.join(gs, d)

        return GradientOracle(y=y.detach(), n=lay.n, batch_shape=bshape,
                              point_norm=point_norm, grad=grad)

    def random_seed(self) -> int:
        return random_seed()

    def fixed_randomness(self, seed):
        return fixed_randomness(seed)

    # -- products summed across processes (distributed=True) --------------------------
    def _check_distributed(self) -> Any:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            raise ValueError(
                "Expected torch.distributed to be initialized for distributed=True (run "
                "under torchrun and call torch.distributed.init_process_group). Received "
                "an uninitialized default process group."
            )
        return dist

    def distributed_batch(self, batch, *, group):
        """This process's shard, as it is: each rank streams its own batches."""
        return batch

    def distributed_count(self, count, *, group):
        dist = self._check_distributed()
        t = torch.tensor([int(count)], dtype=torch.int64, device=self._collective_device(group))
        dist.all_reduce(t, group=group)
        return int(t.item())

    def distributed_sum(self, x, *, group):
        """``torch.distributed.all_reduce`` (a sum) of a copy of ``x``."""
        dist = self._check_distributed()
        out = x.clone()
        dist.all_reduce(out, group=group)
        return out

    def sharded_product(self, f, loss, params, summary, *, hvp, group):
        """Parameters sharded by FSDP2 (``DTensor``s): finite-difference products from
        FSDP's own forward and backward passes (see ``_torch_distributed``)."""
        from . import _torch_distributed as fsdp

        values = fsdp.sharded_values(params)
        if values is None:
            return None
        self._check_distributed()
        return fsdp.sharded_product(f, loss, params, values, summary, hvp=hvp, group=group,
                                    loss_hessian=_loss_hessian_product)

    def _collective_device(self, group) -> Any:
        """Where a collective's buffers live: the current CUDA device under NCCL."""
        import torch.distributed as dist

        if dist.get_backend(group) == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    # -- convolutions (js.conv) ------------------------------------------------------
    def conv2d(self, x, w, *, stride, pads):
        """Cross-correlation of ``x`` ``(N, C, H, W)`` with ``w`` ``(O, C, h, w)``.

        ``pads = ((top, bottom), (left, right))`` zeros, ``stride = (sh, sw)``.
        """
        (pt, pb), (pl, pr) = pads
        if pt or pb or pl or pr:
            x = torch.nn.functional.pad(x, (pl, pr, pt, pb))
        return torch.nn.functional.conv2d(x, w, stride=tuple(stride))

    def conv2d_adjoint(self, y, w, *, stride, pads, input_hw):
        """The exact adjoint of :meth:`conv2d` (a transposed conv), ``(N, C, H, W)``."""
        (pt, pb), (pl, pr) = pads
        H, W = input_hw
        (sh, sw), (kh, kw) = stride, tuple(w.shape[-2:])
        extra = (H + pt + pb - ((y.shape[-2] - 1) * sh + kh),
                 W + pl + pr - ((y.shape[-1] - 1) * sw + kw))
        z = torch.nn.functional.conv_transpose2d(y, w, stride=(sh, sw), output_padding=extra)
        return z[..., pt:pt + H, pl:pl + W]

    def conv_layers(self, model, input_shape):
        """Conv/dense layers a ``torch.nn.Module`` runs, in forward order (js.conv)."""
        from ._conv_layers import torch_layers

        return torch_layers(model, input_shape)

    def lipschitz_graph(self, model, input_shape, *, layout=None):
        """The traced graph of a ``torch.nn.Module`` (js.lipschitz); NCHW images."""
        from ._lipschitz_torch import torch_graph

        if layout == "NHWC":
            raise ValueError(
                "Expected layout 'NCHW' (or None) for a torch model: torch convolutions "
                "take channels-first images. Received layout='NHWC'.")
        return torch_graph(model, input_shape)


BACKEND = TorchBackend()
