"""The torch adapter (backends/torch.py): products differentiable in the user's
parameters, operators that outlive the user's ``backward``, and solves inside
``torch.inference_mode`` / ``torch.no_grad``. (What ``f`` writes to the user's state:
test_torch_state.py.)"""

from __future__ import annotations

import numpy as np
import pytest

import jacspec as js


def test_products_are_differentiable_in_parameters(torch):
    W = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, dtype=torch.float64)
    J = js.jacobian(lambda z: W @ z, x)
    v = torch.randn(2, dtype=torch.float64)
    (J @ v).sum().backward()
    # d/dW sum(W v) = 1 v^T
    np.testing.assert_allclose(W.grad.numpy(), np.outer(np.ones(3), v.numpy()))
    # without any parameter requiring grad, results are plain tensors
    out = js.jacobian(lambda z: z * 2.0, x) @ v
    assert not out.requires_grad


def test_operator_survives_the_users_backward(torch):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x = torch.randn(4)
    J = js.jacobian(model, x)
    js.spectral_norm(J).backward()  # frees the graph J's products reuse
    ref = torch.func.jacrev(model)(x).detach().numpy()
    np.testing.assert_allclose(js.dense(J).detach().numpy(), ref, rtol=1e-5, atol=1e-6)
    H = js.hessian(lambda p: model(x).pow(2).sum(), dict(model.named_parameters()))
    (H @ torch.ones(H.shape[1])).sum().backward()
    v = torch.ones(H.shape[1])
    first = (H @ v).detach()
    np.testing.assert_allclose((H @ v).detach().numpy(), first.numpy(), rtol=1e-6)


def _grad_mode_results(torch, W, x, X):
    f = lambda z: torch.tanh(z @ W.T)
    return {
        "jacobian": js.dense(js.jacobian(f, x)),
        "spectral_norm": js.spectral_norm(js.jacobian(f, x)),
        "batched": js.spectral_norm(js.jacobian(f, x, batched=True)),
        "hessian": js.dense(js.hessian(lambda z: (f(z) ** 2).sum(), x)),
        "eigsh": js.eigsh(js.hessian(lambda z: (f(z) ** 2).sum(), x), k=2).values,
        "params": js.dense(js.hessian(lambda p: (torch.tanh(X @ p["W"].T) ** 2).sum(),
                                      {"W": W})),
        "penalty": js.penalties.spectral(f, x, method="lanczos", maxiter=4),
        "slope": js.slope(f, x).values,
    }


@pytest.mark.parametrize("mode", ["inference_mode", "no_grad"])
def test_results_inside_grad_modes_equal_outside(torch, mode):
    torch.manual_seed(1)
    W = torch.randn(5, 4, dtype=torch.float64)
    x = torch.randn(3, 4, dtype=torch.float64)
    outside = _grad_mode_results(torch, W, x, x)
    with getattr(torch, mode)():
        inside = _grad_mode_results(torch, W, x, x)
        x_made_inside = x.clone()  # an inference tensor under inference_mode
        from_inside = _grad_mode_results(torch, W, x_made_inside, x)
    for key, ref in outside.items():
        assert float(ref.abs().max()) > 0, key
        for got in (inside[key], from_inside[key]):
            np.testing.assert_allclose(got.detach().numpy(), ref.detach().numpy(),
                                       rtol=1e-12, atol=1e-14, err_msg=key)
            assert not got.requires_grad  # no graph is recorded for the user in the mode


def test_model_made_in_inference_mode_is_a_clear_error(torch):
    with torch.inference_mode():
        model = torch.nn.Linear(4, 3)
        data = torch.randn(2, 4)
    with pytest.raises(TypeError, match="inference_mode"):
        js.jacobian(model, torch.randn(4))
    # the data of a parameter Hessian is saved for backward: it cannot be an inference
    # tensor either
    W = torch.randn(3, 4)
    with torch.inference_mode(), pytest.raises(TypeError, match="outside the mode"):
        js.hessian(lambda p: (data @ p[0].T).pow(2).sum(), [W])


def _conv_net(torch):
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 3, 3), torch.nn.Tanh(), torch.nn.Flatten(),
        torch.nn.Linear(3 * 4 * 4, 4)).double()


