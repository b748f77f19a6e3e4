"""The data and the model shapes of ``jacspec bench``, framework-free: scikit-learn's
digits (bundled, no download) and the architectures the rows share. The models
themselves are built in ``models_torch``, ``models_jax`` and ``models_tensorflow``
(each imports its framework; import it only where that framework is wanted).

Examples
--------
>>> from jacspec.bench.models import digits, DESIGN_MLP
>>> X, y = digits()
>>> X.shape, X.dtype.name, DESIGN_MLP
((1797, 64), 'float32', (64, 256, 256, 10))
"""

from __future__ import annotations

import numpy as np

__all__ = ["digits", "digit_images", "DESIGN_MLP", "OVERHEAD_CASES", "overhead_cases",
           "CNN_ARCH", "cnn_input_sizes", "RESNET18_CONVS"]

#: The design model: a 64-256-256-10 tanh MLP on digits (trained where a row says so).
DESIGN_MLP = (64, 256, 256, 10)

#: The overhead rows' cases, ``(sizes, B, name suffix, target row)``: the design MLP with
#: B=128 per-sample 10x64 Jacobians (target rows), and a small case, B=32 per-sample
#: 256x64 Jacobians, where products are cheap (report rows; the full run only).
OVERHEAD_CASES = ((list(DESIGN_MLP), 128, "", True), ([64, 256, 256], 32, ", small", False))


def overhead_cases(quick: bool) -> tuple:
    """The overhead rows' cases of a run: ``--quick`` keeps the target rows' case."""
    return OVERHEAD_CASES[:1] if quick else OVERHEAD_CASES

#: (c_out, c_in, k, stride) of the digits CNN's conv layers (rows "conv"); "same" zero
#: padding everywhere, ReLU, then a dense layer to 10 classes.
CNN_ARCH = ((16, 1, 3, 1), (32, 16, 3, 2), (32, 32, 3, 1))

#: (c_out, c_in, k, stride, input size) of every distinct conv layer shape of ResNet-18
#: on 224x224 images after its 7x7 stem (feature maps 56, 28, 14, 7); padding k // 2.
RESNET18_CONVS = ((64, 64, 3, 1, 56), (128, 64, 3, 2, 56), (128, 128, 3, 1, 28),
                  (128, 64, 1, 2, 56), (256, 128, 3, 2, 28), (256, 256, 3, 1, 14),
                  (256, 128, 1, 2, 28), (512, 256, 3, 2, 14), (512, 512, 3, 1, 7),
                  (512, 256, 1, 2, 14))


def digits(dtype: type = np.float32) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as ``(X, y)``: 1,797 rows of 64 pixels in [0, 1], labels."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    return (X / 16.0).astype(dtype), y.astype(np.int64)


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """The digits as ``(n, 8, 8)`` float32 images in [0, 1], and their labels."""
    X, y = digits()
    return X.reshape(-1, 8, 8), y


def cnn_input_sizes() -> list[int]:
    """The input size each conv layer of :data:`CNN_ARCH` sees on 8x8 digits."""
    out, h = [], 8
    for *_, s in CNN_ARCH:
        out.append(h)
        h = -(-h // s)
    return out
