"""The adaptive Krylov driver: steps until the Ritz residuals meet ``tol``.

On top of the decompositions of :mod:`.krylov` and the extraction of :mod:`.ritz`:
convergence checks on a data-driven schedule (one host read each), thick restarts when
the basis is full, a guard against accepting convergence right after a breakdown, a
check restart for ``k >= 2`` (so that every copy of a repeated value is found), the
maxiter warning, and a final check of the returned vectors' true residuals where the
dtype's rounding may reach ``tol``. Inside a trace (``jax.jit``, ``tf.function``) no
host read is possible: a fixed budget of steps runs (:func:`run_budget`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

from . import ritz
from .context import Context, warn_unconverged
from .krylov import KrylovState, decompose, gkl_step, init, lanczos_step

Array = Any

DEFAULT_MAXITER = 2000
# Convergence checks (a small eigh/SVD and a host read) run every step while the basis is
# small, then every ``J // CHECK_SPACING`` steps: at most that fraction of extra products.
CHECK_SPACING = 6
# The first check comes this many steps after the smallest acceptable basis (2k + 1
# vectors): converging earlier needs a top value that dominates the rest by a factor of
# ~20 at tol 1e-4, rare in derivatives of trained networks.
FIRST_CHECK_DELAY = 2
# Samples a first screen of a large eager batch looks at (see ``_probe_rows``).
PROBES = 8
# The returned vectors' true residuals are checked (k more products) when ``tol`` is
# within this factor of the rounding level ``sqrt(size) * eps`` of the bases.
TRUE_RESIDUAL_MARGIN = 10.0


class KrylovResult(NamedTuple):
    """Top Ritz values/vectors of a batch of problems (arrays with a leading B)."""

    values: Array  # (B, k) real
    left: Array  # (B, n_out, k) (GKL) or None
    right: Array  # (B, n_in, k)
    residuals: Array  # (B, k) real
    converged: Array  # (B, k) bool
    num_matvecs: int


class Krylov(NamedTuple):
    """A decomposition as the driver sees it."""

    name: str
    step: Callable[[Context, KrylovState], KrylovState]
    per_step: int  # products a step
    two_sided: bool


GKL = Krylov("Golub-Kahan-Lanczos", gkl_step, 2, True)
LANCZOS = Krylov("Lanczos", lanczos_step, 1, False)


def basis_sizes(r: int, k: int, ncv: int | None, steps: int | None = None
                ) -> tuple[int, int, int]:
    """``(jmin, jmax, keep)``: the smallest basis that may be accepted, the basis size
    at which a thick restart happens, and the Ritz vectors a restart keeps. ``steps``:
    the number of steps a fixed budget (inside a trace) allows; the default basis then
    shrinks to it (no restart happens, and smaller buffers are cheaper)."""
    jmin = min(r, 2 * k + 1)
    default = max(2 * k + 1, k + 32)
    if steps is not None:
        default = min(default, steps + 1)
    jmax = min(r, max(jmin + 1, ncv if ncv is not None else default))
    keep = min(jmax - 1, k + max(1, (jmax - k) // 2))
    return jmin, jmax, keep


def min_products(alg: Krylov, k: int, r: int) -> int:
    """Products that produce ``k`` Ritz values: ``k`` steps (GKL's last step of a full
    basis takes one product)."""
    return k * alg.per_step - (1 if alg.two_sided and k == r else 0)


def krylov_solve(ctx: Context, alg: Krylov, k: int, *, tol: float, maxiter: int | None,
                 v0: Array | None = None, ncv: int | None = None, which: str = "LM",
                 vectors: bool = True) -> KrylovResult:
    """The top ``k`` singular triplets (GKL; iterate from the smaller side) or wanted
    eigenpairs (Lanczos) of ``ctx``'s operator, to relative accuracy ``tol``."""
    r = ctx.n_in
    # A coupling below tol (relative) is an invariant subspace to the requested
    # accuracy: treated as a breakdown, so that other copies of a repeated value show.
    ctx.bd_rtol = max(ctx.eps ** 0.75, min(tol, 1e-2))
    if ctx.traced and maxiter is None:  # to tol under the framework's while loop
        jmin, jmax, keep = basis_sizes(r, k, ncv)
        s = run_to_tol(ctx, alg, init(ctx, v0, jmax, two_sided=alg.two_sided), k, tol,
                       which, jmin, keep)
        return finish(ctx, alg, s, k, tol, which, jmin, vectors)
    if ctx.traced:
        steps = (maxiter + alg.per_step - 1) // alg.per_step
        jmin, jmax, keep = basis_sizes(r, k, ncv, steps)
        s = run_budget(ctx, alg, init(ctx, v0, jmax, two_sided=alg.two_sided), maxiter,
                       keep, which)
        return finish(ctx, alg, s, k, tol, which, jmin, vectors)
    jmin, jmax, keep = basis_sizes(r, k, ncv)
    limit = maxiter if maxiter is not None else max(DEFAULT_MAXITER, alg.per_step * r)
    ctx.stage_solve("krylov", alg, k, tol, which, jmax, vectors)
    steps = _Steps(ctx, alg, ctx.stage("init", _init, jmax, alg.two_sided)(v0)._replace(j=0))
    ctx.draws = 1  # the start vector's draw (taken inside the piece where staged)
    sched = _Schedule(tol)
    verify = _Verify(ctx, k)
    jcheck = min(r, jmin + FIRST_CHECK_DELAY)
    since, found = 0, None
    while steps.j < r and not (steps.j and ctx.count + _cost(alg, steps.j, r) > limit):
        steps.step()
        since += 1
        if steps.j == r:
            break
        if steps.j >= jmin and ((steps.j >= jcheck and since >= sched.gap)
                                or steps.j == jmax):
            since = 0
            checked = _check(ctx, alg, steps.state(), k, tol, which, sched)
            if checked is not None and verify.accept(checked[1]):
                found = checked[0]
                break
            steps.force(verify.take())
        if steps.j == jmax:
            steps.restart(keep, which)
    return finish(ctx, alg, steps.state(), k, tol, which, jmin, vectors, found)


