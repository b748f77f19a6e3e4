"""Rows "scaling": a ResNet-18 for 32x32 images
(random initialization, batch norm in inference mode, float32) in torch and in JAX.

* ``products``: the time of one JVP and one VJP of ``js.jacobian`` (logits w.r.t. the
  parameters) and of one HVP of ``js.hessian`` (cross-entropy w.r.t. the parameters)
  against the framework's own forward+backward (the parameter gradient) on the same
  batch. Torch: a product on an operator built once, what each step of a solve pays;
  JAX: one jitted call, forward pass included (XLA keeps nothing between calls).
* ``top eigenvalue``: ``js.eigsh(js.hessian(loss, params), k=1)`` on a batch against a
  hand-written Lanczos loop (full reorthogonalization) doing the same number of
  Hessian-vector products with the framework's best HVP formulation.
* ``sigma_max``: per-sample input-Jacobian spectral norms,
  ``js.spectral_norm(js.jacobian(model, x, batched=True))``, against the hand-written
  dense route: one VJP per logit over the whole batch, then the matrix 2-norm.
* ``width series`` / ``batch series``: forward+backward and HVP time and memory as the
  base width and the batch size grow; the points are in the row's ``details``
  (``jacspec.bench.scaling_plot`` draws them from ``jacspec bench --json``).

Memory: torch, the bytes of the distinct tensors autograd saves while the forward pass
(and, for the HVP, the gradient graph) is built, counted by ``saved_tensors_hooks``; JAX,
the temporary buffers of the compiled computation (``memory_analysis``). Torch runs on
CUDA and JAX on its default device when there is one. Frameworks are imported inside the
functions only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .registry import Row, register
from .timing import interleaved_times, ms

NUM_CLASSES = 10
MB = 2.0**20


@dataclass(frozen=True)
class Sizes:
    """(width, batch) pairs of each row, and the repetitions: one set per mode."""

    widths: tuple[int, ...]  # width series, at batch ``base[1]``
    batches: tuple[int, ...]  # batch series, at width ``base[0]``
    base: tuple[int, int]  # where the series cross: also the product rows
    eig: tuple[int, int]
    eig_products: int  # cap (torch) / fixed count under jax.jit
    sigma: tuple[int, int]
    reps: int


QUICK = Sizes(widths=(4, 8), batches=(8, 16), base=(8, 8), eig=(8, 64),
              eig_products=10, sigma=(8, 32), reps=2)
#: JAX compiles every (function, shape) once, seconds each for a ResNet-18 on a CPU,
#: and XLA's CPU loops run the convolutions of an HVP several times slower than a
#: single call does: in --quick the base point only (no series rows), and a smaller
#: eigenvalue problem.
QUICK_JAX = Sizes(widths=(8,), batches=(8,), base=(8, 8), eig=(4, 16),
                  eig_products=6, sigma=(8, 32), reps=2)
FULL_JAX = Sizes(widths=(16, 32, 64), batches=(8, 16, 32, 64), base=(16, 16), eig=(8, 64),
                 eig_products=10, sigma=(32, 32), reps=3)
FULL = Sizes(widths=(16, 32, 64), batches=(8, 16, 32, 64), base=(16, 16), eig=(16, 64),
             eig_products=20, sigma=(32, 32), reps=3)


def sizes(quick: bool, backend: str = "torch") -> Sizes:
    if backend == "jax":
        return QUICK_JAX if quick else FULL_JAX
    return QUICK if quick else FULL


def series_points(s: Sizes) -> list[tuple[int, int]]:
    """The distinct (width, batch) points of both series, base point first.

    Examples
    --------
    >>> series_points(QUICK)
    [(8, 8), (4, 8), (8, 16)]
    """
    pts = [s.base] + [(w, s.base[1]) for w in s.widths] + [(s.base[0], b) for b in s.batches]
    return list(dict.fromkeys(pts))


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (the growth exponent).

    Examples
    --------
    >>> round(loglog_slope([1, 2, 4], [3, 12, 48]), 6)
    2.0
    """
    if len(xs) < 2:
        return math.nan
    return float(np.polyfit(np.log(xs), np.log(ys), 1)[0])


# ---------------------------------------------------------------------------- rows


