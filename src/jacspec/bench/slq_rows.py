"""Rows "slq" (torch): ``js.spectral_density`` against the stochastic Lanczos
quadratures of peer libraries at the same probes and steps, run in turn in one process.

* ``slq: NumPy 300x300 / curvlinops``: a symmetric 300x300 NumPy matrix (float64), 8
  probes x 64 steps, against curvlinops' ``fast_lanczos`` (the Lanczos runs of its
  ``lanczos_approximate_spectrum``, without the spectral boundary estimate that adds
  ARPACK calls; no reorthogonalization) on the same matrix as a torch tensor.
* ``slq: torch Hessian / PyHessian``: the loss Hessian of a 64-48-10 tanh MLP on 256
  digits (3,610 parameters, float32), 8 probes x 64 steps (``--quick``: 4 x 32, one
  round: PyHessian's call takes seconds), against PyHessian's
  ``density`` (its full reorthogonalization over Python lists of vectors; torch's
  removed ``torch.eig`` is supplied from ``torch.linalg.eigh`` while it runs).

Peers are imported inside the functions only.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np

from .registry import Row, register
from .timing import interleaved_times, ms

PROBES, STEPS = 8, 64


def _row(name: str, t_ours: float, t_peer: float, peer: str, cfg: str, reps: int,
         size: tuple[int, int] = (PROBES, STEPS)) -> Row:
    return dict(name=f"slq: {name}", jacspec=ms(t_ours), reference=f"{ms(t_peer)} ({peer})",
                ratio=t_ours / t_peer, target="<= 1", met=t_ours <= t_peer,
                configuration=cfg + f"; {size[0]} probes x {size[1]} steps, median of "
                f"{reps} rounds in turn", details=dict(jacspec_s=t_ours, peer_s=t_peer,
                                                       reps=reps, probes=size[0],
                                                       steps=size[1]))


def density_numpy_vs_curvlinops(quick: bool, n: int = 300) -> list[Row]:
    import torch

    import jacspec as js

    try:
        from curvlinops.papyan2020traces.spectrum import fast_lanczos
    except ImportError:
        return [dict(name="slq: NumPy / curvlinops", skipped="curvlinops not installed")]
    rng = np.random.default_rng(0)
    A = rng.standard_normal((n, n))
    A = (A + A.T) / 2
    At = torch.from_numpy(A)
    reps = 5 if quick else 15

    def peer():
        torch.manual_seed(0)
        return [fast_lanczos(At, STEPS) for _ in range(PROBES)]

    t = interleaved_times({"ours": lambda: js.spectral_density(A, num_probes=PROBES,
                                                              num_steps=STEPS),
                           "peer": peer}, reps)
    cfg = (f"js.spectral_density of a symmetric {n}x{n} NumPy matrix (float64) vs "
           "curvlinops fast_lanczos on it as a torch tensor, once per probe")
    return [_row(f"NumPy {n}x{n} / curvlinops", t["ours"], t["peer"], "curvlinops", cfg,
                 reps)]


@contextlib.contextmanager
def _torch_eig(torch) -> Iterator[None]:
    """``torch.eig(T, eigenvectors=True)`` (removed from torch) for PyHessian's
    symmetric tridiagonal ``T``: eigenvalues as the real column of ``(n, 2)``."""
    had = hasattr(torch, "eig")
    old = getattr(torch, "eig", None)

    def eig(T, eigenvectors=True):
        w, V = torch.linalg.eigh(T)
        return torch.stack([w, torch.zeros_like(w)], 1), V

    torch.eig = eig
    try:
        yield
    finally:
        if had:
            torch.eig = old
        else:
            del torch.eig


def density_torch_vs_pyhessian(quick: bool, hidden: int = 48) -> list[Row]:
    import torch

    import jacspec as js

    from .models_torch import hessian_problem

    try:
        import importlib

        ph = importlib.import_module("pyhessian.hessian")  # the module, not the class
    except ImportError:
        return [dict(name="slq: torch Hessian / PyHessian", skipped="pyhessian not installed")]
    model, X, y = hessian_problem(torch.float32, hidden=hidden)
    crit = torch.nn.functional.cross_entropy
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for p in model.parameters()]
    nparam = sum(p.numel() for p in params)

    def loss(ps):
        return crit(torch.func.functional_call(model, dict(zip(names, ps)), (X,)), y)

    probes, steps = (4, 32) if quick else (PROBES, STEPS)

    def ours():
        return js.spectral_density(js.hessian(loss, params), num_probes=probes,
                                   num_steps=steps)

    def peer():
        for p in model.parameters():
            p.requires_grad_(True)
        torch.manual_seed(0)
        with _torch_eig(torch):
            comp = ph.hessian(model, crit, data=(X, y), cuda=False)
            return comp.density(iter=steps, n_v=probes)

    reps = 1 if quick else 7
    t = interleaved_times({"ours": ours, "peer": peer}, reps)
    for p in model.parameters():
        p.requires_grad_(True)
    cfg = (f"js.spectral_density(js.hessian(loss, params)) for a 64-{hidden}-10 tanh MLP "
           f"on 256 digits ({nparam} parameters, float32) vs PyHessian's density")
    return [_row("torch Hessian / PyHessian", t["ours"], t["peer"], "PyHessian", cfg, reps,
                 (probes, steps))]


@register("slq", "torch", target="<= 1")
def slq_torch(quick: bool) -> list[Row]:
    return density_numpy_vs_curvlinops(quick) + density_torch_vs_pyhessian(quick)