class _Steps:
    """The driver's steps: taken one at a time, or, in a staged solve (see
    ``Context.stage``), as one compiled run of the steps between two of the driver's
    decisions (which depend on host counters only)."""

    def __init__(self, ctx: Context, alg: Krylov, s: KrylovState) -> None:
        self.ctx, self.alg, self.s, self.pending = ctx, alg, s, 0

    @property
    def j(self) -> int:
        return self.s.j + self.pending

    def step(self) -> None:
        ctx, alg = self.ctx, self.alg
        if not ctx.staged:
            self.s = alg.step(ctx, self.s)
        elif alg.two_sided and self.j + 1 >= ctx.n_in:  # the last step takes one product
            s = self.state()
            out = ctx.stage("last_step", _step_at, alg, s.j)(s._replace(j=None))
            self.s, ctx.count = out._replace(j=s.j + 1), ctx.count + 1
        else:
            self.pending += 1
            ctx.count += alg.per_step

    def state(self) -> KrylovState:
        """The state after the steps taken so far."""
        if self.pending:
            s, n = self.s, self.pending
            force = s.force if s.force is not None else self.ctx.zeros(
                (self.ctx.B,), real=True) > 0
            out = self.ctx.stage("steps", _run_steps, self.alg)(
                s._replace(force=force), n, self.ctx.count - n * self.alg.per_step)
            self.s, self.pending = out._replace(j=s.j + n, force=None), 0
        return self.s

    def force(self, force: Array | None) -> None:
        self.s = self.s._replace(force=force)

    def restart(self, keep: int, which: str) -> None:
        s = self.state()
        self.s = self.ctx.stage("restart", _restart_at, self.alg, keep, which, s.j)(
            s._replace(j=None))._replace(j=keep)


