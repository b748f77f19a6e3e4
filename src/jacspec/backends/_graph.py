"""The structure of a model as ``js.lipschitz`` sees it: a small graph of nodes.

The framework walkers (``_lipschitz_torch``, ``_lipschitz_keras``, ``_lipschitz_jax``)
describe a model as a list of :class:`Node` in topological order, node 0 being the model
input; ``jacspec.lipschitz_bounds`` composes Lipschitz bounds over it without knowing the
framework. Every array a node holds or returns is the framework's own; functions take and
return batches (a leading batch axis).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Node kinds: the model input; an affine map of its inputs (``fn``); an elementwise or
#: other nonlinear map with a known Lipschitz constant (``lip``); a sum or concatenation
#: of several inputs (affine too, ``fn``).
KINDS = ("input", "affine", "nonlinear", "add", "concat")


@dataclass
class Node:
    """One operation of a model.

    Attributes
    ----------
    name : str
        The layer's name in the framework (module path, Keras layer name...).
    kind : str
        One of :data:`KINDS`.
    op : str
        What the node computes, for the table: ``"dense"``, ``"conv"``, ``"batchnorm"``,
        ``"avgpool"``, ``"flatten"``, ``"relu"``, ``"maxpool"``, ``"add"``...
    inputs : tuple of int
        Indices of the nodes whose outputs it reads (earlier in the list).
    shape : tuple of int
        The shape of one sample of its output.
    fn : callable, optional
        For ``"affine"``, ``"add"`` and ``"concat"`` nodes: the batched map of the inputs'
        values (bias included; only its linear part matters).
    lip : float, optional
        For ``"nonlinear"`` nodes: a Lipschitz constant in the L2 norm.
    matrix : array, optional
        A dense layer's ``(out, in)`` weight applied along the last axis (its norm is
        the node's exactly).
    conv : dict, optional
        A conv layer's geometry, as ``js.conv.layer_report`` reads it (``weight`` OIHW,
        ``stride``, ``pads``, ``mode``, ``dilation``, ``groups``, ``input_size``).
    diag : array, optional
        A per-channel scaling (eval-mode batch norm): the node's norm is ``max |diag|``.
    axis : int, optional
        For ``matrix`` and ``conv`` nodes the axis of the batched output that holds their
        output channels; for ``diag`` nodes the axis they scale along (a scaling right
        after a layer, along its channels, is folded into it).
    coefs : tuple of float, optional
        For ``"add"``: the factor each input is multiplied by (``x - y`` is ``(1, -1)``).
    note : str
        Why the node's constant is what it is, where that is not obvious.
    """

    name: str
    kind: str
    op: str
    inputs: tuple[int, ...]
    shape: tuple[int, ...]
    fn: Callable[..., Any] | None = None
    lip: float | None = None
    matrix: Any = None
    conv: dict | None = None
    diag: Any = None
    axis: int | None = None
    coefs: tuple[float, ...] | None = None
    note: str = ""


@dataclass
class ModelGraph:
    """A model as a list of nodes, and the batched function it computes."""

    nodes: list[Node]
    forward: Callable[[Any], Any]
    dtype: Any
    device: Any = None
    notes: list[str] = field(default_factory=list)


class NodeList:
    """The nodes a walker has emitted so far, with unique names."""

    def __init__(self) -> None:
        self.nodes: list[Node] = []
        self.names: dict[str, int] = {}

    def label(self, name: str) -> str:
        """``name``, or ``name #k`` for its ``k``-th use."""
        self.names[name] = self.names.get(name, 0) + 1
        return name if self.names[name] == 1 else f"{name} #{self.names[name]}"

    def append(self, node: Node) -> int:
        """Adds ``node``; returns its index."""
        self.nodes.append(node)
        return len(self.nodes) - 1


class Unsupported(ValueError):
    """A layer the walkers cannot bound (a ``ValueError`` naming it)."""

    def __init__(self, name: str, what: str, why: str = "") -> None:
        why = f" ({why})" if why else ""
        super().__init__(
            f"js.lipschitz cannot bound layer {name!r}: {what}{why}. Supported: dense, conv "
            "(2-D), batch norm (inference mode), pooling (average, max), flatten/reshape, "
            "dropout, identity, sums, concatenations and elementwise activations with a "
            "known Lipschitz constant."
        )


# Lipschitz constants (L2) of elementwise activations: the sup of |f'|.
_SQRT_2PI = math.sqrt(2 * math.pi)
#: GELU's derivative Phi(x) + x phi(x) peaks at x = sqrt(2): Phi(sqrt 2) + sqrt(2/pi)/e
#: = 1.1289 (the tanh approximation peaks a little lower); rounded up.
GELU_LIP = 1.129
#: SiLU/swish's derivative peaks at 1.0998 (x ~ 2.4); rounded up.
SILU_LIP = 1.1
#: Mish's derivative peaks at 1.0886; rounded up.
MISH_LIP = 1.089
#: SELU: scale * alpha times the slope of exp at 0.
SELU_LIP = 1.0507009873554805 * 1.6732632423543772

ACTIVATIONS: dict[str, float] = {
    "relu": 1.0, "relu6": 1.0, "tanh": 1.0, "hardtanh": 1.0, "softplus": 1.0,
    "sigmoid": 0.25, "hard_sigmoid": 1.0 / 6.0, "gelu": GELU_LIP, "silu": SILU_LIP,
    "swish": SILU_LIP, "mish": MISH_LIP, "selu": SELU_LIP, "softsign": 1.0,
    "hardswish": 1.5, "hard_swish": 1.5, "hard_silu": 1.5, "log_sigmoid": 1.0,
    "celu": 1.0, "elu": 1.0, "leaky_relu": 1.0,
    # softmax: its Jacobian diag(p) - p p^T has norm at most max_i p_i <= 1.
    "softmax": 1.0,
}


def overlap_lip(kernel: tuple[int, ...], stride: tuple[int, ...],
                dilation: tuple[int, ...] | None = None) -> float:
    """Lipschitz constant of a max pool: ``sqrt`` of the most windows one input enters.

    Each output is at most as far apart as the input window it reads (in the max
    norm, hence in L2), and an input enters at most ``ceil(k / s)`` windows per axis
    (``k`` with dilation), so the squared distances add up at most that many times.
    """
    count = 1
    for i, (k, s) in enumerate(zip(kernel, stride)):
        d = 1 if dilation is None else dilation[i]
        count *= min(k, -(-k // s)) if d == 1 else k
    return math.sqrt(count)
