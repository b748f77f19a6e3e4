"""Dataset operators (js.hessian(..., data=), js.ggn) against dense references: the
Hessian of the mean loss over the concatenated data (the framework's own dense Hessian of
the flattened parameters) and J^T H J formed densely, batch by batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse.linalg as spla
from hypothesis import given
from hypothesis import strategies as st

import jacspec as js
from _helpers import from_numpy, to_numpy
from _models import ParamMLP, mlp_weights, reference_hessian, reference_jacobian

TOL = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}
ROOT = Path(__file__).resolve().parent.parent


def _np(a):
    return np.asarray(to_numpy(a.detach() if hasattr(a, "detach") else a))


def _mse(b):
    if b == "tensorflow":
        import tensorflow as tf

        return lambda out, t: tf.reduce_mean((out - t) ** 2)
    return lambda out, t: ((out - t) ** 2).mean()


def _cat(b, parts):
    if b == "torch":
        import torch

        return torch.cat(parts)
    if b == "jax":
        import jax.numpy as jnp

        return jnp.concatenate(parts)
    import tensorflow as tf

    return tf.concat(parts, 0)


def _problem(b, dtype, rng, sizes, batch_sizes):
    net = ParamMLP(b, mlp_weights(rng, sizes), dtype, "tanh")
    data = [
        (from_numpy(rng.standard_normal((s, sizes[0])), b, dtype),
         from_numpy(rng.standard_normal((s, sizes[-1])), b, dtype))
        for s in batch_sizes
    ]
    mse = _mse(b)

    def batch_loss(p, batch):
        return mse(net.apply(p, batch[0]), batch[1])

    return net, data, mse, batch_loss


# layer sizes, batch sizes (uneven, a single sample included) and a seed; the shapes
# come from small sets so that eager JAX, which compiles per shape, reuses its programs
PROBLEMS = dict(
    sizes=st.sampled_from([[1, 1], [3, 2], [2, 4, 3], [4, 3, 1]]),
    batch_sizes=st.lists(st.sampled_from([1, 3, 5]), min_size=1, max_size=3),
    seed=st.integers(0, 2**16),
)


@given(**PROBLEMS)
def test_dataset_hessian_matches_full_batch(autodiff_backend, dtype, sizes, batch_sizes, seed):
    b = autodiff_backend
    rng = np.random.default_rng(seed)
    net, data, mse, batch_loss = _problem(b, dtype, rng, sizes, batch_sizes)
    H = js.hessian(batch_loss, net.params, data=data)
    X, Y = _cat(b, [x for x, _ in data]), _cat(b, [y for _, y in data])
    # the framework's own dense Hessian of the full-batch loss on the concatenated data
    ref = reference_hessian(b, lambda t: mse(net.apply_flat(t, X), Y), net.theta0)
    assert H.shape == ref.shape and H.is_hermitian and H.num_samples == sum(batch_sizes)
    dense = _np(js.dense(H))
    np.testing.assert_allclose(dense, ref, **TOL[dtype])  # a block of n vectors
    v = rng.standard_normal(ref.shape[0])
    np.testing.assert_allclose(_np(H @ from_numpy(v, b, dtype)), ref @ v, **TOL[dtype])


@given(**PROBLEMS)
def test_ggn_matches_dense_jthj(autodiff_backend, dtype, sizes, batch_sizes, seed):
    b = autodiff_backend
    rng = np.random.default_rng(seed)
    net, data, mse, _ = _problem(b, dtype, rng, sizes, batch_sizes)
    G = js.ggn(net.apply, mse, net.params, data=data)
    ref = 0.0
    for x, y in data:
        Jb = reference_jacobian(b, lambda t, x=x: net.apply_flat(t, x), net.theta0)
        z = net.apply_flat(net.theta0, x)
        Hb = reference_hessian(b, lambda o, y=y: mse(o, y), z)
        ref = ref + (int(x.shape[0]) / sum(batch_sizes)) * (Jb.T @ Hb @ Jb)
    dense = _np(js.dense(G))
    np.testing.assert_allclose(dense, ref, **TOL[dtype])
    assert np.linalg.eigvalsh(dense.astype(np.float64)).min() > -1e-4 * max(1.0, np.abs(ref).max())


@pytest.mark.slow
def test_solvers_accept_dataset_operators(autodiff_backend):
    b = autodiff_backend
    rng = np.random.default_rng(0)
    net, data, mse, batch_loss = _problem(b, "float64", rng, [3, 4, 2], [5, 5, 3])
    H = js.hessian(batch_loss, net.params, data=data)
    ref = _np(js.dense(H))
    evals = np.linalg.eigvalsh(ref)
    top = evals[np.argsort(-np.abs(evals))[:2]]
    np.testing.assert_allclose(_np(js.eigsh(H, k=2, method="lanczos").values), top, rtol=1e-6)
    np.testing.assert_allclose(float(_np(js.spectral_norm(H, method="lanczos"))),
                               np.abs(evals).max(), rtol=1e-6)
    np.testing.assert_allclose(float(_np(js.trace(H, num_probes=ref.shape[0] + 3))),
                               np.trace(ref), rtol=0.5)
    S = js.to_scipy(H)
    np.testing.assert_allclose(spla.eigsh(S, k=1, which="LM")[0], [top[0]], rtol=1e-6)
    G = js.ggn(net.apply, mse, net.params, data=data)
    assert js.eigsh(G, k=1).values.shape == (1,)


def test_torch_dataloader_and_progress(capsys):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    net, data, mse, batch_loss = _problem("torch", "float64", rng, [3, 2], [4])
    X = torch.as_tensor(rng.standard_normal((11, 3)))
    Y = torch.as_tensor(rng.standard_normal((11, 2)))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, Y), batch_size=4)
    H = js.hessian(batch_loss, net.params, data=loader, progress=True)
    full = js.hessian(lambda p: batch_loss(p, (X, Y)), net.params)
    np.testing.assert_allclose(_np(js.dense(H)), _np(js.dense(full)), rtol=1e-10, atol=1e-12)
    assert "hessian" in capsys.readouterr().err


def test_tf_dataset():
    tf = pytest.importorskip("tensorflow")
    rng = np.random.default_rng(2)
    net, _, mse, batch_loss = _problem("tensorflow", "float64", rng, [3, 2], [4])
    X, Y = tf.constant(rng.standard_normal((9, 3))), tf.constant(rng.standard_normal((9, 2)))
    ds = tf.data.Dataset.from_tensor_slices((X, Y)).batch(4)
    H = js.hessian(batch_loss, net.params, data=ds)
    full = js.hessian(lambda p: batch_loss(p, (X, Y)), net.params)
    np.testing.assert_allclose(_np(js.dense(H)), _np(js.dense(full)), rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match="tf.distribute.Strategy"):
        js.hessian(batch_loss, net.params, data=ds, distributed=True)
    with pytest.raises(TypeError, match="tf.distribute.Strategy"):
        js.hessian(batch_loss, net.params, data=ds, distributed=True, group="replicas")


# ------------------------------------------------------------------------ bad input


def test_data_errors(autodiff_backend):
    b = autodiff_backend
    rng = np.random.default_rng(3)
    net, data, mse, batch_loss = _problem(b, "float64", rng, [3, 2], [4, 4])
    with pytest.raises(TypeError, match="re-iterable"):
        js.hessian(batch_loss, net.params, data=(d for d in data))
    with pytest.raises(TypeError, match="re-iterable"):
        js.hessian(batch_loss, net.params, data=iter(data))
    with pytest.raises(TypeError, match="re-iterable"):
        js.hessian(batch_loss, net.params, data=3)
    with pytest.raises(ValueError, match="non-empty"):
        js.hessian(batch_loss, net.params, data=[])
    with pytest.raises(ValueError, match="structure"):
        js.hessian(batch_loss, net.params, data=[data[0], data[1][0]])
    with pytest.raises(ValueError, match="scalar"):
        js.hessian(lambda p, batch: net.apply(p, batch[0]), net.params, data=data)
    with pytest.raises(ValueError, match="batched"):
        js.hessian(batch_loss, net.params, data=data, batched=True)
    with pytest.raises(ValueError, match="data="):
        js.hessian(lambda p: batch_loss(p, data[0]), net.params, progress=True)
    with pytest.raises(ValueError, match=r"\(inputs, targets\)"):
        js.ggn(net.apply, mse, net.params, data=[d[0] for d in data])
    with pytest.raises(ValueError, match="scalar"):
        js.ggn(net.apply, lambda o, t: o - t, net.params, data=data)


def test_structure_change_between_products():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    net, data, mse, batch_loss = _problem("torch", "float64", rng, [3, 2], [4, 4])
    H = js.hessian(batch_loss, net.params, data=data)
    data.append(data[0][0])  # the user's list changed after the operator was built
    with pytest.raises(ValueError, match="structure"):
        H @ torch.ones(H.shape[1], dtype=torch.float64)


def test_torch_distributed_needs_a_process_group():
    pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    net, data, mse, batch_loss = _problem("torch", "float64", rng, [3, 2], [4])
    with pytest.raises(ValueError, match="init_process_group"):
        js.hessian(batch_loss, net.params, data=data, distributed=True)


# ------------------------------------------------------------- several processes, for real


def _run(cmd: list[str], env: dict) -> str:
    # the timeout guards against a hang; on a 2-core machine shared by several busy
    # processes a normal run takes minutes
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=1800,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path):
    pytest.importorskip("torch")
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
          str(ROOT / "tests" / "_distributed_torch.py"), str(tmp_path)],
         {"OMP_NUM_THREADS": "1"})
    ranks = [np.load(tmp_path / f"rank{r}.npz") for r in range(2)]
    single = np.load(tmp_path / "single.npz")
    for out in ranks:
        np.testing.assert_allclose(out["dense"], single["dense"], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(out["ggn"], single["ggn"], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(out["top"], single["top"], rtol=1e-10)
        np.testing.assert_allclose(out["loader"], single["dense"], rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(ranks[0]["top"], ranks[1]["top"])  # identical on every rank


@pytest.mark.slow
def test_jax_four_devices_equal_one(tmp_path):
    pytest.importorskip("jax")
    out = _run([sys.executable, str(ROOT / "tests" / "_distributed_jax.py")],
               {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "")  # conftest's, kept
                + " --xla_force_host_platform_device_count=4",
                "JAX_PLATFORMS": "cpu"})
    assert "devices=4" in out and "OK" in out, out


@pytest.mark.slow
def test_jax_sharded_parameters_equal_one_device(tmp_path):
    """Parameters split over a 2x2 mesh; then the docs' script as written."""
    pytest.importorskip("jax")
    env = {"XLA_FLAGS": os.environ.get("XLA_FLAGS", "")
           + " --xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    out = _run([sys.executable, str(ROOT / "tests" / "_distributed_jax_sharded.py")], env)
    assert "devices=4" in out and "OK" in out, out
    pytest.importorskip("sklearn")
    script = tmp_path / "hessian_jax_sharded.py"
    script.write_text(_doc_script("hessian_jax_sharded.py"))
    out = _run([sys.executable, str(script)], env)
    assert "vectors split: P('model',) [(2368, 2), (2368, 2), (2368, 2), (2368, 2)]" in out, out


def _doc_script(name: str) -> str:
    """The Python block that docs/distributed.md introduces as ``name``."""
    text = (ROOT / "docs" / "distributed.md").read_text()
    return text.split(f"with `{name}`:\n\n```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_tensorflow_two_replicas_equal_one():
    pytest.importorskip("tensorflow")
    out = _run([sys.executable, str(ROOT / "tests" / "_distributed_tf.py")],
               {"TF_CPP_MIN_LOG_LEVEL": "2"})
    assert "replicas=2" in out and "OK" in out, out


def test_torch_model_state_untouched():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Tanh(),
                                torch.nn.Linear(4, 2)).double().train()
    data = [(torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))) for _ in range(2)]
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def apply(p, x):
        return torch.func.functional_call(model, p, (x,))

    params = dict(model.named_parameters())
    H = js.hessian(lambda p, b: torch.nn.functional.cross_entropy(apply(p, b[0]), b[1]), params,
                   data=data)
    G = js.ggn(apply, torch.nn.functional.cross_entropy, params, data=data)
    js.dense(H), js.dense(G)
    assert model.training and all(p.requires_grad for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
