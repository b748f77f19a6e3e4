"""Jacobian and Hessian operators from the framework's own autodiff."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import validate as V
from .operators import LinearizationOperator, LinearOperator

__all__ = ["jacobian", "hessian"]


def jacobian(f: Callable, x: Any, *, batched: bool = False, dtype: Any = None
             ) -> LinearizationOperator:
    """The Jacobian of ``f`` at ``x`` as a matrix-free operator.

    ``matvec`` is a Jacobian-vector product (forward mode) and ``rmatvec`` a
    vector-Jacobian product (reverse mode); both reuse one forward pass of ``f``. Inputs
    and outputs of any shape are flattened: the operator has shape ``(f(x).size, x.size)``.

    Parameters
    ----------
    f : callable
        Maps an array of ``x``'s framework to an array (any shape, floating dtype).
        It may close over model parameters; gradients of results built on this
        operator (``js.spectral_norm``) flow to them.
    x : array or collection of arrays
        A torch tensor, JAX array or TensorFlow tensor/variable (float32 or float64), or
        a parameter collection as for :func:`hessian` (a torch ``named_parameters()``
        dict, a JAX pytree, a list of ``tf.Variable``, a list/tuple/dict of arrays):
        then ``f(x)`` maps the collection to outputs, the operator is the Jacobian with
        respect to the parameters, vectors are flat in the collection's order, and
        ``J @ J.T`` is the empirical neural tangent kernel of a batch.
    batched : bool
        If True, ``x`` has a leading batch axis ``B``, ``f`` acts on each sample
        independently, and the result is the batched operator of the ``B`` per-sample
        Jacobians (``batch_shape == (B,)``), applied with one JVP/VJP over the batch.
        Arrays only (a collection with ``batched=True`` is a ``ValueError``).
    dtype : dtype or str, optional
        The dtype of the operator's vectors, which the solvers work in (float32 or
        float64). Default: the wider of ``x``'s and ``f(x)``'s dtypes, or float32 for a
        16-bit model (bfloat16 or float16), whose products still run in 16 bits.

    Returns
    -------
    LinearOperator
        Shape ``(m, n)``, batch shape ``()`` or ``(B,)``; the value ``f(x)`` is
        available as ``.value``.

    Raises
    ------
    TypeError
        For a NumPy ``x`` (no autodiff), a non-array, an integer ``x``, or an ``f``
        returning a non-array or integers.
    ValueError
        If a batched ``f`` changes the batch size.
    FloatingPointError
        If ``f(x)`` contains NaN or Inf.

    Examples
    --------
    >>> import torch
    >>> import jacspec as js
    >>> W = torch.tensor([[3.0, 0.0], [0.0, 4.0], [0.0, 0.0]])
    >>> J = js.jacobian(lambda x: torch.tanh(W @ x), torch.zeros(2))
    >>> J.shape
    (3, 2)
    >>> J @ torch.tensor([1.0, 1.0])
    tensor([3., 4., 0.])
    >>> Jb = js.jacobian(lambda x: x**2, torch.ones(5, 3), batched=True)
    >>> Jb.batch_shape, Jb.shape
    ((5,), (3, 3))
    >>> model = torch.nn.Linear(3, 2)
    >>> X = torch.ones(4, 3)
    >>> Jp = js.jacobian(lambda p: torch.func.functional_call(model, p, (X,)),
    ...                  dict(model.named_parameters()))
    >>> Jp.shape  # (4 samples x 2 outputs, 6 weights + 2 biases)
    (8, 8)
    >>> tuple(js.dense(Jp @ Jp.T).shape)  # the empirical NTK, (samples x outputs)^2
    (8, 8)
    """
    backend, x = V.derivative(f, x)
    lin = backend.linearize(f, x, batched=bool(batched))
    return LinearizationOperator(lin, x, backend, kind="jacobian", dtype=dtype)


def hessian(
    f: Callable,
    x: Any,
    *,
    batched: bool = False,
    data: Any = None,
    distributed: bool = False,
    group: Any = None,
    progress: bool = False,
    hvp: str = "auto",
    dtype: Any = None,
) -> LinearOperator:
    """The Hessian of scalar ``f`` at ``x`` as a symmetric matrix-free operator.

    ``matvec`` is a Hessian-vector product that reuses one forward and one backward pass
    of ``f``. ``x`` may be an array or a parameter collection: a list/tuple/dict of
    arrays, a JAX pytree, a torch ``named_parameters()`` dict (or iterator), a torch
    ``ParameterList`` or ``ParameterDict`` (``f`` receives the list or dict of its
    parameters), or a list of ``tf.Variable``; vectors are then flat, of size the total
    number of entries, in the collection's order.

    Parameters
    ----------
    f : callable
        Maps ``x`` (the same kind of object) to a scalar; with ``batched=True``, maps a
        batch ``(B, ...)`` to ``B`` scalars, one per sample.
    x : array or collection of arrays
        The point (torch, jax or tensorflow).
    batched : bool
        Per-sample Hessians of a batch of inputs (arrays only).
    data : iterable of batches, optional
        The Hessian of a **dataset** loss: ``f(x, batch)`` returns the mean loss of one
        batch, and the operator is the mean over all samples, batches weighted by their
        size (the leading axis of the batch's first array). ``data`` must be
        re-iterable (a list of arrays or tuples, a ``torch.utils.data.DataLoader``, a
        ``tf.data.Dataset``): every product streams it once, in its own order, so memory
        stays that of one batch. Products carry no gradient.
    distributed : bool
        With ``data``: each process holds its shard of the data and every product is
        summed across processes (torch: ``torch.distributed.all_reduce``; JAX: batches
        sharded over all devices with ``jax.sharding``, reduced by XLA; TensorFlow:
        batches split over the replicas of a ``tf.distribute.Strategy``, summed by
        ``strategy.reduce``), so every process gets the operator of the union of the
        shards.
    group : optional
        With ``distributed=True``: torch, the process group (default: the world); JAX,
        a ``jax.sharding.Mesh`` (default: all devices); TensorFlow, the strategy
        (default: the one whose scope is entered).
    progress : bool
        With ``data``: a progress bar over the batches of each product (tqdm).
    hvp : {"auto", "autodiff", "finite_difference"}
        How Hessian-vector products are formed. ``"autodiff"``: exactly, by the
        framework's fastest route (torch: a second backward pass through a gradient
        graph built once; JAX: forward-over-reverse, else reverse-over-reverse;
        TensorFlow: reverse-over-reverse), with the math kernel of fused attention
        for the product's duration; an operation with no second derivative raises.
        ``"auto"``: the same, falling back to finite differences (with a
        ``RuntimeWarning``) where an operation has no second derivative.
        ``"finite_difference"``: central differences of two gradients,
        ``(g(x + t v) - g(x - t v)) / 2t`` with ``t = eps**(1/3) (1 + |x|) / |v|`` for the
        dtype's ``eps``: no second derivative needed (custom kernels, models whose
        gradients come from hooks, sharded setups); relative error about
        ``sqrt(eps)`` (float32: ~1e-4 to 1e-3, float64: ~1e-8 or better) and no better
        than the gradients themselves; products carry no gradient.
    dtype : dtype or str, optional
        The dtype of the operator's vectors (float32 or float64), as for
        :func:`jacobian`: float32 by default for a 16-bit model, whose products run
        in 16 bits.

    Returns
    -------
    LinearOperator
        Square and symmetric, ``(n, n)``, batch shape ``()`` or ``(B,)``.

    Raises
    ------
    TypeError
        If ``data`` is a one-shot generator or iterator.
    ValueError
        If ``f`` returns a non-scalar, ``data`` is empty or its batches change
        structure, ``data`` comes with ``batched=True``, or ``hvp`` is not a route's
        name.

    Examples
    --------
    >>> import torch
    >>> import jacspec as js
    >>> H = js.hessian(lambda x: (x**3).sum(), torch.tensor([1.0, 2.0]))
    >>> js.dense(H)
    tensor([[ 6.,  0.],
            [ 0., 12.]])
    >>> model = torch.nn.Linear(3, 1)
    >>> X = torch.ones(4, 3)
    >>> loss = lambda p: torch.func.functional_call(model, p, (X,)).pow(2).mean()
    >>> js.hessian(loss, dict(model.named_parameters())).shape
    (4, 4)
    >>> data = [torch.randn(16, 3) for _ in range(4)]  # four batches of 16 samples
    >>> def batch_loss(p, X):
    ...     return torch.func.functional_call(model, p, (X,)).pow(2).mean()
    >>> H = js.hessian(batch_loss, dict(model.named_parameters()), data=data)
    >>> bool(js.eigsh(H, k=1).values[0] > 0)
    True
    >>> Hfd = js.hessian(lambda x: (x**3).sum(), torch.tensor([1.0, 2.0]),
    ...                  hvp="finite_difference")
    >>> torch.allclose(js.dense(Hfd), torch.tensor([[6.0, 0.0], [0.0, 12.0]]), rtol=1e-3)
    True
    """
    V.hessian_options(batched=batched, data=data, distributed=distributed, group=group,
                      progress=progress, hvp=hvp)
    if data is not None:
        from .datasets import dataset_hessian

        return dataset_hessian(f, x, data, distributed=distributed, group=group,
                               progress=progress, hvp=hvp, dtype=dtype)
    backend, x = V.derivative(f, x)
    lin = backend.hessian_linearization(f, x, batched=bool(batched), hvp=hvp)
    return LinearizationOperator(lin, x, backend, kind="hessian", dtype=dtype)