@pytest.mark.parametrize("route", ["vmap", "loop", None])
def test_block_products_equal_dense_by_either_route(torch, route):
    from jacspec.backends.torch import block_route

    net = _conv_net(torch)
    x = torch.randn(5, 1, 6, 6, dtype=torch.float64)
    ref = torch.func.vmap(torch.func.jacrev(net))(x[:, None])[:, 0].reshape(5, 4, 36)
    J = js.jacobian(net, x, batched=True)
    V = torch.randn(5, 36, 3, dtype=torch.float64)
    U = torch.randn(5, 4, 3, dtype=torch.float64)
    H = js.hessian(lambda z: net(z).pow(2).sum(), x[:1])
    Hd = torch.func.hessian(lambda z: net(z.reshape(1, 1, 6, 6)).pow(2).sum())(
        x[:1].flatten()).detach()
    W = torch.randn(36, 3, dtype=torch.float64)
    with block_route(route), torch.no_grad():
        for _ in range(3):  # the default route times both first, then picks one
            np.testing.assert_allclose(J.matmat(V).numpy(), (ref @ V).detach().numpy(),
                                       rtol=1e-10, atol=1e-12)
            np.testing.assert_allclose(J.H.matmat(U).numpy(),
                                       (ref.mT @ U).detach().numpy(), rtol=1e-10,
                                       atol=1e-12)
            np.testing.assert_allclose(H.matmat(W).numpy(), (Hd @ W).numpy(),
                                       rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("route", ["vmap", "loop"])
def test_penalty_gradient_is_the_same_by_either_route(torch, route):
    from jacspec.backends.torch import block_route

    net = _conv_net(torch)
    x = torch.randn(4, 1, 6, 6, dtype=torch.float64)
    params = list(net.parameters())[:-1]  # the last bias does not enter the Jacobian
    with block_route("vmap"):
        ref = torch.autograd.grad(js.penalties.spectral(net, x), params)
    with block_route(route):
        got = torch.autograd.grad(js.penalties.spectral(net, x), params)
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-9, atol=1e-12)


def test_block_route_is_timed_once_per_configuration(torch, monkeypatch):
    from jacspec.backends import torch as tb

    routes = tb.BlockRoutes()
    monkeypatch.setattr(tb, "_ROUTES", routes)
    stacked, ran = [], []
    orig_stack = torch.stack

    def stack(*a, **k):  # the loop route stacks its columns
        stacked.append(1)
        return orig_stack(*a, **k)

    def timed(run, device):  # the loop takes 1 s, the vmapped backward 2 s
        before = len(stacked)
        out = run()
        ran.append("loop" if len(stacked) > before else "vmap")
        return (1.0 if ran[-1] == "loop" else 2.0), out

    monkeypatch.setattr(torch, "stack", stack)
    monkeypatch.setattr(tb, "_timed", timed)
    J = js.jacobian(lambda z: torch.tanh(z) * 2.0, torch.randn(4, 3, dtype=torch.float64),
                    batched=True)
    V = torch.randn(4, 3, 2, dtype=torch.float64)
    trials = tb.BlockRoutes.WARMUP + tb.BlockRoutes.TRIALS
    first = J.matmat(V)
    assert list(routes._choice.values()) == ["loop"]
    # the first block ran both routes (in alternating order) and returned the loop's
    assert ran == (["vmap", "loop", "loop", "vmap"] * trials)[:2 * trials]
    for _ in range(2):  # later blocks: the loop only, the same values to the last bit
        np.testing.assert_array_equal(J.matmat(V).numpy(), first.numpy())
    assert len(ran) == 2 * trials and len(stacked) == trials + 2
    with pytest.raises(ValueError, match="Expected route"):
        with tb.block_route("fast"):
            pass


def test_block_route_key_is_the_same_for_functions_made_anew(torch):
    import functools

    from jacspec.backends.torch import _function_key

    net = torch.nn.Linear(2, 2)
    make = lambda: (lambda z: net(z))  # noqa: E731 - a closure made per call
    assert _function_key(make()) == _function_key(make())
    part = lambda: functools.partial(torch.nn.functional.linear, weight=net.weight)  # noqa: E731
    assert _function_key(part()) == _function_key(part())
    assert _function_key(net) != _function_key(torch.nn.Linear(2, 2))
