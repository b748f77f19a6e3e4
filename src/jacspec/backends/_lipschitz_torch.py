"""A ``torch.nn.Module`` as a graph of nodes for ``js.lipschitz`` (see ``_graph``).

The module is traced with ``torch.fx`` (modules such as ``Conv2d`` stay whole), run once
on a zero sample to record every intermediate's shape and the values of the non-tensor
ones (``x.size(0)``), and each traced operation becomes a :class:`Node`. The module is in
eval mode while the graph is in use; its train/eval flags are restored afterwards.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ._conv_layers import torch_conv
from ._graph import ACTIVATIONS, ModelGraph, Node, Unsupported, overlap_lip

# Modules and functions that are affine in their tensor input(s).
_AFFINE_MODULES: dict[type, str] = {
    nn.Flatten: "flatten", nn.Unflatten: "reshape", nn.Identity: "identity",
    nn.Dropout: "dropout", nn.Dropout1d: "dropout", nn.Dropout2d: "dropout",
    nn.AvgPool1d: "avgpool", nn.AvgPool2d: "avgpool", nn.AvgPool3d: "avgpool",
    nn.AdaptiveAvgPool1d: "avgpool", nn.AdaptiveAvgPool2d: "avgpool",
    nn.AdaptiveAvgPool3d: "avgpool", nn.ZeroPad2d: "pad", nn.ConstantPad2d: "pad",
}
_AFFINE_FUNCTIONS = {
    torch.flatten: "flatten", torch.reshape: "reshape", torch.squeeze: "reshape",
    torch.unsqueeze: "reshape", torch.permute: "permute", torch.transpose: "permute",
    F.avg_pool1d: "avgpool", F.avg_pool2d: "avgpool", F.adaptive_avg_pool1d: "avgpool",
    F.adaptive_avg_pool2d: "avgpool", torch.mean: "mean", torch.sum: "sum",
    F.dropout: "dropout", F.pad: "pad", operator.getitem: "slice", operator.neg: "neg",
    torch.neg: "neg",
}
_AFFINE_METHODS = {
    "view": "reshape", "reshape": "reshape", "flatten": "flatten", "squeeze": "reshape",
    "unsqueeze": "reshape", "permute": "permute", "transpose": "permute",
    "contiguous": "identity", "mean": "mean", "sum": "sum", "neg": "neg",
}
_ACTIVATION_MODULES: dict[type, str] = {
    nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
    nn.GELU: "gelu", nn.SiLU: "silu", nn.Mish: "mish", nn.SELU: "selu",
    nn.Softsign: "softsign", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hard_sigmoid",
    nn.LogSigmoid: "log_sigmoid", nn.Hardtanh: "hardtanh", nn.Softmax: "softmax",
}
_ACTIVATION_FUNCTIONS = {
    torch.relu: "relu", F.relu: "relu", F.relu6: "relu6", torch.tanh: "tanh",
    F.tanh: "tanh", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid", F.gelu: "gelu",
    F.silu: "silu", F.mish: "mish", F.selu: "selu", torch.selu: "selu",
    F.softsign: "softsign", F.hardswish: "hardswish", F.hardsigmoid: "hard_sigmoid",
    F.logsigmoid: "log_sigmoid", F.hardtanh: "hardtanh", torch.softmax: "softmax",
    F.softmax: "softmax",
}
_ACTIVATION_METHODS = {"relu": "relu", "tanh": "tanh", "sigmoid": "sigmoid",
                       "softmax": "softmax"}
_ADD = {operator.add, operator.iadd, torch.add, "add", "add_"}
_SUB = {operator.sub, operator.isub, torch.sub, "sub"}
_MUL = {operator.mul, operator.imul, torch.mul, operator.truediv, torch.div, "mul", "div"}
_DIV = {operator.truediv, torch.div, "div"}
_CAT = {torch.cat, torch.concat}


def _slope_lip(name: str, mod_or_kwargs: Any) -> float:
    """The constant of a parametrized activation (leaky slope, ELU alpha, softplus)."""
    get = (mod_or_kwargs.get if isinstance(mod_or_kwargs, dict)
           else lambda k, d: getattr(mod_or_kwargs, k, d))
    if name == "leaky_relu":
        return max(1.0, abs(float(get("negative_slope", 0.01))))
    if name in ("elu", "celu"):
        return max(1.0, float(get("alpha", 1.0)))
    return 1.0  # softplus with any beta


def _max_pool(mod_or_args: Any) -> float:
    def two(v: Any) -> tuple[int, ...]:
        return tuple(v) if isinstance(v, (tuple, list)) else (int(v), int(v))

    k = two(mod_or_args["kernel_size"])
    s = mod_or_args.get("stride") or k
    return overlap_lip(k, two(s), two(mod_or_args.get("dilation", 1)))


def _trace(model: nn.Module) -> fx.GraphModule:
    tracer = fx.Tracer()
    if tracer.is_leaf_module(model, ""):  # a bare layer: traced as a call of it
        model = nn.Sequential(model)
    try:
        return fx.symbolic_trace(model)
    except Exception as e:  # fx raises many kinds (TraceError, TypeError...)
        raise ValueError(
            f"js.lipschitz could not trace the {type(model).__name__} with torch.fx "
            f"({type(e).__name__}: {e}); data-dependent Python control flow in forward() "
            "cannot be traced."
        ) from None


class _Recorder(fx.Interpreter):
    """Runs the traced module once, keeping every node's value."""

    def __init__(self, gm: fx.GraphModule) -> None:
        super().__init__(gm)
        self.values: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        v = super().run_node(n)
        self.values[n] = v
        return v


