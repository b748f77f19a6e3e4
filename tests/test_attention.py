"""Models with the frameworks' fused attention, unchanged: every operator on a tiny
GPT-style decoder (torch ``scaled_dot_product_attention`` with ``is_causal=True``,
``jax.nn.dot_product_attention``, Keras ``MultiHeadAttention``) against the same
products formed with the math attention kernel (torch) or the framework's own dense
derivatives; the user's kernel choice and grad mode are as they were afterwards."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js
from _helpers import to_numpy

B, T, D, HEADS, VOCAB, LAYERS = 2, 8, 32, 2, 16, 2
RTOL = dict(rtol=2e-4, atol=2e-5)  # float32, flash against math forward passes


def _np(a):
    return np.asarray(to_numpy(a.detach() if hasattr(a, "detach") else a), dtype=np.float64)


# ------------------------------------------------------------------------------ torch


def _torch_gpt():
    import torch
    import torch.nn.functional as F

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(D), torch.nn.LayerNorm(D)
            self.qkv, self.proj = torch.nn.Linear(D, 3 * D), torch.nn.Linear(D, D)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(D, 2 * D), torch.nn.GELU(),
                                           torch.nn.Linear(2 * D, D))

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(D, dim=-1)
            heads = [a.view(b, t, HEADS, D // HEADS).transpose(1, 2) for a in (q, k, v)]
            y = F.scaled_dot_product_attention(*heads, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, D))
            return x + self.mlp(self.ln2(x))

    class GPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(VOCAB, D)
            self.pos = torch.nn.Parameter(0.1 * torch.randn(T, D))
            self.blocks = torch.nn.Sequential(*[Block() for _ in range(LAYERS)])
            self.head = torch.nn.Linear(D, VOCAB)

        def forward_embedded(self, x):
            return self.head(self.blocks(x + self.pos))

        def forward(self, tokens):
            return self.forward_embedded(self.emb(tokens))

    torch.manual_seed(0)
    return GPT()


@pytest.fixture(scope="module")
def gpt():
    torch = pytest.importorskip("torch")
    model = _torch_gpt()
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, VOCAB, (B, T), generator=g)
    targets = torch.randint(0, VOCAB, (B, T), generator=g)
    return model, tokens, targets


def _math():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.MATH])


def _flags():
    import torch

    return (torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled(),
            torch.backends.cuda.mem_efficient_sdp_enabled(), torch.is_grad_enabled())


def _probe(n, seed):
    import torch

    return torch.randn(n, generator=torch.Generator().manual_seed(seed))


def test_torch_default_kernel_has_no_double_backward(gpt):
    """The premise: the default CPU kernel fails a JVP formed by double backward."""
    torch = pytest.importorskip("torch")
    model, tokens, _ = gpt
    x = model.emb(tokens).detach().requires_grad_(True)
    y = model.forward_embedded(x)
    u = torch.zeros_like(y, requires_grad=True)
    (g,) = torch.autograd.grad(y, x, u, create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        torch.autograd.grad(g, u, torch.ones_like(g))


def test_torch_input_jacobian_matches_math_kernel(gpt):
    model, tokens, _ = gpt
    x = model.emb(tokens).detach()
    before = _flags()
    J = js.jacobian(model.forward_embedded, x)
    v, u = _probe(J.shape[1], 0), _probe(J.shape[0], 1)
    Jv, Jtu = J @ v, J.T @ u
    sigma = js.spectral_norm(js.jacobian(model.forward_embedded, x, batched=True))
    assert _flags() == before
    with _math():
        Jm = js.jacobian(model.forward_embedded, x)
        sigma_m = js.spectral_norm(js.jacobian(model.forward_embedded, x, batched=True))
        np.testing.assert_allclose(_np(Jv), _np(Jm @ v), **RTOL)
        np.testing.assert_allclose(_np(Jtu), _np(Jm.T @ u), **RTOL)
    np.testing.assert_allclose(_np(sigma), _np(sigma_m), rtol=1e-3)


def test_torch_parameter_hessian_ggn_and_jacobian_match_math_kernel(gpt):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    model, tokens, targets = gpt
    params = dict(model.named_parameters())
    call = torch.func.functional_call

    def logits(p, toks):
        return call(model, p, (toks,)).reshape(-1, VOCAB)

    def loss(p):
        return F.cross_entropy(logits(p, tokens), targets.reshape(-1))

    data = [(tokens, targets.reshape(-1))]
    n = sum(p.numel() for p in params.values())
    v = _probe(n, 2)
    outside = _flags()
    with torch.no_grad():  # grad mode of the caller: off
        before = _flags()
        H, Hfd = js.hessian(loss, params), js.hessian(loss, params, hvp="finite_difference")
        G = js.ggn(logits, F.cross_entropy, params, data=data)
        Jp = js.jacobian(lambda p: logits(p, tokens), params)
        Hv, Hfdv, Gv, Jpv = H @ v, Hfd @ v, G @ v, Jp @ v
        top = js.eigsh(G, k=1, tol=1e-4).values
        assert _flags() == before
    assert _flags() == outside
    with _math():
        Hm = js.hessian(loss, params)
        Gm = js.ggn(logits, lambda z, t: F.cross_entropy(z, t), params, data=data)
        np.testing.assert_allclose(_np(Hv), _np(Hm @ v), **RTOL)
        np.testing.assert_allclose(_np(Gv), _np(Gm @ v), **RTOL)
        Jm = js.jacobian(lambda p: logits(p, tokens), params)
        np.testing.assert_allclose(_np(Jpv), _np(Jm @ v), **RTOL)
        top_m = js.eigsh(Gm, k=1, tol=1e-4).values
    np.testing.assert_allclose(_np(top), _np(top_m), rtol=1e-3)
    # central differences: about sqrt(eps) of float32 relative to the product's size
    assert np.abs(_np(Hfdv) - _np(Hv)).max() < 2e-2 * np.abs(_np(Hv)).max()


@pytest.mark.parametrize("option", ["causal", "bool_mask", "float_mask", "gqa", "dropout"])
def test_torch_ggn_attention_options_match_dense(option):
    """The GGN's tangent pass forms attention by its definition with a closed-form
    forward derivative: each ``scaled_dot_product_attention`` option (a boolean mask
    with a fully masked row, an additive mask that depends on the parameters, grouped
    heads; dropout left to the math kernel) against dense ``J^T H J`` in float64."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    b, t, d, heads = 2, 5, 3, 2
    g = torch.Generator().manual_seed(3)
    x = torch.randn(b, t, d, generator=g, dtype=torch.float64)
    y = torch.randn(b, t, 3, generator=g, dtype=torch.float64)
    keep = torch.rand(t, t, generator=g) > 0.4
    keep[1] = False  # a query that sees no key: the math kernel gives zeros
    kv_heads = 1 if option == "gqa" else heads
    params = {k: 0.5 * torch.randn(*s, generator=g, dtype=torch.float64) for k, s in dict(
        wq=(d, heads * d), wk=(d, kv_heads * d), wv=(d, kv_heads * d), wo=(heads * d, 3),
        slope=(1,)).items()}

    def f(p, inputs):
        q, k, v = ((inputs @ p[w]).reshape(b, t, -1, d).transpose(1, 2)
                   for w in ("wq", "wk", "wv"))
        kw = dict(causal=dict(is_causal=True), bool_mask=dict(attn_mask=keep),
                  gqa=dict(enable_gqa=True), dropout=dict(dropout_p=0.3),
                  float_mask=dict(attn_mask=p["slope"] * torch.arange(
                      t, dtype=inputs.dtype).sub(torch.arange(t, dtype=inputs.dtype)[:, None])
                  ))[option]
        a = F.scaled_dot_product_attention(q, k, v, **kw)
        return torch.tanh(a.transpose(1, 2).reshape(b, t, -1) @ p["wo"])

    n = sum(v.numel() for v in params.values())
    G = js.ggn(f, F.mse_loss, params, data=[(x, y)])
    dense = _np(G @ torch.eye(n, dtype=torch.float64))
    flat = torch.cat([v.reshape(-1) for v in params.values()])
    sizes = [v.numel() for v in params.values()]

    def out(w):
        parts = dict(zip(params, (c.reshape(v.shape) for c, v in zip(
            torch.split(w, sizes), params.values()))))
        with _math(), torch.random.fork_rng():
            torch.manual_seed(0)  # one dropout draw, the same at every call
            return f(parts, x).reshape(-1)

    if option == "dropout":  # the operator's draws are its own: check G is a GGN's form
        assert np.allclose(dense, dense.T, atol=1e-10)
        assert np.linalg.eigvalsh(dense).min() > -1e-10
        return
    J = torch.autograd.functional.jacobian(out, flat)
    ref = _np(J.T @ J) * 2.0 / J.shape[0]
    np.testing.assert_allclose(dense, ref, rtol=1e-9, atol=1e-11)


