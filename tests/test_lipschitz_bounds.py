"""js.lipschitz: certified upper and attained lower bounds on a model's Lipschitz constant.

References are dense float64 NumPy matrices: a conv layer's matrix from
``js.dense(js.conv.operator(...))`` on NumPy weights, a network's Jacobian at a point by
the chain rule through those matrices. Models are built from the same NumPy weights in
torch and Keras, so both frameworks are checked against one reference.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import jacspec as js

RNG = np.random.default_rng(0)
EPS = 1e-5  # batch norm epsilon in both frameworks


def _norm(A: np.ndarray) -> float:
    return float(np.linalg.norm(A, 2))


def _conv_matrix(w: np.ndarray, hw: tuple[int, int], stride: int, pad: int) -> np.ndarray:
    """The dense matrix of a zero-padded conv on (C, H, W) vectors (float64)."""
    op = js.conv.operator(w.astype(np.float64), hw, stride=stride, padding=pad)
    return np.asarray(js.dense(op))


# ------------------------------------------------------------------------- the spec


def _spec() -> dict:
    """A small CNN: conv-BN-relu, strided conv-tanh, a residual tanh(conv) branch,
    flatten, dense; inputs (2, 6, 6)."""
    r = np.random.default_rng(1)
    s = dict(
        w1=r.normal(size=(3, 2, 3, 3)) / 3, b1=r.normal(size=3) / 4,
        gamma=r.uniform(0.5, 2, 3), beta=r.normal(size=3), mean=r.normal(size=3),
        var=r.uniform(0.5, 2, 3),
        w2=r.normal(size=(4, 3, 3, 3)) / 4, b2=r.normal(size=4) / 4,
        w3=r.normal(size=(4, 4, 3, 3)) / 5, b3=r.normal(size=4) / 4,
        W=r.normal(size=(5, 36)) / 6, bW=r.normal(size=5) / 4,
    )
    return s


def _reference(s: dict, X: np.ndarray) -> tuple[float, float]:
    """The upper bound the composition rules give, and the largest exact per-sample
    Jacobian norm over ``X`` (B, 2, 6, 6), from dense matrices."""
    C1 = _conv_matrix(s["w1"], (6, 6), 1, 1)
    C2 = _conv_matrix(s["w2"], (6, 6), 2, 1)
    C3 = _conv_matrix(s["w3"], (3, 3), 1, 1)
    d = np.repeat(s["gamma"] / np.sqrt(s["var"] + EPS), 36)
    upper = _norm(s["W"]) * (1 + _norm(C3)) * _norm(C2) * _norm(d[:, None] * C1)
    lower = 0.0
    for x in X.reshape(len(X), -1):
        z1 = d * (C1 @ x + np.repeat(s["b1"], 36) - np.repeat(s["mean"], 36)) \
            + np.repeat(s["beta"], 36)
        z2 = C2 @ np.maximum(z1, 0) + np.repeat(s["b2"], 9)
        h = np.tanh(z2)
        z3 = C3 @ h + np.repeat(s["b3"], 9)
        J = s["W"] @ (np.eye(36) + (1 - np.tanh(z3) ** 2)[:, None] * C3) \
            @ ((1 - h ** 2)[:, None] * C2) @ ((z1 > 0)[:, None] * d[:, None] * C1)
        lower = max(lower, _norm(J))
    return upper, lower


def _torch_model(s: dict):
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(2, 3, 3, padding=1)
            self.bn = nn.BatchNorm2d(3, eps=EPS)
            self.c2 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
            self.c3 = nn.Conv2d(4, 4, 3, padding=1)
            self.fc = nn.Linear(36, 5)

        def forward(self, x):
            h = torch.tanh(self.c2(torch.relu(self.bn(self.c1(x)))))
            h = h + torch.tanh(self.c3(h))
            return self.fc(torch.flatten(h, 1))

    net = Net().double().eval()
    t = lambda a: torch.as_tensor(a, dtype=torch.float64)  # noqa: E731
    with torch.no_grad():
        for conv, w, b in ((net.c1, "w1", "b1"), (net.c2, "w2", "b2"), (net.c3, "w3", "b3")):
            conv.weight.copy_(t(s[w]))
            conv.bias.copy_(t(s[b]))
        net.bn.weight.copy_(t(s["gamma"]))
        net.bn.bias.copy_(t(s["beta"]))
        net.bn.running_mean.copy_(t(s["mean"]))
        net.bn.running_var.copy_(t(s["var"]))
        net.fc.weight.copy_(t(s["W"]))
        net.fc.bias.copy_(t(s["bW"]))
    return net


def _keras_model(s: dict):
    import tensorflow as tf

    keras = tf.keras
    L = keras.layers
    f = "float64"
    x = keras.Input((6, 6, 2), dtype=f)
    c1 = L.Conv2D(3, 3, padding="same", dtype=f, name="c1")
    bn = L.BatchNormalization(epsilon=EPS, dtype=f, name="bn")
    c2 = L.Conv2D(4, 3, strides=2, padding="valid", activation="tanh", dtype=f, name="c2")
    c3 = L.Conv2D(4, 3, padding="same", activation="tanh", dtype=f, name="c3")
    fc = L.Dense(5, dtype=f, name="fc")
    h = L.ReLU(dtype=f)(bn(c1(x)))
    h = c2(L.ZeroPadding2D(1, dtype=f)(h))
    h = L.Add(dtype=f)([h, c3(h)])
    h = L.Flatten(dtype=f)(L.Permute((3, 1, 2), dtype=f)(h))  # torch's (C, H, W) order
    model = keras.Model(x, fc(h))
    hwio = lambda w: w.transpose(2, 3, 1, 0)  # noqa: E731
    c1.set_weights([hwio(s["w1"]), s["b1"]])
    bn.set_weights([s["gamma"], s["beta"], s["mean"], s["var"]])
    c2.set_weights([hwio(s["w2"]), s["b2"]])
    c3.set_weights([hwio(s["w3"]), s["b3"]])
    fc.set_weights([s["W"].T, s["bW"]])
    return model


def _nnx_model(s: dict):
    """The spec in Flax NNX (NHWC, HWIO kernels)."""
    import jax.numpy as jnp
    from flax import nnx

    # Zero initial kernels (the spec's values are written below): eager random
    # initialization would compile each of its many small operations.
    f, zero = jnp.float64, nnx.initializers.zeros

    class Net(nnx.Module):
        def __init__(self) -> None:
            r = nnx.Rngs(0)
            self.c1 = nnx.Conv(2, 3, (3, 3), padding=((1, 1), (1, 1)), param_dtype=f,
                               kernel_init=zero, rngs=r)
            self.bn = nnx.BatchNorm(3, epsilon=EPS, param_dtype=f, rngs=r)
            self.c2 = nnx.Conv(3, 4, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)),
                               param_dtype=f, kernel_init=zero, rngs=r)
            self.c3 = nnx.Conv(4, 4, (3, 3), padding=((1, 1), (1, 1)), param_dtype=f,
                               kernel_init=zero, rngs=r)
            self.fc = nnx.Linear(36, 5, param_dtype=f, kernel_init=zero, rngs=r)

        def __call__(self, x):
            h = jnp.tanh(self.c2(nnx.relu(self.bn(self.c1(x)))))
            h = h + jnp.tanh(self.c3(h))
            return self.fc(jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1))

    net = Net()
    values = [(net.c1.kernel, s["w1"].transpose(2, 3, 1, 0)), (net.c1.bias, s["b1"]),
              (net.c2.kernel, s["w2"].transpose(2, 3, 1, 0)), (net.c2.bias, s["b2"]),
              (net.c3.kernel, s["w3"].transpose(2, 3, 1, 0)), (net.c3.bias, s["b3"]),
              (net.bn.scale, s["gamma"]), (net.bn.bias, s["beta"]), (net.bn.mean, s["mean"]),
              (net.bn.var, s["var"]), (net.fc.kernel, s["W"].T), (net.fc.bias, s["bW"])]
    for var, value in values:  # (batch statistics are float32 in NNX)
        var[...] = jnp.asarray(value, dtype=var[...].dtype)
    return net


def _equinox_model(s: dict):
    """The spec in Equinox (one sample, (C, H, W)); batch norm written out."""
    import equinox as eqx
    import jax
    import jax.numpy as jnp

    class Net(eqx.Module):
        c1: eqx.nn.Conv2d
        c2: eqx.nn.Conv2d
        c3: eqx.nn.Conv2d
        fc: eqx.nn.Linear
        shift: jax.Array
        scale: jax.Array
        beta: jax.Array

        def __call__(self, x):
            z = (self.c1(x) - self.shift) * self.scale + self.beta
            h = jnp.tanh(self.c2(jax.nn.relu(z)))
            h = h + jnp.tanh(self.c3(h))
            return self.fc(jnp.ravel(h))

    # Layers' structure without their random initialization (eager, it would compile
    # each of its many small operations): the spec's values are put in below.
    key = jax.random.PRNGKey(0)
    conv = [eqx.filter_eval_shape(eqx.nn.Conv2d, 2, 3, 3, padding=1, key=key),
            eqx.filter_eval_shape(eqx.nn.Conv2d, 3, 4, 3, stride=2, padding=1, key=key),
            eqx.filter_eval_shape(eqx.nn.Conv2d, 4, 4, 3, padding=1, key=key)]
    conv = [eqx.tree_at(lambda c: (c.weight, c.bias), c,
                        (jnp.asarray(s[w]), jnp.asarray(s[b])[:, None, None]))
            for c, w, b in zip(conv, ("w1", "w2", "w3"), ("b1", "b2", "b3"))]
    fc = eqx.filter_eval_shape(eqx.nn.Linear, 36, 5, key=key)
    fc = eqx.tree_at(lambda m: (m.weight, m.bias), fc, (jnp.asarray(s["W"]),
                                                        jnp.asarray(s["bW"])))
    col = lambda a: jnp.asarray(a)[:, None, None]  # noqa: E731
    return Net(*conv, fc, col(s["mean"]), col(s["gamma"] / np.sqrt(s["var"] + EPS)),
               col(s["beta"]))


def _model(backend: str, s: dict, family: str = ""):
    if backend == "torch":
        return _torch_model(s), (2, 6, 6), lambda X: _tensor(backend, X)
    if family == "equinox":
        return _equinox_model(s), (2, 6, 6), lambda X: _tensor(backend, X)
    if backend == "jax":
        return _nnx_model(s), (6, 6, 2), lambda X: _tensor(backend, X.transpose(0, 2, 3, 1))
    return _keras_model(s), (6, 6, 2), lambda X: _tensor(backend, X.transpose(0, 2, 3, 1))


def _tensor(backend: str, a: np.ndarray):
    if backend == "torch":
        import torch

        return torch.as_tensor(np.ascontiguousarray(a))
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.asarray(a)
    import tensorflow as tf

    return tf.constant(a)


def _models_only(backend: str) -> None:
    if backend not in ("torch", "tensorflow"):
        pytest.skip("torch and Keras models")


# ------------------------------------------------------------------------------ tests


FAMILIES = ["", "equinox"]


@pytest.mark.slow  # JAX compiles every new shape of the model's derivatives
@pytest.mark.parametrize("family", FAMILIES)
def test_same_function_same_bounds(backend, family):
    """torch, Keras, Flax NNX and Equinox builds of one network give the reference's
    bounds: upper from the composition rules on dense matrices, lower the data's largest
    exact norm."""
    if backend == "jax":
        pytest.importorskip("equinox" if family else "flax")
    elif family:
        pytest.skip("Equinox is a JAX library")
    else:
        _models_only(backend)
    s = _spec()
    X = RNG.normal(size=(6, 2, 6, 6))
    up_ref, low_ref = _reference(s, X)
    model, shape, to = _model(backend, s, family)
    res = js.lipschitz(model, shape, data=to(X), refine_steps=0)
    assert res.upper == pytest.approx(up_ref, rel=1e-6)
    assert res.upper >= up_ref
    assert res.lower == pytest.approx(low_ref, rel=1e-6)
    assert res.ratio == pytest.approx(res.upper / res.lower)
    # upper <= the product of the layers' own norms (the residual block as 1 + Lip)
    if backend != "jax":  # JAX layers are named by their primitives
        n = {r.name: r.norm for r in res.layers}
        product = n["fc"] * (1 + n["c3"]) * n["c2"] * n["bn"] * n["c1"]
        assert res.upper <= product * (1 + 1e-9)
        assert res.upper < product * 0.99  # batch norm composed with its conv: tighter
    # refining: never below the data's value, never above upper
    ref = js.lipschitz(model, shape, data=[(to(X[:3]), None), (to(X[3:]), None)],
                       refine_steps=3)
    assert low_ref * (1 - 1e-9) <= ref.lower <= ref.upper
    J = js.jacobian(lambda v: res_forward(model, backend, family)(v), ref.argmax[None])
    assert float(js.svds(J, 1, tol=1e-10).values[0]) == pytest.approx(ref.lower, rel=1e-6)
    text = str(res)
    assert "conv" in text and "upper / lower" in text
    if backend == "jax" and not family:  # the NNX model itself stays in training mode
        assert not model.bn.use_running_average


def res_forward(model, backend, family=""):
    if backend == "jax":
        import jax

        if family:
            return jax.vmap(model)
        from flax import nnx

        model = nnx.clone(model)
        model.eval()
        return model
    if backend == "torch":
        return model
    return lambda x: model(x, training=False)


def test_single_dense_layer(backend):
    """One dense layer: lower == upper == sigma_max(W)."""
    _models_only(backend)
    W = RNG.normal(size=(4, 7))
    exact = _norm(W)
    if backend == "torch":
        import torch

        model = torch.nn.Linear(7, 4).double()
        with torch.no_grad():
            model.weight.copy_(torch.as_tensor(W))
    else:
        import tensorflow as tf

        model = tf.keras.Sequential([tf.keras.Input((7,), dtype="float64"),
                                     tf.keras.layers.Dense(4, dtype="float64")])
        model.layers[0].set_weights([W.T, np.zeros(4)])
    res = js.lipschitz(model, (7,), refine_steps=0)
    assert res.lower == pytest.approx(exact, rel=1e-9)
    assert res.upper == pytest.approx(exact, rel=1e-7)
    assert res.lower <= res.upper


@pytest.mark.parametrize("stride,pad", [(1, 1), (2, 1), (2, 0)])
def test_single_conv_layer(backend, stride, pad):
    """One conv layer: lower == upper == its exact norm at the input size, stride and
    padding it sees (== the dense matrix's)."""
    _models_only(backend)
    w = RNG.normal(size=(3, 2, 3, 3))
    exact = _norm(_conv_matrix(w, (7, 7), stride, pad))
    if backend == "torch":
        import torch

        model = torch.nn.Conv2d(2, 3, 3, stride=stride, padding=pad).double()
        with torch.no_grad():
            model.weight.copy_(torch.as_tensor(w))
        shape = (2, 7, 7)
    else:
        import tensorflow as tf

        L = tf.keras.layers
        layers = [tf.keras.Input((7, 7, 2), dtype="float64")]
        if pad:
            layers.append(L.ZeroPadding2D(pad, dtype="float64"))
        layers.append(L.Conv2D(3, 3, strides=stride, padding="valid", dtype="float64"))
        model = tf.keras.Sequential(layers)
        model.layers[-1].set_weights([w.transpose(2, 3, 1, 0), np.zeros(3)])
        shape = (7, 7, 2)
    res = js.lipschitz(model, shape, refine_steps=0, seed=3)
    assert res.lower == pytest.approx(exact, rel=1e-6)
    assert res.upper == pytest.approx(exact, rel=1e-6)
    assert res.lower <= res.upper * (1 + 1e-12)
    if backend == "torch" or not pad:  # Keras pads in its own layer, composed with the conv
        gram = js.lipschitz(model, shape, refine_steps=0, seed=3, conv="gram")
        assert exact * (1 - 1e-12) <= gram.upper <= 1.2 * exact


def test_linear_network(backend):
    """A linear network (dense layers, or conv then flatten then dense): the layers are
    composed before the norm, so lower == upper == ||W_L ... W_1||."""
    _models_only(backend)
    Ws = [RNG.normal(size=(6, 5)), RNG.normal(size=(4, 6)), RNG.normal(size=(3, 4))]
    w = RNG.normal(size=(2, 1, 3, 3))
    V = RNG.normal(size=(3, 2 * 5 * 5))
    exact_dense = _norm(Ws[2] @ Ws[1] @ Ws[0])
    exact_conv = _norm(V @ _conv_matrix(w, (5, 5), 1, 1))
    if backend == "torch":
        import torch
        from torch import nn

        dense = nn.Sequential(*(nn.Linear(W.shape[1], W.shape[0]) for W in Ws)).double()
        conv = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(),
                             nn.Linear(50, 3)).double()
        with torch.no_grad():
            for lin, W in zip(dense, Ws):
                lin.weight.copy_(torch.as_tensor(W))
            conv[0].weight.copy_(torch.as_tensor(w))
            conv[2].weight.copy_(torch.as_tensor(V))
        shapes = (5,), (1, 5, 5)
    else:
        import tensorflow as tf

        L = tf.keras.layers
        f = "float64"
        dense = tf.keras.Sequential([tf.keras.Input((5,), dtype=f)]
                                    + [L.Dense(W.shape[0], dtype=f) for W in Ws])
        for lay, W in zip(dense.layers, Ws):
            lay.set_weights([W.T, np.zeros(W.shape[0])])
        conv = tf.keras.Sequential([tf.keras.Input((5, 5, 1), dtype=f),
                                    L.Conv2D(2, 3, padding="same", dtype=f),
                                    L.Permute((3, 1, 2), dtype=f), L.Flatten(dtype=f),
                                    L.Dense(3, dtype=f)])
        conv.layers[0].set_weights([w.transpose(2, 3, 1, 0), np.zeros(2)])
        conv.layers[-1].set_weights([V.T, np.zeros(3)])
        shapes = (5,), (5, 5, 1)
    for model, shape, exact in ((dense, shapes[0], exact_dense),
                                (conv, shapes[1], exact_conv)):
        res = js.lipschitz(model, shape, refine_steps=0)
        assert res.upper == pytest.approx(exact, rel=1e-6)
        assert res.lower == pytest.approx(exact, rel=1e-6)
        own = np.prod([r.norm for r in res.layers if r.kind in ("dense", "conv")])
        assert res.upper <= own * (1 + 1e-9)