def _product_rows(backend: str, point: dict[str, Any], cfg: str) -> list[Row]:
    targets = {"jvp": 2.0, "vjp": 2.0, "hvp": 4.0}
    rows = []
    for kind, target in targets.items():
        ratio = point[f"{kind}_s"] / point["fwd_bwd_s"]
        rows.append(dict(name=f"scaling: {kind.upper()}/fwd+bwd ({backend})",
                         jacspec=ms(point[f"{kind}_s"]), reference=ms(point["fwd_bwd_s"]),
                         ratio=ratio, target=f"<= {target:g}", met=ratio <= target,
                         configuration=cfg, details=point))
    return rows


def _series_rows(backend: str, points: list[dict[str, Any]], s: Sizes, cfg: str
                 ) -> list[Row]:
    rows = []
    for axis, values, fixed in (("width", s.widths, ("batch", s.base[1])),
                                ("batch", s.batches, ("width", s.base[0]))):
        pts = sorted((p for p in points if p[axis] in values and p[fixed[0]] == fixed[1]),
                     key=lambda p: p[axis])
        if len(pts) < 2:  # no series (--quick in JAX: the base point only)
            continue
        xs = [p[axis] for p in pts]
        slope = {k: loglog_slope(xs, [p[k] for p in pts]) for k in
                 ("fwd_bwd_s", "hvp_s", "fwd_bwd_mb", "hvp_mb")}
        last = pts[-1]

        def span(key: str, pts=pts, slope=slope) -> str:
            return (f"{pts[0][key] * 1e3:.0f} -> {pts[-1][key] * 1e3:.0f} ms "
                    f"(slope {slope[key]:.2f})")

        rows.append(dict(
            name=f"scaling: {axis} series ({backend})", jacspec=f"HVP {span('hvp_s')}",
            reference=f"fwd+bwd {span('fwd_bwd_s')}",
            ratio=last["hvp_s"] / last["fwd_bwd_s"], target="report", met=None,
            configuration=f"{axis} {', '.join(map(str, xs))} at {fixed[0]} {fixed[1]}; "
            f"ratio: HVP/fwd+bwd at {axis} {xs[-1]}; slopes: log-log growth exponents "
            f"(memory: fwd+bwd {slope['fwd_bwd_mb']:.2f}, HVP {slope['hvp_mb']:.2f}); "
            + cfg,
            details=dict(axis=axis, fixed=dict([fixed]), points=pts, slopes=slope)))
    return rows


def _eig_row(backend: str, t: dict[str, float], products: int, values: tuple[float, float],
             cfg: str) -> Row:
    ratio = t["jacspec"] / t["native"]
    bound = 1.05 if backend == "torch" else 1.10  # torch: at the floor
    return dict(name=f"scaling: top Hessian eigenvalue ({backend})",
                jacspec=f"{ms(t['jacspec'])}, {products} HVPs",
                reference=f"{ms(t['native'])}, {products} HVPs", ratio=ratio,
                target=f"<= {bound:.2f}", met=ratio <= bound, configuration=cfg,
                details=dict(jacspec_s=t["jacspec"], native_s=t["native"], products=products,
                             jacspec_value=values[0], native_value=values[1]))


def _sigma_row(backend: str, t: dict[str, float], err: float, cfg: str) -> Row:
    ratio = t["jacspec"] / t["native"]
    return dict(name=f"scaling: per-sample sigma_max ({backend})", jacspec=ms(t["jacspec"]),
                reference=ms(t["native"]), ratio=ratio, target="<= 1.10",
                met=ratio <= 1.10, configuration=cfg,
                details=dict(jacspec_s=t["jacspec"], native_s=t["native"],
                             max_rel_diff=err))


def _model_cfg(backend: str, device: str, width: int, batch: int, nparams: int) -> str:
    return (f"ResNet-18 (32x32x3 inputs, base width {width}, {nparams} parameters, random "
            f"init, batch norm in inference mode), batch {batch}, float32, {backend} on "
            f"{device}")


def _rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b) / np.abs(b)))


# ---------------------------------------------------------------------------- torch


def _torch_device(torch) -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _torch_where(torch, device: str) -> str:
    return f"{device}, {torch.get_num_threads()} thread(s)" if device == "cpu" else device


