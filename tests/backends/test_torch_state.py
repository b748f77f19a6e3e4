"""torch: products are those of ``f`` as it ran, however ``f`` writes the user's tensors,
modes, flags or draws random numbers; afterwards the user's state is as it was."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import jacspec as js


def _dense(op):
    return js.dense(op).detach().numpy()


# ------------------------------------------------------- f writes tensors in place
def _clamping_model(torch):
    """A module that clamps its own weights inside ``forward``."""

    class Clamped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4).double()
            with torch.no_grad():
                self.lin.weight.mul_(5.0)

        def forward(self, x):
            with torch.no_grad():
                self.lin.weight.clamp_(-0.2, 0.2)
            return torch.tanh(self.lin(x))

    torch.manual_seed(0)
    return Clamped()


def test_weights_clamped_inside_forward(torch):
    model = _clamping_model(torch)
    x = torch.randn(4, dtype=torch.float64)
    W0, b = model.lin.weight.detach().clone(), model.lin.bias.detach().clone()
    Wc = W0.clamp(-0.2, 0.2)
    ref = torch.func.jacrev(lambda z: torch.tanh(Wc @ z + b))(x).numpy()
    J = js.jacobian(model, x)
    np.testing.assert_allclose(_dense(J), ref, rtol=1e-12)
    np.testing.assert_allclose(_dense(J.T), ref.T, rtol=1e-12)
    assert torch.equal(model.lin.weight, W0)
    assert model.lin.weight.is_leaf and model.lin.weight.requires_grad


def test_weights_clamped_inside_forward_gradient_of_a_penalty(torch):
    """The user's backward through a product reaches the weight with the clamped value
    (the derivative of sigma_max at the weights f computed with)."""
    model = _clamping_model(torch)
    x = torch.randn(4, dtype=torch.float64)
    W0, b = model.lin.weight.detach().clone(), model.lin.bias.detach().clone()
    sigma = js.spectral_norm(js.jacobian(model, x), tol=1e-12)
    sigma.backward()
    Wc = W0.clamp(-0.2, 0.2).requires_grad_(True)
    ref = torch.linalg.matrix_norm(
        torch.func.jacrev(lambda z: torch.tanh(Wc @ z + b))(x), 2)
    ref.backward()
    np.testing.assert_allclose(float(sigma.detach()), float(ref.detach()), rtol=1e-10)
    np.testing.assert_allclose(model.lin.weight.grad.numpy(), Wc.grad.numpy(), rtol=1e-7,
                               atol=1e-10)
    assert torch.equal(model.lin.weight.detach(), W0)


def test_parameter_hessian_with_weights_clamped_inside_forward(torch):
    model = _clamping_model(torch)
    x = torch.randn(4, dtype=torch.float64)
    W0, b = model.lin.weight.detach().clone(), model.lin.bias.detach().clone()
    # applied twice: the backward pass reads the weight's value (as the input's factor)
    H = js.hessian(lambda p: model(model(x)).pow(2).sum(), dict(model.named_parameters()))

    def loss(W, b):
        return torch.tanh(W @ torch.tanh(W @ x + b) + b).pow(2).sum()

    blocks = torch.autograd.functional.hessian(loss, (W0.clamp(-0.2, 0.2), b))
    ref = torch.cat([torch.cat([blocks[i][j].reshape(W0.numel() if i == 0 else 4, -1)
                                for j in range(2)], dim=1) for i in range(2)])
    np.testing.assert_allclose(_dense(H), ref.numpy(), rtol=1e-10, atol=1e-12)
    assert torch.equal(model.lin.weight.detach(), W0)


def _scratch(torch):
    torch.manual_seed(1)
    W = torch.randn(4, 4, dtype=torch.float64)
    buf = torch.full((4,), 7.0, dtype=torch.float64)
    return W, buf


def _assert_untouched(torch, buf, value=7.0):
    assert torch.equal(buf, torch.full((4,), value, dtype=torch.float64))
    assert not buf.requires_grad and buf.grad_fn is None and buf.is_leaf


def test_scratch_buffer_filled_by_f(torch):
    W, buf = _scratch(torch)

    def f(z):
        buf.copy_(W @ z)  # autograd records the copy: buf gets a history
        return buf.sin()

    x = torch.randn(4, dtype=torch.float64)
    ref = torch.func.jacrev(lambda z: torch.sin(W @ z))(x).numpy()
    J = js.jacobian(f, x)
    np.testing.assert_allclose(_dense(J), ref, rtol=1e-12)
    np.testing.assert_allclose(_dense(J.T), ref.T, rtol=1e-12)
    _assert_untouched(torch, buf)
    H = js.hessian(lambda z: f(z).sum(), x)
    Href = torch.func.jacrev(torch.func.jacrev(lambda z: torch.sin(W @ z).sum()))(x).numpy()
    np.testing.assert_allclose(_dense(H), Href, rtol=1e-10, atol=1e-12)
    _assert_untouched(torch, buf)


def test_scratch_buffer_view_and_output(torch):
    """f writes through a view of the user's tensor and returns the tensor itself."""
    W, buf = _scratch(torch)

    def f(z):
        buf[:].copy_(torch.tanh(W @ z))
        return buf

    x = torch.randn(4, dtype=torch.float64)
    ref = torch.func.jacrev(lambda z: torch.tanh(W @ z))(x).numpy()
    J = js.jacobian(f, x)
    np.testing.assert_allclose(_dense(J), ref, rtol=1e-12)
    _assert_untouched(torch, buf)
    assert float(js.spectral_norm(J)) == pytest.approx(np.linalg.norm(ref, 2), rel=1e-6)


