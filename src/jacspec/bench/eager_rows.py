"""Rows "eager / jit" (JAX): eager jacspec calls against the same call inside
``jax.jit``, after the call that compiles (an eager configuration runs compiled from its
first call: the linearization and one program for the solve), and the first call of a
new configuration against ``jax.jit``'s first call.
"""

from __future__ import annotations

import time
import warnings

from .models import digits
from .registry import Row, register
from .timing import interleaved_times, ms, repetitions

TARGET = 1.5


@register("eager", "jax", target=f"<= {TARGET}")
def eager_jax(quick: bool) -> list[Row]:
    """Eager calls against the same call inside ``jax.jit`` on the design MLP (B=128
    per-sample 10x64 Jacobians), after the call that compiles (an eager configuration
    runs compiled from its first call); and the first calls' times in their own row."""
    import jax
    import jax.numpy as jnp

    import jacspec as js

    from .models_jax import mlp

    sizes, B, tol = [64, 256, 256, 10], 128, 1e-4
    X, _ = digits()
    xb = jnp.asarray(X[:B])
    f = mlp(sizes)
    reps = max(3 * repetitions(quick), 15)
    arch = "-".join(map(str, sizes))
    rows = []
    for method in ("lanczos", "power"):
        def eager(method=method, maxiter=None):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                return js.svds(js.jacobian(f, xb, batched=True), method=method, tol=tol,
                               maxiter=maxiter)

        first = eager()  # compiles the linearization and the solver's program
        nprod = int(first.num_matvecs)
        # inside jax.jit: Lanczos iterates to tol as well; power runs a fixed budget,
        # given the count the eager call needed
        budget = None if method == "lanczos" else nprod
        jitted = jax.jit(lambda x, method=method, budget=budget: js.svds(
            js.jacobian(f, x, batched=True), method=method, tol=tol, maxiter=budget).values)
        t = interleaved_times({"eager": lambda e=eager: e().values, "jit": lambda g=jitted: g(xb)},
                              reps, jax.block_until_ready)
        ratio = t["eager"] / t["jit"]
        rows.append(dict(
            name=f"eager / jit (jax): {method}", jacspec=ms(t["eager"]),
            reference=ms(t["jit"]), ratio=ratio, target=f"<= {TARGET}", met=ratio <= TARGET,
            configuration=f"B={B}, random MLP {arch} tanh, float32, per-sample Jacobians "
            f"{sizes[-1]}x{sizes[0]}, svds method={method!r} tol={tol} ({nprod} products"
            f"{'' if budget is None else ' as maxiter inside jax.jit'}); eager after one "
            f"call of the configuration vs the same call inside jax.jit; {reps} rounds "
            "in turn",
            details=dict(eager_s=t["eager"], jit_s=t["jit"], products=nprod)))
    # first calls of a new configuration (another batch size: shapes not seen yet)
    xf = jnp.asarray(X[:B - 1])

    def call(x=xf):
        return js.svds(js.jacobian(f, x, batched=True), method="lanczos", tol=tol).values

    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        times.append(time.perf_counter() - t0)
    steady = interleaved_times({"eager": call}, reps, jax.block_until_ready)["eager"]
    jf = jax.jit(lambda x: js.svds(js.jacobian(f, x, batched=True), method="lanczos",
                                   tol=tol).values)
    t0 = time.perf_counter()
    jax.block_until_ready(jf(xf))
    t_jit_first = time.perf_counter() - t0
    rows.append(dict(
        name="first call compile (jax)",
        jacspec=f"{ms(times[0])} / {ms(times[1])} / {ms(steady)}",
        reference=f"jax.jit first call {ms(t_jit_first)}", ratio=times[0] / t_jit_first,
        target=f"<= {TARGET}", met=times[0] / t_jit_first <= TARGET,
        configuration=f"B={B - 1}, MLP {arch}, svds lanczos tol={tol}, eager: the first "
        "call (compiles the linearization and the solver's program), the second, then "
        "steady state; reference: the first call of the same solve inside jax.jit (trace "
        "and compile); ratio: eager first call / jax.jit first call",
        details=dict(first_s=times[0], second_s=times[1], third_s=times[2],
                     steady_s=steady, jit_first_s=t_jit_first)))
    return rows
