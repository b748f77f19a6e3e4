"""The adaptive Krylov driver: steps until the Ritz residuals meet ``tol``.

On top of the decompositions of :mod:`.krylov` and the extraction of :mod:`.ritz`:
convergence checks on a data-driven schedule, thick restarts when the basis is full, a
guard against accepting convergence right after a breakdown, a check restart for
``k >= 2`` (so that every copy of a repeated value is found), the maxiter warning, and
a final check of the returned vectors' true residuals where the dtype's rounding may
reach ``tol``. The decisions are taken on the host (one read each), or, where the solve
runs as one compiled program (an eager JAX solve, ``Problem.staging``) or inside a
user's trace (``jax.jit``, ``tf.function``), the same decisions on the device
(:func:`run_on_device`), the errors and warnings read back once at the end. Inside a
user's trace with ``maxiter``, a fixed budget of steps runs (:func:`run_budget`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

from ..backends import get_backend
from . import ritz
from .krylov import Krylov, KrylovState, check_restart, decompose, init
from .problem import Problem, warn_unconverged
from .ritz import KrylovResult

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
# A screen whose small problems hold at most this many entries (``B * J * J``) runs on
# the host: one transfer, then NumPy's operations of a few microseconds each instead of
# a framework's per-operation cost (tens of microseconds eager on a busy CPU, a kernel
# launch each on a GPU); larger batches stay where they are.
HOST_SCREEN_ENTRIES = 1 << 16
# A check costs a small eigendecomposition (about ``10 J^3`` flops a problem) and a host
# read with its dispatches (counted as ``CHECK_FIXED_FLOPS``); a step costs at least its
# reorthogonalization (``4 J n`` flops a problem) and a product. Where a check costs at
# most ``CHECK_SHARE`` of that reorthogonalization (long vectors: parameter-sized
# Hessians), the driver checks after every step: a product saved pays for many checks.
CHECK_FIXED_FLOPS = 1e6
CHECK_SHARE = 0.25
# The returned vectors' true residuals are checked (k more products) when ``tol`` is
# within this factor of the rounding level ``sqrt(size) * eps`` of the bases.
TRUE_RESIDUAL_MARGIN = 10.0


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


def krylov_solve(p: Problem, alg: Krylov, k: int, *, tol: float, maxiter: int | None,
                 v0: Array | None = None, ncv: int | None = None, which: str = "LM",
                 vectors: bool = True, count: int = 0) -> KrylovResult:
    """The top ``k`` singular triplets (GKL; iterate from the smaller side) or wanted
    eigenpairs (Lanczos) of ``p``'s operator, to relative accuracy ``tol``, after
    ``count`` products (those that made ``v0``).

    Three regimes: inside a user's trace with ``maxiter``, a fixed budget
    (:func:`run_budget`); inside a user's trace without it, or an eager solve that
    runs compiled (``Problem.staging``), the driver's loop on the device as one program
    (:func:`run_on_device`); otherwise the same decisions taken on the host, step by
    step."""
    r = p.n_in
    p = p.with_tol(tol)
    if p.traced and maxiter is not None:
        steps = (maxiter + alg.per_step - 1) // alg.per_step
        jmin, jmax, keep = basis_sizes(r, k, ncv, steps)
        s = run_budget(p, alg, init(p, v0, jmax, two_sided=alg.two_sided, count=count), maxiter,
                       keep, which)
        return finish(p, alg, s, k, tol, which, jmin, vectors)
    sizes = basis_sizes(r, k, ncv)
    limit = maxiter if maxiter is not None else max(DEFAULT_MAXITER, alg.per_step * r)
    # the compiled solve always returns vectors: ``vectors`` is no part of its key, so
    # a solve with and without them shares one program
    p = p.staging("krylov", alg, k, tol, which, detach=True)
    if p.traced or p.staged:
        true_check = not p.traced and _rounding_may_reach(p, tol)
        out, flag, short, done = p.stage("krylov", _solve_arrays, alg, k, tol, which, sizes,
                                         true_check)(v0, p.counter(count), p.counter(limit))
        return out if p.traced else _report(p, alg, out, flag, short, done)
    return _solve_on_host(p, alg, k, tol, which, sizes, limit, v0, count, vectors)


def _solve_on_host(p: Problem, alg: Krylov, k: int, tol: float, which: str,
                   sizes: tuple[int, int, int], limit: int, v0: Array | None, count: int,
                   vectors: bool) -> KrylovResult:
    """The driver's loop with a host read per decision: steps, convergence checks on the
    data-driven schedule, the check restart for ``k >= 2``, thick restarts."""
    r = p.n_in
    jmin, jmax, keep = sizes
    s = init(p, v0, jmax, two_sided=alg.two_sided, count=count)
    lo, hi = _cheap_range(p, alg, jmax)
    sched = _Schedule(tol, lambda J: lo <= J <= hi)
    verify = _Verify(p, k, r)
    jcheck = min(r, jmin + FIRST_CHECK_DELAY)
    since, found = 0, None
    while s.j < r and not (s.j and s.count + _cost(alg, s.j, r) > limit):
        s = alg.step(p, s)
        since += 1
        if s.j == r:
            break
        if s.j >= jmin and ((s.j >= jcheck and since >= sched.gap) or s.j == jmax):
            since = 0
            checked = _check(p, alg, s, k, tol, which, sched)
            if checked is not None and verify.accept(checked[1]):
                found = checked[0]
                break
            force = verify.take(s.j)
            if force is not None:
                s = check_restart(p, s, force)
            sched.wait(verify.wait)
        if s.j == jmax:
            s = _restart(p, alg, s, keep, which)
    return finish(p, alg, s, k, tol, which, jmin, vectors, found)


def _cheap_check(p: Problem, alg: Krylov, J: int) -> bool:
    """Whether a check at basis size ``J`` costs at most ``CHECK_SHARE`` of a step's
    reorthogonalization (see ``CHECK_FIXED_FLOPS``)."""
    width = p.n_in + (p.n_out if alg.two_sided else 0)
    return CHECK_FIXED_FLOPS + 10 * p.B * J ** 3 <= CHECK_SHARE * 4 * p.B * J * width


def _cheap_range(p: Problem, alg: Krylov, jmax: int) -> tuple[int, int]:
    """The basis sizes ``[lo, hi]`` up to ``jmax`` where checks are cheap
    (:func:`_cheap_check`; an interval: the fixed cost weighs at small sizes, the
    factorization at large ones); ``lo > hi`` where there are none."""
    cheap = [J for J in range(1, jmax + 1) if _cheap_check(p, alg, J)]
    return (cheap[0], cheap[-1]) if cheap else (jmax + 1, 0)


def _cost(alg: Krylov, j: int, r: int) -> int:
    return 1 if alg.two_sided and j + 1 >= r else alg.per_step


def _restart(p: Problem, alg: Krylov, s: KrylovState, keep: int, which: str
             ) -> KrylovState:
    if alg.two_sided:
        return ritz.gkl_restart(p, s, keep)
    return ritz.lanczos_restart(p, s, keep, which)


def run_budget(p: Problem, alg: Krylov, s: KrylovState, limit: int, keep: int,
               which: str) -> KrylovState:
    """Steps while ``limit`` products last (at least one step), with thick restarts:
    the fixed-budget path of traced solves. The full restart cycles after the first
    are alike: one compiled loop runs them (:func:`_cycles`), so that the program
    does not grow with the budget."""
    r, jmax = p.n_in, int(s.C.shape[-1])
    while s.j < r and not (s.j and s.count + _cost(alg, s.j, r) > limit):
        uniform = min(jmax, r - 1 if alg.two_sided else r) - s.j  # same-cost steps left
        if s.j == keep and uniform == jmax - keep:
            s = _cycles(p, alg, s, (limit - s.count) // (uniform * alg.per_step), which)
            if s.count + _cost(alg, s.j, r) > limit:
                break
        n = min(uniform, (limit - s.count) // alg.per_step) if uniform > 0 else 1
        s = decompose(p, alg.step, s, max(n, 1), alg.per_step)
        if s.j == jmax and s.j < r:
            s = _restart(p, alg, s, keep, which)
    return s


def _cycles(p: Problem, alg: Krylov, s: KrylovState, n: int, which: str
            ) -> KrylovState:
    """``n`` restart cycles of a traced fixed budget: steps from the kept rows to a full
    basis, then a thick restart, under one :meth:`Problem.loop` (each cycle's restart
    directions are salted by its product count)."""
    keep, jmax = s.j, int(s.C.shape[-1])
    if n <= 0:
        return s

    def body(i: Any, c: KrylovState) -> KrylovState:
        c = decompose(p, alg.step, c._replace(j=keep), jmax - keep, alg.per_step)
        return _restart(p, alg, c, keep, which)._replace(j=None)

    out = p.loop(body, s._replace(j=None), n, (jmax - keep) * alg.per_step)
    return out._replace(j=keep)


def _solve_arrays(p: Problem, alg: Krylov, k: int, tol: float, which: str,
                  sizes: tuple[int, int, int], true_check: bool, v0: Array | None,
                  count: Any, limit: Any):
    """A whole solve with no host read (one compiled program of an eager solve, or
    part of a user's trace): the start, :func:`run_on_device`, and the result's arrays.
    Returns ``(result, finite flag or None, whether a value fell short of tol by the
    dtype's rounding (or None), whether every value converged)``: what :func:`_report`
    reads, reduced here (an eager reduction would compile per shape)."""
    xp = p.xp
    jmin, jmax, keep = sizes
    s = init(p, v0, jmax, two_sided=alg.two_sided, count=count)
    s, flag = run_on_device(p, alg, s, k, tol, which, sizes, limit)
    out, last, short = _finish_arrays(p, alg, k, tol, which, jmin, (True, False, False),
                                      true_check, s, None)
    return (out, _and(flag, last), None if short is None else xp.any(short),
            xp.all(out.converged))


def _and(a: Array | None, b: Array | None) -> Array | None:
    return b if a is None else a if b is None else a & b


class _Loop(NamedTuple):
    """The state of the driver's loop on the device, besides the Krylov state: steps
    since the last check, the schedule (:class:`_Schedule`: the gap and the last
    observation), the check restart (:class:`_Verify`: problems done, problems to
    restart at the next step), whether to stop, and whether every check was finite."""

    since: Array
    gap: Array
    prev_j: Array
    prev_q: Array
    done: Array
    stop: Array
    finite: Array


def run_on_device(p: Problem, alg: Krylov, s: KrylovState, k: int, tol: float, which: str,
                  sizes: tuple[int, int, int], limit: Any) -> tuple[KrylovState, Array]:
    """The decisions of the host loop (:func:`_solve_on_host`: the check schedule, the
    check restart, thick restarts, the product limit) under ``Backend.while_loop``, one
    step an iteration, each check and restart under ``Backend.cond``: no host read.
    Returns the final state (a traced step count and product count) and whether every
    checked small problem was finite (a check with NaN/Inf stops the loop, as the host
    loop's error does)."""
    xp, b = p.xp, p.backend
    r, (jmin, jmax, keep) = p.n_in, sizes
    jcheck = min(r, jmin + FIRST_CHECK_DELAY)
    zero = xp.arange(1, device=p.device)[0] * 0  # the index dtype of arange
    sched_dtype = p.backend.dtype_from_name("float64") if p.backend.has_float64() \
        else p.real_dtype
    no = p.zeros((p.B,), real=True) > 0
    count0 = s.count if not isinstance(s.count, int) else zero + s.count
    s = s._replace(j=zero, count=count0)
    loop = _Loop(zero, zero + 1, zero, xp.astype(zero, sched_dtype) + 1.0 / tol, no,
                 zero > 0, zero == 0)
    names = [f for f in s._fields if f != "j" and getattr(s, f) is not None]

    def pack(st: KrylovState, lp: _Loop) -> tuple:
        return (st.j,) + tuple(getattr(st, f) for f in names) + tuple(lp)

    def unpack(c: tuple) -> tuple[KrylovState, _Loop]:
        st = s._replace(j=c[0], **dict(zip(names, c[1:1 + len(names)])))
        return st, _Loop(*c[1 + len(names):])

    def more(c: tuple) -> Array:
        st, lp = unpack(c)
        spent = (st.j > 0) & (st.count + _cost_on_device(p, alg, st, jmax) > limit)
        return ~lp.stop & (st.j < r) & ~spent

    def body(c: tuple) -> tuple:
        st, lp = unpack(c)
        st = _step_on_device(p, alg, st, jmax)
        lp = lp._replace(since=lp.since + 1, stop=st.j >= r)
        due = ~lp.stop & (st.j >= jmin) & (
            ((st.j >= jcheck) & (lp.since >= lp.gap)) | (st.j == jmax))
        st, lp = unpack(b.cond(due, lambda: pack(*_check_on_device(p, alg, st, lp, k, tol,
                                                                    which)),
                               lambda: pack(st, lp)))
        full = (st.j == jmax) & ~lp.stop
        return b.cond(full, lambda: pack(_restart(p, alg, st, keep, which)._replace(
            j=st.j * 0 + keep), lp), lambda: pack(st, lp))

    st, lp = unpack(b.while_loop(more, body, pack(s, loop)))
    return st, lp.finite


def _cost_on_device(p: Problem, alg: Krylov, s: KrylovState, jmax: int) -> Any:
    """:func:`_cost` at a traced row: GKL's last step of a full basis takes one product
    (only where the basis may fill the space, ``jmax == r``)."""
    if not (alg.two_sided and jmax >= p.n_in):
        return alg.per_step
    return alg.per_step - p.xp.astype(s.j + 1 >= p.n_in, s.count.dtype)


def _step_on_device(p: Problem, alg: Krylov, s: KrylovState, jmax: int) -> KrylovState:
    """One step at a traced row. Where the basis may fill the space (GKL, ``jmax ==
    r``), the last step takes no adjoint product (see ``krylov.gkl_step``): its result
    is the full step's with the adjoint half undone (the product it took is not
    counted), so that the program holds one step, not two."""
    out = alg.step(p, s)
    if not (alg.two_sided and jmax >= p.n_in):
        return out
    xp = p.xp
    last = s.j + 1 >= p.n_in
    return out._replace(
        v=xp.where(last, s.v, out.v), beta=xp.where(last, xp.zeros_like(out.beta), out.beta),
        fresh_from=xp.where(last, s.fresh_from, out.fresh_from),
        last_break=xp.where(last, s.last_break, out.last_break),
        count=out.count - xp.astype(last, out.count.dtype))


def _check_on_device(p: Problem, alg: Krylov, s: KrylovState, lp: _Loop, k: int,
                     tol: float, which: str) -> tuple[KrylovState, _Loop]:
    """A convergence check (:func:`_check_arrays`) with the schedule's observation and
    the check restart's decision: the loop stops where every problem is accepted or the
    small problem is not finite; else the problems due for the check restart have it
    (:func:`.krylov.check_restart`)."""
    xp = p.xp
    flag, _, q, conv = _check_arrays(p, alg, k, tol, which, s)
    gap, prev_j, prev_q = _observe_on_device(p, s.j, q, lp, _cheap_range(
        p, alg, int(s.C.shape[-1])))
    ready = xp.all(conv, axis=-1)
    finite = lp.finite if flag is None else lp.finite & flag
    if k == 1:  # the top value needs no check restart (see _Verify)
        accept, done = xp.all(ready), lp.done
    else:
        accept = xp.all(ready & lp.done)
        force = ready & ~lp.done & ~accept
        done = lp.done | force
        # _Verify.take's wait: the restart's fresh rows, once every problem had its own
        wait = xp.minimum(p.n_in - s.j, s.j * 0 + 2 * k + 1)
        gap = xp.where(xp.any(force) & xp.all(done), wait, gap)
        s = check_restart(p, s, force)  # no change where force is all False
    return s, _Loop(lp.since * 0, gap, prev_j, prev_q, done,
                                          accept | ~finite, finite)


def _observe_on_device(p: Problem, J: Array, q: Array, lp: _Loop, cheap: tuple[int, int]):
    """:meth:`_Schedule.observe` on traced values: ``(gap, prev_j, prev_q)``; ``cheap``:
    the sizes where checks are cheap (:func:`_cheap_range`)."""
    xp = p.xp
    q = xp.astype(q, lp.prev_q.dtype)
    base = xp.maximum(J // CHECK_SPACING, J * 0 + 1)
    live = xp.isfinite(q) & (q > 1)
    closer = live & (lp.prev_q > q) & (J > lp.prev_j)
    one = xp.ones_like(q)
    steps = xp.astype(xp.where(closer, J - lp.prev_j, J * 0 + 1), q.dtype)
    rate = xp.log(xp.where(closer, lp.prev_q / q, one + one)) / steps
    predicted = xp.log(xp.where(closer, q, one + one)) / rate / 2
    predicted = xp.astype(xp.floor(xp.minimum(predicted, one * 2.0**30)), J.dtype)
    predicted = xp.where(lp.prev_j == 0, xp.minimum(predicted, J), predicted)
    gap = xp.where(closer, xp.maximum(base, predicted), base)
    lo, hi = cheap
    gap = xp.where((J >= lo) & (J <= hi), J * 0 + 1, gap)
    if lo <= hi:  # no jump past the size from which checks are cheap
        gap = xp.where(J < lo, xp.minimum(gap, lo - J), gap)
    return gap, xp.where(live, J, lp.prev_j), xp.where(live, q, lp.prev_q)


def fresh_ok(p: Problem, s: KrylovState, k: int) -> Array:
    """``(B, 1)``: problems whose breakdown-free run is long enough to accept: after a
    breakdown (which hides other copies of a repeated value) ``min(room, 2k + 1)``
    vectors must follow, ``room`` the dimension left."""
    xp = p.xp
    room = p.n_in - s.fresh_from
    need = xp.minimum(room, xp.zeros_like(room) + (2 * k + 1))
    return ((p.real(s.j) - s.fresh_from) >= need)[:, None]


def _small(p: Problem, alg: Krylov, s: KrylovState) -> Array:
    return ritz.gkl_matrix(p, s) if alg.two_sided else ritz.lanczos_matrix(p, s)


def _extract(p: Problem, alg: Krylov, s: KrylovState, k: int, which: str, M: Array):
    """``(values, left coords, right coords, reference of tol)`` of the small problem."""
    xp = p.xp
    if alg.two_sided:
        S, X, Y = ritz.svd_ritz(p, M, s.j, k)
        return S, X, Y, xp.max(S, axis=-1, keepdims=True)
    vals, Y, radius = ritz.eig_ritz(p, M, s.j, which, k)
    return vals, Y, Y, radius


def _check(p: Problem, alg: Krylov, s: KrylovState, k: int, tol: float, which: str,
           sched: _Schedule):
    """A convergence check: ``(ritz, converged flags (B, k))``, or ``None`` where a
    cheaper screen (``k = 1``) already shows an unconverged problem. The schedule learns
    the convergence rate from either."""
    if not p.sliced:  # fixed-width buffers: the check's arrays, then the host reads
        flag, found, q, conv = _check_arrays(p, alg, k, tol, which, s)
        p.raise_unless(flag)
        sched.observe(s.j, p.backend.to_float(q))
        return found, conv
    ok = fresh_ok(p, s, k)
    M = _small(p, alg, s)
    X = None
    if k == 1 and s.j < int(s.C.shape[-1]):
        worst, X = _screen(p, alg, s, M, tol, which, ok)
        if worst > 1:
            sched.observe(s.j, worst)
            return None
    p.check_finite(M)
    if X is not None:  # GKL, k = 1: the screen's eigenvectors give the triplet
        S, Xk, Y = ritz.top_triplet(p, M, X)
        found = (S, Xk, Y, S)
    else:
        found = _extract(p, alg, s, k, which, M)
    res = ritz.last_row_residuals(p, found[1], s.j, s.beta)
    ref = tol * found[3]
    sched.observe(s.j, ritz.worst_ratio(p, res, ref))
    return found, (res <= ref) & ok


def _check_arrays(p: Problem, alg: Krylov, k: int, tol: float, which: str,
                  s: KrylovState):
    """The check of a fixed-width state: ``(finite flag, Ritz extraction, worst
    residual ratio, converged flags)``, no host read."""
    ok = fresh_ok(p, s, k)
    M = _small(p, alg, s)
    flag = p.finite_flag(M)
    found = _extract(p, alg, s, k, which, M)
    res = ritz.last_row_residuals(p, found[1], s.j, s.beta)
    ref = tol * found[3]
    return flag, found, ritz.max_ratio(p, res, ref), (res <= ref) & ok


def _screen(p: Problem, alg: Krylov, s: KrylovState, M: Array, tol: float, which: str,
            ok: Array) -> tuple[float, Array | None]:
    """The worst ``residual / (tol * scale)`` as one host read (``inf`` where a problem
    may not stop yet): of a few probe problems first in a large batch, where one
    unconverged problem is enough to go on. Also the screen's eigenvectors (GKL). Small
    problems are screened on the host (see ``HOST_SCREEN_ENTRIES``)."""
    arrays = (M, s.beta, s.scale, ok)
    q = p
    if math.prod(M.shape) <= HOST_SCREEN_ENTRIES:
        q = _host_problem(p)
        arrays = tuple(p.backend.to_numpy(a) for a in arrays)
    M, beta, scale, ok = arrays
    rows = _probe_rows(q, beta, scale)
    worst, X = math.inf, None
    for sub in ([rows] if rows is not None else []) + [None]:
        Ms, bs, oks = (M, beta, ok) if sub is None else (
            _rows(q, M, sub), _rows(q, beta, sub), _rows(q, ok, sub))
        try:
            if alg.two_sided:
                res, ref, X = ritz.svd_screen(q, Ms, bs, 1, tol)
                mask = None
            else:
                res, ref, mask = ritz.eig_screen(q, Ms, bs, which, tol)
        except Exception:
            q.check_finite(M)  # NaN/Inf reported as such
            raise
        inf = q.xp.zeros_like(res) + math.inf
        res = q.xp.where(oks, res, inf)
        worst = ritz.finite_or_raise(q, ritz.worst_ratio(q, res, ref, mask), M)
        if worst > 1:
            break
    if X is not None and q is not p:
        X = p.backend.from_numpy(X, dtype=p.dtype, device=p.device)
    return worst, X


def _host_problem(p: Problem) -> Problem:
    """``p`` with NumPy arrays on the host (small problems; no products)."""
    nb = get_backend("numpy")
    return dataclasses.replace(
        p, backend=nb, xp=nb.solver_xp, dtype=nb.dtype_from_name(p.backend.dtype_name(p.dtype)),
        real_dtype=nb.dtype_from_name(p.real_name), device="cpu", vectors="cpu",
        traced=False, staged=False, _stage=None, shard_sum=None)


def _probe_rows(p: Problem, beta: Array, scale: Array) -> Array | None:
    """In a batch of more than ``2 * PROBES`` problems, the ``PROBES`` with the largest
    coupling relative to their scale (the coupling bounds the residual from above)."""
    if p.B <= 2 * PROBES:
        return None
    key = beta / (scale + p.tiny_normal)
    return p.xp.argsort(key, descending=True)[:PROBES]


def _rows(p: Problem, x: Array, rows: Array) -> Array:
    return p.xp.take(x, rows, axis=0)


def finish(p: Problem, alg: Krylov, s: KrylovState, k: int, tol: float, which: str,
           jmin: int, vectors: bool, found: Any = None) -> KrylovResult:
    """The result of a decomposition: Ritz values, vectors, residuals, converged flags
    (and, outside a trace, the maxiter warning)."""
    xp = p.xp
    r = p.n_in
    exact = isinstance(s.j, int) and s.j == r
    if exact and alg.two_sided and not vectors and p.sliced:
        # The basis spans the smaller side: residuals are 0; only values are wanted.
        M = _small(p, alg, s)
        p.check_finite(M)
        if k == 1:  # eigvalsh of small stacks is cheaper than svdvals (CPU)
            lam, _, scale = ritz.gram_eigh(p, M, vectors=False)
            S = ritz.top_value(p, lam, scale)
        else:
            S = xp.linalg.svdvals(M)[:, :k]
        zero = xp.zeros_like(S)
        return KrylovResult(S, None, None, zero, zero <= 0, p.host_int(s.count))
    true_check = not p.traced and _rounding_may_reach(p, tol)
    j = s.j
    facts = (not isinstance(j, int), exact, isinstance(j, int) and j < jmin)
    out, flag, short = _finish_arrays(p, alg, k, tol, which, jmin, facts, true_check,
                                      s, found)
    if p.traced:
        return out
    return _report(p, alg, out, flag, None if short is None else xp.any(short),
                   xp.all(out.converged))


def _report(p: Problem, alg: Krylov, out: KrylovResult, flag: Array | None,
            short: Array | None, done: Array) -> KrylovResult:
    """The host's part of an eager result: the FloatingPointError of a non-finite
    product, the product count as an int, the unconverged warning where ``done`` (0-d)
    is False (``maxiter``, or ``dtype`` where ``short`` (0-d) says that only the
    dtype's rounding kept a value from ``tol``)."""
    p.raise_unless(flag)
    count = p.host_int(out.num_matvecs)
    if not p.backend.to_bool(done):
        short = short is not None and p.backend.to_bool(short)
        warn_unconverged(alg.name, count, "dtype" if short else "maxiter")
    return out._replace(num_matvecs=count)


def _finish_arrays(p: Problem, alg: Krylov, k: int, tol: float, which: str, jmin: int,
                   facts: tuple, true_check: bool, s: KrylovState, found: Any):
    """The result's arrays, no host read: ``(result, finite flag, values short of tol
    by the dtype's rounding or None)``. ``facts``: whether the step count is traced,
    whether the basis spans the space, whether it is below ``jmin`` (the last two of a
    Python step count)."""
    xp = p.xp
    traced_j, exact, below = facts
    flag = None
    if found is None:
        M = _small(p, alg, s)
        flag = p.finite_flag(M)
        found = _extract(p, alg, s, k, which, M)
    vals, X, Y, ref = found
    res = ritz.last_row_residuals(p, X, s.j, s.beta)
    conv = res <= tol * ref
    if traced_j:  # a traced step count (see run_on_device)
        conv = conv & (fresh_ok(p, s, k) | (s.j >= p.n_in)) & (s.j >= jmin)
    elif not exact:
        conv = conv & fresh_ok(p, s, k)
    if below:
        conv = conv & (res < 0)
    V = s.V[:, :s.j] if p.sliced else s.V
    right = _unit_columns(p, xp.matmul(xp.matrix_transpose(V), Y))
    left = None
    if alg.two_sided:
        Us = s.U[:, :s.j] if p.sliced else s.U
        left = _unit_columns(p, xp.matmul(xp.matrix_transpose(Us), X))
    short, count = None, s.count
    if true_check:
        true, flag = _true_residuals(p, alg, vals, left, right, flag)
        count = count + k
        res = xp.maximum(res, true)
        short = ~(true <= tol * ref) & conv
        conv = conv & ~short
    return KrylovResult(vals, left, right, res, conv, count), flag, short


def _unit_columns(p: Problem, X: Array) -> Array:
    """Columns scaled to unit norm (rounding in long bases leaves them off by up to
    ``sqrt(size) * eps``); zero columns stay zero."""
    xp = p.xp
    nrm = p.col_norms(X)
    return X / p.cast(xp.where(nrm > 0, nrm, xp.ones_like(nrm)))[:, None, :]


def _rounding_may_reach(p: Problem, tol: float) -> bool:
    size = max(p.n_in, p.n_out)
    return tol < TRUE_RESIDUAL_MARGIN * math.sqrt(size) * p.eps


def _true_residuals(p: Problem, alg: Krylov, vals: Array, left: Array | None,
                    right: Array, flag: Array | None) -> tuple[Array, Array | None]:
    """``||A^H u - sigma v||`` (GKL) or ``||A x - lambda x||`` (Lanczos) of the returned
    vectors, from ``k`` more products (and ``flag`` with their finiteness)."""
    if alg.two_sided:
        R = p.mm(left, adjoint=True) - right * p.cast(vals)[:, None, :]
    else:
        R = p.mm(right) - right * p.cast(vals)[:, None, :]
    return p.col_norms(R), p.finite_flag(R, flag)


class _Schedule:
    """When to check convergence next (deterministic, data-driven).

    Every step where checks are cheap next to steps (``cheap(J)``, see
    ``CHECK_FIXED_FLOPS``). Otherwise every step while ``J < 2 * CHECK_SPACING``, then
    every ``J // CHECK_SPACING`` steps,
    and further apart where the worst residual ratio ``res / (tol * scale)`` of the last
    two checks, extrapolated linearly in log scale, says convergence is still far: half
    the predicted steps (Krylov convergence accelerates, so the prediction errs long).
    Before the first check the ratio is taken as ``1 / tol`` at step 0 (a random start's
    residual is of the order of ``||A||``); a gap predicted from that guess is capped at
    ``J`` (at most doubling the basis). After a check restart, the next check comes at
    the first step where it may accept (:meth:`wait`).
    """

    def __init__(self, tol: float, cheap: Any = None) -> None:
        self.gap = 1
        self.prev: tuple[int, float] = (0, 1.0 / tol)
        self.cheap = cheap or (lambda J: False)

    def wait(self, steps: int) -> None:
        """No check before ``steps`` more steps (a check restart's fresh rows)."""
        if steps:
            self.gap = steps

    def observe(self, J: int, q: float) -> None:
        gap = max(1, J // CHECK_SPACING)
        if self.cheap(J):
            gap = 1
            if math.isfinite(q) and q > 1:
                self.prev = (J, q)
        elif math.isfinite(q) and q > 1:
            j0, q0 = self.prev
            if q0 > q and J > j0:
                rate = math.log(q0 / q) / (J - j0)
                predicted = int(math.log(q) / rate / 2)
                gap = max(gap, min(predicted, J) if j0 == 0 else predicted)
            self.prev = (J, q)
        # no jump past the size from which checks are cheap
        self.gap = next((g for g in range(1, gap) if self.cheap(J + g)), gap)


class _Verify:
    """Per-problem check restart for ``k >= 2``, so that repeated values are all found.

    A single Krylov sequence holds one copy of each repeated value; the other copies
    appear only after a breakdown. When a problem first looks converged it is restarted
    once with a random vector orthogonal to its basis (a forced breakdown) and must
    converge again after ``2k + 1`` more vectors (:func:`fresh_ok`). ``k = 1`` needs no
    check (the top value is found whatever its multiplicity).
    """

    def __init__(self, p: Problem, k: int, r: int) -> None:
        self.p, self.k, self.r = p, k, r
        self.on = k > 1
        self.done = p.zeros((p.B,), real=True) > 0 if self.on else None
        self.force: Array | None = None
        self.wait = 0  # steps before a restarted problem may be accepted

    def accept(self, ok: Array) -> bool:
        """Given per-value flags ``(B, k)``, whether the solver may stop now."""
        xp, b = self.p.xp, self.p.backend
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

    def take(self, j: int = 0) -> Array | None:
        """The problems to restart now (their next vector, at row ``j``), and in
        ``wait`` the steps until they may be accepted (:func:`fresh_ok`'s rows from the
        restart vector's) once every problem has had its restart: before, a check in
        between may find others ready for theirs."""
        force, self.force = self.force, None
        self.wait = 0
        if force is not None and self.p.backend.all_true(self.done):
            self.wait = min(self.r - j, 2 * self.k + 1)
        return force
