"""The ``jacspec demo`` MLP and training loop in TensorFlow: ``tf.Variable`` weights, a
``tf.GradientTape`` step compiled with ``tf.function``, Keras' Adam optimizer."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from .. import penalties as js_penalties
from . import penalty


class Trainer:
    def __init__(self, weights, dtype: str = "float32") -> None:
        self.dtype = tf.as_dtype(dtype)
        self.params = [(tf.Variable(self.asarray(W)), tf.Variable(self.asarray(b)))
                       for W, b in weights]

    def asarray(self, a):
        return tf.constant(np.asarray(a), dtype=self.dtype)

    def _mlp(self, x):
        n = len(self.params)
        for i, (W, b) in enumerate(self.params):
            x = tf.matmul(x, W, transpose_b=True) + b
            if i < n - 1:
                x = tf.tanh(x)
        return x

    @property
    def model(self):
        return self._mlp

    def fit(self, X, y, *, penalty_name=None, lam=0.0, steps=300, lr=1e-2, callback=None):
        X = self.asarray(X)
        y = tf.constant(np.asarray(y), dtype=tf.int32)
        variables = [v for pair in self.params for v in pair]
        opt = tf.keras.optimizers.Adam(learning_rate=lr)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits

        @tf.function
        def train_step(step):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(ce(labels=y, logits=self._mlp(X)))
                if penalty_name is not None:
                    per_sample = lambda z: ce(labels=y, logits=self._mlp(z))  # noqa: E731
                    loss = loss + lam * penalty(js_penalties, penalty_name, self._mlp, X,
                                                per_sample, seed=step)
            grads = tape.gradient(loss, variables)
            opt.apply_gradients(zip(grads, variables))
            return loss

        for step in range(steps):
            loss = train_step(tf.constant(step, dtype=tf.int64))
            if callback is not None:
                callback(step, loss)
        return self
