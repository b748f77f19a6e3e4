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
