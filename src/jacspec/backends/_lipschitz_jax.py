"""A Flax (NNX, or a bound Linen module) or Equinox model as a graph of nodes for
``js.lipschitz`` (see ``_graph``).

JAX models are functions, so their structure is read from the program they trace to:
``jax.make_jaxpr`` of the batched forward pass on one zero sample. Each equation that
depends on the input becomes a node (constants, i.e. parameters and whatever is
computed from them alone, are evaluated once); calls of named activations
(``jax.nn.relu``...) are kept whole, other calls are read inline. A node is named after
the primitive and the source line that made it (``dot_general in Linear.__call__``).

Inference mode without touching the user's model: an NNX module is cloned and the clone
set to ``eval()``; an Equinox module is copied by ``equinox.nn.inference_mode``. Equinox
modules act on one sample, so the forward pass is their ``jax.vmap``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp

from ._graph import ACTIVATIONS, ModelGraph, Node, NodeList, Unsupported, overlap_lip

# Primitives affine in their (one) dependent operand, the others constant.
_SHAPE_OPS = {"reshape": "reshape", "broadcast_in_dim": "reshape", "transpose": "permute",
              "squeeze": "reshape", "expand_dims": "reshape",
              "convert_element_type": "identity", "copy": "identity", "copy_p": "identity"}
_LINEAR_OPS = {"reduce_sum": "sum", "slice": "slice", "dynamic_slice": "slice",
               "pad": "pad", "reduce_window_sum": "avgpool", "neg": "neg",
               "reduce_precision": "identity", "select_n": "select", "cumsum": "sum"}
_ELEMENTWISE = {"tanh": "tanh", "logistic": "sigmoid", "abs": "abs", "max": "relu",
                "min": "min", "sin": "sin", "cos": "cos", "atan": "atan"}
_ELEMENTWISE_LIP = {"abs": 1.0, "relu": 1.0, "min": 1.0, "sin": 1.0, "cos": 1.0,
                    "atan": 1.0}
_CALLS = ("jit", "pjit", "closed_call", "core_call", "custom_jvp_call", "custom_vjp_call",
          "custom_vjp_call_jaxpr", "remat", "checkpoint")


def _is_literal(v: Any) -> bool:
    return type(v).__name__ == "Literal"


def _where(eqn: Any) -> str:
    from jax._src import source_info_util

    text = source_info_util.summarize(eqn.source_info)
    loc, _, fn = text.partition(" ")
    path, _, line = loc.rpartition(":")
    path, _, _ = path.rpartition(":") if path.count(":") else (path, "", "")
    return f"{eqn.primitive.name} in {fn.strip('()') or '?'} ({os.path.basename(path)})"


def _sub_jaxpr(eqn: Any) -> Any:
    for key in ("jaxpr", "call_jaxpr", "fun_jaxpr"):
        if key in eqn.params:
            return eqn.params[key]
    return None


class _Walker(NodeList):
    """Emits the nodes of a model, in the order its program computes them."""

    def jaxpr(self, closed: Any, ins: list[Any]) -> list[Any]:
        """Walks a (closed) jaxpr whose inputs are ``ins`` (a node index, or a constant
        value wrapped in a 1-tuple); returns its outputs the same way."""
        jaxpr = getattr(closed, "jaxpr", closed)
        env: dict[Any, Any] = {}
        for v, c in zip(jaxpr.constvars, getattr(closed, "consts", ())):
            env[v] = (c,)
        for v, x in zip(jaxpr.invars, ins):
            env[v] = x

        def read(v: Any) -> Any:
            return (v.val,) if _is_literal(v) else env[v]

        for eqn in jaxpr.eqns:
            vals = [read(v) for v in eqn.invars]
            outs = self.equation(eqn, vals)
            for v, o in zip(eqn.outvars, outs):
                env[v] = o
        return [read(v) for v in jaxpr.outvars]

    def equation(self, eqn: Any, vals: list[Any]) -> list[Any]:
        deps = []
        for v in vals:
            if isinstance(v, int) and v not in deps:
                deps.append(v)
        if not deps:  # constant: evaluate now
            out = eqn.primitive.bind(*(v[0] for v in vals), **eqn.params)
            outs = out if eqn.primitive.multiple_results else [out]
            return [(o,) for o in outs]
        name = eqn.primitive.name
        sub = _sub_jaxpr(eqn) if name in _CALLS or name.endswith("_call") else None
        if sub is not None:
            call = eqn.params.get("name", "")
            if call in ACTIVATIONS and len(deps) == 1:
                return [self.nonlinear(eqn, deps, call, ACTIVATIONS[call])]
            return self.jaxpr(sub, vals)
        if len(eqn.outvars) != 1:
            raise Unsupported(_where(eqn), f"the primitive {name!r} (several outputs)")
        return [self.single(eqn, name, vals, deps)]

    def single(self, eqn: Any, name: str, vals: list[Any], deps: list[int]) -> int:
        uses = [i for i, v in enumerate(vals) if isinstance(v, int)]
        shape = tuple(int(s) for s in eqn.outvars[0].aval.shape[1:])
        if name in ("add", "sub", "add_any"):
            if len(uses) == 2 and len(deps) == 2:
                coefs = (1.0, -1.0) if name == "sub" else (1.0, 1.0)
                return self.append(Node(self.label(_where(eqn)), "add", name, tuple(deps),
                                        shape, fn=_bind(eqn, vals, deps), coefs=coefs))
            return self.affine(eqn, vals, deps, shape, "shift")
        if name == "mul":
            if len(uses) == 1:
                return self.affine(eqn, vals, deps, shape, "scale")
            raise Unsupported(_where(eqn), "a product of inputs", "not Lipschitz")
        if name == "div":
            if uses == [0]:
                return self.affine(eqn, vals, deps, shape, "scale")
            raise Unsupported(_where(eqn), "a division by an input", "not Lipschitz")
        if name == "concatenate":
            kind = "concat" if len(deps) > 1 else "affine"
            return self.append(Node(self.label(_where(eqn)), kind, "concat", tuple(deps),
                                    shape, fn=_bind(eqn, vals, deps)))
        if len(uses) != 1:
            raise Unsupported(_where(eqn), f"the primitive {name!r} of several inputs")
        if name == "dot_general":
            return self.dense(eqn, vals, deps, shape)
        if name == "conv_general_dilated":
            return self.conv(eqn, vals, deps, shape)
        if name in _SHAPE_OPS:
            return self.affine(eqn, vals, deps, shape, _SHAPE_OPS[name])
        if name in _LINEAR_OPS:
            return self.affine(eqn, vals, deps, shape, _LINEAR_OPS[name])
        if name in _ELEMENTWISE and (name not in ("max", "min") or len(vals) == 2):
            op = _ELEMENTWISE[name]
            lip = _ELEMENTWISE_LIP.get(op, ACTIVATIONS.get(op))
            return self.nonlinear(eqn, deps, op, lip)
        if name in ("reduce_max", "reduce_min", "argmax"):
            return self.nonlinear(eqn, deps, "maxpool", 1.0)
        if name in ("reduce_window_max", "reduce_window_min"):
            p = eqn.params
            lip = overlap_lip(tuple(p["window_dimensions"]), tuple(p["window_strides"]),
                              tuple(p["window_dilation"]))
            note = "windows overlap: sqrt(most windows per input)" if lip > 1 else ""
            return self.nonlinear(eqn, deps, "maxpool", lip, note)
        raise Unsupported(_where(eqn), f"the primitive {name!r}")

    def affine(self, eqn: Any, vals: list[Any], deps: list[int], shape: tuple[int, ...],
               op: str, **extra: Any) -> int:
        return self.append(Node(self.label(_where(eqn)), "affine", op, tuple(deps), shape,
                                fn=_bind(eqn, vals, deps), **extra))

    def nonlinear(self, eqn: Any, deps: list[int], op: str, lip: float,
                  note: str = "") -> int:
        shape = tuple(int(s) for s in eqn.outvars[0].aval.shape[1:])
        return self.append(Node(self.label(_where(eqn)), "nonlinear", op, tuple(deps), shape,
                                lip=float(lip), note=note))

    def dense(self, eqn: Any, vals: list[Any], deps: list[int], shape: tuple[int, ...]) -> int:
        """``x @ W`` (or ``W @ x``): the matrix route where the weight is a plain 2-D
        constant contracted with the input's last axis; any other form by its Jacobian."""
        (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
        x_first = isinstance(vals[0], int)
        w = vals[1][0] if x_first else vals[0][0]
        x_aval = eqn.invars[0 if x_first else 1].aval
        xc, wc = (lc, rc) if x_first else (rc, lc)
        plain = (not lb and not rb and w.ndim == 2 and len(xc) == 1
                 and xc[0] == x_aval.ndim - 1 and x_first)
        extra: dict[str, Any] = {}
        if plain:
            extra = dict(matrix=w.T if wc[0] == 0 else w, axis=len(shape))
        return self.affine(eqn, vals, deps, shape, "dense", **extra)

    def conv(self, eqn: Any, vals: list[Any], deps: list[int], shape: tuple[int, ...]) -> int:
        p = eqn.params
        if not isinstance(vals[0], int):
            raise Unsupported(_where(eqn), "a convolution whose kernel depends on the input")
        lhs, rhs, out = p["dimension_numbers"]
        w = vals[1][0]
        x_shape = eqn.invars[0].aval.shape
        extra: dict[str, Any] = {}
        if (w.ndim == 4 and tuple(p["lhs_dilation"]) == (1, 1)
                and p.get("batch_group_count", 1) == 1
                and not isinstance(p["padding"], str)):
            extra = dict(axis=int(out[1]), conv=dict(
                weight=jnp.transpose(w, tuple(rhs)), stride=tuple(p["window_strides"]),
                dilation=tuple(p["rhs_dilation"]), groups=int(p["feature_group_count"]),
                pads=tuple(tuple(int(a) for a in q) for q in p["padding"]), mode="zeros",
                input_size=(int(x_shape[lhs[2]]), int(x_shape[lhs[3]]))))
        return self.affine(eqn, vals, deps, shape, "conv", **extra)


def _bind(eqn: Any, vals: list[Any], deps: list[int]) -> Any:
    """The equation as a function of its dependent operands (constants as recorded)."""

    def call(*xs: Any) -> Any:
        args = [xs[deps.index(v)] if isinstance(v, int) else v[0] for v in vals]
        return eqn.primitive.bind(*args, **eqn.params)

    return call


def _family(model: Any) -> str:
    roots = {c.__module__.split(".")[0] for c in type(model).__mro__}
    if "equinox" in roots:
        return "equinox"
    from flax import nnx

    if isinstance(model, nnx.Module):
        return "nnx"
    return "linen"


def _inference(model: Any, family: str) -> Any:
    """A copy of ``model`` in inference mode (the user's model is left as it is)."""
    if family == "equinox":
        import equinox as eqx

        return eqx.nn.inference_mode(model)
    if family == "nnx":
        from flax import nnx

        clone = nnx.clone(model)
        clone.eval()
        return clone
    if getattr(model, "scope", None) is None:
        raise ValueError(
            "Expected a bound Flax Linen module (model.bind(variables)) or an NNX module "
            f"(js.lipschitz). Received an unbound {type(model).__name__}.")
    return model


def owns_model(model: Any) -> bool:
    roots = {c.__module__.split(".")[0] for c in type(model).__mro__}
    return bool(roots & {"flax", "equinox"})


@contextlib.contextmanager
def jax_graph(model: Any, input_shape: tuple[int, ...],
              layout: str | None = None) -> Iterator[ModelGraph]:
    """The graph of a Flax or Equinox model on samples of ``input_shape``."""
    family = _family(model)
    own = "NCHW" if family == "equinox" else "NHWC"
    if layout is not None and layout != own:
        raise ValueError(
            f"Expected layout {own!r} (or None) for a {family} model. Received "
            f"layout={layout!r}.")
    model = _inference(model, family)
    forward = jax.vmap(model) if family == "equinox" else model
    leaves = [x for x in jax.tree_util.tree_leaves(model) if hasattr(x, "dtype")
              and jnp.issubdtype(x.dtype, jnp.floating)]
    dtype = leaves[0].dtype if leaves else jnp.float32
    x = jnp.zeros((1,) + tuple(input_shape), dtype=dtype)
    closed = jax.make_jaxpr(forward)(x)
    w = _Walker()
    w.append(Node("input", "input", "input", (), tuple(input_shape)))
    outs = w.jaxpr(closed, [0])
    if len(outs) != 1 or not isinstance(outs[0], int):
        raise ValueError(
            "Expected a model returning one array that depends on its input "
            f"(js.lipschitz). Received a {type(model).__name__} with {len(outs)} outputs.")
    # One compiled forward pass: its derivatives are traced once per input shape.
    program = jax.jit(lambda z: forward(z))
    yield ModelGraph(nodes=w.nodes[: outs[0] + 1], forward=program, dtype=dtype)