class _TorchCase:
    """A ResNet-18, a random batch and its cross-entropy, on the bench's device."""

    def __init__(self, torch, width: int, batch: int, seed: int = 0) -> None:
        from .models_torch import ResNet18

        self.torch, self.device = torch, _torch_device(torch)
        torch.manual_seed(seed)
        self.model = ResNet18(NUM_CLASSES, width).eval().to(self.device)
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(batch, 3, 32, 32, generator=g).to(self.device)
        self.y = torch.randint(0, NUM_CLASSES, (batch,), generator=g).to(self.device)
        self.params = {k: v.detach() for k, v in self.model.named_parameters()}
        self.nparams = sum(p.numel() for p in self.params.values())

    def logits(self, p: dict[str, Any]) -> Any:
        return self.torch.func.functional_call(self.model, p, (self.x,))

    def loss(self, p: dict[str, Any]) -> Any:
        return self.torch.nn.functional.cross_entropy(self.logits(p), self.y)

    def forward_backward(self) -> Any:
        ps = list(self.model.parameters())
        out = self.torch.nn.functional.cross_entropy(self.model(self.x), self.y)
        return self.torch.autograd.grad(out, ps)

    def sync(self, _: Any = None) -> None:
        if self.device == "cuda":
            self.torch.cuda.synchronize()

    def randn(self, *shape: int) -> Any:
        g = self.torch.Generator().manual_seed(1)
        return self.torch.randn(*shape, generator=g).to(self.device)


def _saved_mb(torch, fn: Callable[[], Any]) -> float:
    """Bytes of the distinct storages autograd saves while ``fn`` runs (kept alive
    until the end, so that no address is counted twice)."""
    seen: dict[int, int] = {}
    keep: list[Any] = []

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        keep.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    del out
    keep.clear()
    return sum(seen.values()) / MB


def _torch_point(torch, js, width: int, batch: int, reps: int, products: bool) -> dict:
    """Times (and memory) of fwd+bwd and HVP, with JVP and VJP when ``products``."""
    c = _TorchCase(torch, width, batch)
    H = js.hessian(c.loss, c.params)
    v = c.randn(c.nparams)
    fns = {"fwd_bwd": c.forward_backward, "hvp": lambda: H @ v}
    if products:
        J = js.jacobian(c.logits, c.params)
        u = c.randn(J.shape[0])
        fns.update(jvp=lambda: J @ v, vjp=lambda: J.rmatvec(u))
    t = interleaved_times(fns, reps, c.sync)
    point = dict(width=width, batch=batch, params=c.nparams,
                 **{f"{k}_s": val for k, val in t.items()})
    point["fwd_bwd_mb"] = _saved_mb(torch, c.forward_backward)
    point["hvp_mb"] = _saved_mb(torch, lambda: js.hessian(c.loss, c.params) @ v)
    return point


def _torch_lanczos(torch, hvp: Callable, n: int, steps: int, v0) -> float:
    """Symmetric Lanczos, full reorthogonalization (twice) into a preallocated basis,
    ``steps`` products, no convergence checks; the extreme Ritz value."""
    Q = torch.zeros(steps, n, dtype=v0.dtype, device=v0.device)
    alpha = torch.zeros(steps, dtype=v0.dtype, device=v0.device)
    beta = torch.zeros(steps, dtype=v0.dtype, device=v0.device)
    q = v0 / v0.norm()
    for j in range(steps):
        Q[j] = q
        w = hvp(q)
        alpha[j] = w @ q
        for _ in range(2):
            w = w - Q[:j + 1].T @ (Q[:j + 1] @ w)
        beta[j] = w.norm()
        q = w / beta[j]
    T = torch.diag(alpha) + torch.diag(beta[:-1], 1) + torch.diag(beta[:-1], -1)
    ev = torch.linalg.eigvalsh(T)
    return float(ev[ev.abs().argmax()])


def _torch_native_hvp(torch, c: _TorchCase) -> Callable:
    """The gradient graph built once; each product one double backward on it."""
    ps = [p.detach().requires_grad_(True) for p in c.params.values()]
    names = list(c.params)
    with torch.enable_grad():
        g = torch.autograd.grad(c.loss(dict(zip(names, ps))), ps, create_graph=True)
        gflat = torch.cat([t.reshape(-1) for t in g])

    def hvp(v):
        out = torch.autograd.grad(gflat, ps, v, retain_graph=True)
        return torch.cat([t.reshape(-1) for t in out])

    return hvp