def test_f_writing_a_tensor_after_using_it_is_an_error(torch):
    """As in plain autograd: the values the graph needs were overwritten."""
    W, buf = _scratch(torch)

    def f(z):
        y = (buf * z).sum() * z
        with torch.no_grad():
            buf.add_(1.0)
        return y

    x = torch.randn(4, dtype=torch.float64)
    y = f(x.clone().requires_grad_(True))  # plain torch first
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.sum().backward()
    buf.fill_(7.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        js.dense(js.jacobian(f, x))
    _assert_untouched(torch, buf)


# -------------------------------------- modules of torch's plain layers (no guard)
def _writes(torch, model):
    from jacspec.backends._torch_state import writes_nothing

    return not writes_nothing(model)


def test_plain_layers_are_known_to_write_nothing(torch):
    nn = torch.nn
    assert not _writes(torch, nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Dropout(0.1),
                                            nn.BatchNorm1d(4).eval(), nn.Linear(4, 2)))

    class Sub(nn.Linear):  # its own class: anything may happen in its forward
        pass

    lin = nn.Linear(3, 3)
    lin.forward = lambda z: z  # an instance's own forward
    hooked = nn.Linear(3, 3)
    hooked.register_forward_pre_hook(lambda m, args: None)
    for model in (nn.Sequential(nn.ReLU(inplace=True)), nn.BatchNorm1d(3),
                  nn.Embedding(4, 3, max_norm=1.0), Sub(3, 3), lin, hooked,
                  lambda z: z):
        assert _writes(torch, model)


def test_hook_writing_weights_is_undone(torch):
    """A forward pre-hook on a plain layer that clamps its weight: the guard runs."""
    nn = torch.nn
    torch.manual_seed(0)
    lin = nn.Linear(4, 4).double()
    with torch.no_grad():
        lin.weight.mul_(5.0)
    W0 = lin.weight.detach().clone()

    def clamp(module, args):
        with torch.no_grad():
            module.weight.clamp_(-0.2, 0.2)

    lin.register_forward_pre_hook(clamp)
    x = torch.randn(4, dtype=torch.float64)
    ref = W0.clamp(-0.2, 0.2).numpy()
    np.testing.assert_allclose(_dense(js.jacobian(lin, x)), ref, rtol=1e-12)
    assert torch.equal(lin.weight, W0)


# ------------------------------------------------------------ random layers (dropout)
def _dropout_model(torch):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(),
                               torch.nn.Dropout(0.5), torch.nn.Linear(8, 2)).double().train()


def _loss(model, torch):
    def f(p, batch):
        x, t = batch
        out = torch.func.functional_call(model, p, (x,))
        return torch.nn.functional.mse_loss(out, t)

    return f


