"""The problem a solve works on: an operator seen as a batch of problems.

A :class:`Problem` describes a (possibly batched, possibly adjointed) operator to the
solvers: sizes, dtypes, the seed, the execution regime (traced, staged). It never
changes during a solve. What does change lives in the solvers' explicit states (a
Krylov basis, a power iteration's block), the product count among it, so that a step is
a function ``(problem, state) -> state``, the same eager and traced.

Random vectors are functions of the seed and a salt: a draw number (start vectors,
probes) or the product count (breakdown restart directions). No generator state
mutates, and a compiled piece of an eager solve draws what the plain path draws.

Every solver works on a leading batch axis ``B`` (an unbatched operator is a batch of
one), so one product per step advances all ``B`` problems.

An operator whose vectors are sharded across processes (``LinearOperator.sharding``:
parameters sharded by the framework's distributed engine) gives each process its part of
every vector, ``local_in`` entries; the solvers then take every reduction over the
vectors' entries (inner products, norms, Gram matrices) through the Problem
(:meth:`Problem.norm`, :meth:`Problem.row_coefs`, :meth:`Problem.gram`,
:meth:`Problem.col_norms`, :meth:`Problem.orthonormal`), which sums the processes'
partial reductions with the sharding's collective, so every process takes the same
decisions.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
import warnings
from collections.abc import Callable, Hashable
from typing import Any

import numpy as np

from ..operators import LinearOperator

Array = Any

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_PRIME = 2**31 - 1  # seeds are reduced modulo this prime
_DRAW_SALT = 7919  # a draw number's salt of the seed
_COUNT_SALT = 104729  # a product count's salt of the seed (restart directions)
_RANK_SALT = 1299709  # a process's salt of the seed (its part of a sharded vector)


@dataclasses.dataclass(frozen=True, eq=False)
class Problem:
    """The operator ``A`` (or its adjoint, ``adjoint=True``) as a batch of problems.

    Build one with :meth:`of`; derive variants with :meth:`with_tol` and
    :meth:`staging`.

    Attributes
    ----------
    B : int
        Batch size (1 for an unbatched operator).
    n_in, n_out : int
        Sizes of the vectors the (possibly adjointed) operator takes and returns.
    seed : int or array
        The seed of every random vector of the solve (an array inside a compiled piece).
    traced : bool
        Whether the products are traced (``jax.jit``, ``tf.function``, or a compiled
        piece of an eager solve): then no host reads.
    staged : bool
        Whether the solve runs as compiled pieces (:meth:`staging`, :meth:`stage`).
    bd_rtol : float
        A remainder below this (relative to the scale) is a breakdown (an invariant
        subspace); tol-driven solves raise it to ``min(tol, 1e-2)``.
    mix_start : bool
        Whether a warm start gets a random direction (see :meth:`start`): the solvers
        that take a user's ``v0``; probes (densities) are used as given.
    local_in, local_out : int
        The entries of a vector this process holds: ``n_in``, ``n_out`` unless the
        operator's vectors are sharded across processes.
    shard_sum : callable or None
        The sum over processes of partial reductions (every process receives the same
        array), for sharded vectors; None otherwise.
    shard_rank : int
        This process's index among those sharing the vectors (salts its random draws).
    vectors : device
        The operator's ``device``, where its vectors live (``device`` is that of the
        small arrays; they differ where the vectors are split across devices:
        ``Backend.placement``).
    """

    op: Any
    adj: bool
    backend: Any
    xp: Any
    batched: bool
    B: int
    n_in: int
    n_out: int
    dtype: Any
    device: Any
    is_complex: bool
    real_name: str
    real_dtype: Any
    eps: float
    tiny: float
    tiny_normal: float
    bd_rtol: float
    seed: Any
    traced: bool
    mix_start: bool = False
    vectors: Any = None
    staged: bool = False
    _stage: tuple | None = None
    local_in: int = 0
    local_out: int = 0
    shard_sum: Callable[[Array], Array] | None = None
    shard_rank: int = 0

    @classmethod
    def of(cls, op: LinearOperator, *, adjoint: bool = False, seed: int | None = 0,
           mix_start: bool = False) -> Problem:
        """The problem of ``op`` (its adjoint where ``adjoint``); ``seed=None``: a fresh
        random seed."""
        b = op.backend_impl
        m, n = op.shape
        name = b.dtype_name(op.dtype)
        real_name = {"complex64": "float32", "complex128": "float64"}.get(name, name)
        fi = np.finfo(real_name)
        if seed is None:
            seed = int(np.random.default_rng().integers(_PRIME))
        sh = op.sharding
        local_m, local_n = (m, n) if sh is None else (sh.local_n, sh.local_n)
        return cls(
            op=op, adj=adjoint, backend=b, xp=b.solver_xp, batched=bool(op.batch_shape),
            B=op.batch_shape[0] if op.batch_shape else 1,
            n_in=m if adjoint else n, n_out=n if adjoint else m,
            dtype=op.dtype, device=b.placement(op.device, 0, None), vectors=op.device,
            is_complex=name.startswith("complex"),
            real_name=real_name, real_dtype=b.dtype_from_name(real_name),
            eps=float(fi.eps), tiny=float(fi.tiny) * 1e3, tiny_normal=float(fi.tiny),
            bd_rtol=float(fi.eps) ** 0.75, seed=int(seed), traced=op.traced,
            mix_start=mix_start, local_in=local_m if adjoint else local_n,
            local_out=local_n if adjoint else local_m,
            shard_sum=None if sh is None else sh.sum, shard_rank=0 if sh is None else sh.rank,
        )

    def with_tol(self, tol: float) -> Problem:
        """The problem of a solve to relative accuracy ``tol``: a coupling below ``tol``
        (relative) is an invariant subspace to that accuracy, treated as a breakdown,
        so that other copies of a repeated value show."""
        return dataclasses.replace(self, bd_rtol=max(self.eps ** 0.75, min(tol, 1e-2)))

    @property
    def sliced(self) -> bool:
        """Whether the filled part of a fixed-width buffer may be sliced out (a view
        whose shape changes from step to step): outside a trace, where the framework
        does not compile per shape (``Backend.dynamic_shapes``)."""
        return not self.traced and self.backend.dynamic_shapes

    # -- products (no gradient; the states count them) ---------------------------------
    def mm(self, V: Array, *, adjoint: bool = False) -> Array:
        """The operator (``adjoint``: its adjoint) on blocks ``(B, n_in, k)``: ``k``
        products."""
        a = adjoint != self.adj
        if self.batched:
            return self.op._mm(V, adjoint=a, grad=False)
        return self.op._mm(V[0], adjoint=a, grad=False)[None]

    def mv(self, v: Array, *, adjoint: bool = False) -> Array:
        """The operator on single vectors ``(B, n_in)`` (the operator's ``_mv``): one
        product."""
        a = adjoint != self.adj
        if self.batched:
            return self.op._mv(v, adjoint=a)
        return self.op._mv(v[0], adjoint=a)[None]

    def host_int(self, count: Any) -> Any:
        """A product count as a Python int (a host read of a compiled piece's count);
        a traced count inside a user's trace stays as it is."""
        if isinstance(count, int) or self.traced:
            return count
        return int(self.backend.to_float(count))

    def loop(self, body: Callable[[Any, Any], Any], state: Any, num_steps: Any,
             per_step: int) -> Any:
        """``state = body(i, state)`` for ``i < num_steps`` over a state with a
        ``count`` field, ``per_step`` products a step: a Python loop outside a trace,
        one compiled loop inside (``Backend.fori_loop``: the body is traced once, so the
        program stays the size of one step; ``num_steps`` may be traced there). A
        compiled loop's count is a function of its index, as its row index is."""
        if not self.traced or (isinstance(num_steps, int) and num_steps <= 1):
            for i in range(num_steps):
                state = body(i, state)
            return state
        count0 = state.count

        def counted(i: Any, c: Any) -> Any:
            if not isinstance(count0, int):  # an array count keeps its integer type
                i = self.xp.astype(i, count0.dtype)
            return body(i, c._replace(count=count0 + per_step * i))._replace(count=None)

        out = self.backend.fori_loop(0, num_steps, counted, state._replace(count=None))
        return out._replace(count=count0 + per_step * num_steps)

    # -- compiled pieces of eager solves ---------------------------------------------
    def staging(self, *config: Hashable, detach: bool = False) -> Problem:
        """The problem of an eager solve whose pieces run compiled where
        ``Backend.should_compile`` says so of the solve's configuration: for operators
        whose products are one program on some arrays (``LinearOperator._staged_form``:
        an explicit matrix, a compiled linearization), passed to every piece as an
        argument. ``config``: everything the pieces' code depends on besides the
        operator's structure and the arrays. ``detach``: a gradient-free solve on an
        operator that an eager differentiation traces runs compiled too, on the
        arrays' values (``Backend.detached``), and takes eager decisions."""
        form = None if self.traced and not detach else self.op._staged_form()
        if form is not None and self.traced:
            arrays = self.backend.detached(form[1])
            form = None if arrays is None else (form[0], arrays, form[2])
        if form is None:
            return dataclasses.replace(self, staged=False, _stage=None)
        key = (config, form[0], self.adj, self.B, self.n_in, self.n_out,
               self.real_name, self.is_complex, str(self.device), self.bd_rtol,
               self.mix_start)
        if not self.backend.should_compile(key):
            return dataclasses.replace(self, staged=False, _stage=None)
        # what a compiled piece starts from: no arrays kept by the compiled function
        template = dataclasses.replace(self, op=None, staged=True, _stage=None)
        return dataclasses.replace(self, staged=True, traced=False,
                                   _stage=(key, form[1], form[2], template, self.traced))

    def stage(self, name: str, fn: Callable[..., Any], *static: Hashable
              ) -> Callable[..., Any]:
        """``fn(problem, *static, *args)`` as a callable of ``args``: compiled once per
        solve configuration (see :meth:`staging`), with the operator's arrays and the
        seed as arguments, where the solve is staged; else run as it is. A state's
        ``count`` enters as :meth:`counter` gives it. A compiled piece reads nothing
        from the host: it returns the arrays that the driver's decisions read."""
        if not self.staged:
            return functools.partial(fn, self, *static)
        key, arrays, rebuild, template, detach = self._stage

        def pure(arrays: Any, seed: Any, *args: Any) -> Any:
            p = dataclasses.replace(template, op=rebuild(arrays), seed=seed, traced=True)
            return fn(p, *static, *args)

        pure.__name__ = pure.__qualname__ = f"stage_{name}"  # the piece in JAX's logs
        run = self.backend.compile(pure, (name, fn.__module__, fn.__qualname__, static, key))
        seed = self.xp.asarray(self.seed, dtype=self.xp.uint32)

        def argument(a: Any) -> Any:
            if isinstance(a, tuple) and "count" in getattr(a, "_fields", ()):
                a = a._replace(count=self.counter(a.count))
            return self.backend.detached(a) if detach and a is not None else a

        def call(*args: Any) -> Any:
            return run(arrays, seed, *(argument(a) for a in args))

        return call

    def counter(self, count: Any) -> Any:
        """A product count as compiled pieces take it: an unsigned 32-bit integer array
        in a staged solve (the same type at every call, so a piece compiles once), else
        as it is."""
        if not self.staged:
            return count
        return self.xp.asarray(count, dtype=self.xp.uint32)

    # -- random vectors -----------------------------------------------------------------
    def _salted(self, salt: Any) -> Any:
        if not isinstance(salt, int):  # a traced count in a compiled piece
            salt = self.xp.astype(salt, self.xp.uint32)
        if self.shard_rank:  # each process draws its own part of a sharded vector
            salt = salt + _RANK_SALT * self.shard_rank
        return (self.seed + salt) % _PRIME

    def placed(self, ndim: int, axis: int | None) -> Any:
        """Where an ``ndim``-dimensional array goes whose ``axis`` runs along the
        operator's vectors (None: a small array), split like them where they are."""
        if axis is None:
            return self.device
        return self.backend.placement(self.vectors, ndim, axis % ndim)

    def random(self, shape: tuple[int, ...], draw: int = 1, axis: int = -1) -> Array:
        """Standard normal samples of the op's dtype whose ``axis`` runs along the
        vectors: the ``draw``-th draw of the seed."""
        return self.backend.normal(tuple(shape), dtype=self.dtype,
                                   device=self.placed(len(shape), axis),
                                   seed=self._salted(_DRAW_SALT * draw))

    def generic(self, shape: tuple[int, ...], salt: Any) -> Array:
        """Generic directions (start and restart vectors; not statistically random),
        seeded by the seed and ``salt``. Inside a user's trace, and where the backend
        says so (``Backend.hashed_directions``: eager solves run compiled) of vectors
        in one place, they come from ``Backend.hash_uniform``: a compiled loop traces
        its body once (the salt is traced there), and counter-based normal draws cost
        more than a Krylov step to run and to compile."""
        hashed = self.backend.hashed_directions and self.shard_sum is None and (
            self.placed(len(shape), -1) == self.device)
        if (self.traced and not self.staged) or hashed:
            return self.backend.hash_uniform(tuple(shape), dtype=self.dtype,
                                             seed=self.seed + salt)
        return self.backend.normal(tuple(shape), dtype=self.dtype,
                                   device=self.placed(len(shape), -1), seed=self._salted(salt))

    def restart_vector(self, s: int, count: Any) -> Array:
        """A generic ``(B, s)`` direction for a breakdown restart after ``count``
        products (a compiled piece of an eager solve draws the same from its traced
        count)."""
        return self.generic((self.B, s), _COUNT_SALT * (count + 1))

    def start(self, v0: Array | None, draw: int = 1) -> Array:
        """A unit start vector per sample, ``(B, n_in)``: random, or a warm start ``v0``
        plus a random direction of the same norm (random where ``v0`` is zero).

        A warm start must not cost exactness: ``v0`` may have almost no component
        along the top vector (say it lies along the second one, as after two directions
        swapped since the last solve), and a Krylov method then converges to a lower
        value first. The random half gives the top vector the share of a random start
        (up to ``1/sqrt(2)``), while ``v0`` keeps half the start along its direction.
        Without ``mix_start``, ``v0`` as given."""
        xp = self.xp
        shape = (self.B, self.local_in)
        rnd = self.generic(shape, _DRAW_SALT * draw)
        v = rnd
        if v0 is not None and not self.mix_start:
            v = xp.where((self.norm(v0) <= self.tiny)[:, None], rnd, v0)
        elif v0 is not None:
            unit = rnd / self.cast(self.norm(rnd))[:, None]
            nrm = self.norm(v0)
            v = xp.where((nrm <= self.tiny)[:, None], rnd,
                         v0 / self.cast(xp.where(nrm > 0, nrm, xp.ones_like(nrm)))[:, None]
                         + unit)
        return v / self.cast(self.norm(v))[:, None]

    # -- small helpers ------------------------------------------------------------------
    def cast(self, x: Array) -> Array:
        """A real array cast to the op's (possibly complex) dtype."""
        return self.xp.astype(x, self.dtype) if self.is_complex else x

    def conj(self, x: Array) -> Array:
        return self.xp.conj(x) if self.is_complex else x

    def H(self, X: Array) -> Array:
        """Conjugate transpose of the last two axes."""
        return self.conj(self.xp.matrix_transpose(X))

    def norm(self, w: Array) -> Array:
        """The norms of vectors along the last axis (over all processes' parts)."""
        if self.shard_sum is None:
            return self.xp.linalg.vector_norm(w, axis=-1)
        return self.xp.sqrt(self.shard_sum(self._sq(w, -1)))

    def column(self, x: Array, axis: int = 1) -> Array:
        """``x`` with a new axis of size one at ``axis`` (``(B,) -> (B, 1)``): one call,
        where an index expression costs several operations in eager TensorFlow."""
        return self.xp.expand_dims(x, axis=axis)

    def scaled(self, w: Array, nrm: Array) -> Array:
        """The rows of ``w`` ``(B, s)`` divided by ``nrm`` ``(B,)``."""
        return w / self.column(self.cast(nrm))

    def col_norms(self, X: Array) -> Array:
        """The norms of the columns of ``X`` ``(B, n, k)`` (over all processes' parts)."""
        if self.shard_sum is None:
            return self.xp.linalg.vector_norm(X, axis=-2)
        return self.xp.sqrt(self.shard_sum(self._sq(X, -2)))

    def _sq(self, X: Array, axis: int) -> Array:
        xp = self.xp
        return xp.sum(xp.real(self.conj(X) * X), axis=axis)

    def row_coefs(self, W: Array, Q: Array) -> Array:
        """``W @ Q^H`` (``Backend.row_coefs``: the coefficients of the rows of ``W`` along
        the rows of ``Q``), summed over processes for sharded vectors."""
        c = self.backend.row_coefs(W, Q)
        return c if self.shard_sum is None else self.shard_sum(c)

    def gram(self, X: Array, Y: Array) -> Array:
        """``X^H Y`` for column blocks ``(B, n, k)``, ``(B, n, l)`` (over all processes'
        parts)."""
        G = self.xp.matmul(self.H(X), Y)
        return G if self.shard_sum is None else self.shard_sum(G)

    def dot_sum(self, X: Array, Y: Array) -> Array:
        """``sum_j x_j^H y_j`` over the columns of ``(B, n, k)`` blocks, ``(B,)``."""
        xp = self.xp
        s = xp.sum(xp.sum(self.conj(X) * Y, axis=-1), axis=-1)
        return s if self.shard_sum is None else self.shard_sum(s)

    def orthonormal(self, X: Array) -> Array:
        """An orthonormal basis ``Q`` ``(B, n, k)`` of the columns of ``X``: the Q of a
        QR factorization (laid out like the vectors again where they are split across
        devices: XLA runs the QR on whole columns). For vectors sharded across
        processes, SVQB twice (Stathopoulos & Wu 2002: ``X V w^-1/2`` from the
        eigenpairs of the summed Gram matrix), which never gathers a vector; directions
        below the dtype's rounding of the largest come out as zero columns (a
        rank-deficient sketch: ``Q Q^H`` is still the projector on its range)."""
        if self.shard_sum is None:
            return self.backend.keep_placement(self.xp.linalg.qr(X).Q, self.placed(3, -2))
        for _ in range(2):
            X = self._svqb(X)
        return X

    def _svqb(self, X: Array) -> Array:
        xp = self.xp
        w, V = xp.linalg.eigh(self.gram(X, X))  # ascending
        keep = w > self.eps * int(X.shape[-1]) * xp.max(w, axis=-1, keepdims=True)
        scale = xp.where(keep, 1.0 / xp.sqrt(xp.where(keep, w, 1.0)), 0.0)
        return xp.matmul(X, V * xp.astype(scale, V.dtype)[..., None, :])

    def zeros(self, shape: tuple[int, ...], real: bool = False, axis: int | None = None
              ) -> Array:
        """Zeros; ``axis``: the one running along the vectors, if any (:meth:`placed`)."""
        return self.xp.zeros(shape, dtype=self.real_dtype if real else self.dtype,
                             device=self.placed(len(shape), axis))

    def real(self, j: Any) -> Any:
        """A step count as a real scalar (a traced integer is cast: some frameworks do not
        mix integer and floating arrays)."""
        return j if isinstance(j, int) else self.xp.astype(j, self.real_dtype)

    def check_finite(self, x: Array, what: str = "product") -> None:
        """Raise FloatingPointError for NaN/Inf (a host read; nothing inside a trace)."""
        if self.traced or self.backend.is_traced(x):
            return
        if not self.backend.all_finite(x):
            raise FloatingPointError(f"A {what} with {self.op!r} produced NaN or Inf.")

    def finite_flag(self, x: Array, flag: Array | None = None, what: str = "product"
                    ) -> Array | None:
        """:meth:`check_finite` outside compiled pieces (returns ``flag``); inside one,
        ``flag`` and-ed with whether ``x`` is finite, for :meth:`raise_unless` to read."""
        if not self.staged:
            self.check_finite(x, what)
            return flag
        ok = self.xp.all(self.xp.isfinite(x))
        return ok if flag is None else flag & ok

    def raise_unless(self, flag: Array | None) -> None:
        """The FloatingPointError of :meth:`check_finite` where a compiled piece's
        :meth:`finite_flag` is False."""
        if flag is not None and not self.backend.to_bool(flag):
            raise FloatingPointError(f"A product with {self.op!r} produced NaN or Inf.")


def warn_unconverged(what: str, nprod: int, why: str = "maxiter") -> None:
    """The RuntimeWarning of a solve that stopped before ``tol``, attributed to the
    first caller outside jacspec (the user's line)."""
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    reason = {
        "maxiter": f"stopped after {nprod} products (maxiter) before reaching tol",
        "dtype": f"reached the accuracy the dtype allows after {nprod} products, short "
                 "of tol",
    }[why]
    warnings.warn(
        f"{what} {reason}; the unconverged values are flagged by converged=False. "
        + ("Raise maxiter or tol." if why == "maxiter" else "Raise tol or use float64."),
        RuntimeWarning,
        stacklevel=level,
    )
