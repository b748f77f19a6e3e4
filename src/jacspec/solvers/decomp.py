"""Krylov decompositions: Golub–Kahan–Lanczos bidiagonalization and symmetric Lanczos.

Everything works on a batch of ``B`` independent problems (an unbatched operator is a
batch of one): one product per step advances all of them, inner products and norms are
per sample, and a sample whose Krylov space breaks down (an invariant subspace) is
restarted with a random vector orthogonal to its basis while the others go on.

Both decompositions keep the projected matrix generically, from the coefficients of the
(twice-done, "twice is enough") full reorthogonalization: column ``j`` of
``U^H A V`` (GKL) or ``Q^H A Q`` (Lanczos) is exactly what reorthogonalizing the new
product removes. A thick restart therefore needs no special bookkeeping: the kept Ritz
vectors become the basis and their Ritz values the diagonal of the projected matrix; the
next step's coefficients fill in the coupling (an arrowhead).

Convergence is judged from Ritz residuals: for GKL, triplet ``i`` has residual
``beta * |x_i[-1]|`` (``x_i`` the left singular vector of the projected matrix), for
Lanczos ``beta * |s_i[-1]|``, relative to the largest Ritz value.

Speed notes (measured with ``jacspec bench``): the bases are stored as rows
``(B, J, s)`` and projected with row-vector products, several times faster on CPU than
batched matrix-vector products for these shapes; eager GKL screens convergence with the
eigendecomposition of ``M M^H`` and factors ``M`` only when the screen says stop; inside
``jax.jit`` the steps between restarts run as one ``lax.fori_loop`` (:func:`_compiled`),
a breakdown repair only under ``lax.cond``, restart vectors come from a counter hash
(threefry draws cost more than a step there), coefficients come from an ``einsum``
(no transposed copy of the basis), buffers are written functionally, and a fixed
budget sizes the basis.
"""

from __future__ import annotations

import math
import os
import sys
import warnings
from typing import Any, NamedTuple

import numpy as np

from ..operators import LinearOperator

Array = Any

DEFAULT_MAXITER = 2000


