"""TensorFlow rows of ``jacspec bench``: the hand-written reference loops are exact
against the dense Jacobian's SVD, the rows run, and the command accepts the backend.

No timed assertions (speed is what the rows report).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from _helpers import backend_available, selected_backends

pytestmark = pytest.mark.skipif(
    "tensorflow" not in selected_backends() or not backend_available("tensorflow"),
    reason="the TensorFlow backend is not selected or not installed")


def _problem(sizes: list[int], B: int, seed: int):
    """A Keras MLP of the rows, a batch of inputs and each sample's dense singular values
    (float64, from ``batch_jacobian``)."""
    import tensorflow as tf

    from jacspec.bench.models_tensorflow import keras_mlp

    model = keras_mlp(sizes, seed=seed)
    x = tf.constant(np.random.default_rng(seed).standard_normal((B, sizes[0])),
                    dtype=tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x)
    J = tape.batch_jacobian(y, x).numpy().astype(np.float64)
    return model, x, np.linalg.svd(J, compute_uv=False)


@given(seed=st.integers(0, 2**16), wide=st.booleans())
def test_native_gkl_full_basis_is_exact(seed, wide):
    """A full basis of the smaller side (either side: ``wide`` has fewer outputs than
    inputs) gives sigma_max to float32 rounding."""
    import tensorflow as tf

    from jacspec.bench.overhead_rows import native_gkl_tf

    sizes = [9, 16, 4] if wide else [4, 16, 9]
    model, x, s = _problem(sizes, 3, seed)
    got = native_gkl_tf(tf, model, x, 4).numpy()
    np.testing.assert_allclose(got, s[:, 0], rtol=1e-4)
    # one step fewer is an underestimate, not the answer, in general: the loop is what
    # it says, not a dense solve
    assert np.all(native_gkl_tf(tf, model, x, 1).numpy() <= s[:, 0] * (1 + 1e-5))


@pytest.mark.parametrize("check", [True, False])
def test_native_power_converges(check):
    import tensorflow as tf

    from jacspec.bench.overhead_rows import native_power_tf

    model, x, s = _problem([8, 16, 5], 4, 1)
    got = native_power_tf(tf, model, x, 400, 1e-7, check=check).numpy()
    np.testing.assert_allclose(got, s[:, 0], rtol=1e-3)


@pytest.mark.filterwarnings("ignore:Power iteration stopped:RuntimeWarning")
def test_overhead_rows_run(monkeypatch):
    """Both sides of every overhead row run (one round each) and agree where they
    compute the same thing (GKL with a full basis)."""
    pytest.importorskip("sklearn")
    from jacspec.bench import overhead_rows as rows_tf

    monkeypatch.setattr(rows_tf, "TRACED_ROUNDS", 1)
    monkeypatch.setattr(rows_tf, "EAGER_ROUNDS", 1)
    monkeypatch.setattr(rows_tf, "POWER_STEPS", 2)  # short graphs: quick to trace
    rows = rows_tf._overhead_tf(True, [64, 16, 4], 4, ", test", True)
    names = [r["name"] for r in rows]
    assert names == [f"overhead: {m} (tf{w}, test)" for w, m in
                     [(".function", "lanczos"), (".function", "power"),
                      (" eager", "lanczos"), (" eager", "power")]]
    for r in rows:
        assert r["ratio"] > 0 and r["details"]["native_s"] > 0
    # target rows both ways: tf.function against 1.10x, eagerly against EAGER_TARGET
    assert rows[0]["target"] == "<= 1.10" and rows[2]["target"] == "<= 1.30"
    assert rows[2]["met"] == (rows[2]["ratio"] <= rows_tf.EAGER_TARGET)
    assert rows[0]["details"]["max_abs_diff"] < 1e-4


def test_bench_accepts_tensorflow(capsys):
    from jacspec import bench
    from jacspec.bench import registry

    assert [g.name for g in registry.groups("tensorflow", quick=True)] == [
        "overhead", "batched", "penalty"]
    assert bench.main(backend="tensorflow", quick=True, only=[]) == 0
    out = capsys.readouterr().out
    assert "backend: tensorflow" in out and "tensorflow: 2." in out
