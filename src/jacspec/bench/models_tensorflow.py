"""The models of ``jacspec bench`` in TensorFlow / Keras: tanh MLPs and the digits CNNs.
Framework-specific bench code: imports TensorFlow and Keras at module level.

Examples
--------
>>> from jacspec.bench.models_tensorflow import keras_mlp
>>> keras_mlp([64, 32, 10]).output_shape
(None, 10)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from .models import CNN_ARCH, digit_images, digits

__all__ = ["describe", "keras_mlp", "penalty_models", "train_digits_cnn"]


def describe() -> dict[str, Any]:
    """The framework's part of the bench's configuration."""
    return {"tensorflow": tf.__version__, "device": tf.config.list_logical_devices()[0].name}


def keras_mlp(sizes: Sequence[int], seed: int = 0) -> keras.Sequential:
    """A tanh Keras MLP (Glorot-uniform weights drawn from ``seed``), built."""
    layers: list[Any] = [keras.Input((sizes[0],))]
    for i, width in enumerate(sizes[1:]):
        last = i == len(sizes) - 2
        layers.append(keras.layers.Dense(
            width, activation=None if last else "tanh",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i)))
    return keras.Sequential(layers)


def penalty_models(batch: int) -> dict[str, tuple[keras.Model, tf.Tensor]]:
    """The penalty rows' models and inputs (``batch`` digits): the design-size MLP and a
    small CNN (two 3x3 convolutions, 10 outputs), random."""
    X, _ = digits()
    keras.utils.set_random_seed(0)
    net = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256, "tanh"),
                            keras.layers.Dense(256, "tanh"), keras.layers.Dense(10)])
    cnn = keras.Sequential([keras.Input((8, 8, 1)),
                            keras.layers.Conv2D(16, 3, padding="same", activation="tanh"),
                            keras.layers.Conv2D(32, 3, strides=2, padding="same",
                                                activation="tanh"),
                            keras.layers.Flatten(), keras.layers.Dense(10)])
    x = tf.constant(X[:batch])
    return {"MLP": (net, x), "CNN": (cnn, tf.reshape(x, (batch, 8, 8, 1)))}


def train_digits_cnn(epochs: int, seed: int = 0) -> tuple[list[tf.Tensor], float]:
    """The CNN of :data:`~jacspec.bench.models.CNN_ARCH` trained on digits with Keras'
    ``fit`` (batches of 64): its conv kernels (HWIO) and the training accuracy."""
    X, y = digit_images()
    keras.utils.set_random_seed(seed)
    layers: list[Any] = [keras.Input((8, 8, 1))]
    for co, _, k, s in CNN_ARCH:
        layers.append(keras.layers.Conv2D(co, k, strides=s, padding="same",
                                          activation="relu"))
    layers += [keras.layers.Flatten(), keras.layers.Dense(10)]
    model = keras.Sequential(layers)
    model.compile(optimizer=keras.optimizers.Adam(3e-3),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(X[..., None], y, batch_size=64, epochs=epochs, verbose=0)
    acc = float(model.evaluate(X[..., None], y, verbose=0)[1])
    convs = [tf.convert_to_tensor(lay.kernel) for lay in model.layers
             if isinstance(lay, keras.layers.Conv2D)]
    return convs, acc
