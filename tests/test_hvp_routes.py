"""Routes of Hessian products (``js.hessian(..., hvp=)``) against the framework's own
dense Hessians: exact routes to rounding, central differences to about sqrt(eps), a
fallback where an operation has no second derivative, and the bad names."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import jacspec as js
from _helpers import from_numpy, to_numpy
from _models import ParamMLP, mlp_weights, reference_hessian

# central differences: about sqrt(eps) relative to the largest entry
FD_TOL = {"float32": 3e-3, "float64": 1e-6}
EXACT_TOL = {"float32": 1e-5, "float64": 1e-12}


def _np(a):
    return np.asarray(to_numpy(a.detach() if hasattr(a, "detach") else a), dtype=np.float64)


def _cubic(b):
    """A scalar function with nonzero third derivatives (what differences truncate)."""
    if b == "tensorflow":
        import tensorflow as tf

        return lambda x: tf.reduce_sum(tf.sin(x) ** 3) + x[0] * x[1] ** 2
    mod = __import__("torch") if b == "torch" else __import__("jax.numpy").numpy
    return lambda x: (mod.sin(x) ** 3).sum() + x[0] * x[1] ** 2


def _rel(a, ref):
    return np.abs(a - ref).max() / np.abs(ref).max()


@pytest.mark.parametrize("hvp", ["auto", "autodiff", "finite_difference"])
def test_routes_match_dense_hessian_of_array(autodiff_backend, dtype, hvp):
    b = autodiff_backend
    rng = np.random.default_rng(0)
    x = from_numpy(rng.standard_normal(6), b, dtype)
    f = _cubic(b)
    ref = reference_hessian(b, f, x)
    dense = _np(js.dense(js.hessian(f, x, hvp=hvp)))
    tol = FD_TOL if hvp == "finite_difference" else EXACT_TOL
    assert _rel(dense, ref) < tol[dtype]


def test_finite_differences_on_parameters_and_data(autodiff_backend, dtype):
    b = autodiff_backend
    rng = np.random.default_rng(1)
    net = ParamMLP(b, mlp_weights(rng, [3, 4, 2]), dtype, "tanh")
    X = from_numpy(rng.standard_normal((5, 3)), b, dtype)
    Y = from_numpy(rng.standard_normal((5, 2)), b, dtype)

    def mse(out, t):
        d = out - t
        if b == "tensorflow":
            import tensorflow as tf

            return tf.reduce_mean(d * d)
        return (d * d).mean()

    ref = reference_hessian(b, lambda t: mse(net.apply_flat(t, X), Y), net.theta0)
    H = js.hessian(lambda p: mse(net.apply(p, X), Y), net.params, hvp="finite_difference")
    assert _rel(_np(js.dense(H)), ref) < FD_TOL[dtype]
    data = [(X[:2], Y[:2]), (X[2:], Y[2:])]
    Hd = js.hessian(lambda p, batch: mse(net.apply(p, batch[0]), batch[1]), net.params,
                    data=data, hvp="finite_difference")
    assert _rel(_np(js.dense(Hd)), ref) < FD_TOL[dtype]
    # the user's parameters are as they were (variables are shifted and put back)
    for leaf, orig in zip(net.leaves(net.params), _split(net, net.theta0)):
        np.testing.assert_array_equal(_np(leaf), orig)


def _split(net, theta):
    flat, out, start = _np(theta), [], 0
    for s in net.shapes:
        size = int(np.prod(s))
        out.append(flat[start:start + size].reshape(s))
        start += size
    return out


def test_batched_finite_differences(autodiff_backend):
    b = autodiff_backend
    rng = np.random.default_rng(2)
    X = from_numpy(rng.standard_normal((3, 4)), b, "float64")
    if b == "tensorflow":
        import tensorflow as tf

        f = lambda x: tf.reduce_sum(tf.sin(x) ** 3, axis=-1)  # noqa: E731
    else:
        f = lambda x: (x.sin() ** 3).sum(-1) if b == "torch" else (  # noqa: E731
            __import__("jax.numpy").numpy.sin(x) ** 3).sum(-1)
    Hb = _np(js.dense(js.hessian(f, X, batched=True, hvp="finite_difference")))
    ref = _np(js.dense(js.hessian(f, X, batched=True, hvp="autodiff")))
    assert Hb.shape == (3, 4, 4) and _rel(Hb, ref) < FD_TOL["float64"]


@pytest.mark.parametrize("bad", ["exact", "FD", None, 1])
def test_bad_route_is_a_value_error(autodiff_backend, bad):
    x = from_numpy(np.ones(2), autodiff_backend, "float64")
    with pytest.raises(ValueError, match="Expected hvp to be one of .* Received"):
        js.hessian(_cubic(autodiff_backend), x, hvp=bad)


# ------------------------------------------------------------ no second derivative


def _torch_attention(kernel):
    """``sum(attention(x, 2x, 3x)**2)`` through the kernel chosen inside ``f`` itself;
    the flash kernel, pinned so, has no second derivative on CPU (and cannot be
    swapped for the math kernel)."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def f(x):
        q = x.reshape(1, 1, 2, -1)
        with sdpa_kernel([getattr(SDPBackend, kernel)]):
            out = torch.nn.functional.scaled_dot_product_attention(q, q * 2, q * 3)
        return (out**2).sum()

    return f


