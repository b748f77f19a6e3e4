"""A Keras 3 model as a graph of nodes for ``js.lipschitz`` (see ``_graph``).

Functional models (and Sequential ones, which hold a functional graph once built) are
read from their graph of layer calls, nested models inline; every layer is called with
``training=False``. A Dense or Conv2D layer with an activation becomes two nodes (the
affine map and the activation). Nothing in the model is changed (an unbuilt model is
built by one call on a zero sample, as Keras builds it on first use).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import tensorflow as tf

from ._conv_layers import keras_conv
from ._graph import ACTIVATIONS, ModelGraph, Node, NodeList, Unsupported, overlap_lip

keras = tf.keras

_ISOMETRIC = {"Flatten": "flatten", "Reshape": "reshape", "Permute": "permute",
              "Dropout": "dropout", "SpatialDropout1D": "dropout",
              "SpatialDropout2D": "dropout", "GaussianNoise": "dropout",
              "GaussianDropout": "dropout", "AlphaDropout": "dropout",
              "Identity": "identity", "ActivityRegularization": "identity"}
_AFFINE = {"AveragePooling1D": "avgpool", "AveragePooling2D": "avgpool",
           "GlobalAveragePooling1D": "avgpool", "GlobalAveragePooling2D": "avgpool",
           "ZeroPadding1D": "pad", "ZeroPadding2D": "pad", "Cropping1D": "slice",
           "Cropping2D": "slice", "Rescaling": "scale", "Normalization": "scale"}
# keras.ops operations on KerasTensors (``x + y``, ``x * 2.0``, ``ops.relu(x)``).
_OPS_AFFINE = {"Add": "shift", "Subtract": "shift", "Multiply": "scale",
               "Divide": "scale", "TrueDivide": "scale", "Negative": "neg",
               "Reshape": "reshape", "Flatten": "flatten", "Transpose": "permute",
               "Mean": "mean", "Sum": "sum", "ExpandDims": "reshape", "Squeeze": "reshape",
               "GetItem": "slice"}


def _activation(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def _lip_of_activation(name: str, layer_name: str) -> float | None:
    """The constant of a Keras activation by name (None for ``linear``)."""
    if name == "linear":
        return None
    if name not in ACTIVATIONS:
        raise Unsupported(layer_name, f"the activation {name!r}")
    return ACTIVATIONS[name]


class _Walker(NodeList):
    """Emits the nodes of a model, in the order its program computes them."""

    def functional(self, model: Any, inputs: list[int]) -> int:
        """Adds the nodes of a functional graph whose inputs are ``inputs``; returns the
        index of its output."""
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            raise ValueError(
                f"Expected a Keras model of one input and one output (js.lipschitz). "
                f"Received {model.name!r} with {len(model.inputs)} inputs and "
                f"{len(model.outputs)} outputs.")
        where = {id(model.inputs[0]): inputs[0]}
        for depth in sorted(model._nodes_by_depth, reverse=True):
            for knode in model._nodes_by_depth[depth]:
                if not knode.operation or knode.is_input:
                    continue
                deps = []
                for t in knode.input_tensors:
                    if id(t) in where and where[id(t)] not in deps:
                        deps.append(where[id(t)])
                if not deps:
                    continue  # a constant branch
                out = self.operation(knode, deps, where)
                where[id(knode.outputs[0])] = out
        return where[id(model.outputs[0])]

    def operation(self, knode: Any, deps: list[int], where: dict) -> int:
        op = knode.operation
        if isinstance(op, keras.Model):
            sub = getattr(op, "_functional", None) or op
            if not hasattr(sub, "_nodes_by_depth"):
                raise Unsupported(op.name, "a subclassed Keras model",
                                  "its structure is not visible")
            return self.functional(sub, deps)
        shape = tuple(int(s) for s in knode.outputs[0].shape[1:])
        in_shape = tuple(int(s) if s is not None else 1 for s in knode.input_tensors[0].shape)
        name = self.label(getattr(op, "name", type(op).__name__))
        fn = _replay(knode, where)
        kind = type(op).__name__
        layers = keras.layers
        if isinstance(op, layers.Dense):
            node = Node(name, "affine", "dense", tuple(deps), shape, fn=_dense(op),
                        matrix=tf.transpose(tf.convert_to_tensor(op.kernel)),
                        axis=len(shape))
            return self.activation(node, op)
        if isinstance(op, layers.Conv2D) and not isinstance(op, layers.Conv2DTranspose):
            geo = keras_conv(op, tf.convert_to_tensor(op.kernel), in_shape)
            first = getattr(op, "data_format", "channels_last") == "channels_first"
            node = Node(name, "affine", "conv", tuple(deps), shape, fn=_conv(op),
                        conv=geo if geo["pads"] is not None else None,
                        axis=1 if first else 3)
            return self.activation(node, op)
        if isinstance(op, layers.BatchNormalization):
            var = tf.convert_to_tensor(op.moving_variance)
            scale = tf.math.rsqrt(var + op.epsilon)
            if op.scale:
                scale = scale * tf.convert_to_tensor(op.gamma)
            axis = op.axis if isinstance(op.axis, int) else op.axis[0]
            axis = axis % (len(shape) + 1)
            return self.append(Node(name, "affine", "batchnorm", tuple(deps), shape, fn=fn,
                                    diag=scale, axis=axis, note="inference mode"))
        if kind in _ISOMETRIC or kind in _AFFINE:
            op_name = _ISOMETRIC.get(kind) or _AFFINE[kind]
            return self.append(Node(name, "affine", op_name, tuple(deps), shape, fn=fn))
        if kind in ("Add", "Subtract", "Average", "Concatenate") and len(deps) > 1:
            return self.merge(knode, kind, name, deps, shape, fn, where)
        if kind in _OPS_AFFINE and len(deps) == 1:
            return self.append(Node(name, "affine", _OPS_AFFINE[kind], tuple(deps), shape,
                                    fn=fn))
        lip, op_name, note = self.nonlinear(op, kind, name)
        return self.append(Node(name, "nonlinear", op_name, tuple(deps), shape, lip=lip,
                                note=note))

    def merge(self, knode: Any, kind: str, name: str, deps: list[int],
              shape: tuple[int, ...], fn: Any, where: dict) -> int:
        order = [where[id(t)] for t in knode.input_tensors]
        if len(order) != len(deps):  # one input twice: an affine map of the other
            return self.append(Node(name, "affine", "scale", tuple(deps), shape, fn=fn))
        if kind == "Concatenate":
            return self.append(Node(name, "concat", "concat", tuple(deps), shape, fn=fn))
        n = len(deps)
        coefs = {"Add": (1.0,) * n, "Average": (1.0 / n,) * n,
                 "Subtract": (1.0, -1.0)}[kind]
        return self.append(Node(name, "add", kind.lower(), tuple(deps), shape, fn=fn,
                                coefs=coefs))

    def activation(self, node: Node, layer: Any) -> int:
        """The affine node, then the layer's activation as a node of its own."""
        i = self.append(node)
        act = _activation(layer.activation)
        lip = _lip_of_activation(act, node.name)
        if lip is None:
            return i
        return self.append(Node(f"{node.name}.activation", "nonlinear", act, (i,),
                                node.shape, lip=lip))

    def nonlinear(self, op: Any, kind: str, name: str) -> tuple[float, str, str]:
        if kind == "Activation":
            act = _activation(op.activation)
            lip = _lip_of_activation(act, name)
            return (1.0 if lip is None else lip), act, ""
        if kind == "ReLU":
            slope = float(getattr(op, "negative_slope", 0.0) or 0.0)
            return max(1.0, abs(slope)), "relu", ""
        if kind == "LeakyReLU":
            return max(1.0, abs(float(op.negative_slope))), "leaky_relu", ""
        if kind == "ELU":
            return max(1.0, float(op.alpha)), "elu", ""
        if kind == "PReLU":
            alpha = tf.convert_to_tensor(op.alpha)
            return max(1.0, float(tf.reduce_max(tf.abs(alpha)))), "prelu", ""
        if kind == "Softmax":
            return ACTIVATIONS["softmax"], "softmax", ""
        if kind in ("MaxPooling1D", "MaxPooling2D"):
            k = tuple(op.pool_size)
            s = tuple(op.strides) if op.strides is not None else k
            lip = overlap_lip(k, s)
            note = "windows overlap: sqrt(most windows per input)" if lip > 1 else ""
            return lip, "maxpool", note
        if kind in ("GlobalMaxPooling1D", "GlobalMaxPooling2D"):
            return 1.0, "maxpool", ""
        if kind.lower() in ACTIVATIONS:  # keras.ops activations (ops.relu(x))
            return ACTIVATIONS[kind.lower()], kind.lower(), ""
        raise Unsupported(name, f"a {kind} layer")