def _torch_eig(torch, js, s: Sizes) -> Row:
    c = _TorchCase(torch, *s.eig)
    v0 = c.randn(c.nparams)
    first = js.eigsh(js.hessian(c.loss, c.params), k=1, method="lanczos", tol=1e-3,
                     maxiter=s.eig_products, v0=v0)
    n = int(first.num_matvecs)
    out: dict[str, float] = {}

    def ours():
        r = js.eigsh(js.hessian(c.loss, c.params), k=1, method="lanczos", tol=1e-3,
                     maxiter=s.eig_products, v0=v0)
        out["jacspec"] = float(r.values[0])

    def native():
        out["native"] = _torch_lanczos(torch, _torch_native_hvp(torch, c), c.nparams, n, v0)

    t = interleaved_times(dict(jacspec=ours, native=native), s.reps, c.sync)
    cfg = (_model_cfg("torch", _torch_where(torch, c.device), *s.eig, c.nparams) + ": top |eigenvalue| of the "
           f"cross-entropy Hessian w.r.t. the parameters, Lanczos at tol 1e-3 (at most "
           f"{s.eig_products} products), operator built in each call; reference: "
           f"hand-written Lanczos with the same {n} products (gradient graph built once, "
           "one double backward per product), no convergence checks")
    return _eig_row("torch", t, n, (out["jacspec"], out["native"]), cfg)


def _torch_sigma(torch, js, s: Sizes) -> Row:
    c = _TorchCase(torch, *s.sigma)
    for p in c.model.parameters():
        p.requires_grad_(False)  # input Jacobians only

    def ours():
        return js.spectral_norm(js.jacobian(c.model, c.x, batched=True))

    def native():
        x = c.x.detach().requires_grad_(True)
        with torch.enable_grad():
            y = c.model(x)
            rows = [torch.autograd.grad(y[:, k].sum(), x, retain_graph=True)[0]
                    for k in range(NUM_CLASSES)]
        J = torch.stack(rows, 1).reshape(x.shape[0], NUM_CLASSES, -1)
        return torch.linalg.matrix_norm(J, ord=2)

    t = interleaved_times(dict(jacspec=ours, native=native), s.reps, c.sync)
    err = _rel_diff(ours().cpu().numpy(), native().cpu().numpy())
    cfg = (_model_cfg("torch", _torch_where(torch, c.device), *s.sigma, c.nparams) + ": per-sample sigma_max "
           "of the 10x3072 input Jacobians, js.spectral_norm(js.jacobian(model, x, "
           "batched=True)); reference: one forward, 10 batched VJPs (one per logit), "
           "torch.linalg.matrix_norm(ord=2)")
    return _sigma_row("torch", t, err, cfg)


@register("scaling", "torch", target="<= 2 (JVP, VJP), <= 4 (HVP), <= 1.05 (eigenvalue), <= 1.10")
def scaling_torch(quick: bool, *, config: Sizes | None = None) -> list[Row]:
    """The scaling rows in torch (see the module docstring); ``config`` replaces the
    sizes of the mode (tests)."""
    import torch

    import jacspec as js

    s = config or sizes(quick)
    device = _torch_device(torch)
    threads = torch.get_num_threads()
    if device == "cpu":
        # One intra-op thread: on a shared machine two threads per process oversubscribe
        # the cores, and the convs of a small ResNet then time mostly the waiting.
        torch.set_num_threads(1)
    try:
        rows = _torch_rows(torch, js, s, device)
    finally:
        torch.set_num_threads(threads)
    return rows


def _torch_rows(torch, js, s: Sizes, device: str) -> list[Row]:
    points = [_torch_point(torch, js, w, b, s.reps, (w, b) == s.base)
              for w, b in series_points(s)]
    base = points[0]
    cfg = _model_cfg("torch", _torch_where(torch, device), *s.base, base["params"]) + (
        ": one product on an operator built once (what each solver step pays) vs "
        "forward + torch.autograd.grad of the cross-entropy w.r.t. the parameters; "
        "JVP/VJP of js.jacobian(logits w.r.t. parameters), HVP of js.hessian(cross-"
        "entropy w.r.t. parameters)")
    series_cfg = (f"torch on {_torch_where(torch, device)}, memory: bytes autograd saves (forward pass; HVP: "
                  "forward and gradient graph)")
    return (_product_rows("torch", base, cfg) + [_torch_eig(torch, js, s),
                                                _torch_sigma(torch, js, s)]
            + _series_rows("torch", points, s, series_cfg))


# ---------------------------------------------------------------------------- JAX


