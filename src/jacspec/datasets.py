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

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import validate as V
from ._progress import progress
from .backends import Backend, ShardedProduct, backend_of
from .operators import LinearOperator, half_eps, in_16_bits, solver_dtype

__all__ = ["DatasetOperator", "dataset_hessian", "ggn"]

Array = Any


# ------------------------------------------------------------------------ the data


def _check_reiterable(data: Any) -> None:
    if isinstance(data, (str, bytes)) or not isinstance(data, Iterable):
        raise TypeError(
            "Expected data to be a re-iterable collection of batches (a list, a "
            "torch DataLoader, a tf.data.Dataset). Received "
            f"{type(data).__module__}.{type(data).__qualname__}."
        )
    if isinstance(data, Iterator) or iter(data) is data:
        raise TypeError(
            "Expected data to be re-iterable: every product streams the whole dataset "
            f"again. Received a one-shot {type(data).__qualname__} (a generator or "
            "iterator); pass a list of batches, a DataLoader, a tf.data.Dataset, or an "
            "object whose __iter__ starts a new pass."
        )


def _signature(batch: Any) -> Any:
    """The structure of a batch: containers, keys, and the rank of each array."""
    if isinstance(batch, dict):
        return ("dict", tuple((k, _signature(v)) for k, v in batch.items()))
    if isinstance(batch, (list, tuple)):
        return ("sequence", tuple(_signature(v) for v in batch))
    if backend_of(batch) is not None:
        return ("array", len(batch.shape))
    return ("object", type(batch).__qualname__)


def _first_array(batch: Any) -> Any:
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for v in batch:
            a = _first_array(v)
            if a is not None:
                return a
        return None
    return batch if backend_of(batch) is not None else None


def batch_size(batch: Any) -> int:
    """The number of samples of a batch: the leading axis of its first array."""
    a = _first_array(batch)
    if a is None or len(a.shape) == 0:
        raise ValueError(
            "Expected each batch to be an array or a (nested) tuple, list or dict of "
            "arrays whose first array has a leading batch axis. Received a batch of "
            f"structure {_signature(batch)}."
        )
    return int(a.shape[0])


@dataclass(frozen=True)
class DataSummary:
    """What one pass over the data found: its first batch, structure and size."""

    first: Any
    signature: Any
    num_batches: int
    num_samples: int


def _structure_error(index: int, got: Any, expected: Any) -> ValueError:
    return ValueError(
        "Expected every batch to have the structure of the first one "
        f"{expected}. Received batch {index} of structure {got}."
    )


def scan(data: Any, parts: Callable[[Any], list] | None = None) -> DataSummary:
    """Check ``data`` (re-iterable, non-empty, batches of one structure) in one pass.

    ``parts(batch)`` lists the pieces of a batch that this process holds (a
    distributed batch's per-replica values); by default a batch is one piece.
    """
    _check_reiterable(data)
    first, sig, num_batches, num_samples = None, None, 0, 0
    for i, batch in enumerate(data):
        pieces = parts(batch) if parts is not None else [batch]
        s = _signature(pieces[0])
        if i == 0:
            first, sig = pieces[0], s
        elif s != sig:
            raise _structure_error(i, s, sig)
        num_samples += sum(batch_size(p) for p in pieces)
        num_batches += 1
    if num_batches == 0 or num_samples == 0:
        raise ValueError(
            "Expected a non-empty dataset. Received "
            + ("no batches." if num_batches == 0 else f"{num_batches} batches of 0 samples.")
        )
    return DataSummary(first, sig, num_batches, num_samples)


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
        summary: DataSummary,
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
                s = _signature(pieces[0])
                if s != self._summary.signature:
                    raise _structure_error(i, s, self._summary.signature)
                seen += sum(batch_size(p) for p in pieces)  # as ``scan`` counts them
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
        return batch_size(batch) / self.num_samples

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
        total = None
        bar = progress(self._summary.num_batches, desc=self._name, unit="batch",
                       enabled=self._progress)
        try:
            for i, batch in enumerate(self._batches()):
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

    def _batch_product(self, batch: Any, V: Array) -> Array:
        if self._product_eps:
            return in_16_bits(self.xp, lambda W: self._product(batch, W), V,
                              self._model_dtype, self.dtype, axis=-2)
        return self._product(batch, V)


# ------------------------------------------------------------------------ public API


def _check_flags(distributed: Any, group: Any, progress: Any) -> None:
    if not isinstance(distributed, bool):
        raise TypeError(f"Expected distributed to be a bool. Received {distributed!r}.")
    if not isinstance(progress, bool):
        raise TypeError(f"Expected progress to be a bool. Received {progress!r}.")
    if group is not None and not distributed:
        raise ValueError("Expected group only with distributed=True. Received distributed=False.")


def dataset_hessian(f: Callable, params: Any, data: Any, **options: Any) -> DatasetOperator:
    """The Hessian of the mean loss over a dataset (see :func:`jacspec.hessian`)."""
    return _build(f, None, params, data, **options)


@contextlib.contextmanager
def _naming(what: str) -> Iterator[None]:
    """Re-raise a non-scalar loss's ValueError naming the user's function."""
    try:
        yield
    except ValueError as err:
        if "scalar" not in str(err):
            raise
        received = "Received" + str(err).split("Received", 1)[-1]
        raise ValueError(
            f"Expected {what} to return a scalar, the mean loss of the batch. {received}"
        ) from err


def _build(f: Callable, loss: Callable | None, params: Any, data: Any, *,
           distributed: bool = False, group: Any = None, progress: bool = False,
           hvp: str = "auto", dtype: Any = None) -> DatasetOperator:
    """Validate, differentiate the first batch once (a non-scalar loss fails here, before
    any product), and wrap the adapter's per-batch product: the Hessian of ``f`` when
    ``loss`` is None, else the GGN of ``loss`` after ``f``."""
    V.check_callable(f)
    if loss is not None:
        V.check_callable(loss, "loss")
    _check_flags(distributed, group, progress)
    backend, params = V.point(params)
    if distributed:
        group = backend.distributed_group(group)
        data = backend.distributed_data(data, group=group)
    with backend.fixed_randomness(None):  # a shuffling DataLoader draws on iteration
        summary = scan(data, (lambda b: backend.distributed_parts(b, group=group))
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
        with _naming("f(params, batch)"):
            lin = backend.gradient_oracle(lambda p: f(p, first), params, batched=False)
        product = backend.batch_product(f, params, hvp=hvp)
    else:
        if not (isinstance(first, (tuple, list)) and len(first) == 2):
            raise ValueError(
                "Expected data to yield (inputs, targets) pairs for js.ggn. Received "
                f"batches of structure {summary.signature}."
            )
        inputs, targets = first
        lin = backend.linearize(lambda p: f(p, inputs), params, batched=False)
        z = backend.stop_gradient(lin.y)
        with _naming("loss(outputs, targets)"):
            backend.linearize_gradient(lambda o: loss(o, targets), z, batched=False)
        product = backend.batch_ggn_product(f, loss, params)
    return DatasetOperator(product, data, summary, n=lin.n, dtype=lin.y.dtype,
                           backend=backend, device=backend.device(lin.y),
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