def test_dropout_dataset_hessian_is_one_fixed_operator(torch):
    model = _dropout_model(torch)
    g = torch.Generator().manual_seed(3)
    data = [(torch.randn(6, 5, generator=g, dtype=torch.float64),
             torch.randn(6, 2, generator=g, dtype=torch.float64)) for _ in range(3)]
    params = {k: v.detach() for k, v in model.named_parameters()}
    rng = torch.get_rng_state()
    H = js.hessian(_loss(model, torch), params, data=data)
    v = torch.randn(H.shape[1], generator=g, dtype=torch.float64)
    assert torch.equal(H @ v, H @ v)
    D = _dense(H)
    np.testing.assert_allclose(D, D.T, rtol=1e-10, atol=1e-12)
    e1 = js.eigsh(H, k=2).values
    e2 = js.eigsh(H, k=2).values
    np.testing.assert_allclose(e1.numpy(), e2.numpy(), rtol=1e-8)
    np.testing.assert_allclose(e1.numpy(), np.linalg.eigvalsh(D)[::-1][:2], rtol=1e-6)
    G = js.ggn(lambda p, x: torch.func.functional_call(model, p, (x,)),
               torch.nn.functional.mse_loss, params, data=data)
    assert torch.equal(G @ v, G @ v)
    assert torch.equal(torch.get_rng_state(), rng)
    # batches see different masks from each other (the randomness is not switched off)
    same = [(data[0][0], data[0][1])] * 2
    Hs = js.hessian(_loss(model, torch), params, data=same)
    H0 = js.hessian(_loss(model, torch), params, data=same[:1])
    assert not torch.allclose(Hs @ v, H0 @ v)


def test_dropout_dataloader_keeps_the_global_generator(torch):
    from torch.utils.data import DataLoader, TensorDataset

    model = _dropout_model(torch)
    g = torch.Generator().manual_seed(4)
    X = torch.randn(12, 5, generator=g, dtype=torch.float64)
    T = torch.randn(12, 2, generator=g, dtype=torch.float64)
    loader = DataLoader(TensorDataset(X, T), batch_size=4, shuffle=True)
    params = {k: v.detach() for k, v in model.named_parameters()}
    rng = torch.get_rng_state()
    H = js.hessian(_loss(model, torch), params, data=loader)
    v = torch.randn(H.shape[1], generator=g, dtype=torch.float64)
    assert torch.equal(H @ v, H @ v)
    assert torch.equal(torch.get_rng_state(), rng)


def test_dropout_jacobian_keeps_its_masks_and_the_global_generator(torch):
    model = _dropout_model(torch)
    x = torch.randn(3, 5, dtype=torch.float64)
    rng = torch.get_rng_state()
    J = js.jacobian(model, x, batched=True)
    first = js.dense(J).detach()
    assert torch.equal(torch.get_rng_state(), rng)
    js.spectral_norm(J).sum().backward()  # frees the graph: the next product reruns f
    np.testing.assert_allclose(_dense(J), first.numpy(), rtol=1e-12)
    assert torch.equal(torch.get_rng_state(), rng)
    # the same seeding gives the same operator; the user's own draws give another
    np.testing.assert_allclose(_dense(js.jacobian(model, x, batched=True)), first.numpy(),
                               rtol=1e-12)
    torch.rand(1)
    assert not np.allclose(_dense(js.jacobian(model, x, batched=True)), first.numpy())


# ------------------------------------ modes and flags of models reached in other ways
class _Holder:
    """A class attribute holding the model (set by the test)."""

    net = None


_MODULE = types.ModuleType("jacspec_test_models")  # a Python module holding the model


def _through_class(z):
    _Holder.net.eval()
    _Holder.net[0].weight.requires_grad_(False)
    return _Holder.net(z)


def _through_module(z):
    _MODULE.net.eval()
    _MODULE.net.requires_grad_(False)
    return _MODULE.net(z)


class _Wrapper:
    shared = None  # a class attribute read through an instance

    def __call__(self, z):
        self.shared.eval()
        self.shared.requires_grad_(False)
        return self.shared(z)


@pytest.mark.parametrize("way", ["class attribute", "module attribute",
                                 "class attribute through an instance"])
def test_modes_and_flags_changed_inside_f(torch, way):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.BatchNorm1d(5),
                                torch.nn.Linear(5, 2)).double().train()
    _Holder.net = _MODULE.net = _Wrapper.shared = model
    sys.modules[_MODULE.__name__] = _MODULE
    try:
        f = {"class attribute": _through_class, "module attribute": _through_module,
             "class attribute through an instance": _Wrapper()}[way]
        x = torch.randn(6, 4, dtype=torch.float64)
        js.spectral_norm(js.jacobian(f, x))
        js.hessian(lambda z: f(z).pow(2).sum(), x) @ torch.ones(24, dtype=torch.float64)
    finally:
        sys.modules.pop(_MODULE.__name__, None)
    assert all(m.training for m in model.modules())
    assert all(p.requires_grad for p in model.parameters())


