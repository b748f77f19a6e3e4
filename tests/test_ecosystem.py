"""Models from the ecosystem's libraries, built from configs in code (nothing is
downloaded): a Hugging Face ``transformers`` GPT-2 with its default attention (torch
SDPA) against the same products under the math kernel; Flax (linen and NNX) and
Equinox modules against JAX's own dense derivatives; a Keras 3 model against
TensorFlow's tapes."""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js
from _helpers import to_numpy

RTOL = dict(rtol=2e-4, atol=2e-5)


def _np(a):
    return np.asarray(to_numpy(a.detach() if hasattr(a, "detach") else a), dtype=np.float64)


@pytest.mark.slow
def test_hugging_face_gpt2_with_default_attention():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    F = torch.nn.functional
    torch.manual_seed(0)
    config = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=2, n_positions=8, vocab_size=32, bos_token_id=0,
        eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    model = transformers.GPT2LMHeadModel(config).eval()
    assert model.config._attn_implementation == "sdpa"
    g = torch.Generator().manual_seed(1)
    tokens, targets = (torch.randint(0, 32, (2, 8), generator=g) for _ in range(2))
    params = dict(model.named_parameters())
    attention = {k: v for k, v in params.items() if k.startswith("transformer.h.0.attn.")}

    def logits(p, toks):
        return torch.func.functional_call(model, p, (toks,)).logits.reshape(-1, 32)

    def loss(p):
        return F.cross_entropy(logits({**params, **p}, tokens), targets.reshape(-1))

    emb = model.transformer.wte(tokens).detach()

    def run():
        top = js.eigsh(js.hessian(loss, params), k=1, tol=1e-4).values
        sub = js.eigsh(js.hessian(loss, attention), k=1, tol=1e-4).values
        J = js.jacobian(lambda e: model(inputs_embeds=e).logits, emb, batched=True)
        G = js.ggn(logits, F.cross_entropy, params, data=[(tokens, targets.reshape(-1))])
        return top, sub, js.spectral_norm(J, tol=1e-4), js.eigsh(G, k=1, tol=1e-4).values

    values = run()
    with sdpa_kernel([SDPBackend.MATH]):
        reference = run()
    for name, got, ref in zip(("hessian", "attention block", "jacobian", "ggn"), values,
                              reference):
        np.testing.assert_allclose(_np(got), _np(ref), rtol=1e-3, err_msg=name)


def _jax_reference(loss, params):
    import jax
    from jax.flatten_util import ravel_pytree

    flat, unravel = ravel_pytree(params)
    # One compiled program (eager, each of the Hessian's many small operations compiles)
    dense = jax.jit(jax.hessian(lambda t: loss(unravel(t))))(flat)
    return np.linalg.eigvalsh(np.asarray(dense, dtype=np.float64))


def test_flax_linen_nnx_and_equinox_modules():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    nn = pytest.importorskip("flax.linen")
    nnx = pytest.importorskip("flax.nnx")
    eqx = pytest.importorskip("equinox")
    x = jax.random.normal(jax.random.key(0), (6, 3), dtype=jnp.float32)
    y = jax.random.normal(jax.random.key(1), (6, 2), dtype=jnp.float32)

    linen = nn.Sequential([nn.Dense(4), nn.tanh, nn.Dense(2)])
    # Models are initialized in one compiled program each (eager, every small
    # operation of the random initialization compiles on its own).
    lp = jax.jit(linen.init)(jax.random.key(2), x)

    def linen_loss(p):
        return jnp.mean((linen.apply(p, x) - y) ** 2)

    ref = _jax_reference(linen_loss, lp)
    got = _np(js.eigsh(js.hessian(linen_loss, lp), k=1).values)
    np.testing.assert_allclose(got, ref[np.argmax(np.abs(ref))], rtol=1e-4)

    class MLP(nnx.Module):
        def __init__(self, rngs):
            self.a, self.b = nnx.Linear(3, 4, rngs=rngs), nnx.Linear(4, 2, rngs=rngs)

        def __call__(self, t):
            return self.b(jnp.tanh(self.a(t)))

    graphdef, state = nnx.split(nnx.jit(lambda: MLP(nnx.Rngs(3)))())

    def nnx_loss(s):
        return jnp.mean((nnx.merge(graphdef, s)(x) - y) ** 2)

    ref = _jax_reference(nnx_loss, state)
    got = _np(js.eigsh(js.hessian(nnx_loss, state), k=1).values)
    np.testing.assert_allclose(got, ref[np.argmax(np.abs(ref))], rtol=1e-4)

    net = eqx.filter_jit(lambda k: eqx.nn.MLP(3, 2, 4, 1, activation=jnp.tanh, key=k))(
        jax.random.key(4))
    arrays, static = eqx.partition(net, eqx.is_array)

    def eqx_loss(p):
        return jnp.mean((jax.vmap(eqx.combine(p, static))(x) - y) ** 2)

    ref = _jax_reference(eqx_loss, arrays)
    got = _np(js.eigsh(js.hessian(eqx_loss, arrays), k=1).values)
    np.testing.assert_allclose(got, ref[np.argmax(np.abs(ref))], rtol=1e-4)
    J = js.jacobian(lambda t: jax.vmap(net)(t), x, batched=True)
    ref_j = jax.jit(jax.vmap(jax.jacrev(net)))(x)
    np.testing.assert_allclose(_np(js.spectral_norm(J)),
                               np.linalg.norm(np.asarray(ref_j, dtype=np.float64), 2,
                                              axis=(1, 2)), rtol=1e-4)


def test_keras3_model():
    tf = pytest.importorskip("tensorflow")
    keras = pytest.importorskip("keras")

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(4, activation="tanh"),
                              keras.layers.Dense(2)])
    x = tf.random.stateless_normal((6, 3), seed=[0, 1])
    y = tf.random.stateless_normal((6, 2), seed=[0, 2])
    weights = model.trainable_variables
    tf_vars = [w.value for w in weights]

    def loss(_):
        return tf.reduce_mean((model(x) - y) ** 2)

    with tf.GradientTape(persistent=True) as outer:
        with tf.GradientTape() as inner:
            value = loss(None)
        g = tf.concat([tf.reshape(t, [-1]) for t in inner.gradient(value, tf_vars)], 0)
    rows = outer.jacobian(g, tf_vars, experimental_use_pfor=False)
    dense = np.concatenate([np.asarray(r).reshape(g.shape[0], -1) for r in rows], axis=1)
    ref = np.linalg.eigvalsh(dense.astype(np.float64))
    got = _np(js.eigsh(js.hessian(loss, weights), k=1).values)
    np.testing.assert_allclose(got, ref[np.argmax(np.abs(ref))], rtol=1e-4)
    G = js.ggn(lambda p, t: model(t), lambda z, t: tf.reduce_mean((z - t) ** 2), weights,
               data=[(x, y)])
    assert _np(js.eigsh(G, k=1).values)[0] > 0
