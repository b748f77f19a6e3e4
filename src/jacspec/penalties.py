"""Differentiable training penalties on derivatives of a network (``js.penalties``).

Each function returns a differentiable scalar (a 0-d array of the input's framework): the
mean over the batch of a per-sample quantity of the Jacobian (or input Hessian) of ``f``.
Add it to the loss of an ordinary training loop:

- PyTorch: ``(loss + lam * js.penalties.spectral(model, x)).backward()``;
- JAX: inside the function given to ``jax.grad`` (and ``jax.jit``): traceable, the
  gradient-free inner solve iterating to ``tol`` under ``lax.while_loop``;
- TensorFlow / Keras: inside a ``tf.GradientTape`` (also in a custom ``train_step``).

=================  ==============================================================  ==========================
penalty            per-sample value                                                reference
=================  ==============================================================  ==========================
``spectral``       ``sigma_max(A - A0)`` (squared by default), ``A`` the Jacobian   Johansson et al. 2022;
                   or input Hessian, ``A0`` in ``{0, A^T, D(A 1)}``                 Cui et al. 2022
``frobenius``      ``||J||_F^2`` (random-projection estimate or exact)              Hoffman et al. 2019;
                                                                                    Varga et al. 2017
``gradient_norm``  ``||d loss / d x||^2`` (double backpropagation)                  Drucker & LeCun 1991
``conv_bound``     the Fantastic Four or Gram-iteration bound of a conv kernel      Singla & Feizi 2021;
                                                                                    Delattre et al. 2023
=================  ==============================================================  ==========================
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

from . import validate as V
from .backends import Backend
from .derivatives import hessian, jacobian
from .interop import materialize
from .operators import LinearOperator, rowsum_diagonal
from .solvers.solve import check_budget, resolve_method, solve_svd
from .solvers.svd import envelope

__all__ = ["spectral", "frobenius", "gradient_norm", "conv_bound"]

Array = Any

def _per_sample_scalar(f: Callable, xp: Any) -> Callable:
    """``f`` with outputs of shape ``(B, 1, ...)`` (one entry per sample) reshaped to (B,)."""

    def g(z):
        y = f(z)
        shape = tuple(getattr(y, "shape", ()))
        if len(shape) > 1 and math.prod(shape[1:]) == 1:
            return xp.reshape(y, (shape[0],))
        return y

    return g


def _operator(f: Callable, x: Array, b: Backend, derivative: str) -> LinearOperator:
    if derivative == "jacobian":
        return jacobian(f, x, batched=True)
    return hessian(_per_sample_scalar(f, b.xp), x, batched=True)


def spectral(
    f: Callable,
    x: Array,
    *,
    target: str | None = None,
    derivative: str = "jacobian",
    method: str = "auto",
    tol: float = 1e-3,
    maxiter: int | None = None,
    v0: Array | None = None,
    return_vectors: bool = False,
    squared: bool = True,
    seed: int | None = 0,
) -> Array | tuple[Array, Array]:
    r"""Per-sample spectral norm of the Jacobian (or Hessian) minus a target, averaged.

    For every sample ``x_i`` of the batch, ``A_i`` is the Jacobian of ``f`` at ``x_i``
    (``derivative="jacobian"``) or the input Hessian of the scalar ``f``
    (``derivative="hessian"``), and the penalty is

    .. math:: \frac1B \sum_i \sigma_{\max}(A_i - A_{0,i})^{p}, \qquad p = 2 \text{ if squared else } 1,

    with ``A0 = 0`` (``target=None``; Johansson et al. 2022), ``A0 = A^T`` (``"transpose"``:
    penalizes asymmetry; Cui et al. 2022) or ``A0 = D(A 1)`` (``"rowsum_diagonal"``:
    penalizes off-diagonal mass; Cui et al. 2022).

    **Exact** by default: the top left singular vector ``u_i`` of ``A_i - A_{0,i}`` is
    found with gradients off to relative accuracy ``tol`` (as :func:`jacspec.svds`:
    dense when ``min(m, n)`` is small, Golub–Kahan–Lanczos otherwise). The differentiable
    value is then, with ``u_i`` held constant (Cui et al. 2022), ``w_i = (A_i -
    A_{0,i})^T u_i`` (one more product, with gradients) and ``||w_i||^2`` (squared) or
    ``||w_i||``: at the top singular vector it equals ``sigma_max^2`` (``sigma_max``) and
    its gradient is the envelope gradient (for ``f(x) = W x``: ``2 sigma u v^T``, resp.
    ``u v^T``, w.r.t. ``W``). ``method="lanczos"`` or ``"power"`` with a fixed
    ``maxiter`` is the budgeted variant of Cui et al. (a lower bound of ``sigma_max``
    before convergence; no warning is emitted for it).

    Parameters
    ----------
    f : callable
        Acts sample-wise on a batch: ``f(x)`` has shape ``(B, ...)``. It may close over
        model parameters, which receive the gradient. With ``derivative="hessian"`` it
        returns one scalar per sample, shape ``(B,)`` (or ``(B, 1)``).
    x : array
        A batch ``(B, ...)`` of torch, jax or tensorflow inputs (float32/float64).
    target : None, "transpose" or "rowsum_diagonal"
        The target ``A0``; the last two need square ``A`` (as many outputs as inputs).
    derivative : "jacobian" or "hessian"
    method : "auto", "dense", "lanczos" or "power"
        The inner solver (see :func:`jacspec.svds`).
    tol : float
        Relative accuracy of each sample's ``sigma_max``.
    maxiter : int, optional
        A cap on the inner solver's products per call (the budgeted variant); by
        default the inner solve runs to ``tol``, also inside ``jax.jit`` and
        ``tf.function`` (under the framework's while loop).
    v0 : array, optional
        ``(B, m)`` left start vectors, e.g. the ``vectors`` returned by an earlier call
        on the same samples (a warm start: fewer products). A warm start never costs
        exactness: the solve starts from ``v0`` plus a random direction of the same
        norm, so that a top vector that ``v0`` misses (two directions that swapped
        since the last step) is still found. With a fixed ``maxiter`` (the budgeted
        variant, a lower bound) ``v0`` is used as given, where it sharpens the bound
        most.
    return_vectors : bool
        Return ``(value, vectors)``: the top left singular vectors ``(B, m)``, without
        gradient, to pass as ``v0`` next time.
    squared : bool
        Penalize ``sigma_max^2`` (default, as Cui et al.) or ``sigma_max``.
    seed : int or None
        Seed of the random start vectors (fixed by default, so the penalty is a
        deterministic function of the parameters).

    Returns
    -------
    array or (array, array)
        A 0-d array of ``x``'s framework, differentiable w.r.t. ``x`` and whatever ``f``
        closes over; with ``return_vectors``, also the vectors.

    Raises
    ------
    TypeError
        For a NumPy ``x`` or a non-array.
    ValueError
        For an unknown ``target``, ``derivative`` or ``method``, ``tol <= 0``, a
        ``maxiter`` too small, a non-square ``A`` with a non-``None`` target, a
        non-scalar ``f`` with ``derivative="hessian"``, an empty batch, a ``v0`` of the
        wrong shape, or an ``f`` that changes the batch size.
    FloatingPointError
        When ``f`` or a product produces NaN or Inf.

    Examples
    --------
    >>> import torch
    >>> import jacspec as js
    >>> W = torch.tensor([[3.0, 0.0], [0.0, 1.0]], requires_grad=True)
    >>> x = torch.ones(4, 2)
    >>> pen = js.penalties.spectral(lambda z: z @ W.T, x)
    >>> round(pen.item(), 4)
    9.0
    >>> pen.backward()
    >>> W.grad  # 2 * sigma * u v^T
    tensor([[6., 0.],
            [0., 0.]])
    """
    b, method, maxiter, seed = V.spectral_penalty(f, x, target=target, derivative=derivative,
                                                  method=method, maxiter=maxiter, seed=seed)
    xp = b.xp

    A = _operator(f, x, b, derivative)
    V.spectral_target(A, target, derivative)
    if target == "transpose":
        op = A - A.T
    elif target == "rowsum_diagonal":
        op = A - rowsum_diagonal(A)
    else:
        op = A
    tol = V.check_tol(tol, op)
    if v0 is not None:  # a left start vector, (B, m)
        v0 = V.vector(op, v0, op.shape[0], block=False)
    method = resolve_method(method, op, 1, hermitian=False)
    check_budget(op, 1, method, maxiter)
    with b.no_grad(), warnings.catch_warnings():
        if maxiter is not None:  # the budgeted variant stops short by design
            warnings.simplefilter("ignore", RuntimeWarning)
        u = solve_svd(op, 1, method=method, tol=tol, maxiter=maxiter, v0=None, u0=v0,
                      seed=seed, mix_start=maxiter is None).left[..., 0]
    u = b.stop_gradient(u)
    w = op._mm(u[..., None], adjoint=True, grad=True)[..., 0]  # (B, n): (A - A0)^T u
    if squared:
        per_sample = xp.sum(w * w, axis=-1)
    else:  # no NaN gradient where w = 0 (e.g. a symmetric A, "transpose")
        per_sample = envelope(b, w)
    value = _finite(b, xp.mean(per_sample), "js.penalties.spectral")
    return (value, u) if return_vectors else value


def _finite(b: Backend, value: Array, what: str) -> Array:
    """``value``, after checking it is finite (outside a trace): NaN/Inf from a model is
    reported, never propagated into a training step."""
    if not b.is_traced(value) and not b.all_finite(b.stop_gradient(value)):
        raise FloatingPointError(f"{what} produced NaN or Inf (from f or its derivative).")
    return value


def frobenius(
    f: Callable,
    x: Array,
    *,
    num_projections: int | None = 1,
    seed: int | None = None,
) -> Array:
    r"""Squared Frobenius norm of the per-sample Jacobians, averaged over the batch.

    With ``num_projections = p`` (Hoffman et al. 2019; Varga et al. 2017, "SpectReg"),
    draw ``p`` directions ``v_j`` uniformly on the unit sphere of the output space
    (size ``C = m``) and use the unbiased estimate

    .. math:: \|J\|_F^2 \approx \frac{C}{p} \sum_{j=1}^{p} \|v_j^T J\|^2,

    costing ``p`` vector-Jacobian products (one batched call). With
    ``num_projections=None`` the value is exact, from ``min(m, n)`` products.

    Parameters
    ----------
    f : callable
        Acts sample-wise on a batch ``(B, ...)``.
    x : array
        A batch of torch, jax or tensorflow inputs.
    num_projections : int or None
        Number of random projections per sample, or ``None`` for the exact value.
    seed : int or None
        Seed of the projections; ``None`` (default) draws fresh directions on every call,
        as in training. Under ``jax.jit`` an integer seed is a compile-time constant (and
        ``None`` is drawn once, at trace time); pass a traced integer or a
        ``jax.random`` key as ``seed`` to vary the projections between jitted steps.

    Returns
    -------
    array
        A 0-d array, differentiable w.r.t. ``x`` and the parameters ``f`` closes over.

    Examples
    --------
    >>> import torch
    >>> import jacspec as js
    >>> W = torch.tensor([[3.0, 0.0], [0.0, 4.0]])
    >>> float(js.penalties.frobenius(lambda z: z @ W.T, torch.ones(3, 2), num_projections=None))
    25.0
    """
    b = V.penalty_input(f, x)
    if num_projections is not None:
        num_projections = V.check_positive_int(num_projections, "num_projections")
    xp = b.xp
    J = jacobian(f, x, batched=True)
    if num_projections is None:
        M = materialize(J, grad=True)
        return _finite(b, xp.mean(xp.sum(M * M, axis=(-2, -1))), "js.penalties.frobenius")
    m = J.shape[0]
    P = b.normal(J.batch_shape + (m, num_projections), dtype=J.dtype, device=J.device,
                 seed=seed)
    nrm = xp.linalg.vector_norm(P, axis=-2)
    P = P / xp.where(nrm > 0, nrm, xp.ones_like(nrm))[..., None, :]
    W = J._mm(P, adjoint=True, grad=True)  # (B, n, p)
    per_sample = xp.sum(W * W, axis=(-2, -1)) * (m / num_projections)
    return _finite(b, xp.mean(per_sample), "js.penalties.frobenius")


def gradient_norm(loss_fn: Callable, x: Array) -> Array:
    r"""Double backpropagation: the squared norm of the input gradient of a loss.

    Drucker & LeCun (1991); Varga et al. (2017). Two conventions, chosen by the shape of
    ``loss_fn(x)``:

    - a **scalar** loss ``L`` (any shape of ``x``): the penalty is
      ``||dL/dx||^2 = sum over all entries of x of (dL/dx)^2``. If ``L`` is the *mean* of
      ``B`` per-sample losses, this is ``(1/B^2) sum_i ||grad l_i||^2``;
    - **per-sample** losses ``l`` of shape ``(B,)`` (``x`` of shape ``(B, ...)``, sample-wise
      ``loss_fn``): the penalty is the batch mean ``(1/B) sum_i ||d l_i / d x_i||^2``,
      independent of the batch size (recommended).

    The input gradient comes from one vector-Jacobian product with gradients recorded, so
    the penalty is differentiable w.r.t. the parameters ``loss_fn`` closes over.

    Parameters
    ----------
    loss_fn : callable
        ``x -> scalar`` or ``x -> (B,)`` per-sample losses.
    x : array
        torch, jax or tensorflow inputs.

    Returns
    -------
    array
        A 0-d array.

    Examples
    --------
    >>> import torch
    >>> import jacspec as js
    >>> x = torch.tensor([[1.0, 2.0], [3.0, 0.0]])
    >>> float(js.penalties.gradient_norm(lambda z: (z**2).sum(dim=1), x))  # mean of |2 x_i|^2
    28.0
    """
    b = V.gradient_norm(loss_fn, x)
    xp = b.xp
    J = jacobian(loss_fn, x)
    m = J.shape[0]
    B = int(x.shape[0]) if len(x.shape) >= 1 else 0
    V.loss_values(tuple(J.value.shape), B)
    if m == 1:
        ones = xp.ones((1, 1), dtype=J.dtype, device=J.device)
        g = J._mm(ones, adjoint=True, grad=True)[:, 0]
        return _finite(b, xp.sum(g * g), "js.penalties.gradient_norm")
    ones = xp.ones((B, 1), dtype=J.dtype, device=J.device)  # one loss per sample
    g = xp.reshape(J._mm(ones, adjoint=True, grad=True)[:, 0], (B, -1))
    return _finite(b, xp.mean(xp.sum(g * g, axis=-1)), "js.penalties.gradient_norm")


def conv_bound(weight: Array, *, method: str = "fantastic_four",
               layout: str | None = None) -> Array:
    """A certified upper bound on a conv layer's spectral norm, differentiable.

    ``method="fantastic_four"`` (default): ``js.conv.fantastic_four(weight).bound``
    (Singla & Feizi 2021), ``sqrt(h w) min(||R||, ||S||, ||T||, ||U||)`` over four
    reshapes of the kernel. ``method="gram"``: ``js.conv.gram_bound(weight)`` (Delattre
    et al. 2023, 2024), Gram iteration on the kernel's frequency matrices, usually much
    tighter. Both are valid for any input size (stride 1, zero or circular padding; a
    stride only lowers the norm). Add ``lam * conv_bound(conv.weight)`` per layer.

    Parameters
    ----------
    weight : array
        The kernel in the framework's layout (``"OIHW"`` torch, ``"HWIO"`` JAX/TF).
    method : {"fantastic_four", "gram"}
        Which bound.
    layout : str, optional
        Override the layout.

    Returns
    -------
    array
        A 0-d array, differentiable w.r.t. ``weight``.

    Examples
    --------
    >>> import torch
    >>> import jacspec as js
    >>> w = torch.zeros(2, 2, 3, 3)
    >>> w[0, 0, 1, 1] = 2.0
    >>> round(float(js.penalties.conv_bound(w)), 4)  # sqrt(3 * 3) * 2: not tight here
    6.0
    >>> round(float(js.penalties.conv_bound(w, method="gram")), 4)  # the exact norm: 2
    2.0
    """
    from . import conv

    if V.conv_bound_method(method) == "gram":
        return conv.gram_bound(weight, layout=layout)
    return conv.fantastic_four(weight, layout=layout).bound