def _replay(knode: Any, where: dict) -> Any:
    """The operation of a graph node as a function of its dependent inputs."""
    op = knode.operation
    deps: list[int] = []
    ids: list[list[int]] = []
    for t in knode.input_tensors:
        ids.append([id(t)])
        if where.get(id(t)) is not None and where[id(t)] not in deps:
            deps.append(where[id(t)])
    training = bool(getattr(op, "_call_has_training_arg", False))

    def call(*xs: Any) -> Any:
        values = dict(zip(deps, xs))
        tensors = {id(t): values[where[id(t)]] for t in knode.input_tensors
                   if where.get(id(t)) in values}
        args, kwargs = knode.arguments.fill_in(tensors)
        if training:
            kwargs["training"] = False
        return op(*args, **kwargs)

    return call


def _dense(layer: Any) -> Any:
    def call(x: Any) -> Any:
        y = tf.tensordot(x, tf.convert_to_tensor(layer.kernel), 1)
        return y + tf.convert_to_tensor(layer.bias) if layer.use_bias else y

    return call


def _conv(layer: Any) -> Any:
    def call(x: Any) -> Any:
        y = layer.convolution_op(x, layer.kernel)
        if not layer.use_bias:
            return y
        first = layer.data_format == "channels_first"
        shape = (1, -1, 1, 1) if first else (1, 1, 1, -1)
        return y + tf.reshape(tf.convert_to_tensor(layer.bias), shape)

    return call