def _init(ctx: Context, jmax: int, two_sided: bool, v0: Array | None) -> KrylovState:
    return init(ctx, v0, jmax, two_sided=two_sided)._replace(j=None)


def _step_at(ctx: Context, alg: Krylov, j: int, s: KrylovState) -> KrylovState:
    """One step at the host-known row ``j`` (a compiled piece)."""
    return alg.step(ctx, s._replace(j=j))._replace(j=None)


def _restart_at(ctx: Context, alg: Krylov, keep: int, which: str, j: int, s: KrylovState
                ) -> KrylovState:
    return _restart(ctx, alg, s._replace(j=j), keep, which)._replace(j=None)


def _run_steps(ctx: Context, alg: Krylov, s: KrylovState, n: Any, count: Any
               ) -> KrylovState:
    """``n`` steps (a traced count) under :meth:`Context.loop`, the check restart
    ``s.force`` applied to the first: a compiled piece of an eager solve. The product
    count (``count`` before the first step) salts the restart directions as the plain
    steps' does."""
    j0, ctx.count = s.j, count

    def body(i: Any, c: KrylovState) -> KrylovState:
        first = c._replace(j=j0 + i, force=c.force & (i == 0))
        return alg.step(ctx, first)._replace(j=None, force=c.force)

    return ctx.loop(body, s._replace(j=None), n, alg.per_step)


def _cost(alg: Krylov, j: int, r: int) -> int:
    return 1 if alg.two_sided and j + 1 >= r else alg.per_step


def _restart(ctx: Context, alg: Krylov, s: KrylovState, keep: int, which: str
             ) -> KrylovState:
    if alg.two_sided:
        return ritz.gkl_restart(ctx, s, keep)
    return ritz.lanczos_restart(ctx, s, keep, which)


