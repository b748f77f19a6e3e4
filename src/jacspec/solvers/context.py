"""A (possibly batched, possibly adjointed) operator seen by the solvers as a batch of
problems: products without gradient, counted; seeded random vectors; small helpers.

Every solver works on a leading batch axis ``B`` (an unbatched operator is a batch of
one), so one product per step advances all ``B`` problems.
"""

from __future__ import annotations

import copy
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


class Context:
    """The operator ``A`` (or its adjoint, ``adjoint=True``) as a batch of problems.

    Attributes
    ----------
    B : int
        Batch size (1 for an unbatched operator).
    n_in, n_out : int
        Sizes of the vectors the (possibly adjointed) operator takes and returns.
    traced : bool
        Whether the products are traced (``jax.jit``, ``tf.function``): then no host
        reads, a fixed number of steps, and loops compiled by ``Backend.fori_loop``.
    count : int
        Products taken so far, per sample.
    draws : int
        Random draws taken so far (:meth:`random`; each seeds the next differently).
    staged : bool
        Whether the solve runs as compiled pieces (:meth:`stage_solve`).
    """

    def __init__(self, op: LinearOperator, *, adjoint: bool = False,
                 seed: int | None = 0) -> None:
        self.op = op
        self.adj = adjoint
        self.backend = op._backend
        self.xp = self.backend.solver_xp
        self.batched = bool(op.batch_shape)
        self.B = op.batch_shape[0] if self.batched else 1
        m, n = op.shape
        self.n_in, self.n_out = (m, n) if adjoint else (n, m)
        self.dtype = op.dtype
        self.device = op.device
        name = self.backend.dtype_name(op.dtype)
        self.is_complex = name.startswith("complex")
        self.real_name = {"complex64": "float32", "complex128": "float64"}.get(name, name)
        self.real_dtype = self.backend.dtype_from_name(self.real_name)
        fi = np.finfo(self.real_name)
        self.eps = float(fi.eps)
        self.tiny = float(fi.tiny) * 1e3
        self.tiny_normal = float(fi.tiny)
        # a remainder below this (relative to the scale) is a breakdown (invariant
        # subspace); tol-driven solves raise it to min(tol, 1e-2)
        self.bd_rtol = self.eps ** 0.75
        self.count = 0
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31 - 1))
        self.seed = int(seed)
        self.draws = 0
        self.traced = op.traced
        # Inside a compiled piece of an eager solve (see ``stage``): traced arrays, but
        # the eager rules (restart directions) so that results match the plain path.
        self.staged = False
        self._stage: tuple | None = None
        # Whether a warm start gets a random direction (see ``start``): set by the
        # solvers that take a user's ``v0``; probes (densities) are used as given.
        self.mix_start = False

    @property
    def sliced(self) -> bool:
        """Whether the filled part of a fixed-width buffer may be sliced out (a view
        whose shape changes from step to step): outside a trace, where the framework
        does not compile per shape (``Backend.dynamic_shapes``)."""
        return not self.traced and self.backend.dynamic_shapes

    # -- products --------------------------------------------------------------------
    def mm(self, V: Array, *, adjoint: bool = False) -> Array:
        """The operator (``adjoint``: its adjoint) on blocks ``(B, n_in, k)``."""
        a = adjoint != self.adj
        self.count += int(V.shape[-1])
        if self.batched:
            return self._seen(self.op._mm(V, adjoint=a, grad=False))
        return self._seen(self.op._mm(V[0], adjoint=a, grad=False)[None])

    def mv(self, v: Array, *, adjoint: bool = False) -> Array:
        """The operator on single vectors ``(B, n_in)`` (the operator's ``_mv``)."""
        a = adjoint != self.adj
        self.count += 1
        if self.batched:
            return self._seen(self.op._mv(v, adjoint=a))
        return self._seen(self.op._mv(v[0], adjoint=a)[None])

    def loop(self, body: Any, state: Any, num_steps: Any, per_step: int) -> Any:
        """``state = body(i, state)`` for ``i < num_steps``: a Python loop outside a
        trace, one compiled loop inside (``Backend.fori_loop``: the body is traced once,
        so the program stays the size of one step; ``num_steps`` may be traced there);
        ``per_step`` products a step."""
        if not self.traced or (isinstance(num_steps, int) and num_steps <= 1):
            for i in range(num_steps):
                state = body(i, state)
            return state
        count = self.count
        if self.staged:  # each step sees the count the plain loop's would (restart seeds)
            plain_body, xp = body, self.xp

            def body(i: Any, c: Any) -> Any:
                self.count = count + per_step * xp.astype(i, xp.uint32)
                return plain_body(i, c)

        out = self.backend.fori_loop(0, num_steps, body, state)
        self.count = count + per_step * num_steps
        return out

    # -- compiled pieces of eager solves ---------------------------------------------
    def stage_solve(self, *config: Hashable) -> None:
        """Decide, at the start of an eager solve, whether its pieces run compiled
        (``Backend.should_compile`` of the solve's configuration): for operators whose
        products are one program on some arrays (``LinearOperator._staged_form``: an
        explicit matrix, a compiled linearization), passed to every piece as an
        argument. ``config``: everything the pieces' code depends on besides the
        operator's structure and the arrays."""
        self.staged, self._stage = False, None
        form = None if self.traced else self.op._staged_form()
        if form is None:
            return
        key = (config, form[0], self.adj, self.B, self.n_in, self.n_out,
               self.real_name, self.is_complex, str(self.device), self.bd_rtol)
        if self.backend.should_compile(key):
            self.staged, self._stage = True, (key, form[1], form[2])

    def stage(self, name: str, fn: Callable[..., Any], *static: Hashable
              ) -> Callable[..., Any]:
        """``fn(ctx, *static, *args)`` as a callable of ``args``: compiled once per
        solve configuration (see :meth:`stage_solve`), with the operator's arrays, the
        seed and the product count as arguments, where the solve is staged; else run
        as it is. A compiled piece reads nothing from the host: it returns the arrays
        that the driver's decisions read."""
        if not self.staged:
            return functools.partial(fn, self, *static)
        key, state, rebuild = self._stage
        template = copy.copy(self)
        template.op = template._stage = None  # no arrays kept by the compiled function

        def pure(state, seed, count, *args):
            c = copy.copy(template)
            c.op = rebuild(state)
            c.seed, c.count, c.traced = seed, count, True
            return fn(c, *static, *args)

        run = self.backend.compile(pure, (name, fn.__module__, fn.__qualname__, static, key))
        xp = self.xp

        def call(*args: Any) -> Any:
            seed = xp.asarray(self.seed, dtype=xp.uint32)
            return run(state, seed, xp.asarray(self.count, dtype=xp.uint32), *args)

        return call

    def _seen(self, out: Array) -> Array:
        if not self.traced and self.backend.is_traced(out):
            self.traced = True
        return out

    # -- random vectors -----------------------------------------------------------------
    def _next_seed(self) -> int:
        self.draws += 1
        return (self.seed + 7919 * self.draws) % (2**31 - 1)

    def random(self, shape: tuple[int, ...]) -> Array:
        """Standard normal samples of the op's dtype, a fresh deterministic draw."""
        return self.backend.normal(tuple(shape), dtype=self.dtype, device=self.device,
                                   seed=self._next_seed())

    def restart_vector(self, s: int, step: Any = 0) -> Array:
        """A generic ``(B, s)`` direction for a breakdown restart: normal draws seeded
        by the seed and the products taken so far (a compiled piece of an eager solve
        draws the same ones from its traced count). Inside a user's trace it comes from
        ``Backend.hash_uniform`` salted with the (traced) ``step``: a compiled loop
        traces its body once, and counter-based normal draws cost more than a Krylov
        step there."""
        if self.traced and not self.staged:
            seed = self._next_seed() + 104729 * step
            return self.backend.hash_uniform((self.B, s), dtype=self.dtype, seed=seed)
        seed = (self.seed + 104729 * (self.count + 1)) % (2**31 - 1)
        return self.backend.normal((self.B, s), dtype=self.dtype, device=self.device,
                                   seed=seed)

    def start(self, v0: Array | None) -> Array:
        """A unit start vector per sample, ``(B, n_in)``: random, or a warm start ``v0``
        plus a random direction of the same norm (random where ``v0`` is zero).

        A warm start must not cost exactness: ``v0`` may have almost no component
        along the top vector (say it lies along the second one, as after two directions
        swapped since the last solve), and a Krylov method then converges to a lower
        value first. The random half gives the top vector the share of a random start
        (up to ``1/sqrt(2)``), while ``v0`` keeps half the start along its direction.
        Without ``mix_start``, ``v0`` as given."""
        xp = self.xp
        eager = not self.traced or self.staged
        rnd = self.random((self.B, self.n_in)) if eager else self.restart_vector(self.n_in)
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
        return self.xp.linalg.vector_norm(w, axis=-1)

    def zeros(self, shape: tuple[int, ...], real: bool = False) -> Array:
        return self.xp.zeros(shape, dtype=self.real_dtype if real else self.dtype,
                             device=self.device)

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