class _JaxCase:
    """Parameters, a random batch and the jitted functions of one (width, batch)."""

    def __init__(self, jax, width: int, batch: int, seed: int = 0) -> None:
        from .models_jax import resnet18_apply, resnet18_init

        self.jax = jax
        self.apply = resnet18_apply
        rng = np.random.default_rng(seed)
        self.params = resnet18_init(seed, width, NUM_CLASSES)
        self.x = jax.numpy.asarray(rng.standard_normal((batch, 32, 32, 3), np.float32))
        self.y = jax.numpy.asarray(rng.integers(0, NUM_CLASSES, batch))
        self.nparams = sum(int(p.size) for p in jax.tree_util.tree_leaves(self.params))

    def randn(self, n: int, seed: int = 1) -> Any:
        rng = np.random.default_rng(seed)
        return self.jax.numpy.asarray(rng.standard_normal(n, np.float32))


def _jax_loss(jax, apply: Callable) -> Callable:
    def loss(p, x, y):
        logp = jax.nn.log_softmax(apply(p, x))
        return -logp[np.arange(y.shape[0]), y].mean()

    return loss


def _jax_functions(jax, js, apply: Callable) -> dict[str, Callable]:
    """Jitted ``(params, x, y, vec) ->`` products; one compilation per shape."""
    loss = _jax_loss(jax, apply)

    def jac(p, x):
        return js.jacobian(lambda q: apply(q, x), p)

    return dict(
        fwd_bwd=jax.jit(lambda p, x, y, _: jax.grad(loss)(p, x, y)),
        hvp=jax.jit(lambda p, x, y, v: js.hessian(lambda q: loss(q, x, y), p) @ v),
        jvp=jax.jit(lambda p, x, y, v: jac(p, x) @ v),
        vjp=jax.jit(lambda p, x, y, u: jac(p, x).rmatvec(u)))


def _temp_mb(compiled: Any) -> float:
    analysis = compiled.memory_analysis()
    return math.nan if analysis is None else analysis.temp_size_in_bytes / MB


def _jax_point(jax, js, fns: dict[str, Callable], width: int, batch: int, reps: int,
               products: bool) -> dict:
    c = _JaxCase(jax, width, batch)
    v = c.randn(c.nparams)
    u = c.randn(batch * NUM_CLASSES, 2)
    kinds = ["fwd_bwd", "hvp"] + (["jvp", "vjp"] if products else [])
    args = {k: (c.params, c.x, c.y, u if k == "vjp" else v) for k in kinds}
    # compiled once ahead of time: timed, and asked for its memory
    compiled = {k: fns[k].lower(*args[k]).compile() for k in kinds}
    calls = {k: (lambda k=k: compiled[k](*args[k])) for k in kinds}
    t = interleaved_times(calls, reps, jax.block_until_ready)
    point = dict(width=width, batch=batch, params=c.nparams,
                 **{f"{k}_s": val for k, val in t.items()})
    for k in ("fwd_bwd", "hvp"):
        point[f"{k}_mb"] = _temp_mb(compiled[k])
    return point


def _jax_lanczos(jax, hvp: Callable, v0, steps: int):
    """Symmetric Lanczos in ``lax.fori_loop``, full reorthogonalization (twice), a fixed
    number of products; the extreme Ritz value."""
    jnp = jax.numpy
    n = v0.shape[0]

    def body(j, c):
        Q, alpha, beta, q = c
        Q = Q.at[j].set(q)
        w = hvp(q)
        alpha = alpha.at[j].set(w @ q)
        mask = (jnp.arange(steps) <= j)[:, None]
        for _ in range(2):
            w = w - (Q * mask).T @ ((Q * mask) @ w)
        b = jnp.linalg.norm(w)
        return Q, alpha, beta.at[j].set(b), w / b

    dt = v0.dtype  # float32 also where the caller enabled x64
    init = (jnp.zeros((steps, n), dt), jnp.zeros(steps, dt), jnp.zeros(steps, dt),
            v0 / jnp.linalg.norm(v0))
    _, alpha, beta, _ = jax.lax.fori_loop(0, steps, body, init)
    T = jnp.diag(alpha) + jnp.diag(beta[:-1], 1) + jnp.diag(beta[:-1], -1)
    ev = jnp.linalg.eigvalsh(T)
    return ev[jnp.argmax(jnp.abs(ev))]