def _data_format(model: Any) -> str | None:
    for lay in _flat(model):
        if isinstance(lay, keras.layers.Conv2D):
            return "NCHW" if lay.data_format == "channels_first" else "NHWC"
    return None


def _flat(layer: Any) -> list:
    out = [layer]
    for sub in getattr(layer, "layers", None) or []:
        out += _flat(sub)
    return out


@contextlib.contextmanager
def keras_graph(model: Any, input_shape: tuple[int, ...],
                layout: str | None = None) -> Iterator[ModelGraph]:
    """The graph of a Keras model on samples of ``input_shape``."""
    weights = getattr(model, "weights", None) or []
    dtype = tf.as_dtype(weights[0].dtype) if weights else tf.float32
    if not getattr(model, "built", False) or not weights:
        model(tf.zeros((1,) + tuple(input_shape), dtype=dtype), training=False)
        weights = model.weights
        dtype = tf.as_dtype(weights[0].dtype) if weights else tf.float32
    own = _data_format(model)
    if layout is not None and own is not None and layout != own:
        raise ValueError(
            f"Expected layout {own!r} (or None): the model's convolutions take "
            f"{'channels-first' if own == 'NCHW' else 'channels-last'} images. Received "
            f"layout={layout!r}.")
    graph = getattr(model, "_functional", None) or model
    if not hasattr(graph, "_nodes_by_depth"):
        raise ValueError(
            f"js.lipschitz cannot read the structure of {model.name!r}: a subclassed "
            "Keras model; build it as a Sequential or functional model.")
    declared = tuple(graph.inputs[0].shape[1:]) if len(graph.inputs) == 1 else None
    if declared and None not in declared and declared != tuple(input_shape):
        raise ValueError(
            f"Expected input_shape {declared} (the model's input, without the batch "
            f"axis). Received {tuple(input_shape)}.")
    w = _Walker()
    w.append(Node("input", "input", "input", (), tuple(input_shape)))
    out = w.functional(graph, [0])
    nodes = w.nodes[: out + 1]

    def forward(x: Any) -> Any:
        return model(x, training=False)

    yield ModelGraph(nodes=nodes, forward=forward, dtype=dtype)