def test_torch_penalty_slope_and_density_match_math_kernel(gpt):
    torch = pytest.importorskip("torch")
    model, tokens, _ = gpt
    x = model.emb(tokens).detach()

    def run():
        model.zero_grad()
        pen = js.penalties.spectral(model.forward_embedded, x, tol=1e-4)
        pen.backward()  # differentiates through the products: double backward
        grad = model.head.weight.grad.clone()
        s = js.slope(model.forward_embedded, x).values
        H = js.hessian(lambda t: model.forward_embedded(t).square().mean(), x)
        dens = js.spectral_density(H, num_probes=2, num_steps=8, seed=0)
        return pen, grad, s, dens

    before = _flags()
    pen, grad, s, dens = run()
    assert _flags() == before
    with _math():
        pen_m, grad_m, s_m, dens_m = run()
    model.zero_grad()
    np.testing.assert_allclose(_np(pen), _np(pen_m), rtol=1e-3)
    np.testing.assert_allclose(_np(grad), _np(grad_m), rtol=1e-2, atol=1e-5)
    np.testing.assert_allclose(_np(s), _np(s_m), rtol=1e-3)
    np.testing.assert_allclose(_np(dens.nodes), _np(dens_m.nodes), rtol=1e-3, atol=1e-6)
    assert torch.is_grad_enabled()