def _jax_eig(jax, js, s: Sizes) -> Row:
    from jax.flatten_util import ravel_pytree

    c = _JaxCase(jax, *s.eig)
    loss = _jax_loss(jax, c.apply)
    n = s.eig_products
    v0 = c.randn(c.nparams)

    @jax.jit
    def ours(p, x, y):
        r = js.eigsh(js.hessian(lambda q: loss(q, x, y), p), k=1, method="lanczos",
                     maxiter=n, v0=v0)
        return r.values[0], r.num_matvecs

    @jax.jit
    def native(p, x, y):
        theta, unravel = ravel_pytree(p)
        _, hvp = jax.linearize(jax.grad(lambda t: loss(unravel(t), x, y)), theta)
        return _jax_lanczos(jax, hvp, v0, n)

    t = interleaved_times(dict(jacspec=lambda: ours(c.params, c.x, c.y),
                               native=lambda: native(c.params, c.x, c.y)),
                          s.reps, jax.block_until_ready)
    value, count = ours(c.params, c.x, c.y)
    cfg = (_model_cfg("jax", str(jax.devices()[0]), *s.eig, c.nparams) + ": top "
           f"|eigenvalue| of the cross-entropy Hessian w.r.t. the parameters, inside "
           f"jax.jit: js.eigsh(js.hessian(...), method='lanczos', maxiter={n}) vs a "
           f"hand-written lax.fori_loop Lanczos with {n} products on jax.linearize of "
           "jax.grad, full reorthogonalization, no convergence checks")
    return _eig_row("jax", t, int(count), (float(value), float(native(c.params, c.x, c.y))),
                    cfg)


def _jax_sigma(jax, js, s: Sizes) -> Row:
    jnp = jax.numpy
    c = _JaxCase(jax, *s.sigma)

    @jax.jit
    def ours(p, x):
        return js.spectral_norm(js.jacobian(lambda z: c.apply(p, z), x, batched=True))

    @jax.jit
    def native(p, x):
        y, vjp = jax.vjp(lambda z: c.apply(p, z), x)
        eye = jnp.broadcast_to(jnp.eye(NUM_CLASSES, dtype=y.dtype)[:, None, :],
                               (NUM_CLASSES,) + y.shape)
        (J,) = jax.vmap(vjp)(eye)  # (classes, B, 32, 32, 3)
        J = jnp.moveaxis(J.reshape(NUM_CLASSES, x.shape[0], -1), 0, 1)
        return jnp.linalg.norm(J, ord=2, axis=(1, 2))

    t = interleaved_times(dict(jacspec=lambda: ours(c.params, c.x),
                               native=lambda: native(c.params, c.x)),
                          s.reps, jax.block_until_ready)
    err = _rel_diff(np.asarray(ours(c.params, c.x)), np.asarray(native(c.params, c.x)))
    cfg = (_model_cfg("jax", str(jax.devices()[0]), *s.sigma, c.nparams) + ": per-sample "
           "sigma_max of the 10x3072 input Jacobians inside jax.jit, js.spectral_norm("
           "js.jacobian(f, x, batched=True)); reference: jax.vjp once, its 10 cotangents "
           "(one per logit) under jax.vmap, jnp.linalg.norm(ord=2)")
    return _sigma_row("jax", t, err, cfg)


@register("scaling", "jax", target="<= 2 (JVP, VJP), <= 4 (HVP), <= 1.10")
def scaling_jax(quick: bool, *, config: Sizes | None = None) -> list[Row]:
    """The scaling rows in JAX, every side under ``jax.jit``; ``config`` as for
    :func:`scaling_torch`."""
    import jax

    import jacspec as js

    from .models_jax import resnet18_apply

    s = config or sizes(quick, "jax")
    fns = _jax_functions(jax, js, resnet18_apply)
    points = [_jax_point(jax, js, fns, w, b, s.reps, (w, b) == s.base)
              for w, b in series_points(s)]
    base = points[0]
    device = str(jax.devices()[0])
    cfg = _model_cfg("jax", device, *s.base, base["params"]) + (
        ": one jitted call per product, forward pass included, vs jax.jit(jax.grad) of "
        "the cross-entropy w.r.t. the parameters; JVP/VJP of js.jacobian(logits w.r.t. "
        "parameters), HVP of js.hessian(cross-entropy w.r.t. parameters)")
    series_cfg = (f"jax on {device}, every call jitted, memory: temporary buffers of "
                  "the compiled computation")
    return (_product_rows("jax", base, cfg) + [_jax_eig(jax, js, s), _jax_sigma(jax, js, s)]
            + _series_rows("jax", points, s, series_cfg))
