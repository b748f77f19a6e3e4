"""Both sides of a model's global Lipschitz constant: ``js.lipschitz``.

The **upper** bound is certified: the model's structure (a graph of nodes from the
framework walker, see ``jacspec.backends._graph``) is walked in order, keeping for every
node an upper bound ``L`` on the Lipschitz constant of the map from the model input to
that node's output:

- runs of affine nodes (dense, conv, batch norm, average pooling, flatten, sums of
  branches from one point) are *composed* before a norm is taken: ``L`` is the exact
  operator norm of the composed linear part times ``L`` at the run's start, which is
  never more than the product of the layers' norms, and equals ``||W_L ... W_1||`` for
  a linear network;
- a nonlinear node multiplies ``L`` by its Lipschitz constant (activations by the sup
  of their slope, a max pool by ``sqrt`` of its window overlap);
- a sum of branches that start at different points adds their bounds (a residual block
  ``x + F(x)`` gives ``(1 + Lip(F)) L``), a concatenation adds their squares.

Every norm is computed to relative accuracy ``tol`` (``sqrt`` of the dtype's epsilon:
exact SVDs for small maps, Lanczos bidiagonalization otherwise) and rounded up by that
accuracy.

The **lower** bound is attained: the largest exact per-sample ``sigma_max(J(x))`` over
the data, raised by steps of gradient ascent on ``x`` (random directions where the
gradient vanishes, as in piecewise-linear networks); every value is the Jacobian norm
at a point, so it never exceeds the Lipschitz constant.

Batch norm is taken in inference mode (its running statistics; in training mode it is
not a function of one sample): the model is put in inference mode for the computation
and its modes are restored afterwards.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from . import validate as V
from .backends import Backend, model_backend
from .backends._graph import ModelGraph, Node

__all__ = ["LipschitzBounds", "LipschitzLayer", "lipschitz"]

Array = Any

#: Reshaping nodes: norm 1, left out of a composed run's norm.
ISOMETRIES = ("flatten", "reshape", "identity", "dropout", "permute")
#: Random samples drawn when no data is given.
RANDOM_SAMPLES = 8
#: How many of the best samples the gradient ascent refines.
REFINE_SAMPLES = 8
#: The first step of the ascent, relative to the sample's norm.
FIRST_STEP = 0.05


class LipschitzLayer(NamedTuple):
    """One node of the model in :attr:`LipschitzBounds.layers` (plain Python values)."""

    name: str
    kind: str  #: "dense", "conv", "batchnorm", "relu", "add", ...
    norm: float  #: the node's own operator norm or Lipschitz constant (nan for sums)
    factor: float  #: the factor the bound takes here (nan: composed into a later node)
    bound: float  #: the upper bound from the input to here (nan: composed)
    note: str


class LayerTable(list):
    """A list of :class:`LipschitzLayer` that prints as a table."""

    def __str__(self) -> str:
        head = ["layer", "kind", "norm", "factor", "bound", "note"]

        def num(v: float) -> str:
            return "·" if math.isnan(v) else f"{v:.5g}"

        body = [[r.name, r.kind, num(r.norm), num(r.factor), num(r.bound), r.note]
                for r in self]
        widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h)
                  for i, h in enumerate(head)]
        fmt = "  ".join(("{:<" if i in (0, 1, 5) else "{:>") + f"{w}}}"
                        for i, w in enumerate(widths))
        lines = [fmt.format(*head).rstrip(), fmt.format(*("-" * w for w in widths))]
        lines += [fmt.format(*row).rstrip() for row in body]
        return "\n".join(lines)


class LipschitzBounds(NamedTuple):
    """Both sides of a model's L2 Lipschitz constant (see :func:`lipschitz`).

    Attributes
    ----------
    upper : float
        Certified: the model's Lipschitz constant is at most this.
    lower : float
        Attained: ``||J(argmax)||_2``, so the constant is at least this.
    ratio : float
        ``upper / lower`` (``inf`` when ``lower`` is 0).
    argmax : array
        The input (one sample, the model's framework) where ``lower`` is attained.
    layers : list of LipschitzLayer
        One row per node of the model, in forward order; prints as a table.
    """

    upper: float
    lower: float
    ratio: float
    argmax: Array
    layers: LayerTable

    def __str__(self) -> str:
        return (f"Lipschitz constant in [{self.lower:.6g}, {self.upper:.6g}] "
                f"(upper / lower = {self.ratio:.4g})\n{self.layers}")


# ------------------------------------------------------------------------ upper bound


class _Upper:
    """The composition of bounds along the graph (see the module docstring)."""

    def __init__(self, b: Backend, graph: ModelGraph, conv: str = "exact") -> None:
        self.b, self.graph, self.nodes = b, graph, graph.nodes
        self.conv = conv
        self.tol = float(np.sqrt(np.finfo(b.dtype_name(graph.dtype)).eps))
        self.L: dict[int, float] = {}
        #: node -> (the node a run of affine nodes starts from, the run's nodes)
        self.run: dict[int, tuple[int, tuple[int, ...]]] = {}
        self.norms: dict[tuple[int, tuple[int, ...]], float] = {}
        self.own: dict[int, float] = {}
        self.factor: dict[int, float] = {}

    def bound(self) -> tuple[float, LayerTable]:
        for i, node in enumerate(self.nodes):
            self.visit(i, node)
        upper = self.settle(len(self.nodes) - 1)
        table = LayerTable()
        for i, node in enumerate(self.nodes[1:], start=1):
            table.append(LipschitzLayer(
                node.name, node.op, self.own.get(i, math.nan),
                self.factor.get(i, math.nan), self.L.get(i, math.nan), node.note))
        return upper, table

    def visit(self, i: int, node: Node) -> None:
        if node.kind == "input":
            self.L[i], self.run[i] = 1.0, (i, ())
        elif node.kind == "affine":
            start, members = self.run[node.inputs[0]]
            self.run[i] = (start, members + (i,))
            self.own[i] = self.node_norm(i, node)
        elif node.kind in ("add", "concat"):
            starts = {self.run[j][0] for j in node.inputs}
            if len(starts) == 1:  # branches from one point: one affine map
                members = sorted({m for j in node.inputs for m in self.run[j][1]} | {i})
                self.run[i] = (starts.pop(), tuple(members))
                return
            parts = [self.settle(j) for j in node.inputs]
            if node.kind == "add":
                coefs = node.coefs or (1.0,) * len(parts)
                value = sum(abs(c) * p for c, p in zip(coefs, parts))
            else:
                value = math.sqrt(sum(p * p for p in parts))
            self.L[i], self.run[i] = value, (i, ())
        elif node.kind == "nonlinear":
            self.own[i] = self.factor[i] = float(node.lip)
            self.L[i] = float(node.lip) * self.settle(node.inputs[0])
            self.run[i] = (i, ())
        else:  # pragma: no cover - the walkers emit only the kinds above
            raise ValueError(f"Unknown node kind {node.kind!r} for {node.name!r}.")

    def settle(self, j: int) -> float:
        """The bound at node ``j``, taking the norm of the run that ends there."""
        start, members = self.run[j]
        if not members:
            return self.L[start]
        key = (start, members)
        if key not in self.norms:
            self.norms[key] = self.run_norm(start, members)
        self.factor[j] = self.norms[key]
        self.L[j] = self.norms[key] * self.L[start]
        return self.L[j]

    def run_norm(self, start: int, members: tuple[int, ...]) -> float:
        """The operator norm of the linear part of a run of affine nodes."""
        core = [m for m in members if self.nodes[m].op not in ISOMETRIES]
        if not core:
            return 1.0
        if len(core) == 1 and self.nodes[core[0]].kind == "affine":
            return self.own[core[0]]
        folded = self.folded_norm(core)
        if folded is not None:
            return folded
        return self.jacobian_norm(start, members)

    def folded_norm(self, core: list[int]) -> float | None:
        """A conv or dense layer followed by per-channel scalings (batch norm) is one
        layer with its output channels scaled: its exact norm by the layer's own route."""
        head = self.nodes[core[0]]
        if head.conv is None and head.matrix is None:
            return None
        scale, prev = None, core[0]
        for m in core[1:]:
            node = self.nodes[m]
            if node.diag is None or node.inputs != (prev,) or node.axis != head.axis:
                return None
            scale = node.diag if scale is None else scale * node.diag
            prev = m
        if head.matrix is not None:
            return self.matrix_norm(scale[:, None] * head.matrix)
        geo = dict(head.conv, weight=scale[:, None, None, None] * head.conv["weight"])
        return self.conv_norm(geo)

    def jacobian_norm(self, start: int, members: tuple[int, ...]) -> float:
        """``||J||`` of the run's map at zero (affine: its Jacobian is its linear part)."""
        from .derivatives import jacobian
        from .solvers import spectral_norm

        nodes = self.nodes

        def run(z: Array) -> Array:
            vals = {start: z}
            for m in members:
                vals[m] = nodes[m].fn(*(vals[k] for k in nodes[m].inputs))
            return vals[members[-1]]

        z = self.zeros(nodes[start].shape)
        with_no_grad = self.b.no_grad()
        with with_no_grad:
            value = spectral_norm(jacobian(run, z), tol=self.tol)
        return self.up(self.b.to_float(self.b.stop_gradient(value)))

    def node_norm(self, i: int, node: Node) -> float:
        """One affine node's own operator norm."""
        b = self.b
        if node.op in ISOMETRIES:
            return 1.0
        if node.diag is not None:
            return self.up(float(np.max(np.abs(b.to_numpy(node.diag)))))
        if node.matrix is not None:
            return self.matrix_norm(node.matrix)
        if node.conv is not None:
            return self.conv_norm(node.conv)
        return self.jacobian_norm(node.inputs[0], (i,))

    def matrix_norm(self, matrix: Array) -> float:
        from .solvers import spectral_norm

        b = self.b
        with b.no_grad():
            value = spectral_norm(matrix, tol=self.tol)
        return self.up(b.to_float(b.stop_gradient(value)))

    def conv_norm(self, geo: dict) -> float:
        """A conv's exact norm at the input size it sees, with its stride and padding
        (``conv="gram"``: the Gram-iteration bound for zero padding, certified as it is)."""
        from .conv import _conv_norm, _expand_kernel, _make_operator, gram_bound

        b = self.b
        with b.no_grad():
            w = _expand_kernel(b.xp, geo["weight"], geo["dilation"], geo["groups"])
            if self.conv == "gram" and geo["mode"] == "zeros":
                value = gram_bound(w, geo["input_size"], stride=geo["stride"],
                                   padding=geo["pads"], layout="OIHW")
                return b.to_float(b.stop_gradient(value))
            op = _make_operator(b, w, geo["input_size"], geo["stride"], geo["pads"], "OIHW",
                                wrap=geo["mode"] == "circular")
            value = _conv_norm(op, tol=self.tol)
        return self.up(b.to_float(b.stop_gradient(value)))

    def up(self, value: float) -> float:
        """A norm computed to relative accuracy ``tol``, rounded up by it."""
        return value * (1.0 + self.tol)

    def zeros(self, shape: tuple[int, ...]) -> Array:
        xp = self.b.xp
        return xp.zeros((1,) + tuple(shape), dtype=self.graph.dtype, device=self.graph.device)


# ------------------------------------------------------------------------ lower bound


def _batches(b: Backend, data: Any, shape: tuple[int, ...], graph: ModelGraph,
             seed: int) -> Iterable[Array]:
    """The input batches of ``data`` (checked against ``shape``), or random ones."""
    if data is None:
        yield b.normal((RANDOM_SAMPLES,) + shape, dtype=graph.dtype, device=graph.device,
                       seed=seed)
        return
    items = [data] if b.is_array(data) else data
    count = 0
    for item in V.lipschitz_data(items, data):
        if isinstance(item, (tuple, list)) and item and b.is_array(item[0]):
            item = item[0]
        V.lipschitz_batch(b, item, shape)
        count += 1
        yield item
    V.lipschitz_count(count)


def _top(f: Any, X: Array) -> Any:
    """Each sample's exact ``sigma_max(J(x))`` (a Ritz value: a lower bound) and its
    singular vectors, without gradient."""
    from .derivatives import jacobian
    from .solvers import svds

    return svds(jacobian(f, X, batched=True), 1, return_vectors=True)


def _gradient(b: Backend, f: Any, X: Array, U: Array, V: Array) -> Array:
    """The gradient of each sample's ``sigma_max(J(x))`` with respect to ``x``: that of
    ``u^T J(x) v`` with the singular vectors ``u, v`` held fixed (envelope theorem)."""
    xp = b.xp
    U, V = b.stop_gradient(U), b.stop_gradient(V)

    def total(Z: Array) -> Array:
        return xp.sum(U * b.linearize(f, Z, batched=True).mm(V, True))

    lin = b.linearize(total, X, batched=False)
    one = xp.ones((1, 1), dtype=X.dtype, device=b.device(X))
    return xp.reshape(lin.rmm(one, False), X.shape)


def _values(b: Backend, top: Any) -> np.ndarray:
    return b.to_numpy(b.stop_gradient(top.values))[:, 0]


class _Best:
    """The largest values seen and the samples they were seen at."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.items: list[tuple[float, Array]] = []

    def offer(self, values: np.ndarray, X: Array) -> None:
        for k in np.argsort(-values)[: self.keep]:
            self.items.append((float(values[k]), X[int(k)]))
        self.items.sort(key=lambda t: -t[0])
        del self.items[self.keep:]


def _select(b: Backend, keep: np.ndarray, new: Array, old: Array) -> Array:
    """``new`` where ``keep`` (one flag per sample), else ``old``."""
    shape = (len(keep),) + (1,) * (len(new.shape) - 1)
    return b.xp.where(b.from_numpy(keep.reshape(shape), device=b.device(new)), new, old)


def _refine(b: Backend, f: Any, best: _Best, steps: int, seed: int) -> None:
    """Adaptive ascent on ``x``: a step along the gradient of ``sigma_max(J(x))`` (or a
    random direction where it vanishes, as in piecewise-linear networks) is kept where
    it raises the value, and grows; otherwise it shrinks."""
    xp = b.xp
    X = xp.stack([x for _, x in best.items])
    B = int(X.shape[0])
    top = _top(f, X)
    s, U, V = _values(b, top), top.left, top.right
    flat = xp.reshape(X, (B, -1))
    size = np.sqrt(float(flat.shape[1]))
    step = FIRST_STEP * np.maximum(b.to_numpy(xp.linalg.vector_norm(flat, axis=1)), size)
    use_gradient = True
    for t in range(steps):
        R = xp.reshape(b.normal(tuple(X.shape), dtype=X.dtype, device=b.device(X),
                                seed=seed + 1 + t), (B, -1))
        D = R
        if use_gradient:
            G = xp.reshape(_gradient(b, f, X, U, V), (B, -1))
            flat_zero = b.to_numpy(xp.linalg.vector_norm(G, axis=1)) == 0
            use_gradient = not np.all(flat_zero)  # else piecewise linear: random from now
            D = _select(b, flat_zero, R, G)
        dnorm = b.to_numpy(xp.linalg.vector_norm(D, axis=1))
        scale = b.from_numpy((step / dnorm)[:, None].astype(b.dtype_name(X.dtype)),
                             device=b.device(X))
        Xc = xp.reshape(xp.reshape(X, (B, -1)) + scale * D, X.shape)
        cand = _top(f, Xc)
        sc = _values(b, cand)
        better = sc > s
        X = _select(b, better, Xc, X)
        U, V = _select(b, better, cand.left, U), _select(b, better, cand.right, V)
        s = np.where(better, sc, s)
        step = np.where(better, step * 1.5, step * 0.5)
        best.offer(sc, Xc)


def _lower(b: Backend, graph: ModelGraph, data: Any, shape: tuple[int, ...],
           refine_steps: int, seed: int) -> tuple[float, Array]:
    f = graph.forward
    best = _Best(REFINE_SAMPLES)
    for X in _batches(b, data, shape, graph, seed):
        best.offer(_values(b, _top(f, X)), X)
    if refine_steps:
        _refine(b, f, best, refine_steps, seed)
    value, x = best.items[0]
    return value, b.stop_gradient(x)


# ----------------------------------------------------------------------------- public


def lipschitz(model: Any, input_shape: Any, *, data: Any = None, refine_steps: int = 20,
              layout: str | None = None, seed: int = 0, conv: str = "exact"
              ) -> LipschitzBounds:
    """Both sides of a model's global L2 Lipschitz constant.

    ``upper`` is certified: exact per-layer operator norms (dense layers: ``sigma_max``;
    convolutions: the exact norm at the input size each sees, with its stride and
    padding; consecutive linear layers composed before the norm is taken) combined along
    the model's structure (a residual ``x + F(x)`` as ``1 + Lip(F)``, activations by
    their Lipschitz constants, batch norm in inference mode as a diagonal scaling,
    pooling and flatten exactly). ``lower`` is attained: the largest per-sample
    ``sigma_max(J(x))`` over ``data``, raised by ``refine_steps`` steps of gradient
    ascent on ``x``.

    Parameters
    ----------
    model : torch.nn.Module or keras.Model or flax / equinox module
        Its structure must be visible: torch modules are traced with ``torch.fx``, Keras
        models (Sequential or functional) are read from their layers; a JAX model is a
        Flax ``nnx`` or Equinox module built from known layers.
    input_shape : tuple of int
        The shape of ONE input sample, without the batch axis: ``(C, H, W)`` for torch,
        ``(H, W, C)`` for Keras and Flax.
    data : array or iterable, optional
        A batch of inputs (leading batch axis), or an iterable of batches or of
        ``(inputs, targets)`` pairs. Without it, 8 random normal inputs drawn with ``seed``.
    refine_steps : int
        Steps of gradient ascent on the 8 best inputs (0: the data's values only).
    layout : {"NCHW", "NHWC"}, optional
        The image layout of ``input_shape``; checked against the model's (torch is
        NCHW, Keras and Flax NHWC, Equinox NCHW).
    seed : int
        Seeds the random inputs and directions.
    conv : {"exact", "gram"}
        How a zero-padded conv's norm is taken: ``"exact"`` (default; Lanczos on the
        conv, to relative accuracy ``sqrt(eps)``, rounded up by it) or ``"gram"``
        (:func:`jacspec.conv.gram_bound`: certified in the arithmetic it runs in,
        slightly above the exact norm, cheaper for wide layers).

    Returns
    -------
    LipschitzBounds
        ``upper``, ``lower``, ``ratio``, ``argmax`` (the input attaining ``lower``) and
        ``layers`` (one row per node: name, kind, norm, factor, bound), printable.

    Raises
    ------
    ValueError
        For a layer it cannot bound (named), a model it cannot trace, or ``data`` whose
        samples do not have ``input_shape``.
    FloatingPointError
        If the model returns NaN or Inf.

    Examples
    --------
    >>> import torch
    >>> import jacspec as js
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
    ...                           torch.nn.Linear(8, 2)).double()
    >>> res = js.lipschitz(net, (4,), refine_steps=5)
    >>> bool(0 < res.lower <= res.upper)
    True
    >>> [r.kind for r in res.layers]
    ['dense', 'tanh', 'dense']
    """
    b = model_backend(model)
    shape = V.lipschitz(input_shape, refine_steps, layout, seed, conv)
    with b.lipschitz_graph(model, shape, layout=layout) as graph:
        upper, table = _Upper(b, graph, conv).bound()
        lower, argmax = _lower(b, graph, data, shape, int(refine_steps), int(seed))
    ratio = upper / lower if lower > 0 else math.inf
    return LipschitzBounds(upper, lower, ratio, argmax, table)