# ---------------------------------------------------- torch parameter containers
def test_parameter_list_and_dict(torch):
    torch.manual_seed(0)
    W = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64))
    b = torch.nn.Parameter(torch.randn(3, dtype=torch.float64))
    x = torch.randn(4, dtype=torch.float64)

    def loss(ps):
        W, b = ps
        return torch.tanh(W @ x + b).pow(3).sum()

    ref = _dense(js.hessian(loss, [W, b]))
    plist = torch.nn.ParameterList([W, b])
    np.testing.assert_allclose(_dense(js.hessian(loss, plist)), ref, rtol=1e-12)
    pdict = torch.nn.ParameterDict({"W": W, "b": b})
    H = js.hessian(lambda p: loss([p["W"], p["b"]]), pdict)
    np.testing.assert_allclose(_dense(H), ref, rtol=1e-12)
    J = js.jacobian(lambda ps: torch.tanh(ps[0] @ x + ps[1]), plist)
    assert J.shape == (3, 15)


def test_saved_outputs_are_freed_with_the_operator(torch):
    """The guard's record of saved tensors holds no reference cycle (an output saved by
    its own node): f's tensors go when the operator goes, without the cycle collector."""
    import gc
    import weakref

    made = []

    def f(z):
        h = z.exp()  # exp and tanh save their outputs
        made.append(weakref.ref(h))
        return h.tanh()

    gc.disable()
    try:
        J = js.jacobian(f, torch.randn(5, dtype=torch.float64))
        J.matvec(torch.ones(5, dtype=torch.float64))
        J.rmatvec(torch.ones(5, dtype=torch.float64))
        del J
        assert made[0]() is None
    finally:
        gc.enable()


# ------------------------------------- later passes of an operator (the light guard)
def _scaled(torch, write_weight=False):
    """A module that doubles its buffer ``scale`` (or clamps its weight) in place on
    batches of positive sum only, and reads it."""

    class Scaled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 2).double()
            self.register_buffer("scale", torch.ones((), dtype=torch.float64))

        def forward(self, x):
            if bool(x.sum() > 0):
                with torch.no_grad():
                    if write_weight:
                        self.lin.weight.clamp_(-0.1, 0.1)
                    else:
                        self.scale.mul_(2.0)
            return torch.tanh(self.lin(x)) * self.scale

    torch.manual_seed(0)
    return Scaled()


def _signed_batches(torch, signs):
    g = torch.Generator().manual_seed(5)
    return [(s * torch.rand(4, 3, generator=g, dtype=torch.float64) + s * 0.1,
             torch.randn(4, 2, generator=g, dtype=torch.float64)) for s in signs]


def _ggn(torch, model, data):
    params = {k: v.detach() for k, v in model.named_parameters()}
    return js.ggn(lambda p, x: torch.func.functional_call(model, p, (x,)),
                  torch.nn.functional.mse_loss, params, data=data)


def _hessian(torch, model, data):
    params = {k: v.detach() for k, v in model.named_parameters()}
    return js.hessian(_loss(model, torch), params, data=data)


def _count_guarded_operations(monkeypatch) -> list:
    """A list that grows by one per operation the per-operation guard sees."""
    from jacspec.backends._torch_state import WriteGuard

    calls: list = []
    dispatch = WriteGuard.__torch_dispatch__

    def counted(self, *args, **kwargs):
        calls.append(1)
        return dispatch(self, *args, **kwargs)

    monkeypatch.setattr(WriteGuard, "__torch_dispatch__", counted)
    return calls


@pytest.mark.parametrize("build", [_ggn, _hessian])
def test_later_passes_skip_the_dispatch_mode(torch, monkeypatch, build):
    """Once a pass wrote nothing, the operator's later passes run without the
    per-operation guard; they give the same products."""
    calls = _count_guarded_operations(monkeypatch)
    G = build(torch, _scaled(torch), _signed_batches(torch, [-1, -1]))
    v = torch.randn(G.shape[1], dtype=torch.float64)
    first = G @ v
    assert calls
    calls.clear()
    assert torch.equal(G @ v, first)
    assert not calls