class _Builder:
    """Turns the traced nodes into :class:`Node` s."""

    def __init__(self, gm: fx.GraphModule, values: dict[fx.Node, Any]) -> None:
        self.gm, self.values = gm, values
        self.index: dict[fx.Node, int] = {}
        self.nodes: list[Node] = []

    def add(self, n: fx.Node | None, node: Node) -> None:
        if n is not None:
            self.index[n] = len(self.nodes)
        self.nodes.append(node)

    def deps(self, n: fx.Node) -> list[fx.Node]:
        """The traced inputs of ``n`` that depend on the model input, once each."""
        out: list[fx.Node] = []
        fx.node.map_arg((n.args, n.kwargs),
                        lambda a: out.append(a) if a in self.index and a not in out else None)
        return out

    def fn(self, n: fx.Node, deps: list[fx.Node]) -> Any:
        """``n``'s operation as a function of its dependent inputs (others as recorded)."""
        gm, values = self.gm, self.values

        def call(*xs: Any) -> Any:
            sub = dict(zip(deps, xs))
            args, kwargs = fx.node.map_arg((n.args, n.kwargs),
                                           lambda a: sub[a] if a in sub else values[a])
            if n.op == "call_module":
                return gm.get_submodule(n.target)(*args, **kwargs)
            if n.op == "call_method":
                return getattr(args[0], n.target)(*args[1:], **kwargs)
            return n.target(*args, **kwargs)

        return call

    def node(self, n: fx.Node) -> None:
        value = self.values[n]
        deps = self.deps(n)
        if not isinstance(value, torch.Tensor) or not deps:
            return  # a constant, or a size: used through its recorded value
        shape = tuple(int(s) for s in value.shape[1:])
        ins = tuple(self.index[d] for d in deps)
        target = n.target
        if n.op == "call_module":
            mod = self.gm.get_submodule(n.target)
            name = str(n.target)
            kind, op, extra = self._module(mod, name, n)
        elif n.op == "call_method":
            name = n.name
            kind, op, extra = self._method(target, name, n, deps)
        elif n.op == "call_function":
            name = n.name
            kind, op, extra = self._function(target, name, n, deps)
        else:
            raise Unsupported(n.name, f"an fx node of kind {n.op!r}")
        node = Node(name=name, kind=kind, op=op, inputs=ins, shape=shape, **extra)
        if kind != "nonlinear":
            node.fn = self.fn(n, deps)
        self.add(n, node)

    # -- classification ---------------------------------------------------------------
    def _module(self, mod: nn.Module, name: str, n: fx.Node) -> tuple[str, str, dict]:
        what = type(mod).__name__
        if isinstance(mod, nn.Linear):
            rank = self.values[n].dim()
            return "affine", "dense", dict(matrix=mod.weight.detach(), axis=rank - 1)
        if isinstance(mod, nn.Conv2d):
            x = self.values[n.args[0]]
            geo = torch_conv(mod, x.shape[-2:])
            if geo["mode"] not in ("zeros", "circular"):
                return "affine", "conv", dict(note=f"{geo['mode']} padding: generic norm")
            return "affine", "conv", dict(conv=geo, axis=1)
        if isinstance(mod, nn.modules.batchnorm._BatchNorm):
            if mod.running_var is None:
                raise Unsupported(name, what, "no running statistics: it normalizes by "
                                  "the batch's, which is not a function of one sample")
            scale = torch.rsqrt(mod.running_var.detach() + mod.eps)
            if mod.weight is not None:
                scale = scale * mod.weight.detach()
            return "affine", "batchnorm", dict(diag=scale, axis=1, note="inference mode")
        for cls, op in _AFFINE_MODULES.items():
            if isinstance(mod, cls):
                return "affine", op, {}
        for cls, op in _ACTIVATION_MODULES.items():
            if isinstance(mod, cls):
                return "nonlinear", op, dict(lip=ACTIVATIONS[op])
        for cls, op in ((nn.LeakyReLU, "leaky_relu"), (nn.ELU, "elu"), (nn.CELU, "celu"),
                        (nn.Softplus, "softplus")):
            if isinstance(mod, cls):
                return "nonlinear", op, dict(lip=_slope_lip(op, mod))
        if isinstance(mod, (nn.MaxPool1d, nn.MaxPool2d)):
            lip = _max_pool(dict(kernel_size=mod.kernel_size, stride=mod.stride,
                                 dilation=mod.dilation))
            return "nonlinear", "maxpool", dict(lip=lip, note=_overlap_note(lip))
        raise Unsupported(name, f"a {what}")

    def _function(self, target: Any, name: str, n: fx.Node,
                  deps: list[fx.Node]) -> tuple[str, str, dict]:
        if target in _ADD or target in _SUB:
            if len(deps) == 2 and not n.kwargs.get("alpha"):
                coefs = (1.0, -1.0) if target in _SUB else (1.0, 1.0)
                if n.args[0] is not deps[0]:
                    coefs = coefs[::-1]
                return "add", "add" if target in _ADD else "sub", dict(coefs=coefs)
            return "affine", "shift", {}
        if target is F.linear and len(deps) == 1 and n.args[0] is deps[0]:
            weight = n.args[1] if len(n.args) > 1 else n.kwargs["weight"]
            w = self.values[weight] if isinstance(weight, fx.Node) else weight
            return "affine", "dense", dict(matrix=w.detach(), axis=self.values[n].dim() - 1)
        if target in _MUL:
            uses = [i for i, a in enumerate(n.args) if a in self.index]
            if uses == [0] or (uses == [1] and target not in _DIV):
                return "affine", "scale", {}
            raise Unsupported(name, "a product or quotient of inputs", "not Lipschitz")
        if target in _CAT:
            return "concat", "concat", {}
        if target in _AFFINE_FUNCTIONS:
            return "affine", _AFFINE_FUNCTIONS[target], {}
        if target in _ACTIVATION_FUNCTIONS:
            op = _ACTIVATION_FUNCTIONS[target]
            return "nonlinear", op, dict(lip=ACTIVATIONS[op])
        for fun, op in ((F.leaky_relu, "leaky_relu"), (F.elu, "elu"), (F.celu, "celu"),
                        (F.softplus, "softplus")):
            if target is fun:
                kwargs = dict(n.kwargs)
                if op == "leaky_relu" and len(n.args) > 1:
                    kwargs["negative_slope"] = n.args[1]
                if op in ("elu", "celu") and len(n.args) > 1:
                    kwargs["alpha"] = n.args[1]
                return "nonlinear", op, dict(lip=_slope_lip(op, kwargs))
        if target in (F.max_pool1d, F.max_pool2d):
            names = ("input", "kernel_size", "stride", "padding", "dilation")
            spec = dict(zip(names, n.args), **n.kwargs)
            lip = _max_pool(spec)
            return "nonlinear", "maxpool", dict(lip=lip, note=_overlap_note(lip))
        raise Unsupported(name, f"a call to {getattr(target, '__name__', target)}")

    def _method(self, target: str, name: str, n: fx.Node,
                deps: list[fx.Node]) -> tuple[str, str, dict]:
        if target in _ADD or target in _SUB or target in _MUL:
            fun = {"add": operator.add, "add_": operator.add, "sub": operator.sub,
                   "mul": operator.mul, "div": operator.truediv}[target]
            return self._function(fun, name, n, deps)
        if target in _AFFINE_METHODS:
            return "affine", _AFFINE_METHODS[target], {}
        if target in _ACTIVATION_METHODS:
            op = _ACTIVATION_METHODS[target]
            return "nonlinear", op, dict(lip=ACTIVATIONS[op])
        raise Unsupported(name, f"a call to Tensor.{target}")