def test_torch_structures(backend):
    """Residual sums of branches from different points add (1 + Lip(F)); max pool with
    overlapping windows counts sqrt(overlap); concatenations add squares; dropout and
    identity are free. Modes and buffers are restored; nothing the user passed changes."""
    if backend != "torch":
        pytest.skip("torch models")
    import torch
    from torch import nn

    torch.manual_seed(0)

    class Res(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(4, 6)
            self.b = nn.Linear(6, 4)
            self.drop = nn.Dropout(0.5)
            self.bn = nn.BatchNorm1d(4)

        def forward(self, x):
            return self.bn(x + self.b(torch.relu(self.a(self.drop(x)))))

    net = Res().double().train()
    with torch.no_grad():
        net.bn.running_var.uniform_(0.5, 2.0)
    before = [t.clone() for t in net.state_dict().values()]
    res = js.lipschitz(net, (4,), refine_steps=3)
    assert net.training and net.bn.training and net.drop.training
    assert all(torch.equal(a, b) for a, b in zip(before, net.state_dict().values()))
    na = _norm(net.a.weight.detach().numpy())
    nb = _norm(net.b.weight.detach().numpy())
    nbn = float((net.bn.weight / torch.sqrt(net.bn.running_var + net.bn.eps)).abs().max().detach())
    assert res.upper == pytest.approx(nbn * (1 + na * nb), rel=1e-6)
    assert res.lower <= res.upper

    pool = nn.Sequential(nn.MaxPool2d(3, stride=1), nn.Flatten()).double()
    res = js.lipschitz(pool, (1, 5, 5), refine_steps=0)
    assert res.upper == pytest.approx(3.0, rel=1e-12)
    assert res.lower <= res.upper
    res = js.lipschitz(nn.MaxPool2d(2).double(), (1, 4, 4), refine_steps=0)
    assert res.upper == pytest.approx(1.0, rel=1e-6)

    class Cat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(3, 2)

        def forward(self, x):
            return torch.cat([torch.tanh(self.a(x)), torch.sigmoid(x)], dim=1)

    cat = Cat().double()
    res = js.lipschitz(cat, (3,), refine_steps=0)
    na = _norm(cat.a.weight.detach().numpy())
    assert res.upper == pytest.approx(np.hypot(na, 0.25), rel=1e-6)


def test_unsupported_layer_is_named(backend):
    _models_only(backend)
    if backend == "torch":
        from torch import nn

        net = nn.Sequential(nn.Linear(3, 3), nn.LayerNorm(3), nn.Linear(3, 2))
        with pytest.raises(ValueError, match="'1'.*LayerNorm"):
            js.lipschitz(net, (3,))

        class Prod(nn.Module):
            def forward(self, x):
                return x * x

        with pytest.raises(ValueError, match="product"):
            js.lipschitz(Prod(), (3,))
        with pytest.raises(ValueError, match="input_shape"):
            js.lipschitz(net, ())
        with pytest.raises(ValueError, match="shape"):
            import torch

            js.lipschitz(nn.Linear(3, 2), (3,), data=torch.zeros(4, 5))
        with pytest.raises(ValueError, match="NCHW"):
            js.lipschitz(nn.Linear(3, 2), (3,), layout="NHWC")
        with pytest.raises(ValueError, match="conv"):
            js.lipschitz(nn.Linear(3, 2), (3,), conv="fantastic_four")
    else:
        import tensorflow as tf

        L = tf.keras.layers
        model = tf.keras.Sequential([tf.keras.Input((3,)), L.Dense(3),
                                     L.LayerNormalization(name="ln"), L.Dense(2)])
        with pytest.raises(ValueError, match="'ln'.*LayerNormalization"):
            js.lipschitz(model, (3,))


@settings(max_examples=6)
@given(depth=st.integers(1, 3), width=st.integers(1, 5), act=st.sampled_from(
    ["tanh", "relu", "sigmoid", "gelu"]), residual=st.booleans(), seed=st.integers(0, 99))
def test_random_networks_sandwich(backend, depth, width, act, residual, seed):
    """Random MLPs (float64): the true constant's witnesses — the exact Jacobian norm at
    random points, from torch's dense Jacobian — never exceed ``upper``; ``lower`` is
    such a witness and at least the data's; ``upper`` is at most the product of the
    layers' norms (residual blocks as 1 + product)."""
    if backend != "torch":
        pytest.skip("torch models")
    import torch
    from torch import nn

    torch.manual_seed(seed)
    acts = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "gelu": nn.GELU}
    lip = {"tanh": 1.0, "relu": 1.0, "sigmoid": 0.25, "gelu": 1.129}[act]

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.f = nn.Linear(3, width), nn.Linear(width, 3), acts[act]()

        def forward(self, x):
            y = self.b(self.f(self.a(x)))
            return x + y if residual else y

    net = nn.Sequential(*(Block() for _ in range(depth))).double().eval()
    X = torch.randn(16, 3, dtype=torch.float64)
    res = js.lipschitz(net, (3,), data=X, refine_steps=3, seed=seed)
    norms = [torch.linalg.matrix_norm(m.weight.detach(), 2).item() for m in net.modules()
             if isinstance(m, nn.Linear)]
    product = 1.0
    for na, nb in zip(norms[::2], norms[1::2]):
        product *= (1 + na * lip * nb) if residual else na * lip * nb
    probes = torch.cat([X, 3 * torch.randn(64, 3, dtype=torch.float64)])
    witnesses = [torch.linalg.matrix_norm(torch.autograd.functional.jacobian(net, x), 2)
                 for x in probes]
    assert max(float(w) for w in witnesses[:16]) <= res.lower * (1 + 1e-9)
    assert max(float(w) for w in witnesses) <= res.upper * (1 + 1e-9)
    assert res.lower <= res.upper * (1 + 1e-12)
    assert res.upper <= product * (1 + 1e-7)
