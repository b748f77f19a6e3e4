"""Rows "transformer" and "transformer-memory" (torch, JAX): the products of a
GPT-style decoder (:class:`jacspec.bench.models_torch.GPT`, attention by the framework's
default kernel) against one training step, side by side in one run.

* ``transformer``: the time of one product — an HVP (``js.hessian(loss, params) @ v``),
  a GGN product (``js.ggn(f, F.cross_entropy, params, data=[batch]) @ v``), a parameter
  JVP and VJP (``js.jacobian(f, params)``) — over one forward and backward pass of the
  loss; the central-difference HVP (``hvp="finite_difference"``) against the exact one,
  time and relative error. ``--quick`` runs the HVP and GGN rows only (the targets).
* ``transformer-memory``: the peak memory of each product over one training step's —
  torch: the rise of peak RSS in a fresh subprocess per measurement (forked from a
  process that imported torch: :data:`~jacspec.bench.timing.TORCH_PRELOAD`), after a
  warm-up run of the same measurement so that no side counts start-up allocations
  (``--quick``: one fresh subprocess, the measurements in turn, warmed up on a tiny
  decoder, no JVP and VJP); JAX: the temporary buffers of the compiled program
  (``compiled.memory_analysis()``) — and a dataset product (several batches; in JAX
  traced, one ``lax.scan`` over the batches) over the one-batch product.
* ``transformer-peers`` (torch): the top Hessian and GGN eigenvalues against curvlinops
  (``HessianLinearOperator``, ``GGNLinearOperator`` and ARPACK) on the same model under
  the math attention kernel, at the same tolerance; skipped when curvlinops is not
  installed.

``python -m jacspec.bench.transformer_rows MODES SIZE WARM`` runs the memory
measurements ``MODES`` (comma-separated, in turn, each after a warm-up run on the
decoder ``WARM``) and prints them as a JSON line.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from typing import Any

from .registry import Row, register
from .timing import TORCH_PRELOAD, interleaved_times, ms, repetitions, run_fresh

#: The decoder of the rows: (vocabulary, width, layers, heads, context, batch).
FULL = (256, 128, 4, 4, 64, 8)
QUICK = (64, 64, 2, 2, 32, 4)
#: The memory rows' decoder: a larger batch, so that activations dominate.
MEMORY_FULL = (256, 128, 4, 4, 64, 16)
MEMORY_QUICK = (64, 64, 2, 2, 64, 16)
#: The decoder on which ``--quick`` memory measurements warm up.
TINY = (16, 8, 1, 2, 4, 2)
DATASET_BATCHES = 4
#: The products of the rows; ``--quick`` measures those with targets (HVP and GGN) and
#: leaves the parameter JVP and VJP report rows and the finite-difference row to the full
#: run (in JAX each is one more compilation).
PRODUCTS = ("HVP", "GGN", "JVP", "VJP")
TARGETS = {"HVP": 2.5, "GGN": 2.0}
MEMORY_TARGETS = {"HVP": 2.5, "GGN": 1.3}
DATASET_TARGET = 1.1


def _describe(size: tuple[int, ...], nparam: int) -> str:
    vocab, d, layers, heads, context, batch = size
    return (f"GPT-style decoder, {layers} layers, d={d}, {heads} heads, context {context}, "
            f"vocabulary {vocab}, batch {batch} ({nparam} parameters, float32)")


def _csv(size: tuple[int, ...]) -> str:
    return ",".join(map(str, size))


def _products(quick: bool) -> tuple[str, ...]:
    return PRODUCTS[:2] if quick else PRODUCTS


def _ratio_rows(kind: str, times: dict[str, float], cfg: str, backend: str) -> list[Row]:
    """One row per product timed: its time over one forward and backward pass."""
    base = times["forward+backward"]
    rows = []
    for name in (p for p in PRODUCTS if p in times):
        target = TARGETS.get(name)
        ratio = times[name] / base
        rows.append(dict(
            name=f"{kind}: {name}/forward+backward ({backend})", jacspec=ms(times[name]),
            reference=ms(base), ratio=ratio,
            target=f"<= {target:.2f}" if target else "report",
            met=None if target is None else bool(ratio <= target), configuration=cfg,
            details=dict(times)))
    return rows


def _fd_row(backend: str, t_fd: float, t_exact: float, err: float, cfg: str) -> Row:
    return dict(name=f"transformer: finite-difference/exact HVP ({backend})",
                jacspec=f"{ms(t_fd)}, rel. error {err:.1e}", reference=ms(t_exact),
                ratio=t_fd / t_exact, target="report", met=None, configuration=cfg,
                details=dict(fd_s=t_fd, exact_s=t_exact, relative_error=err))


# ---------------------------------------------------------------------------- torch


def _torch_case(size: tuple[int, ...], batches: int = 1) -> dict[str, Any]:
    import torch

    from .models_torch import GPT, token_batches

    vocab, d, layers, heads, context, batch = size
    model = GPT(vocab, d, layers, heads, context)
    data = token_batches(vocab, context, batch, batches)
    params = {k: v.detach() for k, v in model.named_parameters()}
    F = torch.nn.functional

    def logits(p: dict, tokens: torch.Tensor) -> torch.Tensor:
        return torch.func.functional_call(model, p, (tokens,))

    def loss(p: dict) -> torch.Tensor:
        return F.cross_entropy(logits(p, data[0][0]), data[0][1])

    def batch_loss(p: dict, b: tuple) -> torch.Tensor:
        return F.cross_entropy(logits(p, b[0]), b[1])

    def step() -> None:  # one training step's derivatives
        model.zero_grad()
        F.cross_entropy(model(data[0][0]), data[0][1]).backward()

    n = sum(p.numel() for p in params.values())
    return dict(model=model, data=data, params=params, logits=logits, loss=loss,
                batch_loss=batch_loss, step=step, n=n, cfg=_describe(size, n))


def _torch_products(js: Any, torch: Any, c: dict, names: tuple[str, ...] = PRODUCTS
                    ) -> dict[str, Any]:
    """One call of each product of ``names`` on operators built once (their
    construction is not timed), and one training step."""
    tokens = c["data"][0][0]
    H = js.hessian(c["loss"], c["params"])
    G = js.ggn(c["logits"], torch.nn.functional.cross_entropy, c["params"],
               data=c["data"][:1])
    J = js.jacobian(lambda p: c["logits"](p, tokens), c["params"])
    g = torch.Generator().manual_seed(0)
    v = torch.randn(H.shape[1], generator=g)
    u = torch.randn(J.shape[0], generator=g)
    calls = {"HVP": lambda: H @ v, "GGN": lambda: G @ v, "JVP": lambda: J @ v,
             "VJP": lambda: J.T @ u}
    return {"forward+backward": c["step"], **{k: calls[k] for k in names}}


@register("transformer", "torch", target="HVP <= 2.5, GGN <= 2.0 x forward+backward")
def transformer_torch(quick: bool, *, size: tuple[int, ...] | None = None) -> list[Row]:
    """Time of each product over one training step, and central differences against
    the exact HVP (``size``: a smaller decoder, for tests; ``quick``: the products with
    targets only)."""
    import torch

    import jacspec as js

    c = _torch_case(size or (QUICK if quick else FULL))
    times = interleaved_times(_torch_products(js, torch, c, _products(quick)),
                              repetitions(quick))
    cfg = (f"{c['cfg']}, torch SDPA (default kernels); one product on an operator built "
           "once vs one forward and backward pass of the mean cross-entropy "
           "(median of runs in turn)")
    rows = _ratio_rows("transformer", times, cfg, "torch")
    if quick:
        return rows
    H = js.hessian(c["loss"], c["params"])
    H_fd = js.hessian(c["loss"], c["params"], hvp="finite_difference")
    v = torch.randn(H.shape[1], generator=torch.Generator().manual_seed(1))
    t = interleaved_times({"fd": lambda: H_fd @ v, "exact": lambda: H @ v},
                          repetitions(quick))
    exact = H @ v
    err = float(torch.linalg.vector_norm(H_fd @ v - exact) / torch.linalg.vector_norm(exact))
    rows.append(_fd_row("torch", t["fd"], t["exact"], err,
                        f"{c['cfg']}: hvp='finite_difference' (two gradients) vs "
                        "hvp='autodiff', one product each, error relative to the exact "
                        "product's norm"))
    return rows


def _torch_memory(modes: list[str], size: tuple[int, ...], warm: tuple[int, ...]
                  ) -> dict[str, float]:
    """The rise of peak RSS (MB) during each of ``modes`` in turn: a training step, or
    the construction and one product of an operator (``*_dataset``: over
    ``DATASET_BATCHES`` batches). Every mode runs first on a decoder of size ``warm``
    (start-up allocations: imports, thread pools, kernels), then measured."""
    import torch

    import jacspec as js

    from .timing import peak_rss_mb, reset_peak_rss

    def run(mode: str, c: dict) -> None:
        data = c["data"] if mode.endswith("_dataset") else c["data"][:1]
        if mode == "step":
            c["step"]()
        elif mode.startswith("HVP"):
            js.hessian(c["batch_loss"], c["params"], data=data) @ c["v"]
        elif mode.startswith("GGN"):
            js.ggn(c["logits"], torch.nn.functional.cross_entropy, c["params"],
                   data=data) @ c["v"]
        else:
            J = js.jacobian(lambda p: c["logits"](p, c["data"][0][0]), c["params"])
            if mode == "JVP":
                J @ c["v"]
            else:
                J.T @ torch.randn(J.shape[0])
        c["model"].zero_grad(set_to_none=True)

    cases = {}
    for s in (warm, size):
        cases[s] = _torch_case(s, DATASET_BATCHES)
        cases[s]["v"] = torch.randn(cases[s]["n"])
    mb = {}
    for mode in modes:
        run(mode, cases[warm])
    for mode in modes:
        gc.collect()
        r0 = reset_peak_rss()
        run(mode, cases[size])
        mb[mode] = peak_rss_mb() - r0
    return mb


def _memory_rows(backend: str, mb: dict[str, float], unit: str, cfg: str) -> list[Row]:
    rows = []
    for name in (p for p in PRODUCTS if p in mb):
        target = MEMORY_TARGETS.get(name)
        ratio = mb[name] / mb["step"] if mb["step"] > 0 else None
        rows.append(dict(
            name=f"transformer memory: {name}/training step ({backend})",
            jacspec=f"{mb[name]:.1f} {unit}", reference=f"{mb['step']:.1f} {unit}",
            ratio=ratio, target=f"<= {target:.2f}" if target else "report",
            met=None if target is None else bool(ratio is not None and ratio <= target),
            configuration=cfg, details=dict(mb)))
    for name in ("HVP", "GGN"):
        ratio = mb[f"{name}_dataset"] / mb[name] if mb[name] > 0 else None
        rows.append(dict(
            name=f"transformer memory: dataset/one-batch {name} ({backend})",
            jacspec=f"{mb[f'{name}_dataset']:.1f} {unit} ({DATASET_BATCHES} batches)",
            reference=f"{mb[name]:.1f} {unit}", ratio=ratio,
            target=f"<= {DATASET_TARGET:.2f}",
            met=bool(ratio is not None and ratio <= DATASET_TARGET), configuration=cfg,
            details=dict(mb)))
    return rows


MEMORY_MODES = ("step", "HVP", "GGN", "JVP", "VJP", "HVP_dataset", "GGN_dataset")


def memory_modes(quick: bool) -> tuple[str, ...]:
    """The memory measurements of a run: ``--quick`` leaves out the JVP and VJP (report
    rows)."""
    return tuple(m for m in MEMORY_MODES if m in ("step", "HVP_dataset", "GGN_dataset")
                 or m in _products(quick))


@register("transformer-memory", "torch", target="HVP <= 2.5x, GGN <= 1.3x, dataset <= 1.1x")
def transformer_memory_torch(quick: bool, *, size: tuple[int, ...] | None = None
                             ) -> list[Row]:
    """Peak RSS of each product over one training step's: each in a fresh process
    (``quick``: all in one fresh process, in turn, the peak reset before each)."""
    size = size or (MEMORY_QUICK if quick else MEMORY_FULL)
    arg = _csv(size)
    if quick:  # warmed up on the tiny decoder
        mb = run_fresh(__name__, [",".join(memory_modes(quick)), arg, _csv(TINY)],
                       timeout=900, preload=TORCH_PRELOAD)["peak_mb"]
    else:  # warmed up by the same measurement
        # minutes each on a loaded 2-core machine
        mb = {m: run_fresh(__name__, [m, arg, arg], timeout=1200,
                           preload=TORCH_PRELOAD)["peak_mb"][m]
              for m in MEMORY_MODES}
    n = _torch_case(size)["n"]
    where = ("one fresh subprocess, the modes in turn after a warm-up run of each on a "
             "tiny decoder" if quick else "a fresh subprocess each, after one warm-up "
             "run of the same measurement")
    cfg = (f"{_describe(size, n)}: rise of peak RSS above the RSS before ({where}; "
           "VmHWM reset through "
           "/proc/self/clear_refs) during the construction and one product of each "
           "operator (HVP and GGN through data=: one batch, or "
           f"{DATASET_BATCHES} batches) vs during one forward and backward pass")
    return _memory_rows("torch", {k: float(v) for k, v in mb.items()}, "MB", cfg)


# ------------------------------------------------------------------------- torch peers


def _curvlinops_top(torch: Any, operator: Any, model: Any, data: list, tol: float
                    ) -> tuple[float, int]:
    import numpy as np
    import scipy.sparse.linalg as sla

    params = [p for p in model.parameters() if p.requires_grad]
    A = operator(model, torch.nn.CrossEntropyLoss(), params, data, check_deterministic=False)
    As = A.to_scipy() if hasattr(A, "to_scipy") else A
    count = [0]

    def mv(v: Any) -> Any:
        count[0] += 1
        return As @ v

    L = sla.LinearOperator(As.shape, matvec=mv, dtype=np.float32)
    val = sla.eigsh(L, k=1, which="LA", tol=tol, return_eigenvectors=False)
    return float(val[0]), count[0]


@register("transformer-peers", "torch", target="faster at equal tolerance")
def transformer_peers_torch(quick: bool, *, size: tuple[int, ...] | None = None
                            ) -> list[Row]:
    """Top Hessian and GGN eigenvalues, jacspec against curvlinops (math kernel)."""
    try:
        import curvlinops
    except ImportError:
        return [dict(name="transformer peers: curvlinops",
                     skipped="curvlinops-for-pytorch not installed")]
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel

    import jacspec as js

    c = _torch_case(size or (QUICK if quick else FULL))
    tol, F = 1e-3, torch.nn.functional
    ops = {"Hessian": (lambda: js.hessian(c["batch_loss"], c["params"], data=c["data"]),
                       curvlinops.HessianLinearOperator),
           "GGN": (lambda: js.ggn(c["logits"], F.cross_entropy, c["params"], data=c["data"]),
                   curvlinops.GGNLinearOperator)}
    rows = []
    for name, (ours, theirs) in ops.items():
        with sdpa_kernel([SDPBackend.MATH]):
            exact = float(js.eigsh(ours(), k=1, which="LA", tol=1e-7).values[0])

            def run_ours(ours=ours) -> tuple[float, int]:
                r = js.eigsh(ours(), k=1, which="LA", tol=tol)
                return float(r.values[0]), int(r.num_matvecs)

            out: dict[str, tuple[float, int]] = {}
            t = interleaved_times(
                {"jacspec": lambda out=out: out.__setitem__("jacspec", run_ours()),
                 "curvlinops": lambda out=out, theirs=theirs: out.__setitem__(
                     "curvlinops", _curvlinops_top(torch, theirs, c["model"], c["data"],
                                                   tol))}, 1 if quick else 3)
        (lam, n_ours), (lam_p, n_p) = out["jacspec"], out["curvlinops"]
        err, err_p = abs(lam - exact) / abs(exact), abs(lam_p - exact) / abs(exact)
        rows.append(dict(
            name=f"transformer peers: top {name} eigenvalue vs curvlinops (torch)",
            jacspec=f"{ms(t['jacspec'])}, {n_ours} products, err {err:.1e}",
            reference=f"{ms(t['curvlinops'])}, {n_p} products, err {err_p:.1e}",
            ratio=t["jacspec"] / t["curvlinops"], target="faster at equal tolerance",
            met=bool(t["jacspec"] <= t["curvlinops"]),
            configuration=f"{c['cfg']}, one batch, math attention kernel on both sides; "
            f"top eigenvalue at tol {tol:g} (jacspec Lanczos; curvlinops + ARPACK), error "
            "against a jacspec solve to 1e-7", details=dict(
                t, exact=exact, jacspec_products=n_ours, peer_products=n_p)))
    return rows


# ------------------------------------------------------------------------------ JAX


def _jax_case(size: tuple[int, ...], batches: int = 1) -> dict[str, Any]:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from .models_jax import gpt_apply, gpt_init

    vocab, d, layers, heads, context, batch = size
    params = gpt_init(vocab, d, layers, heads, context)
    rng = np.random.default_rng(0)
    seqs = rng.integers(0, vocab, (batches, batch, context + 1))
    data = [(jnp.asarray(s[:, :-1]), jnp.asarray(s[:, 1:].reshape(-1))) for s in seqs]

    def cross_entropy(z: Any, targets: Any) -> Any:
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(z), targets[:, None], axis=1))

    def batch_loss(p: Any, b: tuple) -> Any:
        return cross_entropy(gpt_apply(p, b[0]), b[1])

    n = sum(int(a.size) for a in jax.tree_util.tree_leaves(params))
    return dict(params=params, data=data, apply=gpt_apply, cross_entropy=cross_entropy,
                batch_loss=batch_loss, n=n, cfg=_describe(size, n))


def _jax_programs(js: Any, c: dict) -> dict[str, Any]:
    """``(params, vector) -> result`` of each product and of a training step."""
    import jax

    b0, data = c["data"][0], c["data"]
    apply, ce, bl = c["apply"], c["cross_entropy"], c["batch_loss"]
    return {
        "step": lambda p, v: jax.grad(bl)(p, b0),
        "HVP": lambda p, v: js.hessian(lambda q: bl(q, b0), p) @ v,
        "GGN": lambda p, v: js.ggn(apply, ce, p, data=data[:1]) @ v,
        "JVP": lambda p, v: js.jacobian(lambda q: apply(q, b0[0]), p) @ v,
        "VJP": lambda p, v: js.jacobian(lambda q: apply(q, b0[0]), p).T @ apply(p, b0[0]
                                                                              ).reshape(-1),
        "HVP_dataset": lambda p, v: js.hessian(bl, p, data=data) @ v,
        "GGN_dataset": lambda p, v: js.ggn(apply, ce, p, data=data) @ v,
    }


@register("transformer", "jax", target="HVP <= 2.5, GGN <= 2.0 x forward+backward")
def transformer_jax(quick: bool, *, size: tuple[int, ...] | None = None) -> list[Row]:
    """Time of each product (one jitted program each) over one jitted training step,
    and central differences against the exact HVP (``quick``: the products with targets
    only)."""
    import jax
    import jax.numpy as jnp

    import jacspec as js

    c = _jax_case(size or (QUICK if quick else FULL))
    progs = _jax_programs(js, c)
    p, v = c["params"], jax.random.normal(jax.random.key(1), (c["n"],), jnp.float32)
    jitted = {("forward+backward" if k == "step" else k): jax.jit(progs[k])
              for k in ("step",) + _products(quick)}
    calls = {k: (lambda f=f: f(p, v)) for k, f in jitted.items()}
    times = interleaved_times(calls, repetitions(quick), jax.block_until_ready)
    cfg = (f"{c['cfg']}, jax.nn.dot_product_attention; each product one jitted program "
           "(jacspec traced inside jax.jit) vs a jitted jax.grad of the mean cross-entropy "
           "(median of runs in turn)")
    rows = _ratio_rows("transformer", times, cfg, "jax")
    if quick:
        return rows
    b0 = c["data"][0]
    fd = jax.jit(lambda q, w: js.hessian(lambda r: c["batch_loss"](r, b0), q,
                                         hvp="finite_difference") @ w)
    t = interleaved_times({"fd": lambda: fd(p, v), "exact": lambda: jitted["HVP"](p, v)},
                          repetitions(quick), jax.block_until_ready)
    exact = jitted["HVP"](p, v)
    err = float(jnp.linalg.norm(fd(p, v) - exact) / jnp.linalg.norm(exact))
    rows.append(_fd_row("jax", t["fd"], t["exact"], err,
                        f"{c['cfg']}: hvp='finite_difference' vs the exact HVP, jitted, "
                        "error relative to the exact product's norm"))
    return rows


@register("transformer-memory", "jax", target="HVP <= 2.5x, GGN <= 1.3x, dataset <= 1.1x")
def transformer_memory_jax(quick: bool, *, size: tuple[int, ...] | None = None
                           ) -> list[Row]:
    """Temporary buffers of each compiled product over a compiled training step's."""
    import jax
    import jax.numpy as jnp

    import jacspec as js

    size = size or (MEMORY_QUICK if quick else MEMORY_FULL)
    c = _jax_case(size, DATASET_BATCHES)
    v = jnp.zeros(c["n"], jnp.float32)
    mb = {}
    for name, fn in _jax_programs(js, c).items():
        if name not in memory_modes(quick):
            continue
        stats = jax.jit(fn).lower(c["params"], v).compile().memory_analysis()
        mb[name] = stats.temp_size_in_bytes / 2**20
    cfg = (f"{_describe(size, c['n'])}: temp_size_in_bytes of compiled.memory_analysis() "
           "(XLA's buffers beyond arguments and outputs) of each product as one jitted "
           f"program (HVP and GGN through data=: {DATASET_BATCHES} batches of one shape "
           "for the dataset rows, which jacspec runs as one lax.scan inside a trace; "
           "eagerly it runs the one-batch program per batch) vs of a jitted jax.grad")
    return _memory_rows("jax", mb, "MB", cfg)


def main(argv: list[str]) -> None:
    """Torch memory measurements: ``MODES SIZE WARM`` (each comma-separated; see
    :func:`_torch_memory`)."""
    size, warm = (tuple(int(s) for s in a.split(",")) for a in argv[1:3])
    t0 = time.perf_counter()
    out = dict(modes=argv[0], peak_mb=_torch_memory(argv[0].split(","), size, warm),
               seconds=time.perf_counter() - t0)
    print(json.dumps(out))


if __name__ == "__main__":  # pragma: no cover - run by run_fresh
    main(sys.argv[1:])