# -------------------------------------------------------------------------------- JAX


def test_jax_dot_product_attention_matches_dense_derivatives():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp
    from jax.flatten_util import ravel_pytree

    rng = np.random.default_rng(0)
    w = {k: jnp.asarray(0.3 * rng.standard_normal((D, D)), dtype=jnp.float32)
         for k in ("q", "k", "v", "o")}
    x = jnp.asarray(rng.standard_normal((B, T, D)), dtype=jnp.float32)

    def attend(p, x):
        heads = [(x @ p[k]).reshape(B, T, HEADS, D // HEADS) for k in ("q", "k", "v")]
        y = jax.nn.dot_product_attention(*heads, is_causal=True)
        return jnp.tanh(y.reshape(B, T, D) @ p["o"])

    def loss(p):
        return jnp.mean(attend(p, x) ** 2)

    flat, unravel = ravel_pytree(w)
    v = jnp.asarray(rng.standard_normal(flat.shape[0]), dtype=jnp.float32)
    # References in one compiled program each (eager, each small operation compiles)
    ref_h = jax.jit(lambda t, s: jax.jvp(jax.grad(lambda q: loss(unravel(q))), (t,), (s,))[1])(
        flat, v)
    for hvp in ("auto", "autodiff"):
        np.testing.assert_allclose(_np(js.hessian(loss, w, hvp=hvp) @ v), _np(ref_h), **RTOL)
    fd = _np(js.hessian(loss, w, hvp="finite_difference") @ v)
    assert np.abs(fd - _np(ref_h)).max() < 2e-2 * np.abs(_np(ref_h)).max()
    J = js.jacobian(lambda t: attend(w, t), x)
    u = jnp.asarray(rng.standard_normal(J.shape[0]), dtype=jnp.float32)
    ref_j = jax.jit(lambda t, c: jax.vjp(lambda q: attend(w, q), t)[1](c)[0])(
        x, u.reshape(B, T, D)).reshape(-1)
    np.testing.assert_allclose(_np(J.T @ u), _np(ref_j), **RTOL)
    data = [(x, jnp.zeros((B, T, D), jnp.float32))]
    G = js.ggn(attend, lambda z, t: jnp.mean((z - t) ** 2), w, data=data)

    def ggn_product(t, s):
        z, jvp_fn = jax.linearize(lambda q: attend(unravel(q), x), t)
        return jax.linear_transpose(jvp_fn, t)(jvp_fn(s) * (2.0 / z.size))[0]

    ref_g = jax.jit(ggn_product)(flat, v)
    np.testing.assert_allclose(_np(G @ v), _np(ref_g), **RTOL)


# ------------------------------------------------------------------------- TensorFlow


def test_keras_multi_head_attention_matches_dense_derivatives():
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")

    keras.utils.set_random_seed(0)
    inp = keras.Input((T, D))
    h = keras.layers.MultiHeadAttention(HEADS, D // HEADS)(inp, inp, use_causal_mask=True)
    model = keras.Model(inp, keras.layers.Dense(D)(h))
    rng = np.random.default_rng(0)
    x = tf.constant(rng.standard_normal((B, T, D)), tf.float32)
    weights = model.trainable_variables
    tf_vars = [w.value for w in weights]  # the tf.Variables behind Keras variables

    def loss(_):
        return tf.reduce_mean(model(x) ** 2)

    n = sum(int(np.prod(w.shape)) for w in weights)
    v = tf.constant(rng.standard_normal(n), tf.float32)
    parts = tf.split(v, [int(np.prod(w.shape)) for w in weights])
    with tf.autodiff.ForwardAccumulator(
            tf_vars, [tf.reshape(p, w.shape) for p, w in zip(parts, weights)]) as acc:
        with tf.GradientTape() as tape:
            value = loss(None)
        g = tape.gradient(value, tf_vars)
    ref = tf.concat([tf.reshape(t, [-1]) for t in acc.jvp(g)], 0)
    np.testing.assert_allclose(_np(js.hessian(loss, weights) @ v), _np(ref), **RTOL)
    fd = _np(js.hessian(loss, weights, hvp="finite_difference") @ v)
    assert np.abs(fd - _np(ref)).max() < 2e-2 * np.abs(_np(ref)).max()
    J = js.jacobian(model, x)
    u = tf.constant(rng.standard_normal(J.shape[0]), tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = model(x)
    ref_j = tf.reshape(tape.gradient(y, x, output_gradients=tf.reshape(u, y.shape)), [-1])
    np.testing.assert_allclose(_np(J.T @ u), _np(ref_j), **RTOL)
    G = js.ggn(lambda p, t: model(t), lambda z, t: tf.reduce_mean((z - t) ** 2), weights,
               data=[(x, tf.zeros_like(x))])
    with tf.autodiff.ForwardAccumulator(
            tf_vars, [tf.reshape(p, w.shape) for p, w in zip(parts, weights)]) as acc:
        with tf.GradientTape() as tape:
            z = model(x)
        jv = acc.jvp(z)
    ref_g = tape.gradient(z, tf_vars, output_gradients=jv * (2.0 / float(tf.size(z))))
    ref_g = tf.concat([tf.reshape(t, [-1]) for t in ref_g], 0)
    np.testing.assert_allclose(_np(G @ v), _np(ref_g), **RTOL)
