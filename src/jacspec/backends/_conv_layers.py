"""Find the conv and dense layers of a model, in forward order (for ``js.conv.layer_report``).

Framework-specific (imports torch or tensorflow lazily); called through the adapters'
``conv_layers(model, input_shape)``. Each layer comes back as a plain dict:

- ``name`` (str), ``kind`` (``"conv"`` or ``"dense"``), ``kernel_shape`` (the weight's own
  shape, as the framework stores it);
- ``weight``: for ``"conv"`` an ``(O, I/groups, h, w)`` array (OIHW) of the framework,
  detached; for ``"dense"`` the ``(out, in)`` matrix;
- conv only: ``stride`` and ``dilation`` pairs, ``groups``, ``pads``
  ``((top, bottom), (left, right))``, ``mode`` (``"zeros"``, ``"circular"``, or the
  unsupported ``"reflect"``/``"replicate"``), ``padding`` (a label for the table),
  ``input_size`` ``(H, W)``;
- dense only: ``input_size`` ``(features,)``.

The model runs once on a zero batch of one sample, in inference mode, without recording
gradients; train/eval modes and buffers are left as they were.
"""

from __future__ import annotations

from typing import Any


def _same_pads(k: int, d: int) -> tuple[int, int]:
    total = d * (k - 1)
    return total // 2, total - total // 2


def torch_conv(mod: Any, input_hw: Any) -> dict:
    """The geometry of a ``torch.nn.Conv2d`` seeing ``input_hw`` images (see above)."""
    kh, kw = int(mod.weight.shape[-2]), int(mod.weight.shape[-1])
    dh, dw = (int(d) for d in mod.dilation)
    pad = mod.padding
    if isinstance(pad, str):
        if pad == "valid":
            pads = ((0, 0), (0, 0))
        else:
            pads = (_same_pads(kh, dh), _same_pads(kw, dw))
        text = pad
    else:
        ph, pw = (int(p) for p in pad)
        pads = ((ph, ph), (pw, pw))
        text = str(ph) if ph == pw else f"({ph}, {pw})"
    mode = mod.padding_mode
    if mode != "zeros":
        text = f"{mode}({text})"
    return dict(kind="conv", kernel_shape=tuple(mod.weight.shape), weight=mod.weight.detach(),
                stride=tuple(int(s) for s in mod.stride), dilation=(dh, dw),
                groups=int(mod.groups), pads=pads, mode=mode, padding=text,
                input_size=tuple(int(s) for s in input_hw))


def torch_layers(model: Any, input_shape: tuple[int, ...]) -> list[dict]:
    import torch
    from torch import nn

    names = {id(m): (n or type(m).__name__) for n, m in model.named_modules()}
    seen: dict[str, int] = {}
    rows: list[dict] = []

    def label(mod: Any) -> str:
        name = names.get(id(mod), type(mod).__name__)
        seen[name] = seen.get(name, 0) + 1
        return name if seen[name] == 1 else f"{name}#{seen[name]}"

    def hook(mod: Any, inputs: tuple, output: Any) -> None:
        x = inputs[0]
        if isinstance(mod, nn.Conv2d):
            rows.append(dict(name=label(mod), **torch_conv(mod, x.shape[-2:])))
        elif isinstance(mod, nn.Linear):
            rows.append(dict(
                name=label(mod), kind="dense", kernel_shape=tuple(mod.weight.shape),
                weight=mod.weight.detach(), input_size=(int(x.shape[-1]),),
            ))

    p = next(iter(model.parameters()), None)
    dtype = p.dtype if p is not None else torch.get_default_dtype()
    device = p.device if p is not None else None
    x = torch.zeros((1,) + tuple(int(s) for s in input_shape), dtype=dtype, device=device)
    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    return rows


def _keras_layers_flat(layer: Any, keras: Any) -> list:
    out = [layer]
    for sub in getattr(layer, "layers", None) or []:
        out += _keras_layers_flat(sub, keras)
    return out


def keras_conv(layer: Any, kernel: Any, shape: tuple[int, ...]) -> dict:
    """The geometry of a Keras ``Conv2D`` with ``kernel`` (HWIO) seeing inputs of
    ``shape`` (batch axis included; see above)."""
    import tensorflow as tf

    kh, kw = int(kernel.shape[0]), int(kernel.shape[1])
    dh, dw = (int(d) for d in layer.dilation_rate)
    pad = str(layer.padding).lower()
    if pad == "same":
        pads = (_same_pads(kh, dh), _same_pads(kw, dw))
    elif pad == "valid":
        pads = ((0, 0), (0, 0))
    else:  # "causal" is 1-D only
        pads = None
    channels_first = getattr(layer, "data_format", "channels_last") == "channels_first"
    hw = shape[2:4] if channels_first else shape[1:3]
    return dict(
        kind="conv", kernel_shape=tuple(kernel.shape),
        weight=tf.transpose(kernel, (3, 2, 0, 1)),
        stride=tuple(int(s) for s in layer.strides), dilation=(dh, dw),
        groups=int(getattr(layer, "groups", 1)), pads=pads,
        mode="zeros" if pads is not None else pad, padding=pad,
        input_size=tuple(int(s) for s in hw),
    )


def keras_layers(model: Any, input_shape: tuple[int, ...]) -> list[dict]:
    import tensorflow as tf

    keras = tf.keras
    rows: list[dict] = []
    seen: dict[str, int] = {}
    dtype = "float32"
    weights = getattr(model, "weights", None) or []
    if weights:
        dtype = weights[0].dtype
    x = tf.zeros((1,) + tuple(int(s) for s in input_shape), dtype=dtype)
    if not getattr(model, "built", False) or not weights:
        model(x, training=False)  # builds the layers' weights
    targets = [lay for lay in _keras_layers_flat(model, keras)[1:]
               if isinstance(lay, (keras.layers.Conv2D, keras.layers.Dense))]

    def record(layer: Any, inp: Any) -> None:
        name = layer.name
        seen[name] = seen.get(name, 0) + 1
        name = name if seen[name] == 1 else f"{name}#{seen[name]}"
        kernel = tf.convert_to_tensor(layer.kernel)
        shape = tuple(int(s) for s in inp.shape)
        if isinstance(layer, keras.layers.Dense):
            rows.append(dict(name=name, kind="dense", kernel_shape=tuple(kernel.shape),
                             weight=tf.transpose(kernel), input_size=(shape[-1],)))
            return
        rows.append(dict(name=name, **keras_conv(layer, kernel, shape)))

    originals = []
    for lay in targets:
        orig = lay.call

        def wrapped(inputs, *args, _orig=orig, _lay=lay, **kwargs):
            record(_lay, inputs)
            return _orig(inputs, *args, **kwargs)

        originals.append((lay, "call" in vars(lay), orig))
        lay.call = wrapped
    try:
        model(x, training=False)
    finally:
        for lay, had, orig in originals:
            if had:
                lay.call = orig
            else:
                try:
                    del lay.call
                except AttributeError:  # pragma: no cover - keras tracking quirks
                    lay.call = orig
    if not rows and targets:
        # The model did not route calls through ``layer.call`` (compiled graph): fall
        # back on the symbolic input shapes, in the order of ``model.layers``.
        for lay in targets:
            record(lay, lay.input)
    return rows