@pytest.mark.parametrize("signs", [[-1, 1], [1, -1], [-1, 1, -1, 1]])
@pytest.mark.parametrize("operator", ["ggn", "hessian"])
def test_a_write_on_some_batches_only_is_undone_in_later_passes(torch, signs, operator):
    """A batch whose pass writes after passes that wrote nothing: the product is that
    of f as it ran (the buffer doubled on that batch), and the buffer keeps its value."""
    model = _scaled(torch)
    data = _signed_batches(torch, signs)
    G = {"ggn": _ggn, "hessian": _hessian}[operator](torch, model, data)
    D = _dense(G)
    ref_model = _scaled(torch)
    ref_model.load_state_dict(model.state_dict())

    def as_it_ran(p, x):  # the buffer's value on that batch, without the write
        s = 2.0 if bool(x.sum() > 0) else 1.0
        return torch.tanh(torch.func.functional_call(ref_model.lin, {
            k[4:]: t for k, t in p.items()}, (x,))) * s

    params = {k: v.detach() for k, v in model.named_parameters()}
    if operator == "ggn":
        ref = _dense(js.ggn(as_it_ran, torch.nn.functional.mse_loss, params, data=data))
    else:
        ref = _dense(js.hessian(lambda p, b: torch.nn.functional.mse_loss(
            as_it_ran(p, b[0]), b[1]), params, data=data))
    np.testing.assert_allclose(D, ref, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(_dense(G), ref, rtol=1e-12, atol=1e-14)  # again
    assert float(model.scale) == 1.0 and model.scale.grad_fn is None


def test_a_parameter_written_in_a_later_pass_only_is_an_error(torch):
    model = _scaled(torch, write_weight=True)
    G = _ggn(torch, model, _signed_batches(torch, [-1, 1]))
    with pytest.raises(RuntimeError, match="tensors of shape \\(2, 3\\)"):
        G @ torch.ones(G.shape[1], dtype=torch.float64)


def test_a_mode_switched_between_products_is_guarded(torch):
    """Batch norm switched to training between two products of one operator writes its
    statistics in the second: they are restored, and the product is the training-mode
    one."""

    class Normed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin, self.bn = torch.nn.Linear(3, 2).double(), torch.nn.BatchNorm1d(2)

        def forward(self, x):
            return self.bn.double()(self.lin(x))

    torch.manual_seed(0)
    model = Normed().eval()
    data = _signed_batches(torch, [1, -1])
    G = _ggn(torch, model, data)
    v = torch.randn(G.shape[1], dtype=torch.float64)
    eval_product = G @ v
    stats = [t.clone() for t in model.bn.buffers()]
    model.train()
    train_product = G @ v
    assert not torch.allclose(train_product, eval_product)
    torch.testing.assert_close(train_product, _ggn(torch, model, data) @ v)
    assert all(torch.equal(a, b) for a, b in zip(model.bn.buffers(), stats))
    assert model.training and model.bn.training


def test_a_captured_tensor_written_in_a_later_pass_only_is_an_error(torch):
    """A tensor f captures is watched, not copied: a write on a later pass only (after
    passes that wrote nothing) cannot be undone and says so."""
    model = _scaled(torch)
    scratch = torch.zeros(3, dtype=torch.float64)

    def f(p, x):
        if bool(x.sum() > 0):
            with torch.no_grad():
                scratch.add_(1.0)
        return torch.func.functional_call(model, p, (x,))

    params = {k: v.detach() for k, v in model.named_parameters()}
    G = js.ggn(f, torch.nn.functional.mse_loss, params, data=_signed_batches(torch, [-1, 1]))
    with pytest.raises(RuntimeError, match="tensors of shape \\(3,\\)"):
        G @ torch.ones(G.shape[1], dtype=torch.float64)


def test_a_pass_that_raised_keeps_the_next_one_guarded(torch, monkeypatch):
    """A pass that raised part-way may have skipped its writes: the next pass runs under
    the per-operation guard, and its writes are undone."""
    calls = _count_guarded_operations(monkeypatch)
    model = _scaled(torch)
    fail = []

    def loss(p, batch):
        x, t = batch
        if fail:
            fail.clear()
            raise ValueError("a batch f cannot take")
        return torch.nn.functional.mse_loss(torch.func.functional_call(model, p, (x,)), t)

    params = {k: v.detach() for k, v in model.named_parameters()}
    H = js.hessian(loss, params, data=_signed_batches(torch, [-1]))
    v = torch.ones(H.shape[1], dtype=torch.float64)
    fail.append(True)  # the first product's pass raises
    with pytest.raises(ValueError, match="cannot take"):
        H @ v
    calls.clear()
    H @ v
    assert calls  # guarded again, not taught by the pass that raised
