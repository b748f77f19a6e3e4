"""Rows "arpack" (torch): operator products of ``js.eigsh`` (Lanczos) against ARPACK
(``scipy.sparse.linalg.eigsh``, the solver behind curvlinops' and SciPy's users) on the
same operator, at the same tolerance, in float64, with the error of each against a
reference.

* quick: the loss Hessian of a 64-32-10 tanh MLP on 256 digits (2,410 parameters); the
  reference is the dense Hessian's ``eigvalsh``.
* full: the loss Hessian of the whole digits set (1,797 samples in batches of 128) for a
  64-256-256-10 tanh MLP (85,002 parameters); the reference is a Lanczos solve to 1e-12.

Both sides take their products through one ``js.to_scipy``-style product of the same
operator (ARPACK's through ``js.to_scipy(H)``); ARPACK runs with SciPy's defaults
(``ncv = max(2k + 1, 20)``) at jacspec's default ``tol`` (``sqrt(eps)``), top ``k``
by magnitude. For ``k >= 2`` jacspec's count includes its check restart (``2k + 1``
products that find other copies of a repeated value, which ARPACK does not look for).
Both sides run from ``STARTS`` seeded random starts (jacspec's ``seed``, ARPACK's
``v0``): ARPACK's count depends on its start (21 or 36 products for the quick top 3),
so the row compares the medians and the worst errors.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from .registry import Row, register

KS = (1, 3)
STARTS = 5


def arpack_counted(js, H, k: int, tol: float, seed: int = 0) -> tuple[np.ndarray, int]:
    """ARPACK's top-``k`` magnitudes of ``H`` and its product count, from a random
    start drawn with ``seed``."""
    import scipy.sparse.linalg as sla

    S = js.to_scipy(H)
    count = [0]

    def mv(v):
        count[0] += 1
        return S @ v

    L = sla.LinearOperator(S.shape, matvec=mv, dtype=np.float64)
    v0 = np.random.default_rng(seed).standard_normal(S.shape[0])
    w = sla.eigsh(L, k=k, which="LM", tol=tol, v0=v0, return_eigenvectors=False)
    return np.sort(np.abs(w))[::-1], count[0]


def _runs(solve: Callable[[int], tuple[np.ndarray, int]], ref: np.ndarray
          ) -> tuple[int, float, list[int], float]:
    """Median product count, worst relative error, all counts and CPU seconds of
    ``solve(seed)`` over ``STARTS`` seeds."""
    counts, errs = [], []
    t0 = time.process_time()
    for seed in range(STARTS):
        values, count = solve(seed)
        counts.append(count)
        errs.append(float(np.max(np.abs(values - ref)) / ref[0]))
    return (int(np.median(counts)), max(errs), counts,
            (time.process_time() - t0) / STARTS)


def _problem(torch, quick: bool, hidden: int = 32
             ) -> tuple[Any, Callable[[int], np.ndarray], str]:
    """``(H, reference(k), description)`` (``hidden``: the quick model's width)."""
    import jacspec as js

    from .models import digits
    from .models_torch import hessian_problem, mlp, train

    crit = torch.nn.functional.cross_entropy
    if quick:
        model, X, y = hessian_problem(torch.float64, hidden=hidden)
        names = [n for n, _ in model.named_parameters()]
        params = [p.detach() for p in model.parameters()]

        def loss(ps):
            return crit(torch.func.functional_call(model, dict(zip(names, ps)), (X,)), y)

        H = js.hessian(loss, params)
        sizes = [p.numel() for p in params]

        def flat_loss(theta):  # the dense Hessian in one vectorized call
            parts = torch.split(theta, sizes)
            return loss([t.reshape(p.shape) for t, p in zip(parts, params)])

        theta = torch.cat([p.reshape(-1) for p in params])
        dense = np.linalg.eigvalsh(torch.func.hessian(flat_loss)(theta).numpy())
        ref = np.sort(np.abs(dense))[::-1]
        return H, lambda k: ref[:k], (f"loss Hessian of a 64-{hidden}-10 tanh MLP on 256 digits "
                                      f"({H.shape[0]} parameters), float64; error vs the "
                                      "dense Hessian's eigvalsh")
    X, y = digits()
    Xt, yt = torch.tensor(X, dtype=torch.float64), torch.tensor(y)
    model = train(mlp([64, 256, 256, 10], torch.float64, frozen=False), Xt, yt, lr=1e-3,
                  steps=20)
    batches = [(Xt[i:i + 128], yt[i:i + 128]) for i in range(0, len(Xt), 128)]
    params = {k: v.detach() for k, v in model.named_parameters()}

    def batch_loss(p, b):
        return crit(torch.func.functional_call(model, p, (b[0],)), b[1])

    H = js.hessian(batch_loss, params, data=batches)
    ref = np.abs(np.asarray(js.eigsh(H, k=max(KS), tol=1e-12, method="lanczos").values))
    return H, lambda k: ref[:k], (f"loss Hessian of the digits set (1,797 samples, batches "
                                  f"of 128) for a 64-256-256-10 tanh MLP ({H.shape[0]} "
                                  "parameters), float64; error vs a Lanczos solve to 1e-12")


@register("arpack", "torch", target="products <= ARPACK")
def arpack_products_torch(quick: bool, *, hidden: int = 32) -> list[Row]:
    """The rows; ``hidden`` shrinks the quick model (tests)."""
    import torch

    import jacspec as js

    H, reference, what = _problem(torch, quick, hidden)
    tol = float(np.sqrt(np.finfo(np.float64).eps))
    rows: list[Row] = []
    for k in KS:
        ref = reference(k)

        def ours(seed, k=k):
            r = js.eigsh(H, k=k, method="lanczos", seed=seed)
            return np.abs(np.asarray(r.values)), int(r.num_matvecs)

        n_ours, e_ours, c_ours, t_ours = _runs(ours, ref)
        n_peer, e_peer, c_peer, t_peer = _runs(
            lambda seed, k=k: arpack_counted(js, H, k, tol, seed), ref)
        rows.append(dict(
            name=f"arpack: products, top {k} (float64)",
            jacspec=f"{n_ours} products, err {e_ours:.1e}",
            reference=f"{n_peer} products, err {e_peer:.1e} (ARPACK)",
            ratio=n_ours / n_peer, target="products <= ARPACK",
            met=n_ours <= n_peer and e_ours <= max(e_peer, 1e-12),
            configuration=f"{what}; js.eigsh(H, k={k}, method='lanczos') vs "
            f"scipy.sparse.linalg.eigsh(js.to_scipy(H), k={k}, tol={tol:.2g}) (ARPACK, "
            f"ncv {max(2 * k + 1, 20)}); median products over {STARTS} seeded starts "
            f"(jacspec {c_ours}, ARPACK {c_peer}), worst error; CPU time a solve "
            f"{t_ours:.2f} s vs {t_peer:.2f} s"
            + ("; jacspec's count includes its check restart" if k > 1 else ""),
            details=dict(jacspec_products=n_ours, peer_products=n_peer, jacspec_err=e_ours,
                         peer_err=e_peer, jacspec_cpu_s=t_ours, peer_cpu_s=t_peer, k=k,
                         jacspec_counts=c_ours, peer_counts=c_peer)))
    return rows
