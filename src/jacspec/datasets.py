"""Curvature of a whole dataset: the mean loss Hessian and the GGN, streamed by batch.

``js.hessian(f, params, data=...)`` and ``js.ggn(f, loss, params, data=...)`` return a
:class:`DatasetOperator`: every product iterates ``data`` once, applies the adapter's
per-batch product (:meth:`Backend.batch_hessian_product` /
:meth:`Backend.batch_ggn_product`) and sums the results weighted by batch size, so that
the operator is the mean over all samples and memory stays that of one batch. With
``distributed=True`` each process streams its own shard and the adapter's collective
(:meth:`Backend.distributed_sum`) adds the shards' partial sums, so every process holds
the operator of the union of the shards. Where the parameters themselves are sharded
across processes (:meth:`Backend.sharded_product`: torch FSDP2), the adapter's product
already sums over processes and returns this process's part of the result: the
operator's vectors are sharded like the parameters (:attr:`DatasetOperator.sharding`).

The data is read once when the operator is built, to count the samples and check that
every batch has one structure; the first batch is also differentiated once, so that a
non-scalar loss is reported before any product runs. Every product's pass must yield
that many samples again: a dataset that changes between passes is an error, never a
silent reweighting.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from . import validate as V
from ._progress import progress
from .backends import Backend, ShardedProduct
from .operators import LinearOperator, half_eps, in_16_bits, solver_dtype

__all__ = ["DatasetOperator", "dataset_hessian", "ggn"]

Array = Any


# ------------------------------------------------------------------------ the operator


class DatasetOperator(LinearOperator):
    """The mean over a dataset of per-batch symmetric operators, streamed per product.

    ``product(batch, V)`` applies one batch's operator (the Hessian or GGN of its mean
    loss) to ``V`` ``(n, k)``; a product of this operator is the sum over batches of
    ``(size of the batch / number of samples) * product(batch, V)``, in the data's
    order, summed across processes when ``distributed``. Products carry no gradient.

    Attributes
    ----------
    num_samples : int
        The number of samples the mean runs over (over all processes when
        ``distributed``).
    sharding : Sharding or None
        With sharded parameters, how the vectors are split across processes: products
        take and return this process's part, ``(sharding.local_n, k)``.
    """

    def __init__(
        self,
        product: Callable[[Any, Array], Array],
        data: Any,
        summary: V.DataSummary,
        *,
        n: int,
        dtype: Any,
        backend: Backend,
        device: Any,
        distributed: bool = False,
        group: Any = None,
        progress: bool = False,
        name: str = "dataset",
        solver_dtype: Any = None,
        sharded: ShardedProduct | None = None,
    ) -> None:
        super().__init__((n, n), dtype=dtype if solver_dtype is None else solver_dtype,
                         backend=backend, device=device)
        # products run in the model's dtype (16 bits included), sums in the operator's
        self._model_dtype, self._product_eps = dtype, half_eps(backend, [dtype])
        self._product, self._data, self._summary = product, data, summary
        self._distributed, self._group = distributed, group
        self._progress, self._name = progress, name
        self._sharded = sharded
        self.sharding = None if sharded is None else sharded.sharding
        self._seed = backend.random_seed()
        local = summary.num_samples
        self.num_samples = (
            backend.distributed_count(local, group=group) if distributed else local
        )

    @property
    def is_hermitian(self) -> bool:
        return True

    def _batches(self) -> Iterator[Any]:
        """The batches of one pass, checked against the first pass: their structure as
        they come, their number of samples at the end."""
        seen = 0
        # The data's own random draws (a shuffling DataLoader's) leave the caller's
        # generators as they were.
        with self.backend_impl.fixed_randomness(None):
            for i, batch in enumerate(self._data):
                pieces = (self.backend_impl.distributed_parts(batch, group=self._group)
                          if self._distributed else [batch])
                s = V.signature(pieces[0])
                if s != self._summary.signature:
                    raise V.structure_error(i, s, self._summary.signature)
                seen += sum(V.batch_size(p) for p in pieces)  # as ``V.scan`` counts them
                yield batch
        if seen != self._summary.num_samples:
            raise ValueError(
                f"Expected every pass over data to yield the {self._summary.num_samples} "
                f"samples of the first pass (the operator is their mean). Received "
                f"{seen} samples in a later pass: the dataset changed between passes "
                "(e.g. a filter, a sampler or a list that changed); pass data that "
                "yields the same samples every time."
            )

    def _batch_seed(self, index: int) -> int | None:
        """The seed of batch ``index``'s random layers (dropout), the same in every
        product: the operator is one fixed matrix."""
        if self._seed is None:
            return None
        return int(np.random.SeedSequence([self._seed, index]).generate_state(1)[0])

    def _weight(self, batch: Any) -> float:
        """A batch's (or a replica's piece of it) share of the mean."""
        return V.batch_size(batch) / self.num_samples

    def _weighted_product(self, batch: Any, V: Array) -> Array | None:
        """``weight * product(batch, V)``, None for an empty batch; a distributed batch
        goes through the adapter (which may run its pieces on their replicas)."""
        if self._sharded is not None:  # every process runs every batch (collectives)
            return self._sharded.product(batch, V, self._weight(batch))
        if self._distributed:
            return self.backend_impl.distributed_product(self._batch_product, batch, V,
                                                     self._weight, group=self._group)
        weight = self._weight(batch)
        return self._batch_product(batch, V) * weight if weight else None

    def _mm(self, V, *, adjoint=False, grad=False):
        if self.sharding is not None and int(V.shape[-2]) != self.sharding.local_n:
            raise ValueError(
                f"Expected this process's part of the vectors, ({self.sharding.local_n}, "
                "k): the operator's vectors are sharded across processes like the "
                f"parameters. Received shape {tuple(V.shape)} (js.dense and the "
                "dense methods would gather the whole operator; use the Krylov solvers)."
            )
        total = self._scanned(V)
        bar = progress(self._summary.num_batches, desc=self._name, unit="batch",
                       enabled=self._progress and total is None)
        try:
            for i, batch in enumerate(() if total is not None else self._batches()):
                with self.backend_impl.fixed_randomness(self._batch_seed(i)):
                    part = self._weighted_product(batch, V)
                if part is not None:
                    if total is None:
                        total = part
                    else:  # in place where the framework allows (one vector less alive)
                        total += part
                bar.update(1)
        finally:
            bar.close()
        if self._distributed and self._sharded is None:
            total = self.backend_impl.distributed_sum(total, group=self._group)
        return total if total.dtype == self.dtype else self.xp.astype(total, self.dtype)

    def _scanned(self, V: Array) -> Array | None:
        """The product as compiled loops over in-memory batches, one per run of batches
        of one shape (:meth:`Backend.scan_batches`), where the adapter has them and
        nothing varies by batch (no random layers, no per-process products); ``None``
        otherwise. Each batch's weighted product (:meth:`_weighted_product`) is added in
        the data's order, as the plain loop adds them; empty batches are left out, as
        there."""
        if not self._fixed_in_memory():
            return None

        def read() -> list:  # checked as a loop's pass checks them
            return [b for b in self._batches() if self._weight(b)]

        return self.backend_impl.scan_batches(self._weighted_product, read, V)

    def _fixed_in_memory(self) -> bool:
        """Whether the data is in memory (a list or tuple) and its products the same in
        every pass (no random layers, no parameters split across processes)."""
        return (self._sharded is None and self._seed is None
                and isinstance(self._data, (list, tuple)))

    def _staged_form(self) -> Any:
        """Where the data is in memory (a list or tuple) and nothing varies by product
        (no random layers, no progress bar, no processes' collectives outside the
        framework): one pass of products as one program on the parameters and batches
        (:meth:`Backend.staged_product`), so that an eager solve runs compiled around
        it. The data is read (and checked) once per solve."""
        if self._progress or not self._fixed_in_memory():
            return None
        b = self.backend_impl
        form = b.staged_product(lambda V: self._mm(V), self.shape[1], self.dtype,
                                self.device)
        if form is None:
            return None
        key, arrays, apply = form
        shape, dtype, device, eps = self.shape, self.dtype, self.device, self._product_eps

        def rebuild(state: Any) -> LinearOperator:
            return _StagedProducts(apply, state, shape, dtype, b, device, eps)

        return key, arrays, rebuild

    def _batch_product(self, batch: Any, V: Array) -> Array:
        if self._product_eps:
            return in_16_bits(self.xp, lambda W: self._product(batch, W), V,
                              self._model_dtype, self.dtype, axis=-2)
        return self._product(batch, V)


class _StagedProducts(LinearOperator):
    """A dataset operator's products as one traced program on its arrays (the
    parameters, the batches): what a compiled piece of an eager solve rebuilds
    (:meth:`DatasetOperator._staged_form`)."""

    def __init__(self, apply: Callable[[Any, Array], Array], arrays: Any,
                 shape: tuple[int, int], dtype: Any, backend: Backend, device: Any,
                 product_eps: float) -> None:
        super().__init__(shape, dtype=dtype, backend=backend, device=device)
        self._apply, self._arrays, self._product_eps = apply, arrays, product_eps

    @property
    def is_hermitian(self) -> bool:
        return True

    def _mm(self, V, *, adjoint=False, grad=False):
        return self._apply(self._arrays, V)


# ------------------------------------------------------------------------ public API


def dataset_hessian(f: Callable, params: Any, data: Any, **options: Any) -> DatasetOperator:
    """The Hessian of the mean loss over a dataset (see :func:`jacspec.hessian`)."""
    return _build(f, None, params, data, **options)


def _build(f: Callable, loss: Callable | None, params: Any, data: Any, *,
           distributed: bool = False, group: Any = None, progress: bool = False,
           hvp: str = "auto", dtype: Any = None) -> DatasetOperator:
    """Validate, differentiate the first batch once (a non-scalar loss fails here, before
    any product), and wrap the adapter's per-batch product: the Hessian of ``f`` when
    ``loss`` is None, else the GGN of ``loss`` after ``f``."""
    backend, params = V.dataset(f, loss, params, distributed=distributed, group=group,
                                progress=progress)
    if distributed:
        group = backend.distributed_group(group, params)
        data = backend.distributed_data(data, group=group)
    with backend.fixed_randomness(None):  # a shuffling DataLoader draws on iteration
        summary = V.scan(data, (lambda b: backend.distributed_parts(b, group=group))
                       if distributed else None)
    first = summary.first
    sharded = (backend.sharded_product(f, loss, params, summary, hvp=hvp, group=group)
               if distributed else None)
    if sharded is not None:
        return DatasetOperator(sharded.product, data, summary, n=sharded.n,
                               dtype=sharded.dtype, backend=backend, device=sharded.device,
                               distributed=True, group=group, progress=progress,
                               name="hessian" if loss is None else "ggn",
                               solver_dtype=solver_dtype(backend, (sharded.dtype,), dtype),
                               sharded=sharded)
    if loss is None:
        with V.scalar_loss("f(params, batch)"):
            lin = backend.gradient_oracle(lambda p: f(p, first), params, batched=False)
        product = backend.batch_product(f, params, hvp=hvp)
    else:
        inputs, targets = V.ggn_batch(summary)
        lin = backend.linearize(lambda p: f(p, inputs), params, batched=False)
        z = backend.stop_gradient(lin.y)
        with V.scalar_loss("loss(outputs, targets)"):
            backend.linearize_gradient(lambda o: loss(o, targets), z, batched=False)
        product = backend.batch_ggn_product(f, loss, params)
    return DatasetOperator(product, data, summary, n=lin.n, dtype=lin.y.dtype,
                           backend=backend, device=backend.vector_device(params, lin.y),
                           distributed=distributed, group=group, progress=progress,
                           name="hessian" if loss is None else "ggn",
                           solver_dtype=solver_dtype(backend, (lin.y.dtype,), dtype))


def ggn(
    f: Callable,
    loss: Callable,
    params: Any,
    *,
    data: Any,
    distributed: bool = False,
    group: Any = None,
    progress: bool = False,
    dtype: Any = None,
) -> DatasetOperator:
    """The generalized Gauss–Newton matrix of the mean loss over a dataset.

    ``G = sum_b (N_b / N) J_b^T H_b J_b``, where ``J_b`` is the Jacobian of the outputs
    ``f(params, inputs_b)`` with respect to the parameters, ``H_b`` the Hessian of
    ``loss(outputs, targets_b)`` (the mean loss of batch ``b``) with respect to the
    outputs, ``N_b`` the batch's size and ``N`` the number of samples. For a convex
    loss of the outputs (squared error, softmax cross-entropy) ``G`` is symmetric
    positive semidefinite; it equals the Hessian when the model is linear in its
    parameters. Every product streams ``data`` once: memory is that of one batch.

    A product needs no second derivative of the model: per batch, one JVP of ``f``
    (torch: a forward pass carrying forward-mode tangents; TensorFlow: a
    ``tf.autodiff.ForwardAccumulator``; JAX: ``jax.linearize``), the loss's output
    Hessian on it, and one VJP of ``f`` — about a training step's memory, and it works
    on models whose kernels have no double backward (fused attention). The output
    Hessian is in closed form for softmax cross-entropy with class-index targets and
    the mean squared error (torch ``F.cross_entropy``, ``F.mse_loss`` and their modules
    with default options), else autodiff of ``loss`` alone (a small graph on the
    outputs).

    Parameters
    ----------
    f : callable
        ``f(params, inputs) -> outputs`` (an array of any shape).
    loss : callable
        ``loss(outputs, targets) -> scalar``, the mean loss of the batch.
    params : array or collection of arrays
        The parameters, as for :func:`jacspec.hessian` (a torch ``named_parameters()``
        dict, a JAX pytree, a list of ``tf.Variable``, a list/tuple/dict of arrays).
    data : iterable of (inputs, targets)
        Re-iterable (a list, a ``torch.utils.data.DataLoader``, a ``tf.data.Dataset``),
        iterated once per product in its own order. A batch's size is the leading axis
        of its first array.
    distributed : bool
        Each process holds its shard of the data; every product is summed across
        processes (torch: ``torch.distributed.all_reduce``; JAX: batches sharded over
        all devices, reduced by XLA; TensorFlow: batches split over the replicas of a
        ``tf.distribute.Strategy``, summed by ``strategy.reduce``). See the "Running
        across processes" docs page.
    group : optional
        torch: the process group of the all-reduce (default: the world); JAX: a
        ``jax.sharding.Mesh`` (default: all devices); TensorFlow: the strategy
        (default: the one whose scope is entered).
    progress : bool
        Show a progress bar over the batches of each product (tqdm if installed).
    dtype : dtype or str, optional
        The dtype of the operator's vectors (float32 or float64): by default the
        outputs' dtype, float32 for a 16-bit model (whose products run in 16 bits).

    Returns
    -------
    LinearOperator
        Square ``(n, n)`` with ``n`` the number of parameters, symmetric.

    Raises
    ------
    TypeError
        If ``data`` is a one-shot generator or iterator, or not iterable.
    ValueError
        For an empty dataset, batches of changing structure, batches that are not
        ``(inputs, targets)`` pairs, or a ``loss`` that returns a non-scalar; at a
        product, for a pass over ``data`` that yields another number of samples than
        the first.

    Examples
    --------
    >>> import torch
    >>> import jacspec as js
    >>> model = torch.nn.Linear(3, 2)
    >>> data = [(torch.randn(8, 3), torch.randn(8, 2)) for _ in range(3)]
    >>> G = js.ggn(lambda p, x: torch.func.functional_call(model, p, (x,)),
    ...            torch.nn.functional.mse_loss, dict(model.named_parameters()), data=data)
    >>> G.shape
    (8, 8)
    >>> bool(js.eigsh(G, k=1).values[0] > 0)
    True
    """
    return _build(f, loss, params, data, distributed=distributed, group=group,
                  progress=progress, dtype=dtype)