def _overlap_note(lip: float) -> str:
    return "windows overlap: sqrt(most windows per input)" if lip > 1 else ""


@contextlib.contextmanager
def torch_graph(model: nn.Module, input_shape: tuple[int, ...]) -> Iterator[ModelGraph]:
    """The graph of ``model`` on samples of ``input_shape``, with the model in eval mode
    for as long as the graph is used."""
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        gm = _trace(model)
        p = next(iter(model.parameters()), None)
        dtype = p.dtype if p is not None else torch.get_default_dtype()
        device = p.device if p is not None else None
        x = torch.zeros((1,) + tuple(input_shape), dtype=dtype, device=device)
        rec = _Recorder(gm)
        with torch.no_grad():
            rec.run(x)
        b = _Builder(gm, rec.values)
        out = None
        for n in gm.graph.nodes:
            if n.op == "placeholder":
                if b.nodes:
                    raise ValueError(
                        "Expected a model of one input (js.lipschitz). Received a "
                        f"{type(model).__name__} whose forward() takes several.")
                b.add(n, Node(name="input", kind="input", op="input", inputs=(),
                              shape=tuple(input_shape)))
            elif n.op == "output":
                out = n.args[0]
            elif n.op != "get_attr":
                b.node(n)
        if not isinstance(out, fx.Node) or out not in b.index:
            raise ValueError(
                "Expected a model returning one tensor that depends on its input "
                f"(js.lipschitz). Received a {type(model).__name__} returning "
                f"{type(rec.values.get(out, out)).__name__}.")
        nodes = b.nodes[: b.index[out] + 1]
        yield ModelGraph(nodes=nodes, forward=model, dtype=dtype, device=device)
    finally:
        for m, mode in modes:
            m.training = mode
