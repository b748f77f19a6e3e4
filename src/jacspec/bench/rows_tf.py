"""TensorFlow rows of ``jacspec bench``: overhead (eager and under ``tf.function``) and
batched vs per-sample loop.

The reference of the overhead rows is a hand-written ``tf.GradientTape`` loop doing the
products jacspec's TensorFlow adapter takes: one forward pass under a persistent tape, a
VJP as ``tape.gradient`` with ``output_gradients``, a JVP as the derivative of that VJP
with respect to its cotangent on a second persistent tape. Under ``tf.function`` both
sides run a fixed number of products (jacspec: ``maxiter``) with no host reads; eagerly,
jacspec stops on its own and the reference runs the same number of products.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from .rows import OVERHEAD_CASES, _digits, _ms, interleaved_times, median_time

Row = dict[str, Any]

# Round counts of the interleaved overhead timings: a stable median in a few seconds.
TRACED_ROUNDS = 41
EAGER_ROUNDS = 11
# Steps of the overhead rows: power iteration, and GKL at most (a full basis stops it).
POWER_STEPS = 20
GKL_STEPS = 20


def _keras_mlp(sizes: list[int], seed: int = 0) -> Any:
    """A tanh Keras MLP (Glorot-uniform weights drawn from ``seed``), built."""
    import keras

    layers = [keras.Input((sizes[0],))]
    for i, width in enumerate(sizes[1:]):
        last = i == len(sizes) - 2
        layers.append(keras.layers.Dense(
            width, activation=None if last else "tanh",
            kernel_initializer=keras.initializers.GlorotUniform(seed=seed + i)))
    return keras.Sequential(layers)


class _TfProducts:
    """The products jacspec's TensorFlow adapter takes, written by hand (see the module
    docstring)."""

    def __init__(self, tf: Any, f: Any, x: Any) -> None:
        self.x = x
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(x)
            self.y = f(x)
        self.tape = tape
        self.u0 = tf.zeros_like(self.y)
        with tf.GradientTape(persistent=True) as outer:
            outer.watch(self.u0)
            self.g = tape.gradient(self.y, x, output_gradients=self.u0)
        self.outer = outer

    def jvp(self, v: Any) -> Any:
        return self.outer.gradient(self.g, self.u0, output_gradients=v)

    def vjp(self, u: Any) -> Any:
        return self.tape.gradient(self.y, self.x, output_gradients=u)

    def from_smaller_side(self) -> tuple[Any, Any, int]:
        """``(A, A^T, size)``: the products that start from the smaller side of the
        per-sample Jacobian (as jacspec's solvers iterate), and that side's size."""
        n, m = int(self.x.shape[-1]), int(self.y.shape[-1])
        return (self.jvp, self.vjp, n) if n <= m else (self.vjp, self.jvp, m)


def _norm(tf: Any, a: Any) -> Any:
    return tf.sqrt(tf.reduce_sum(a * a, axis=-1, keepdims=True))


def _start(tf: Any, shape: tuple[int, ...]) -> Any:
    v = tf.random.stateless_normal(shape, seed=[0, 1])
    return v / _norm(tf, v)


def native_power_tf(tf: Any, f: Any, x: Any, steps: int, tol: float, *,
                    check: bool) -> Any:
    """Power iteration per sample from the smaller side of the Jacobian (on ``J^T J``
    or ``J J^T``), with its residual every step; ``check`` (eager): stop when every
    residual is within ``tol`` (a host read a step)."""
    A, AT, size = _TfProducts(tf, f, x).from_smaller_side()
    v = _start(tf, (int(x.shape[0]), size))
    for _ in range(steps):
        u = A(v)
        s = _norm(tf, u)
        u = u / s
        z = AT(u)
        res = _norm(tf, z - s * v)
        if check and bool(tf.reduce_all(res <= tol * s)):
            break
        v = z / _norm(tf, z)
    return s[:, 0]


def _project_out(tf: Any, rows: list[Any], w: Any) -> Any:
    """``w`` orthogonalized against the (B, s) vectors ``rows``, twice."""
    if not rows:
        return w
    Q = tf.stack(rows, axis=1)  # (B, j, s)
    for _ in range(2):
        w = w - tf.einsum("bjs,bj->bs", Q, tf.einsum("bjs,bs->bj", Q, w))
    return w


def native_gkl_tf(tf: Any, f: Any, x: Any, steps: int) -> Any:
    """Golub–Kahan–Lanczos per sample from the smaller side of the Jacobian, full
    reorthogonalization (twice) against the basis so far, one SVD of the bidiagonal at
    the end; no convergence checks (it runs the steps it is given, two products each,
    but one for the last step of a full basis, as jacspec counts them)."""
    A, AT, size = _TfProducts(tf, f, x).from_smaller_side()
    v = _start(tf, (int(x.shape[0]), size))
    Vs: list[Any] = []
    Us: list[Any] = []
    alphas: list[Any] = []
    betas: list[Any] = []
    for j in range(steps):
        Vs.append(v)
        u = _project_out(tf, Us, A(v))
        a = _norm(tf, u)
        Us.append(u / a)
        alphas.append(a[:, 0])
        if j == steps - 1 and steps >= size:  # a full basis: no adjoint product left
            break
        r = _project_out(tf, Vs, AT(Us[-1]))
        b = _norm(tf, r)
        v = r / b
        betas.append(b[:, 0])
    M = tf.linalg.diag(tf.stack(alphas, axis=-1))
    if steps > 1:  # the coupling of the last step (if taken) lies outside the bidiagonal
        M = M + tf.pad(tf.linalg.diag(tf.stack(betas[:steps - 1], axis=-1)),
                       [[0, 0], [0, 1], [1, 0]])
    return tf.linalg.svd(M, compute_uv=False)[:, 0]


def overhead_tf(quick: bool) -> list[Row]:
    """Target rows under ``tf.function`` on the design model size (64-256-256-10 MLP,
    B=128 per-sample 10x64 Jacobians), eager rows reported; report rows on the small
    case (B=32, 256x64 Jacobians) where products are cheap."""
    return [row for case in OVERHEAD_CASES for row in _overhead_tf(quick, *case)]


def _overhead_tf(quick: bool, sizes: list[int], B: int, suffix: str,
                 target: bool) -> list[Row]:
    import tensorflow as tf

    import jacspec as js

    X, _ = _digits()
    xb = tf.constant(X[:B])
    model = _keras_mlp(sizes)
    arch = "-".join(map(str, sizes))
    cfg = (f"B={B}, random Keras MLP {arch} tanh, float32, per-sample Jacobians "
           f"{sizes[-1]}x{sizes[0]}")
    return (_traced_rows(tf, js, model, xb, sizes, cfg, suffix, target)
            + _eager_rows(tf, js, model, xb, quick, cfg, suffix))


def _traced_rows(tf: Any, js: Any, model: Any, xb: Any, sizes: list[int], cfg: str,
                 suffix: str, target: bool) -> list[Row]:
    """jacspec inside ``tf.function`` with a fixed budget vs the hand-written loop
    compiled the same way (both Python loops, unrolled into one graph)."""
    pw_steps = POWER_STEPS
    steps = min(GKL_STEPS, sizes[0], sizes[-1])  # at most a full basis
    nprods = {"lanczos": 2 * steps, "power": 2 * pw_steps}  # the budgets (maxiter)
    # GKL's last step of a full basis takes one product
    taken = {"lanczos": 2 * steps - (steps >= min(sizes[0], sizes[-1])),
             "power": 2 * pw_steps}
    natives = {
        "lanczos": tf.function(lambda x: native_gkl_tf(tf, model, x, steps)),
        "power": tf.function(lambda x: native_power_tf(tf, model, x, pw_steps, 0.0,
                                                       check=False)),
    }
    rows = []
    for method, native in natives.items():
        ours = tf.function(lambda x, m=method: js.svds(
            js.jacobian(model, x, batched=True), method=m, maxiter=nprods[m]).values[:, 0])
        first = {}  # the first calls trace (and AutoGraph converts the user code)
        for side, fn in (("jacspec", ours), ("native", native)):
            t0 = time.perf_counter()
            fn(xb).numpy()
            first[side] = time.perf_counter() - t0
        t = interleaved_times({"jacspec": lambda o=ours: o(xb), "native": lambda n=native:
                               n(xb)}, TRACED_ROUNDS, lambda out: out.numpy())
        # GKL from the same side: the same Krylov space up to its start vector (the
        # same values where the basis is full); power iterates are not comparable.
        err = (float(tf.reduce_max(tf.abs(ours(xb) - native(xb))))
               if method == "lanczos" else None)
        ratio = t["jacspec"] / t["native"]
        rows.append(dict(
            name=f"overhead: {method} (tf.function{suffix})", jacspec=_ms(t["jacspec"]),
            reference=_ms(t["native"]), ratio=ratio,
            target="<= 1.10" if target else "report",
            met=(ratio <= 1.10) if target else None,
            configuration=f"{cfg}; {steps} GKL steps / {pw_steps} power steps (jacspec "
            f"maxiter {nprods['lanczos']} / {nprods['power']}), both inside tf.function; "
            "reference: hand-written GradientTape loop, same products",
            details=dict(jacspec_s=t["jacspec"], native_s=t["native"],
                         products=taken[method], max_abs_diff=err,
                         rounds=TRACED_ROUNDS, first_call_s=first)))
    return rows


def _eager_rows(tf: Any, js: Any, model: Any, xb: Any, quick: bool, cfg: str,
                suffix: str) -> list[Row]:
    """Eager jacspec (its own stopping) vs the eager hand-written loop with the same
    products, for information."""
    tol = 1e-4
    res = js.svds(js.jacobian(model, xb, batched=True), method="lanczos", tol=tol)
    nprod = int(res.num_matvecs)
    steps = (nprod + 1) // 2
    pw_prods = 2 * POWER_STEPS
    sides = {
        "lanczos": (lambda: js.svds(js.jacobian(model, xb, batched=True),
                                    method="lanczos", tol=tol).values,
                    lambda: native_gkl_tf(tf, model, xb, steps),
                    f"tol {tol}, {nprod} products; reference: hand-written GKL, same "
                    "products, reorthogonalized twice, no checks"),
        "power": (lambda: js.svds(js.jacobian(model, xb, batched=True), method="power",
                                  tol=1e-6, maxiter=pw_prods).values,
                  lambda: native_power_tf(tf, model, xb, pw_prods // 2, 1e-6, check=True),
                  f"{pw_prods} products; reference: hand-written power iteration with a "
                  "residual check per step"),
    }
    rounds = EAGER_ROUNDS if quick else 2 * EAGER_ROUNDS
    rows = []
    for method, (ours, native, what) in sides.items():
        t = interleaved_times({"jacspec": ours, "native": native}, rounds,
                              lambda out: out.numpy())
        ratio = t["jacspec"] / t["native"]
        rows.append(dict(
            name=f"overhead: {method} (tf eager{suffix})", jacspec=_ms(t["jacspec"]),
            reference=_ms(t["native"]), ratio=ratio, target="report", met=None,
            configuration=f"{cfg}; eager; {what}",
            details=dict(jacspec_s=t["jacspec"], native_s=t["native"], rounds=rounds)))
    return rows


def _loop_time(one: Any, n: int, reps: int) -> float:
    """Median time of ``reps`` passes of ``one(i)`` over ``i < n``, after two samples
    as a warm-up (a pass of the loop takes seconds: no full pass is spent warming up)."""
    one(0), one(1)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for i in range(n):
            one(i)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def batched_vs_loop_tf(quick: bool) -> list[Row]:
    """Per-sample spectral norms of B=128 samples: one batched call vs a Python loop of
    unbatched calls, eager."""
    import tensorflow as tf

    import jacspec as js

    X, _ = _digits()
    xb = tf.constant(X[:128])
    model = _keras_mlp([64, 128, 128, 10])
    rows = []
    for method in ["auto", "lanczos"]:
        t_b = median_time(lambda m=method: js.spectral_norm(
            js.jacobian(model, xb, batched=True), method=m), 3 if quick else 7)
        t_l = _loop_time(lambda i, m=method: js.spectral_norm(
            js.jacobian(model, xb[i:i + 1]), method=m), int(xb.shape[0]), 1 if quick else 3)
        rows.append(dict(
            name=f"batched/loop ({method}, tensorflow)", jacspec=_ms(t_b),
            reference=_ms(t_l), ratio=t_l / t_b, target=">= 10", met=t_l / t_b >= 10,
            configuration="B=128 per-sample spectral norms, 10x64 Jacobians of a random "
            "Keras MLP 64-128-128-10 tanh, float32, eager; reference: Python loop over "
            "samples",
            details=dict(batched_s=t_b, loop_s=t_l)))
    return rows


def groups() -> list[tuple[str, Any]]:
    """The TensorFlow row groups of ``jacspec bench``."""
    return [("overhead", overhead_tf), ("batched", batched_vs_loop_tf)]


__all__ = ["overhead_tf", "batched_vs_loop_tf", "groups", "native_gkl_tf",
           "native_power_tf"]