def run_budget(ctx: Context, alg: Krylov, s: KrylovState, limit: int, keep: int,
               which: str) -> KrylovState:
    """Steps while ``limit`` products last (at least one step), with thick restarts:
    the fixed-budget path of traced solves. The full restart cycles after the first
    are alike: one compiled loop runs them (:func:`_cycles`), so that the program
    does not grow with the budget."""
    r, jmax = ctx.n_in, int(s.C.shape[-1])
    while s.j < r and not (s.j and ctx.count + _cost(alg, s.j, r) > limit):
        uniform = min(jmax, r - 1 if alg.two_sided else r) - s.j  # same-cost steps left
        if s.j == keep and uniform == jmax - keep:
            s = _cycles(ctx, alg, s, (limit - ctx.count) // (uniform * alg.per_step),
                        which)
            if ctx.count + _cost(alg, s.j, r) > limit:
                break
        n = min(uniform, (limit - ctx.count) // alg.per_step) if uniform > 0 else 1
        s = decompose(ctx, alg.step, s, max(n, 1), alg.per_step)
        if s.j == jmax and s.j < r:
            s = _restart(ctx, alg, s, keep, which)
    return s


def _cycles(ctx: Context, alg: Krylov, s: KrylovState, n: int, which: str
            ) -> KrylovState:
    """``n`` restart cycles of a traced fixed budget: steps from the kept rows to a full
    basis, then a thick restart, under one :meth:`Context.loop`. Each cycle salts its
    restart directions with its index (the body is traced once)."""
    keep, jmax, seed = s.j, int(s.C.shape[-1]), ctx.seed
    if n <= 0:
        return s

    def body(i: Any, c: KrylovState) -> KrylovState:
        ctx.seed = seed + 9973 * (i + 1)
        c = decompose(ctx, alg.step, c._replace(j=keep), jmax - keep, alg.per_step)
        return _restart(ctx, alg, c, keep, which)._replace(j=None)

    try:
        out = ctx.loop(body, s._replace(j=None), n, (jmax - keep) * alg.per_step)
    finally:
        ctx.seed = seed
    return out._replace(j=keep)


# Inside a tol-driven trace, convergence is tested every this many steps (a padded
# factorization of the small problem each time).
TRACED_CHECK_EVERY = 4


def run_to_tol(ctx: Context, alg: Krylov, s: KrylovState, k: int, tol: float, which: str,
               jmin: int, keep: int) -> KrylovState:
    """Traced, tol-driven: one step per iteration of ``Backend.while_loop`` (no host
    read), a device-side convergence test every ``TRACED_CHECK_EVERY`` steps, thick
    restarts under ``Backend.cond``; at most ``DEFAULT_MAXITER`` products. The product
    count (``ctx.count``) becomes a traced integer."""
    xp, b = ctx.xp, ctx.backend
    jmax = int(s.C.shape[-1])
    names = [f for f in s._fields if f not in ("j", "force") and getattr(s, f) is not None]
    max_steps = max(DEFAULT_MAXITER // alg.per_step, jmax)
    count = ctx.count

    def unpack(c: tuple) -> KrylovState:
        return s._replace(j=c[0], force=None, **dict(zip(names, c[3:])))

    def pack(st: KrylovState, n: Any, done: Any) -> tuple:
        return (st.j, n, done) + tuple(getattr(st, f) for f in names)

    def converged(st: KrylovState) -> Array:
        S, X, _, ref = _extract(ctx, alg, st, k, which, _small(ctx, alg, st))
        res = ritz.last_row_residuals(ctx, X, st.j, st.beta)
        ok = (res <= tol * ref) & (fresh_ok(ctx, st, k) | (st.j >= ctx.n_in))
        return xp.all(ok) & (st.j >= jmin)

    def body(c: tuple) -> tuple:
        st, n = alg.step(ctx, unpack(c)), c[1] + 1
        due = ((n % TRACED_CHECK_EVERY) == 0) | (st.j >= jmax)
        done = b.cond(due & (st.j >= jmin), lambda: converged(st), lambda: c[2])
        full = (st.j >= jmax) & ~done
        st = unpack(b.cond(full, lambda: pack(_restart(ctx, alg, st, keep, which)._replace(
            j=st.j * 0 + keep), n, done), lambda: pack(st, n, done)))
        return pack(st, n, done)

    zero = xp.arange(1, device=ctx.device)[0] * 0  # the index dtype of arange
    out = b.while_loop(lambda c: ~c[2] & (c[1] < max_steps), body,
                       pack(s._replace(j=zero), zero, zero > 0))
    ctx.count = count + alg.per_step * out[1]
    return unpack(out)


def fresh_ok(ctx: Context, s: KrylovState, k: int) -> Array:
    """``(B, 1)``: problems whose breakdown-free run is long enough to accept: after a
    breakdown (which hides other copies of a repeated value) ``min(room, 2k + 1)``
    vectors must follow, ``room`` the dimension left."""
    xp = ctx.xp
    room = ctx.n_in - s.fresh_from
    need = xp.minimum(room, xp.zeros_like(room) + (2 * k + 1))
    return ((ctx.real(s.j) - s.fresh_from) >= need)[:, None]


def _small(ctx: Context, alg: Krylov, s: KrylovState) -> Array:
    return ritz.gkl_matrix(ctx, s) if alg.two_sided else ritz.lanczos_matrix(ctx, s)


def _extract(ctx: Context, alg: Krylov, s: KrylovState, k: int, which: str, M: Array):
    """``(values, left coords, right coords, reference of tol)`` of the small problem."""
    xp = ctx.xp
    if alg.two_sided:
        S, X, Y = ritz.svd_ritz(ctx, M, s.j, k)
        return S, X, Y, xp.max(S, axis=-1, keepdims=True)
    vals, Y, radius = ritz.eig_ritz(ctx, M, s.j, which, k)
    return vals, Y, Y, radius


def _check(ctx: Context, alg: Krylov, s: KrylovState, k: int, tol: float, which: str,
           sched: _Schedule):
    """A convergence check: ``(ritz, converged flags (B, k))``, or ``None`` where a
    cheaper screen (``k = 1``) already shows an unconverged problem. The schedule learns
    the convergence rate from either."""
    if not ctx.sliced:  # fixed-width buffers: one piece, then the host reads
        jmax = int(s.C.shape[-1])
        flag, found, q, conv = ctx.stage("check", _check_arrays, alg, k, tol, which,
                                         s.j if s.j == jmax else None)(
            s._replace(force=None))
        ctx.raise_unless(flag)
        sched.observe(s.j, ctx.backend.to_float(q))
        return found, conv
    ok = fresh_ok(ctx, s, k)
    M = _small(ctx, alg, s)
    X = None
    if k == 1 and s.j < int(s.C.shape[-1]):
        worst, X = _screen(ctx, alg, s, M, tol, which, ok)
        if worst > 1:
            sched.observe(s.j, worst)
            return None
    ctx.check_finite(M)
    if X is not None:  # GKL, k = 1: the screen's eigenvectors give the triplet
        S, Xk, Y = ritz.top_triplet(ctx, M, X)
        found = (S, Xk, Y, S)
    else:
        found = _extract(ctx, alg, s, k, which, M)
    res = ritz.last_row_residuals(ctx, found[1], s.j, s.beta)
    ref = tol * found[3]
    sched.observe(s.j, ritz.worst_ratio(ctx, res, ref))
    return found, (res <= ref) & ok


def _check_arrays(ctx: Context, alg: Krylov, k: int, tol: float, which: str,
                  full: int | None, s: KrylovState):
    """The check of a fixed-width state: ``(finite flag, Ritz extraction, worst
    residual ratio, converged flags)``, no host read (``full``: the basis size where the
    basis is full, so that the filled block is factored as the plain path does)."""
    if full is not None:
        s = s._replace(j=full)
    ok = fresh_ok(ctx, s, k)
    M = _small(ctx, alg, s)
    flag = ctx.finite_flag(M)
    found = _extract(ctx, alg, s, k, which, M)
    res = ritz.last_row_residuals(ctx, found[1], s.j, s.beta)
    ref = tol * found[3]
    return flag, found, ritz.max_ratio(ctx, res, ref), (res <= ref) & ok


def _screen(ctx: Context, alg: Krylov, s: KrylovState, M: Array, tol: float, which: str,
            ok: Array) -> tuple[float, Array | None]:
    """The worst ``residual / (tol * scale)`` as one host read (``inf`` where a problem
    may not stop yet): of a few probe problems first in a large batch, where one
    unconverged problem is enough to go on. Also the screen's eigenvectors (GKL)."""
    rows = _probe_rows(ctx, s)
    worst, X = math.inf, None
    for sub in ([rows] if rows is not None else []) + [None]:
        Ms, beta, oks = (M, s.beta, ok) if sub is None else (
            _rows(ctx, M, sub), _rows(ctx, s.beta, sub), _rows(ctx, ok, sub))
        try:
            if alg.two_sided:
                res, ref, X = ritz.svd_screen(ctx, Ms, beta, 1, tol)
                mask = None
            else:
                res, ref, mask = ritz.eig_screen(ctx, Ms, beta, which, tol)
        except Exception:
            ctx.check_finite(M)  # NaN/Inf reported as such
            raise
        inf = ctx.xp.zeros_like(res) + math.inf
        res = ctx.xp.where(oks, res, inf)
        worst = ritz.finite_or_raise(ctx, ritz.worst_ratio(ctx, res, ref, mask), M)
        if worst > 1:
            break
    return worst, X


def _probe_rows(ctx: Context, s: KrylovState) -> Array | None:
    """In a batch of more than ``2 * PROBES`` problems, the ``PROBES`` with the largest
    coupling relative to their scale (the coupling bounds the residual from above)."""
    if ctx.B <= 2 * PROBES:
        return None
    key = s.beta / (s.scale + ctx.tiny_normal)
    return ctx.xp.argsort(key, descending=True)[:PROBES]


def _rows(ctx: Context, x: Array, rows: Array) -> Array:
    return ctx.xp.take(x, rows, axis=0)


def finish(ctx: Context, alg: Krylov, s: KrylovState, k: int, tol: float, which: str,
           jmin: int, vectors: bool, found: Any = None) -> KrylovResult:
    """The result of a decomposition: Ritz values, vectors, residuals, converged flags
    (and, outside a trace, the maxiter warning)."""
    xp = ctx.xp
    r = ctx.n_in
    exact = isinstance(s.j, int) and s.j == r
    if exact and alg.two_sided and not vectors and ctx.sliced:
        # The basis spans the smaller side: residuals are 0; only values are wanted.
        M = _small(ctx, alg, s)
        ctx.check_finite(M)
        if k == 1:  # sqrt(lambda_max(M M^H)): eigvalsh of small stacks is cheaper (CPU)
            lam = xp.linalg.eigvalsh(xp.matmul(M, ctx.H(M)))[:, -1:]
            S = xp.sqrt(xp.maximum(lam, xp.zeros_like(lam)))
        else:
            S = xp.linalg.svdvals(M)[:, :k]
        zero = xp.zeros_like(S)
        return KrylovResult(S, None, None, zero, zero <= 0, ctx.count)
    true_check = not ctx.traced and _rounding_may_reach(ctx, tol)
    j = s.j
    facts = (not isinstance(j, int), exact, isinstance(j, int) and j < jmin,
             j if ctx.staged and j == int(s.C.shape[-1]) else None)
    out, flag, short = ctx.stage("finish", _finish_arrays, alg, k, tol, which, jmin, facts,
                                 true_check)(s._replace(force=None), found)
    ctx.raise_unless(flag)
    if ctx.staged and true_check:
        ctx.count += k  # the true residuals' products, taken inside the piece
    why = "dtype" if short is not None and ctx.backend.any_true(short) else "maxiter"
    if not ctx.traced and not ctx.backend.all_true(out.converged):
        warn_unconverged(alg.name, ctx.count, why)
    return out._replace(num_matvecs=ctx.count)


def _finish_arrays(ctx: Context, alg: Krylov, k: int, tol: float, which: str, jmin: int,
                   facts: tuple, true_check: bool, s: KrylovState, found: Any):
    """The result's arrays, no host read: ``(result, finite flag, values short of tol
    by the dtype's rounding or None)``. ``facts``: whether the step count is traced
    (a user's trace), whether the basis spans the space, whether it is below ``jmin``,
    and the basis size where a staged basis is full."""
    xp = ctx.xp
    traced_j, exact, below, full = facts
    if full is not None:
        s = s._replace(j=full)
    flag = None
    if found is None:
        M = _small(ctx, alg, s)
        flag = ctx.finite_flag(M)
        found = _extract(ctx, alg, s, k, which, M)
    vals, X, Y, ref = found
    res = ritz.last_row_residuals(ctx, X, s.j, s.beta)
    conv = res <= tol * ref
    if traced_j:  # a traced step count (see run_to_tol)
        conv = conv & (fresh_ok(ctx, s, k) | (s.j >= ctx.n_in)) & (s.j >= jmin)
    elif not exact:
        conv = conv & fresh_ok(ctx, s, k)
    if below:
        conv = conv & (res < 0)
    V = s.V[:, :s.j] if ctx.sliced else s.V
    right = _unit_columns(ctx, xp.matmul(xp.matrix_transpose(V), Y))
    left = None
    if alg.two_sided:
        Us = s.U[:, :s.j] if ctx.sliced else s.U
        left = _unit_columns(ctx, xp.matmul(xp.matrix_transpose(Us), X))
    short = None
    if true_check:
        true, flag = _true_residuals(ctx, alg, vals, left, right, flag)
        res = xp.maximum(res, true)
        short = ~(true <= tol * ref) & conv
        conv = conv & ~short
    return KrylovResult(vals, left, right, res, conv, None), flag, short


def _unit_columns(ctx: Context, X: Array) -> Array:
    """Columns scaled to unit norm (rounding in long bases leaves them off by up to
    ``sqrt(size) * eps``); zero columns stay zero."""
    xp = ctx.xp
    nrm = xp.linalg.vector_norm(X, axis=-2)
    return X / ctx.cast(xp.where(nrm > 0, nrm, xp.ones_like(nrm)))[:, None, :]


def _rounding_may_reach(ctx: Context, tol: float) -> bool:
    size = max(ctx.n_in, ctx.n_out)
    return tol < TRUE_RESIDUAL_MARGIN * math.sqrt(size) * ctx.eps


def _true_residuals(ctx: Context, alg: Krylov, vals: Array, left: Array | None,
                    right: Array, flag: Array | None) -> tuple[Array, Array | None]:
    """``||A^H u - sigma v||`` (GKL) or ``||A x - lambda x||`` (Lanczos) of the returned
    vectors, from ``k`` more products (and ``flag`` with their finiteness)."""
    xp = ctx.xp
    if alg.two_sided:
        R = ctx.mm(left, adjoint=True) - right * ctx.cast(vals)[:, None, :]
    else:
        R = ctx.mm(right) - right * ctx.cast(vals)[:, None, :]
    return xp.linalg.vector_norm(R, axis=-2), ctx.finite_flag(R, flag)


class _Schedule:
    """When to check convergence next (deterministic, data-driven).

    Every step while ``J < 2 * CHECK_SPACING``, then every ``J // CHECK_SPACING`` steps,
    and further apart where the worst residual ratio ``res / (tol * scale)`` of the last
    two checks, extrapolated linearly in log scale, says convergence is still far: half
    the predicted steps (Krylov convergence accelerates, so the prediction errs long).
    Before the first check the ratio is taken as ``1 / tol`` at step 0 (a random start's
    residual is of the order of ``||A||``); a gap predicted from that guess is capped at
    ``J`` (at most doubling the basis).
    """

    def __init__(self, tol: float) -> None:
        self.gap = 1
        self.prev: tuple[int, float] = (0, 1.0 / tol)

    def observe(self, J: int, q: float) -> None:
        gap = max(1, J // CHECK_SPACING)
        if math.isfinite(q) and q > 1:
            j0, q0 = self.prev
            if q0 > q and J > j0:
                rate = math.log(q0 / q) / (J - j0)
                predicted = int(math.log(q) / rate / 2)
                gap = max(gap, min(predicted, J) if j0 == 0 else predicted)
            self.prev = (J, q)
        self.gap = gap


class _Verify:
    """Per-problem check restart for ``k >= 2``, so that repeated values are all found.

    A single Krylov sequence holds one copy of each repeated value; the other copies
    appear only after a breakdown. When a problem first looks converged it is restarted
    once with a random vector orthogonal to its basis (a forced breakdown) and must
    converge again after ``2k + 1`` more vectors (:func:`fresh_ok`). ``k = 1`` needs no
    check (the top value is found whatever its multiplicity).
    """

    def __init__(self, ctx: Context, k: int) -> None:
        self.ctx = ctx
        self.on = k > 1
        self.done = ctx.zeros((ctx.B,), real=True) > 0 if self.on else None
        self.force: Array | None = None

    def accept(self, ok: Array) -> bool:
        """Given per-value flags ``(B, k)``, whether the solver may stop now."""
        xp, b = self.ctx.xp, self.ctx.backend
        ready = xp.all(ok, axis=-1)
        if not self.on:
            return b.all_true(ready)
        if b.all_true(ready & self.done):
            return True
        need = ready & ~self.done
        if b.any_true(need):
            self.force = need
            self.done = self.done | need
        return False

    def take(self) -> Array | None:
        force, self.force = self.force, None
        return force