class Context:
    """A (possibly batched, possibly adjointed) operator seen as a batch of problems.

    ``mm(V)`` applies the operator to ``V`` of shape ``(B, n_in, k)``; with
    ``adjoint=True`` the adjoint to ``(B, n_out, k)``. Products carry no gradient and
    are counted per sample in :attr:`count`.
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
        self.bd_rtol = self.eps ** 0.75
        self.count = 0
        if seed is None:
            seed = int(np.random.default_rng().integers(2**31 - 1))
        self._seed = int(seed)
        self._draws = 0
        self.salt: Array | None = None  # a compiled loop's step index (see _compiled)
        # whether the adapter's buffer writes are functional (usable inside a trace)
        self.functional_set = bool(getattr(self.backend, "functional_set", False))
        value = getattr(op, "value", None)  # f(x) of a derivative operator
        # known before the first product where the operator holds a traced value
        self.traced = value is not None and self.backend.is_traced(value)

    @property
    def traced(self) -> bool:
        """Whether the products are traced (``jax.jit``, ``tf.function``): then no host
        reads, fixed shapes and a fixed number of steps."""
        return self._traced

    @traced.setter
    def traced(self, value: bool) -> None:
        self._traced = bool(value)
        # Whether array shapes may change from step to step: outside a trace and not in
        # JAX (whose eager mode compiles every new shape). Then the loops work on the
        # filled part of their fixed-width buffers only.
        self.dynamic = not self._traced and self.backend.name != "jax"

    # -- products ------------------------------------------------------------------
    def mm(self, V: Array, *, adjoint: bool = False) -> Array:
        a = adjoint != self.adj
        self.count += int(V.shape[-1])
        if self.batched:
            out = self.op._mm(V, adjoint=a, grad=False)
        else:
            out = self.op._mm(V[0], adjoint=a, grad=False)[None]
        return self._seen(out)

    def mv(self, v: Array, *, adjoint: bool = False) -> Array:
        """:meth:`mm` of single vectors ``(B, n_in)`` (the operator's ``_mv``)."""
        a = adjoint != self.adj
        self.count += 1
        if self.batched:
            out = self.op._mv(v, adjoint=a)
        else:
            out = self.op._mv(v[0], adjoint=a)[None]
        return self._seen(out)

    def _seen(self, out: Array) -> Array:
        """A product's output; a traced one marks the solve as traced."""
        if not self.traced and self.backend.is_traced(out):
            self.traced = True
        return out

    # -- helpers -------------------------------------------------------------------
    def random(self, shape: tuple[int, ...]) -> Array:
        """Standard normal samples of the op's dtype, a fresh deterministic draw."""
        self._draws += 1
        return self.backend.normal(tuple(shape), dtype=self.dtype, device=self.device,
                                   seed=(self._seed + 7919 * self._draws) % (2**31 - 1))

    def restart_vector(self, s: int) -> Array:
        """A generic (B, s) vector for a breakdown restart: a fresh random draw, or
        inside a trace (where every step carries one) the adapter's cheap hash-based
        vector if it has one (counter-based random draws cost more than a Krylov step
        in a compiled loop)."""
        hashed = getattr(self.backend, "hash_uniform", None)
        if self.traced and hashed is not None:
            self._draws += 1
            seed = (self._seed + 7919 * self._draws) % (2**31 - 1)
            if self.salt is not None:  # one trace serves every step of a compiled loop
                seed = seed + 104729 * self.salt
            return hashed((self.B, s), dtype=self.dtype, seed=seed)
        return self.random((self.B, s))

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

    def check_finite(self, x: Array, what: str = "product") -> None:
        if self.traced or self.backend.is_traced(x):
            return
        if not self.backend.all_finite(x):
            raise FloatingPointError(
                f"A {what} with {self.op!r} produced NaN or Inf."
            )

    def all_true(self, x: Array) -> bool:
        return self.backend.all_true(x)

    def any_true(self, x: Array) -> bool:
        return self.backend.any_true(x)

    def project_out(self, W: Array, C: Array, Q: Array) -> Array:
        """``W - C Q`` (rows ``W`` (B, t, s) minus their components ``C`` (B, t, J) along
        the rows of ``Q`` (B, J, s)), one fused kernel where the adapter has one."""
        return self.backend.sub_matmul(W, C, Q)

    def eye(self, k: int) -> Array:
        return self.xp.eye(k, dtype=self.dtype, device=self.device)

    def start(self, v0: Array | None) -> Array:
        """A unit start vector per sample, ``(B, n_in)`` (random where v0 is zero)."""
        xp = self.xp
        rnd = self.restart_vector(self.n_in)
        if v0 is None:
            v = rnd
        else:
            v = v0  # (B, n_in)
            nrm = self.norm(v)
            v = xp.where((nrm <= self.tiny)[:, None], rnd, v)
        return v / self.cast(self.norm(v))[:, None]


def _coefs(ctx: Context, Q: Array, QH: Array, W: Array) -> Array:
    """``Q^H w`` for each row ``w`` of ``W`` (B, t, s): (B, t, J), with ``QH = H(Q)``
    (see ``Backend.row_coefs``).

    The basis is stored as rows (B, J, s) and every projection is a row-vector product
    (``(1, s) @ (s, J)`` and ``(1, J) @ (J, s)``): batched matrix-vector products with
    the vector on the right are several times slower on CPU for these shapes."""
    return ctx.backend.row_coefs(W, Q, QH)


def _broke(ctx: Context, nrm: Array, scale: Array, force: Array | None) -> Array:
    """Breakdown flags (B,): ``nrm <= bd_rtol * scale`` (written ``nrm / bd_rtol <=
    scale``, one operation fewer on the hot path), or forced."""
    bd = nrm * (1.0 / ctx.bd_rtol) <= scale
    return bd if force is None else bd | force


def extend(ctx: Context, Q: Array, w: Array, scale: Array, J: int | None = None,
           force: Array | None = None, want_coef: bool = True, track: bool = True):
    """Orthogonalize ``w`` (B, s) against the orthonormal rows of ``Q`` (B, width, s).

    Classical Gram–Schmidt, done twice ("twice is enough"). Where the remainder after
    the first pass is at rounding level (breakdown: ``w`` lies in ``span(Q)``, relative
    to ``scale``, the running estimate of ``||A||``), a random vector orthogonalized
    against ``Q`` (also twice) replaces it and the coupling is 0. The random vector
    rides along the first pass as a second row of the same block product, so a
    breakdown costs no extra pass and needs no host synchronization.

    With ``J`` given and shapes free to change (:attr:`Context.dynamic`), only the
    first ``J`` (filled) rows of ``Q`` are used and the coefficients have length ``J``
    (:func:`_put_col` pads them); otherwise they have the full width. Returns ``(q, coef, coupling, scale, bd)``: the unit vector,
    ``Q^H w``, the coupling (0 at breakdown), the updated scale and the
    breakdown flags. ``force`` (B,) bool restarts those samples as if they had broken
    down (see :func:`_verify`). With ``want_coef=False`` the coefficients may be returned as
    ``None`` (GKL's v-step does not use them). With ``track=False`` an eager step leaves
    the scale to the other steps (GKL's v-steps: ``||A^H u||`` adds nothing to the
    running ``||A v||`` estimate a breakdown is judged by, and saves two operations).
    """
    xp = ctx.xp
    B, s = int(w.shape[0]), int(w.shape[1])
    width = int(Q.shape[-2])
    if J is not None and ctx.dynamic and J < width:
        Q = Q[:, :J]
    nJ = int(Q.shape[-2])
    nrm0 = None
    if track or not (ctx.dynamic and nJ):
        nrm0 = ctx.norm(w)
        scale = xp.maximum(scale, nrm0)
    if ctx.dynamic or (ctx.traced and _has_cond(ctx)):
        return _extend_branching(ctx, Q, w, scale, force, B, s, nJ, nrm0, want_coef)
    rnd = ctx.restart_vector(s)
    if nJ:
        QH = ctx.H(Q)
        W2 = xp.stack([w, rnd], axis=1)  # (B, 2, s)
        C1 = _coefs(ctx, Q, QH, W2)  # (B, 2, J)
        W2 = ctx.project_out(W2, C1, Q)
        w = W2[:, 0]
        bd = _broke(ctx, ctx.norm(w), scale, force)
        w = xp.where(bd[:, None], W2[:, 1], w)
        c2 = _coefs(ctx, Q, QH, w[:, None, :])
        w = ctx.project_out(w[:, None, :], c2, Q)[:, 0]
        extra = c2[:, 0]
        coef = C1[:, 0] + xp.where(bd[:, None], xp.zeros_like(extra), extra)
        if nJ < width:
            coef = xp.concat([coef, ctx.zeros((B, width - nJ))], axis=-1)
    else:
        bd = _broke(ctx, nrm0, scale, force)
        w = xp.where(bd[:, None], rnd, w)
        coef = ctx.zeros((B, width))
    nrm = ctx.norm(w)
    one = xp.ones_like(nrm)
    q = w / ctx.cast(xp.where(nrm > 0, nrm, one))[:, None]
    coupling = xp.where(bd, xp.zeros_like(nrm), nrm)
    return q, coef, coupling, scale, bd


def _has_cond(ctx: Context) -> bool:
    """Whether the adapter branches inside a trace (``Backend.cond``, JAX)."""
    return getattr(ctx.backend, "cond", None) is not None


def _extend_branching(ctx: Context, Q: Array, w: Array, scale: Array,
                      force: Array | None, B: int, s: int, nJ: int, nrm0: Array | None,
                      want_coef: bool):
    """:func:`extend` with a branch on "did any sample break down?": a host read where
    shapes may change (eager torch/numpy/TF), ``Backend.cond`` inside a trace (JAX:
    ``lax.cond``, which runs one branch).

    Both passes run on ``w`` alone. The common no-breakdown branch takes no random
    vector and no masking (and, eagerly, returns ``bd=None``). Breakdown is judged on
    the remainder after the second pass (at most the first pass's); a sample that broke
    down (or is forced) is redone from a random vector orthogonalized twice, with its
    coupling set to 0.
    """
    xp = ctx.xp
    if not nJ:  # (eager only: a trace keeps the full width)
        bd = _broke(ctx, nrm0, scale, force)
        coef = ctx.zeros((B, 0))
        if not ctx.any_true(bd):
            return w / ctx.cast(nrm0)[:, None], coef, nrm0, scale, None
        w = xp.where(bd[:, None], ctx.restart_vector(s), w)
        nrm = ctx.norm(w)
        return (w / ctx.cast(nrm)[:, None], coef, xp.where(bd, xp.zeros_like(nrm), nrm),
                scale, bd)
    QH = ctx.H(Q)
    w = w[:, None, :]
    c1 = _coefs(ctx, Q, QH, w)
    w = ctx.project_out(w, c1, Q)
    c2 = _coefs(ctx, Q, QH, w)
    w = ctx.project_out(w, c2, Q)[:, 0]
    nrm = ctx.norm(w)
    bd = _broke(ctx, nrm, scale, force)

    def keep():
        coef = (c1 + c2)[:, 0] if want_coef else None
        return w / ctx.cast(nrm)[:, None], coef, nrm

    def repair():
        r = ctx.restart_vector(s)[:, None, :]
        r = ctx.project_out(r, _coefs(ctx, Q, QH, r), Q)
        r = ctx.project_out(r, _coefs(ctx, Q, QH, r), Q)[:, 0]
        v = xp.where(bd[:, None], r, w)
        coef = xp.where(bd[:, None], c1[:, 0], (c1 + c2)[:, 0]) if want_coef else None
        nrm2 = ctx.norm(v)
        one = xp.ones_like(nrm2)
        q = v / ctx.cast(xp.where(nrm2 > 0, nrm2, one))[:, None]
        return q, coef, xp.where(bd, xp.zeros_like(nrm), nrm)

    if ctx.traced:
        return (*ctx.backend.cond(xp.any(bd), repair, keep), scale, bd)
    if not ctx.any_true(bd):
        return (*keep(), scale, None)
    return (*repair(), scale, bd)


class _Fresh:
    """Per-sample guard against accepting convergence right after a breakdown.

    A breakdown (an invariant Krylov subspace) hides the other copies of a repeated
    value: after the random restart, the sample must again build ``min(room, 2k + 1)``
    vectors (``room``: the dimension left) before it may converge. Consecutive
    breakdowns (a null space being swept, e.g. the zero operator) do not reset it.
    """

    def __init__(self, ctx: Context, n: int, k: int) -> None:
        self.ctx = ctx
        self.n, self.need = n, 2 * k + 1
        self.clean = True  # no breakdown yet: every sample counts all its steps
        self.steps = 0  # the count while clean (tensors only after a breakdown)
        self.prev_any = False  # whether prev may hold a True

    def _materialize(self) -> None:
        ctx = self.ctx
        self.count = ctx.zeros((ctx.B,), real=True) + self.steps
        self.room = ctx.zeros((ctx.B,), real=True) + self.n
        self.none = self.count < 0  # all False
        self.prev = self.none
        self.clean = False

    def step(self, J: int, bd: Array | None, eligible: Array | None = None) -> None:
        xp = self.ctx.xp
        if bd is None:  # no sample broke down (see ``extend``): no reset anywhere
            if self.clean:
                self.steps += 1
                return
            self.count = self.count + 1
            if self.prev_any:
                self.prev, self.prev_any = self.none, False
            return
        if self.clean:
            self._materialize()
        self.prev_any = True
        reset = bd & ~self.prev
        if eligible is not None:
            reset = reset & eligible
        zero = xp.zeros_like(self.count)
        self.count = xp.where(reset, zero, self.count + 1)
        self.room = xp.where(reset, zero + (self.n - J), self.room)
        self.prev = bd

    def state(self) -> tuple[Array, Array, Array]:
        """The per-sample arrays, for a compiled loop's carry (see :func:`_compiled`)."""
        if self.clean:
            self._materialize()
        self.prev_any = True
        return self.count, self.room, self.prev

    def set_state(self, state: tuple[Array, Array, Array]) -> None:
        self.count, self.room, self.prev = state

    def ok(self) -> Array:
        xp = self.ctx.xp
        if self.clean:
            ok = self.steps >= min(self.n, self.need)
            return self.ctx.zeros((self.ctx.B, 1), real=True) < (1 if ok else 0)
        need = xp.minimum(self.room, xp.zeros_like(self.room) + self.need)
        return (self.count >= need)[:, None]


class _Verify:
    """Per-sample check restart for ``k >= 2``, so that repeated values are all found.

    A single Krylov sequence holds one copy of each repeated eigen/singular value; the
    other copies appear only after a breakdown. When a sample first looks converged, it
    is restarted once with a random vector orthogonal to its basis (a forced breakdown)
    and must converge again after ``2k + 1`` more vectors (:class:`_Fresh`): a missing
    copy of a top value then shows up as a new Ritz value. ``k = 1`` needs no check (the
    top value is found whatever its multiplicity).
    """

    def __init__(self, ctx: Context, k: int) -> None:
        self.ctx = ctx
        self.on = k > 1 and not ctx.traced
        self.done = ctx.zeros((ctx.B,), real=True) > 0 if self.on else None  # all False
        self.force: Array | None = None

    def accept(self, ok: Array) -> bool:
        """Given per-value ``ok`` (B, k) flags, whether the solver may stop now."""
        xp = self.ctx.xp
        ready = xp.all(ok, axis=-1)
        if not self.on:
            return self.ctx.all_true(ready)
        if self.ctx.all_true(ready & self.done):
            return True
        need = ready & ~self.done
        if self.ctx.any_true(need):
            self.force = need
            self.done = self.done | need
        return False

    def would_act(self, ok: Array) -> bool:
        """Whether :meth:`accept` would stop or force a restart given ``ok``."""
        ready = self.ctx.xp.all(ok, axis=-1)
        if not self.on:
            return self.ctx.all_true(ready)
        return self.ctx.any_true(ready & ~self.done) or self.ctx.all_true(ready)

    def take(self) -> Array | None:
        force, self.force = self.force, None
        return force


class KrylovResult(NamedTuple):
    """Top Ritz values/vectors of a batch of problems (all arrays with a leading B)."""

    values: Array  # (B, k) real
    left: Array  # (B, n_out, k) (GKL) or None
    right: Array  # (B, n_in, k)
    residuals: Array  # (B, k) real
    converged: Array  # (B, k) bool
    num_matvecs: int


def basis_sizes(r: int, k: int, ncv: int | None, steps: int | None = None
                ) -> tuple[int, int, int]:
    """``(jmin, jmax, keep)``: minimum basis before accepting convergence, basis size at
    which to restart, and the Ritz vectors a thick restart keeps. ``steps``: the number
    of basis vectors a fixed budget (inside a trace) builds; the default basis then
    shrinks to it (no restart can happen, and smaller buffers are cheaper)."""
    jmin = min(r, 2 * k + 1)
    default = max(2 * k + 1, k + 32)
    if steps is not None:
        default = min(default, steps + 1)
    jmax = min(r, max(jmin + 1, ncv if ncv is not None else default))
    keep = min(jmax - 1, k + max(1, (jmax - k) // 2))
    return jmin, jmax, keep


_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _warn_unconverged(what: str, nprod: int) -> None:
    # Attribute the warning to the first caller outside jacspec (the user's call).
    frame, level = sys._getframe(1), 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame, level = frame.f_back, level + 1
    warnings.warn(
        f"{what} stopped after {nprod} products (maxiter) before reaching tol; the "
        "unconverged values are flagged by converged=False. Raise maxiter or tol.",
        RuntimeWarning,
        stacklevel=level,
    )


class _Padded:
    """Constants for a basis kept at a fixed width ``jmax`` (zero columns beyond ``J``).

    Fixed shapes keep every array operation of the loop identical from step to step, so
    frameworks that compile per shape (JAX eager) compile once per problem, not per step.
    """

    def __init__(self, ctx: Context, jmax: int) -> None:
        xp = ctx.xp
        self.jmax = jmax
        eye = np.eye(jmax)

        def const(a: np.ndarray) -> Array:
            return xp.asarray(a, dtype=ctx.real_dtype, device=ctx.device)

        self._eye_np = eye
        self._xp, self._real = xp, ctx.real_dtype
        self._e: dict[int, Array] = {}
        self._ec: dict[int, Array] = {}
        self._inactive: dict[int, Array] = {}
        self._active: dict[int, Array] = {}
        self._pad: dict[int, Array] = {}
        self.const = const
        self.cast = ctx.cast
        self._eye: Array | None = None
        self._upper: Array | None = None

    @property
    def eye(self) -> Array:
        if self._eye is None:
            self._eye = self.const(self._eye_np)
        return self._eye

    @property
    def upper(self) -> Array:
        """Ones strictly above the diagonal."""
        if self._upper is None:
            self._upper = self.const(np.triu(np.ones((self.jmax, self.jmax)), 1))
        return self._upper

    def e(self, j: int) -> Array:
        """The ``j``-th unit vector (real dtype), made once."""
        if j not in self._e:
            self._e[j] = self.const(self._eye_np[j])
        return self._e[j]

    def ec(self, j: int) -> Array:
        """The ``j``-th unit vector in the op's dtype (``j`` may be a compiled loop's
        traced index)."""
        if not isinstance(j, int):
            hot = self.const(np.arange(self.jmax)) == j
            return self.cast(self._xp.astype(hot, self._real))
        if j not in self._ec:
            self._ec[j] = self.cast(self.e(j))
        return self._ec[j]

    def active(self, J: int) -> Array:
        if J not in self._active:
            self._active[J] = self.const((np.arange(self.jmax) < J).astype(float))
        return self._active[J]

    def inactive_diag(self, J: int) -> Array:
        if J not in self._inactive:
            self._inactive[J] = self.const(np.diag((np.arange(self.jmax) >= J).astype(float)))
        return self._inactive[J]

    def pad(self, keep: int) -> Array:
        """``(keep, jmax)``: the first ``keep`` rows of the identity."""
        if keep not in self._pad:
            self._pad[keep] = self.const(np.eye(self.jmax)[:keep])
        return self._pad[keep]


def _put_col(ctx: Context, X: Array, x: Array, pad: _Padded, j: int, start: int = 0
             ) -> Array:
    """``X`` (B, s, jmax) with ``x`` (B, t) added to rows ``start:start + t`` of column
    ``j`` (one-hot ``pad.ec(j)``), where those entries are zero. Adapters with a
    ``set_column`` (an in-place write into a buffer this module allocated) avoid
    rebuilding the whole buffer per step."""
    setter = getattr(ctx.backend, "set_column", None)
    if setter is not None and (ctx.dynamic or ctx.functional_set):
        return setter(X, j, x, start)
    B, t, s = int(x.shape[0]), int(x.shape[-1]), int(X.shape[-2])
    if t < s:
        parts = [ctx.zeros((B, start))] if start else []
        parts += [x] + ([ctx.zeros((B, s - t - start))] if s - t - start else [])
        x = ctx.xp.concat(parts, axis=-1)
    return X + x[..., None] * pad.ec(j)


def _put_row(ctx: Context, X: Array, x: Array, pad: _Padded, j: int) -> Array:
    """``X`` (B, jmax, s) with ``x`` (B, s) added in row ``j`` (one-hot ``pad.ec(j)``),
    where that row is zero (a basis vector, see :func:`_coefs` for the row layout)."""
    setter = getattr(ctx.backend, "set_row", None)
    if setter is not None and (ctx.dynamic or ctx.functional_set):
        return setter(X, j, x)
    return X + pad.ec(j)[:, None] * x[:, None, :]


def _has_loop(ctx: Context) -> bool:
    """Whether the adapter compiles a loop of steps (``Backend.fori_loop``)."""
    return getattr(ctx.backend, "fori_loop", None) is not None


def _compiled(ctx: Context, lo: int, hi: int, per_step: int, body, carry: tuple,
              fresh: _Fresh) -> tuple:
    """``carry = body(j, carry)`` for ``j`` in ``[lo, hi)`` as one compiled loop (JAX:
    ``lax.fori_loop``), for traced solves: the program (and its compile time) stays the
    size of one step instead of growing with the budget. ``body`` is traced once with a
    traced ``j``: the product count
    (``per_step`` products a step) and :class:`_Fresh`'s arrays go through here, and
    breakdown restart vectors are salted with ``j``."""
    count = ctx.count

    def step(j, c):
        fresh.set_state(c[-1])
        ctx.salt = j
        out = body(j, c[:-1])
        return (*out, fresh.state())

    try:
        out = ctx.backend.fori_loop(lo, hi, step, (*carry, fresh.state()))
    finally:
        ctx.salt = None
    ctx.count = count + per_step * (hi - lo)
    fresh.set_state(out[-1])
    return tuple(out[:-1])


# Convergence checks (a small SVD/eigh plus a host synchronization) run at every step
# while the basis is small, then every ``J // CHECK_SPACING`` steps: at most a
# ``1 / CHECK_SPACING`` fraction of extra products past convergence.
CHECK_SPACING = 6
# The first check comes FIRST_CHECK_DELAY steps after the smallest basis that may be
# accepted (2k + 1 vectors): converging that early needs a top value that dominates the
# rest by a factor of ~20 or more at tol 1e-4, rare in derivatives of trained networks,
# so those checks rarely pay for themselves (at most this many steps past convergence).
FIRST_CHECK_DELAY = 2


class _Schedule:
    """When to check convergence next (outside a trace; deterministic, data-driven).

    With ``check_every`` given, every that many steps. Otherwise every step while
    ``J < 2 * CHECK_SPACING``, then every ``J // CHECK_SPACING`` steps, and further apart
    where the worst residual ratio ``res / (tol * scale)`` of the last two checks, extrapolated
    linearly in log scale, says convergence is still far: half the predicted steps (Krylov
    convergence accelerates, so the prediction errs long and halving it keeps the
    overshoot small). Before the first check the ratio is taken as ``1 / tol`` at step 0
    (a random start's residual is of the order of ``||A||``); a gap predicted from that
    guess is capped at ``J`` (at most doubling the basis). Uses the host synchronization
    the check does anyway.
    """

    def __init__(self, ctx: Context, check_every: int | None, tol: float) -> None:
        self.ctx = ctx
        self.fixed = check_every
        self.gap = 1 if check_every is None else check_every
        self.prev: tuple[int, float] | None = (0, 1.0 / tol) if tol > 0 else None

    def due(self, since: int, J: int) -> bool:
        return since >= self.gap

    def update(self, J: int, res: Array, ref: Array) -> None:
        if self.fixed is not None:
            return
        xp = self.ctx.xp
        ratio = xp.where(ref > 0, res / xp.where(ref > 0, ref, xp.ones_like(ref)),
                         xp.zeros_like(res))
        self.observe(J, self.ctx.backend.to_float(xp.max(ratio)))

    def observe(self, J: int, q: float) -> None:
        """:meth:`update` from the worst ratio ``q = max(res / (tol * scale))``."""
        if self.fixed is not None:
            return
        gap = max(1, J // CHECK_SPACING)
        if math.isfinite(q) and q > 1:
            if self.prev is not None and self.prev[1] > q and J > self.prev[0]:
                rate = math.log(self.prev[1] / q) / (J - self.prev[0])
                if rate > 0:
                    predicted = int(math.log(q) / rate / 2)
                    if self.prev[0] == 0:  # from the guess at step 0
                        predicted = min(predicted, J)
                    gap = max(gap, predicted)
            self.prev = (J, q)
        self.gap = gap


def _sentinel(ctx: Context, M: Array) -> Array:
    """Per-sample value (B, 1, 1) above every singular value / |eigenvalue| of M."""
    xp = ctx.xp
    fro = xp.sqrt(xp.sum(xp.sum(xp.real(ctx.conj(M) * M), axis=-1), axis=-1))
    return (2 * fro + 1)[:, None, None]


def _select_active(ctx: Context, key: Array, weight: Array, k: int) -> Array:
    """One-hot (B, jmax, k) of the k largest keys among entries whose vectors live in
    the active part (weight > 1/2), in descending key order."""
    xp = ctx.xp
    floor = xp.min(key, axis=-1, keepdims=True) - 1
    key = xp.where(weight > 0.5, key, floor)
    J = int(key.shape[-1])
    idx = xp.argsort(key, axis=-1, descending=True, stable=True)[..., :k]
    ar = xp.astype(xp.arange(J, device=ctx.device), idx.dtype)
    return xp.astype(idx[..., None, :] == ar[:, None], ctx.real_dtype)


def _weights(ctx: Context, vecs: Array, act: Array) -> Array:
    """Squared norm of each column of ``vecs`` (B, jmax, jmax) on the active rows."""
    xp = ctx.xp
    sq = xp.real(ctx.conj(vecs) * vecs)
    return xp.sum(sq * act[:, None], axis=-2)


def svd_lanczos(ctx: Context, k: int, *, tol: float, maxiter: int | None,
                v0: Array | None = None, ncv: int | None = None,
                check_every: int | None = None, vectors: bool = True) -> KrylovResult:
    """Top-``k`` singular triplets by Golub–Kahan–Lanczos bidiagonalization.

    ``ctx``'s input side should be the smaller one (``n_in = min(m, n)``): the basis
    then fills after ``n_in`` steps and the decomposition is exact. Thick restarts
    bound the basis at ``jmax`` vectors. Outside a trace, convergence is checked every
    ``check_every`` steps (default: see ``_Schedule``) from the Ritz residuals; inside one (``jax.jit``), a fixed
    number of steps runs (``maxiter`` products, by default one basis of ``jmax``).
    With ``vectors=False`` the result may omit the singular vectors (``None``): when the
    basis fills (an exact decomposition), the values then come from ``svdvals``.
    """
    xp = ctx.xp
    B, r, mo = ctx.B, ctx.n_in, ctx.n_out
    v = ctx.start(v0)
    p = ctx.mv(v)  # first, as it tells whether products are traced
    steps = (maxiter + 1) // 2 if ctx.traced and maxiter is not None else None
    jmin, jmax, keep = basis_sizes(r, k, ncv, steps)
    jcheck = min(r, jmin + FIRST_CHECK_DELAY)
    pad = _Padded(ctx, jmax)
    fresh = _Fresh(ctx, r, k)
    verify = _Verify(ctx, k)
    # A coupling below tol (relative) is an invariant subspace to the requested accuracy:
    # treat it as a breakdown so the other copies of a (numerically) repeated value show.
    ctx.bd_rtol = max(ctx.bd_rtol, min(tol, 1e-2))
    if maxiter is None and not ctx.traced:
        maxiter = max(DEFAULT_MAXITER, 2 * r)
    V = ctx.zeros((B, jmax, r))  # basis vectors as rows
    U = ctx.zeros((B, jmax, mo))
    M = ctx.zeros((B, jmax, jmax))
    scale = ctx.zeros((B,), real=True)
    beta = ctx.zeros((B,), real=True)
    J = 0
    since_check = 0
    sched = _Schedule(ctx, check_every, tol)
    ritz = None

    def u_step(J, v, p, V, U, M, scale):
        """A v (= p), orthogonalized against U; M's column J and the rows J of V, U."""
        u, c, alpha, scale, bd_u = extend(ctx, U, p, scale, J)
        if ctx.dynamic:  # c has length J: the column is (c, alpha, 0, ...)
            M = _put_col(ctx, M, c, pad, J)
            M = _put_col(ctx, M, ctx.cast(alpha)[:, None], pad, J, start=J)
        else:
            M = _put_col(ctx, M, c + ctx.cast(alpha)[:, None] * pad.ec(J), pad, J)
        return u, _put_row(ctx, V, v, pad, J), _put_row(ctx, U, u, pad, J), M, scale, bd_u

    def v_step(J, u, V, scale, bd_u):
        """A^H u, orthogonalized against V (``J`` rows filled)."""
        q = ctx.mv(u, adjoint=True)
        v, _, beta, scale, bd_v = extend(ctx, V, q, scale, J, force=verify.take(),
                                         want_coef=False, track=False)
        fresh.step(J, bd_v, None if bd_u is None else ~bd_u)
        return v, beta, scale

    def full_step(j, carry):  # one compiled-loop step, from j filled rows to j + 1
        v, V, U, M, scale, beta = carry
        p = ctx.mv(v)
        u, V, U, M, scale, bd_u = u_step(j, v, p, V, U, M, scale)
        v, beta, scale = v_step(j + 1, u, V, scale, bd_u)
        return v, V, U, M, scale, beta

    while True:
        cost = 2 if J + 1 < r else 1
        limit = maxiter
        if limit is None and ctx.traced:
            limit = 2 * jmax - (1 if jmax == r else 0)
        if J > 0 and limit is not None and ctx.count + cost > limit:
            break
        # Inside a trace, the steps up to the next restart (or the last, partial one)
        # as one compiled loop where the adapter has one.
        n = min(jmax - J, r - 1 - J, (limit - ctx.count) // 2) if J > 0 and limit else 0
        if ctx.traced and n >= 2 and _has_loop(ctx):
            v, V, U, M, scale, beta = _compiled(ctx, J, J + n, 2, full_step,
                                                (v, V, U, M, scale, beta), fresh)
            J += n
            if J == jmax:
                V, U, M = _svd_restart(ctx, pad, V, U, M, keep)
                J = keep
            continue
        # -- u-step: A v, orthogonalized against U
        if J > 0:  # (the first product was taken above)
            p = ctx.mv(v)
        u, V, U, M, scale, bd_u = u_step(J, v, p, V, U, M, scale)
        J += 1
        ritz = None
        # -- v-step: A^H u, orthogonalized against V
        if J < r:
            v, beta, scale = v_step(J, u, V, scale, bd_u)
        else:
            beta = ctx.zeros((B,), real=True)
            break
        since_check += 1
        if not ctx.traced and J >= jmin and (
                (J >= jcheck and sched.due(since_check, J)) or J == jmax):
            since_check = 0
            if ctx.dynamic and J < jmax and not verify.on:
                # Screen first with the (cheaper) eigh of M M^H and one host read; the
                # SVD only when the screen says every sample has converged.
                # In a large batch, a few probe samples first (one unconverged sample
                # is enough to go on).
                rows = _probe_rows(ctx, beta, scale)
                for sub in ([rows] if rows is not None else []) + [None]:
                    Ms, bs = (M, beta) if sub is None else (_take(ctx, M, sub),
                                                           _take(ctx, beta, sub))
                    try:
                        res, ref, X = _svd_screen(ctx, Ms, bs, J, k, tol)
                    except Exception:
                        ctx.check_finite(M)  # NaN/Inf reported as such
                        raise
                    worst = _worst_ratio(ctx, res, ref, fresh, None, M, sub)
                    if worst > 1:
                        break
                if worst > 1:
                    sched.observe(J, worst)
                    continue
                if k == 1:  # the screen's eigenvectors give the Ritz triplet
                    ritz = _top_triplet(ctx, pad, M[:, :J, :J], X)
            ctx.check_finite(M)
            if ctx.dynamic and J < jmax and verify.on:
                res, ref, _ = _svd_screen(ctx, M, beta, J, k, tol)
                if not verify.would_act((res <= ref) & fresh.ok()):
                    sched.update(J, res, ref)
                    continue
            if ritz is None:
                ritz = _svd_ritz(ctx, pad, M, J, k)
            res, conv = _svd_conv(ctx, pad, ritz, beta, J, tol)
            if verify.accept(conv & fresh.ok()):
                break
            sched.update(J, res, tol * xp.max(ritz[0], axis=-1, keepdims=True))
        if J == jmax:
            V, U, M = _svd_restart(ctx, pad, V, U, M, keep)
            J = keep
            ritz = None
    if ritz is None and not vectors and J == r and hasattr(xp.linalg, "svdvals"):
        # Exact decomposition (the basis spans the whole input side): residuals are 0
        # and only the values are wanted.
        if not ctx.traced:
            ctx.check_finite(M)
        if k == 1 and ctx.dynamic:
            # sigma_1 = sqrt(lambda_max(M M^H)) to working precision, and eigvalsh is
            # about twice as fast as svdvals on stacks of small matrices (CPU LAPACK).
            lam = xp.linalg.eigvalsh(xp.matmul(M, ctx.H(M)))[:, -1:]
            S = xp.sqrt(xp.maximum(lam, xp.zeros_like(lam)))
        else:
            S = xp.linalg.svdvals(M)[:, :k]
        res = xp.zeros_like(S)
        return KrylovResult(S, None, None, res, res <= 0, ctx.count)
    if ritz is None:
        if not ctx.traced:
            ctx.check_finite(M)
        ritz = _svd_ritz(ctx, pad, M, J, k)
    S, X, Y = ritz
    res, conv = _svd_conv(ctx, pad, ritz, beta, J, tol)
    if J < r:
        conv = conv & fresh.ok()
    if J < jmin:
        conv = conv & (xp.zeros_like(res) > 1)  # too small a basis to accept anything
    if not ctx.traced and not ctx.all_true(conv):
        _warn_unconverged("Golub-Kahan-Lanczos", ctx.count)
    mT = xp.matrix_transpose
    return KrylovResult(S, xp.matmul(mT(U), X), xp.matmul(mT(V), Y), res, conv, ctx.count)


def _pad_rows(ctx: Context, X: Array, jmax: int) -> Array:
    """``X`` (B, J, k) zero-padded to (B, jmax, k)."""
    J = int(X.shape[-2])
    if J == jmax:
        return X
    z = ctx.zeros((int(X.shape[0]), jmax - J, int(X.shape[-1])))
    return ctx.xp.concat([X, z], axis=-2)


def _svd_ritz(ctx: Context, pad: _Padded, M: Array, J: int, k: int):
    """Top-k singular values (B, k) and vectors (B, jmax, k) of the active block of M."""
    xp = ctx.xp
    if ctx.dynamic and k == 1:
        Mj = M[:, :J, :J]
        return _top_triplet(ctx, pad, Mj, xp.linalg.eigh(xp.matmul(Mj, ctx.H(Mj)))[1])
    if ctx.dynamic:
        # Shapes may change: factor the filled J x J block only (no sentinel needed).
        X, S, Yh = xp.linalg.svd(M[:, :J, :J], full_matrices=False)
        Y = ctx.H(Yh)
        return (S[:, :k], _pad_rows(ctx, X[..., :k], pad.jmax),
                _pad_rows(ctx, Y[..., :k], pad.jmax))
    Mp = M + _sentinel(ctx, M) * ctx.cast(pad.inactive_diag(J))
    X, S, Yh = xp.linalg.svd(Mp, full_matrices=False)
    Y = ctx.H(Yh)
    P = _select_active(ctx, S, _weights(ctx, Y, pad.active(J)), k)
    vals = xp.sum(S[:, :, None] * P, axis=-2)
    Pc = ctx.cast(P)
    return vals, xp.matmul(X, Pc), xp.matmul(Y, Pc)


def _top_triplet(ctx: Context, pad: _Padded, Mj: Array, X: Array):
    """The top singular triplet of the filled block ``Mj`` (B, J, J) from the
    eigenvectors ``X`` (ascending) of ``Mj Mj^H``: batched ``eigh`` of small matrices is
    about twice as fast as batched SVD on CPU (torch). ``x`` is the top eigenvector,
    ``y = Mj^H x / ||Mj^H x||`` (a unit vector where ``Mj^H x = 0``) and
    ``sigma = ||Mj^H x||``: for the largest value as accurate as the SVD's. Returns
    ``(values (B, 1), left (B, jmax, 1), right (B, jmax, 1))`` as :func:`_svd_ritz`."""
    xp = ctx.xp
    J = int(Mj.shape[-1])
    x = X[..., J - 1:]  # (B, J, 1)
    y = xp.matmul(ctx.H(Mj), x)
    S = ctx.norm(y[..., 0])[:, None]  # (B, 1)
    e0 = ctx.cast(pad.e(0)[:J])[None, :, None]
    y = xp.where(S[:, :, None] > 0,
                 y / ctx.cast(xp.where(S > 0, S, xp.ones_like(S)))[:, :, None], e0)
    return S, _pad_rows(ctx, x, pad.jmax), _pad_rows(ctx, y, pad.jmax)


def _worst_ratio(ctx: Context, res: Array, ref: Array, fresh: _Fresh, ok: Array | None,
                 M: Array, rows: Array | None = None) -> float:
    """``max(res / ref)`` over samples and values, as one host read: at most 1 iff every
    value is converged (``res <= ref``; ``ref == 0`` counts only ``res == 0``). Samples
    not yet :class:`_Fresh` (after a breakdown) and values not selected (``ok`` False)
    count as unconverged / not at all. ``rows``: the samples ``res`` and ``ref`` are
    of (all when None). Raises FloatingPointError for NaN/Inf in ``M``."""
    xp = ctx.xp
    ratio = res / (ref + ctx.tiny_normal)
    if ok is not None:
        ratio = xp.where(ok, ratio, xp.zeros_like(ratio))
    if not fresh.clean:
        ok_f = fresh.ok() if rows is None else _take(ctx, fresh.ok(), rows)
        ratio = xp.where(ok_f, ratio, xp.zeros_like(ratio) + math.inf)
    q = ctx.backend.to_float(xp.max(ratio))
    if math.isnan(q):
        ctx.check_finite(M)
    return q


# Samples a first convergence screen of a large eager batch looks at (_probe_rows).
PROBES = 8


def _probe_rows(ctx: Context, beta: Array, scale: Array) -> Array | None:
    """In a batch of more than ``2 * PROBES`` samples (eager, shapes free), the indices
    of the ``PROBES`` samples with the largest coupling relative to their scale (the
    coupling bounds the Ritz residual from above): a screen of those alone shows most
    unconverged batches at a fraction of the cost (the batch goes on if any sample has
    not converged; batched ``eigh`` of small matrices costs per matrix)."""
    if not ctx.dynamic or ctx.B <= 2 * PROBES:
        return None
    key = beta / (scale + ctx.tiny_normal)
    return ctx.xp.argsort(key, descending=True)[:PROBES]


def _take(ctx: Context, x: Array, rows: Array) -> Array:
    """The samples ``rows`` of ``x`` (leading axis)."""
    return ctx.xp.take(x, rows, axis=0)


def _svd_screen(ctx: Context, M: Array, beta: Array, J: int, k: int, tol: float):
    """A cheaper convergence screen than :func:`_svd_ritz` + :func:`_svd_conv`: the top
    ``k`` eigenpairs of ``M M^H`` (filled block) give the singular values (exact for the
    top ones up to rounding of ``sigma_1^2``) and the left vectors whose last entries
    give the Ritz residuals. Returns ``(residuals, tol * largest value, eigenvectors)``:
    value ``i`` has converged where ``residuals[:, i] <=`` the reference."""
    xp = ctx.xp
    Mj = M[:, :J, :J]
    lam, X = xp.linalg.eigh(xp.matmul(Mj, ctx.H(Mj)))  # ascending
    top = lam[:, J - 1:]
    res = beta[:, None] * xp.abs(X[:, J - 1, J - k:])
    return res, tol * xp.sqrt(xp.maximum(top, xp.zeros_like(top))), X


def _svd_conv(ctx: Context, pad: _Padded, ritz, beta: Array, J: int, tol: float):
    xp = ctx.xp
    S, X, _ = ritz
    last = xp.abs(xp.sum(X * pad.ec(J - 1)[:, None], axis=-2))  # (B, k)
    res = beta[:, None] * last
    return res, res <= tol * xp.max(S, axis=-1, keepdims=True)


def _svd_restart(ctx: Context, pad: _Padded, V, U, M, keep: int):
    xp = ctx.xp
    S, X, Y = _svd_ritz(ctx, pad, M, pad.jmax, keep)
    Et = ctx.cast(xp.matrix_transpose(pad.pad(keep)))  # (jmax, keep)
    V = xp.matmul(Et, xp.matmul(xp.matrix_transpose(Y), V))  # rows: (V_cols Y E)^T
    U = xp.matmul(Et, xp.matmul(xp.matrix_transpose(X), U))
    d = xp.matmul(S[:, None, :], pad.pad(keep))[:, 0, :]
    return V, U, ctx.cast(d)[:, :, None] * ctx.cast(pad.eye)


# ------------------------------------------------------------------ symmetric Lanczos


def _hermitian(ctx: Context, T: Array, pad: _Padded) -> Array:
    """The Hermitian matrix whose upper triangle is that of ``T``."""
    xp = ctx.xp
    strict = T * ctx.cast(pad.upper)
    diag = ctx.cast(xp.real(T) * pad.eye) if ctx.is_complex else T * pad.eye
    return strict + ctx.H(strict) + diag


def select(ctx: Context, theta: Array, which: str, k: int) -> Array:
    """One-hot selection matrices (B, J, k) of the ``k`` wanted Ritz values, ordered:
    ``LM`` by descending magnitude, ``LA`` descending, ``SA`` ascending."""
    xp = ctx.xp
    J = int(theta.shape[-1])
    key = {"LM": xp.abs(theta), "LA": theta, "SA": -theta}[which]
    idx = xp.argsort(key, axis=-1, descending=True, stable=True)[..., :k]
    ar = xp.arange(J, device=ctx.device)
    P = xp.astype(idx[..., None, :] == xp.astype(ar, idx.dtype)[:, None], ctx.real_dtype)
    return P  # (B, J, k)


def _eig_ritz(ctx: Context, pad: _Padded, T: Array, J: int, which: str, k: int):
    """Wanted Ritz values (B, k) and vectors (B, jmax, k) of the active block of T."""
    xp = ctx.xp
    Ts = _hermitian(ctx, T, pad)
    if ctx.dynamic:
        theta, S = xp.linalg.eigh(Ts[:, :J, :J])
        P = select(ctx, theta, which, k)
        vals = xp.sum(theta[:, :, None] * P, axis=-2)
        radius = xp.max(xp.abs(theta), axis=-1, keepdims=True)
        return vals, _pad_rows(ctx, xp.matmul(S, ctx.cast(P)), pad.jmax), radius
    Tp = Ts + _sentinel(ctx, Ts) * ctx.cast(pad.inactive_diag(J))
    theta, S = xp.linalg.eigh(Tp)
    key = {"LM": xp.abs(theta), "LA": theta, "SA": -theta}[which]
    w = _weights(ctx, S, pad.active(J))
    P = _select_active(ctx, key, w, k)
    vals = xp.sum(theta[:, :, None] * P, axis=-2)
    act = xp.where(w > 0.5, xp.abs(theta), xp.zeros_like(theta))
    radius = xp.max(act, axis=-1, keepdims=True)
    return vals, xp.matmul(S, ctx.cast(P)), radius


def eig_lanczos(ctx: Context, k: int, *, which: str, tol: float, maxiter: int | None,
                v0: Array | None = None, ncv: int | None = None,
                check_every: int | None = None) -> KrylovResult:
    """``k`` wanted eigenpairs of a Hermitian operator by symmetric Lanczos with full
    reorthogonalization (twice), breakdown restarts and thick restarts."""
    xp = ctx.xp
    B, n = ctx.B, ctx.n_in
    q = ctx.start(v0)
    w = ctx.mv(q)  # first, as it tells whether products are traced
    jmin, jmax, keep = basis_sizes(n, k, ncv, maxiter if ctx.traced else None)
    jcheck = min(n, jmin + FIRST_CHECK_DELAY)
    pad = _Padded(ctx, jmax)
    fresh = _Fresh(ctx, n, k)
    verify = _Verify(ctx, k)
    ctx.bd_rtol = max(ctx.bd_rtol, min(tol, 1e-2))
    if maxiter is None and not ctx.traced:
        maxiter = max(DEFAULT_MAXITER, n)
    Q = ctx.zeros((B, jmax, n))  # basis vectors as rows
    T = ctx.zeros((B, jmax, jmax))
    scale = ctx.zeros((B,), real=True)
    beta = ctx.zeros((B,), real=True)
    J = 0
    since_check = 0
    sched = _Schedule(ctx, check_every, tol)
    ritz = None

    def step(J, q, w, Q, T, scale):
        """Row J of Q is q; w = A q orthogonalized against Q gives T's column J."""
        Q = _put_row(ctx, Q, q, pad, J)
        q, c, beta, scale, bd = extend(ctx, Q, w, scale, J + 1, force=verify.take())
        fresh.step(J + 1, bd)
        return q, Q, _put_col(ctx, T, c, pad, J), beta, scale

    def full_step(j, carry):  # one compiled-loop step
        q, Q, T, beta, scale = carry
        return step(j, q, ctx.mv(q), Q, T, scale)

    while True:
        limit = maxiter
        if limit is None and ctx.traced:
            limit = jmax
        if J > 0 and limit is not None and ctx.count + 1 > limit:
            break
        # Inside a trace, the steps up to the next restart (or the last one) as one
        # compiled loop where the adapter has one.
        nsteps = min(jmax - J, n - 1 - J, limit - ctx.count) if J > 0 and limit else 0
        if ctx.traced and nsteps >= 2 and _has_loop(ctx):
            q, Q, T, beta, scale = _compiled(ctx, J, J + nsteps, 1, full_step,
                                             (q, Q, T, beta, scale), fresh)
            J += nsteps
            if J == jmax:
                Q, T = _eig_restart(ctx, pad, Q, T, which, keep)
                J = keep
            continue
        if J > 0:  # (the first product was taken above)
            w = ctx.mv(q)
        q, Q, T, beta, scale = step(J, q, w, Q, T, scale)
        J += 1
        ritz = None
        if J == n:
            beta = ctx.zeros((B,), real=True)
            break
        since_check += 1
        if not ctx.traced and J >= jmin and (
                (J >= jcheck and sched.due(since_check, J)) or J == jmax):
            since_check = 0
            if ctx.dynamic and J < jmax and k == 1:
                # One host read: the worst residual ratio of the wanted Ritz value (in
                # a large batch, of a few probe samples first).
                rows = _probe_rows(ctx, beta, scale)
                for sub in ([rows] if rows is not None else []) + [None]:
                    worst = _eig_worst_ratio(ctx, pad, T, beta, J, which, tol, fresh, sub)
                    if worst > 1:
                        break
                if worst > 1:
                    sched.observe(J, worst)
                    continue
            ctx.check_finite(T)
            ritz = _eig_ritz(ctx, pad, T, J, which, k)
            res, conv = _eig_conv(ctx, pad, ritz, beta, J, tol)
            if verify.accept(conv & fresh.ok()):
                break
            sched.update(J, res, tol * ritz[2])
        if J == jmax:
            Q, T = _eig_restart(ctx, pad, Q, T, which, keep)
            J = keep
            ritz = None
    if ritz is None:
        if not ctx.traced:
            ctx.check_finite(T)
        ritz = _eig_ritz(ctx, pad, T, J, which, k)
    vals, vecs, _ = ritz
    res, conv = _eig_conv(ctx, pad, ritz, beta, J, tol)
    if J < n:
        conv = conv & fresh.ok()
    if J < jmin:
        conv = conv & (xp.zeros_like(res) > 1)
    if not ctx.traced and not ctx.all_true(conv):
        _warn_unconverged("Lanczos", ctx.count)
    return KrylovResult(vals, None, xp.matmul(xp.matrix_transpose(Q), vecs), res, conv,
                        ctx.count)


def _eig_worst_ratio(ctx: Context, pad: _Padded, T: Array, beta: Array, J: int,
                     which: str, tol: float, fresh: _Fresh, rows: Array | None = None
                     ) -> float:
    """For ``k = 1``: the worst (over samples, or over ``rows`` of them) ``residual /
    (tol * radius)`` of the wanted Ritz value of the filled block, from one ``eigh`` and
    one host read (ties of the wanted value count with their largest residual)."""
    xp = ctx.xp
    Ts = _hermitian(ctx, T, pad)[:, :J, :J]
    if rows is not None:
        Ts, beta = _take(ctx, Ts, rows), _take(ctx, beta, rows)
    try:
        theta, S = xp.linalg.eigh(Ts)
    except Exception:
        ctx.check_finite(T)  # NaN/Inf reported as such
        raise
    key = {"LM": xp.abs(theta), "LA": theta, "SA": -theta}[which]
    wanted = key >= xp.max(key, axis=-1, keepdims=True)
    res = beta[:, None] * xp.abs(S[:, J - 1, :])
    ref = tol * xp.max(xp.abs(theta), axis=-1, keepdims=True)
    return _worst_ratio(ctx, res, ref, fresh, wanted, T, rows)


def _eig_conv(ctx: Context, pad: _Padded, ritz, beta: Array, J: int, tol: float):
    xp = ctx.xp
    vals, vecs, radius = ritz
    res = beta[:, None] * xp.abs(xp.sum(vecs * pad.ec(J - 1)[:, None], axis=-2))
    return res, res <= tol * radius


def _eig_restart(ctx: Context, pad: _Padded, Q, T, which: str, keep: int):
    xp = ctx.xp
    vals, vecs, _ = _eig_ritz(ctx, pad, T, pad.jmax, which, keep)
    Et = ctx.cast(xp.matrix_transpose(pad.pad(keep)))
    d = xp.matmul(vals[:, None, :], pad.pad(keep))[:, 0, :]
    Q = xp.matmul(Et, xp.matmul(xp.matrix_transpose(vecs), Q))
    return Q, ctx.cast(d)[:, :, None] * ctx.cast(pad.eye)