def test_torch_auto_falls_back_where_there_is_no_second_derivative():
    torch = pytest.importorskip("torch")
    f = _torch_attention("FLASH_ATTENTION")
    x = torch.tensor([1.0, -2.0, 0.5, 0.3], dtype=torch.float64)
    ref = reference_hessian("torch", _torch_attention("MATH"), x)
    with pytest.warns(RuntimeWarning, match="central differences"):
        dense = _np(js.dense(js.hessian(f, x)))
    assert _rel(dense, ref) < FD_TOL["float64"]
    with pytest.raises(RuntimeError):
        js.dense(js.hessian(f, x, hvp="autodiff"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fd = _np(js.dense(js.hessian(f, x, hvp="finite_difference")))
    assert _rel(fd, ref) < FD_TOL["float64"]


def _torch_cube():
    """``x**3`` through a custom function whose backward is ``@once_differentiable``."""
    import torch
    from torch.autograd.function import once_differentiable

    class Cube(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return x**3

        @staticmethod
        @once_differentiable
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x**2 * g

    return Cube.apply


def test_torch_once_differentiable_is_never_a_silent_zero_hessian():
    """torch runs a once-differentiable backward unrecorded when its cotangent needs no
    gradient (the first backward of a sum), so a double backward would see zeros: the
    exact routes refuse it, "auto" takes central differences."""
    torch = pytest.importorskip("torch")
    cube = _torch_cube()
    x = torch.tensor([1.0, -2.0, 0.5, 0.3], dtype=torch.float64)
    ref = np.diag(6 * _np(x))
    with pytest.warns(RuntimeWarning, match="central differences"):
        dense = _np(js.dense(js.hessian(lambda z: cube(z).sum(), x)))
    assert _rel(dense, ref) < FD_TOL["float64"]
    with pytest.raises(RuntimeError, match="once_differentiable"):
        js.dense(js.hessian(lambda z: cube(z).sum(), x, hvp="autodiff"))
    data = [torch.ones(2, 4, dtype=torch.float64), 2 * torch.ones(1, 4, dtype=torch.float64)]
    with pytest.warns(RuntimeWarning, match="central differences"):
        H = js.hessian(lambda w, b: cube(w * b).sum(), x, data=data)
        dense = _np(js.dense(H))
    # each batch's Hessian (its rows' b**3 summed) weighted by its share of the samples
    scale = (2 / 3) * (2 * 1.0) + (1 / 3) * (1 * 8.0)
    assert _rel(dense, scale * ref) < FD_TOL["float64"]
    with pytest.raises(RuntimeError, match="once_differentiable"):
        js.dense(js.hessian(lambda w, b: cube(w * b).sum(), x, data=data, hvp="autodiff"))


def _torch_flash_op(x):
    """``sum(attention(x, 2x, 3x)**2)`` through torch's CPU flash-attention operation
    called directly (no ``scaled_dot_product_attention`` call that a product could
    route): no second derivative."""
    import torch

    q = x.reshape(1, 1, 2, -1)
    out = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, q * 2, q * 3)[0]
    return (out**2).sum()


def test_torch_auto_falls_back_on_dataset_products():
    torch = pytest.importorskip("torch")
    w = torch.tensor([1.0, -2.0, 0.5, 0.3], dtype=torch.float64)
    data = [torch.ones(2, 4, dtype=torch.float64), 2 * torch.ones(1, 4, dtype=torch.float64)]

    def loss(p, X):
        return sum(_torch_flash_op(p * x) for x in X) / X.shape[0]

    with pytest.warns(RuntimeWarning, match="central differences"):
        dense = _np(js.dense(js.hessian(loss, w, data=data)))
    twin = _torch_attention("MATH")
    ref = reference_hessian("torch", lambda p: (2 * twin(p) + twin(2 * p)) / 3, w)
    assert _rel(dense, ref) < FD_TOL["float64"]
    with pytest.raises(RuntimeError):
        js.dense(js.hessian(loss, w, data=data, hvp="autodiff"))


# ---------------------------------------------- dataset products through attention


def _torch_decoder(dtype, kernel):
    """A one-block decoder (``scaled_dot_product_attention`` pinned to ``kernel`` inside
    the model, causal with a padding mask that hides every key of one query row, and
    grouped keys; an exact and a tanh GELU; layer norms), its loss over a batch and
    the loss of flat parameters on one batch."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    F = torch.nn.functional
    torch.manual_seed(0)
    D, T, V = 4, 3, 5
    lin = {"qkv": torch.nn.Linear(D, 2 * D), "fc": torch.nn.Linear(D, 2 * D),
           "out": torch.nn.Linear(2 * D, D), "head": torch.nn.Linear(D, V)}
    emb = torch.nn.Embedding(V, D)
    model = torch.nn.ModuleDict(dict(lin, emb=emb, ln=torch.nn.LayerNorm(D))).to(dtype)
    keep = torch.ones(T, T, dtype=torch.bool)
    keep[1, :] = False  # a query that sees no key: zeros, as the math kernel gives

    def apply(p, tokens):
        h = F.embedding(tokens, p["emb.weight"])
        B = h.shape[0]
        qkv = F.linear(F.layer_norm(h, (D,), p["ln.weight"], p["ln.bias"]),
                       p["qkv.weight"], p["qkv.bias"])
        q = qkv[..., :D].reshape(B, T, 2, D // 2).transpose(1, 2)
        kv = qkv[..., D:].reshape(B, T, 2, D // 2).transpose(1, 2)
        k, v = kv[:, :1], kv[:, 1:]  # one key/value head for two query heads
        with sdpa_kernel([getattr(SDPBackend, kernel)]):
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=True)
        h = h + a.transpose(1, 2).reshape(B, T, D)
        m = F.gelu(F.linear(h, p["fc.weight"], p["fc.bias"]))
        h = h + F.gelu(F.linear(m, p["out.weight"], p["out.bias"]), approximate="tanh")
        return F.linear(h, p["head.weight"], p["head.bias"]).reshape(-1, V)

    params = {k: v.detach() for k, v in model.named_parameters()}
    g = torch.Generator().manual_seed(1)
    seqs = torch.randint(0, V, (2, 2, T + 1), generator=g)
    data = [(s[:, :-1], s[:, 1:].reshape(-1)) for s in seqs]

    def loss(p, batch):
        return F.cross_entropy(apply(p, batch[0]), batch[1])

    names, shapes = list(params), [v.shape for v in params.values()]

    def flat_loss(theta, batch):
        parts = torch.split(theta, [s.numel() for s in shapes])
        return loss({k: t.reshape(s) for k, t, s in zip(names, parts, shapes)}, batch)

    theta = torch.cat([v.reshape(-1) for v in params.values()])
    return params, data, loss, flat_loss, theta


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_dataset_hessian_through_attention_and_gelu_is_exact(dtype):
    """Dataset Hessian products form attention and exact GELU with their own double
    backward (less memory at the peak): equal to the dense Hessian of the math kernel's
    model to rounding, for one vector and a block, however the model pins its kernel
    (a central-difference fallback would miss the tolerance by orders of magnitude)."""
    torch = pytest.importorskip("torch")
    dt = getattr(torch, dtype)
    params, data, loss, flat_loss, theta = _torch_decoder(dt, "FLASH_ATTENTION")
    _, _, _, math_loss, _ = _torch_decoder(dt, "MATH")
    # torch.autograd.functional: functorch's jacrev(jacrev) differs on this model
    ref = sum(_np(torch.autograd.functional.hessian(lambda t, b=b: math_loss(t, b), theta))
              for b in data) / len(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact: no fallback
        H = js.hessian(loss, params, data=data)
        dense = _np(js.dense(H))  # blocks of columns: one batched double backward
        v = torch.randn(theta.numel(), dtype=dt, generator=torch.Generator().manual_seed(2))
        hv = _np(H @ v)
    tol = {"float64": 1e-12, "float32": 1e-5}[dtype]
    assert _rel(dense, ref) < tol
    assert np.abs(hv - ref @ _np(v)).max() < tol * np.abs(ref).max() * np.abs(_np(v)).sum()
    # the parameters, the kernel choice and grad mode are as they were
    assert all(not t.requires_grad for t in params.values())
    assert torch.is_grad_enabled()


def test_torch_dataset_hessian_of_a_gradient_penalty_is_exact():
    """A loss that differentiates attention and GELU itself (a gradient penalty) needs
    their third derivative: the products use torch's kernels, exactly, no warning."""
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    g = torch.Generator().manual_seed(4)
    w = torch.randn(4, 4, generator=g, dtype=torch.float64)
    X = torch.randn(2, 3, 4, generator=g, dtype=torch.float64)

    def loss(p, x):
        with torch.enable_grad():
            h = x @ p
            out = F.gelu(F.scaled_dot_product_attention(h, h, x, is_causal=True)).sum()
            (d,) = torch.autograd.grad(out, p, create_graph=True)
        return out + (d**2).sum()

    ref = _np(torch.autograd.functional.hessian(lambda p: loss(p, X), w)).reshape(16, 16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        H = js.hessian(loss, w, data=[X])
        dense = _np(js.dense(H))
        assert _rel(dense, ref) < EXACT_TOL["float64"]
        assert _rel(dense, _np(js.dense(H))) < EXACT_TOL["float64"]  # and again


def test_torch_lean_second_order_kernels_match_torch_derivatives():
    """First and second derivatives of the attention and GELU replacements against
    torch's (the math kernel), on values where every term matters: large GELU inputs,
    masked keys, a query that sees no key, cotangents on every output."""
    torch = pytest.importorskip("torch")
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from jacspec.backends.torch import _Attention, _Gelu

    F = torch.nn.functional
    g = torch.Generator().manual_seed(3)
    keep = torch.rand(3, 4, generator=g) > 0.3
    keep[1] = False  # a query that sees no key: zeros

    def math_attention(q, k, v):
        with sdpa_kernel([SDPBackend.MATH]):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=keep, scale=0.7)

    def attention(q, k, v):
        bias = torch.zeros(keep.shape, dtype=q.dtype).masked_fill_(~keep, -torch.inf)
        return _Attention.apply(q, k, v, bias, 0.7)

    def rand(*shape):
        return 2 * torch.randn(shape, generator=g, dtype=torch.float64)

    cases = ((attention, math_attention, (rand(2, 3, 5), rand(2, 4, 5), rand(2, 4, 5))),
             (_Gelu.apply, F.gelu, (rand(2, 3, 4),)))
    for ours, theirs, xs in cases:
        u = torch.randn(ours(*xs).shape, generator=g, dtype=torch.float64)
        ws = [torch.randn(x.shape, generator=g, dtype=torch.float64) for x in xs]

        def second(fn, xs=xs, u=u, ws=ws):
            xs = [x.clone().requires_grad_(True) for x in xs]
            ds = torch.autograd.grad((fn(*xs) * u).sum(), xs, create_graph=True)
            dds = torch.autograd.grad(sum((d * w).sum() for d, w in zip(ds, ws)), xs)
            return [d.detach() for d in ds], dds

        (d1, dd1), (d2, dd2) = second(ours), second(theirs)
        for a, b in zip(d1 + list(dd1), d2 + list(dd2)):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_jax_custom_vjp_uses_reverse_over_reverse_exactly():
    jax = pytest.importorskip("jax")
    import jax.numpy as jnp

    @jax.custom_vjp
    def cube(x):
        return x**3

    cube.defvjp(lambda x: (x**3, x), lambda x, g: (3 * x**2 * g,))
    x = jnp.array([1.0, -2.0, 0.5])
    ref = np.diag(6 * np.asarray(x, dtype=np.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # exact: no fallback
        dense = _np(js.dense(js.hessian(lambda t: cube(t).sum(), x, hvp="autodiff")))
    assert _rel(dense, ref) < EXACT_TOL[str(x.dtype)]
