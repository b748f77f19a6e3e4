"""Benchmark of the spectral solvers (issue 3). Ratios are measured side by side in one
process; ``run()`` returns rows of ``name, configuration, measured, ratio, target, met``.

Rows: (1) Lanczos vs power products to relative error 1e-6 on ``sigma_max`` of a trained
MLP's input Jacobian; (2) per-sample norms of B=128 samples, batched call vs a loop;
(3) jacspec Lanczos vs a hand-written ``torch.func`` loop doing the same products;
(4) ``method="auto"`` vs the faster of dense and Lanczos for output sizes 10..3072.
Torch only for now (``backend="torch"``).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import numpy as np


def _timeit(fn, repeat: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def _trained_mlp(torch, epochs: int, dtype):
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    X = torch.tensor(X / 16.0, dtype=dtype)
    y = torch.tensor(y)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Tanh(),
                                torch.nn.Linear(128, 128), torch.nn.Tanh(),
                                torch.nn.Linear(128, 10)).to(dtype)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(epochs):
        for i in range(0, len(X), 128):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(X[i:i + 128]), y[i:i + 128]).backward()
            opt.step()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, X


def _products_to(rel: float, solve, ref: float, hi: int) -> int:
    """Smallest maxiter (products) whose result has relative error <= rel (bisection)."""
    lo = 1
    if abs(solve(hi) - ref) > rel * ref:
        return hi + 1
    while lo < hi:
        mid = (lo + hi) // 2
        if abs(solve(mid) - ref) <= rel * ref:
            hi = mid
        else:
            lo = mid + 1
    return lo


def run(backend: str = "torch", quick: bool = False) -> list[dict[str, Any]]:
    if backend != "torch":
        raise ValueError(f"Expected backend 'torch'. Received {backend!r}.")
    import torch

    import jacspec as js

    rows: list[dict[str, Any]] = []
    warnings.simplefilter("ignore", RuntimeWarning)
    model, X = _trained_mlp(torch, 3 if quick else 10, torch.float64)

    # (1) products to 1e-6: lanczos vs power, float64, input Jacobian of one sample
    x0 = X[0]
    op = js.jacobian(model, x0)
    ref = float(np.linalg.svd(js.dense(op).numpy(), compute_uv=False)[0])

    def lanczos(mi):
        return float(js.svds(op, method="lanczos", maxiter=mi, tol=1e-14).values[0])

    def power(mi):
        return float(js.svds(op, method="power", maxiter=mi, tol=1e-14).values[0])

    n_l = _products_to(1e-6, lanczos, ref, 20)
    n_p = _products_to(1e-6, power, ref, 4000)
    rows.append(dict(name="lanczos vs power products",
                     configuration="64-128-128-10 tanh MLP on digits, float64, rel. err 1e-6",
                     measured=dict(lanczos=n_l, power=n_p), ratio=n_l / n_p,
                     target="<= 1/3", met=n_l / n_p <= 1 / 3))

    # (2) batched vs loop, B=128, float32
    model32, X32 = _trained_mlp(torch, 3 if quick else 10, torch.float32)
    xb = X32[:128]
    t_b = _timeit(lambda: js.spectral_norm(js.jacobian(model32, xb, batched=True)))
    t_l = _timeit(lambda: [js.spectral_norm(js.jacobian(model32, xi)) for xi in xb], 1)
    rows.append(dict(name="batched vs loop", configuration="B=128, 10x64 Jacobians, float32, auto",
                     measured=dict(batched_s=t_b, loop_s=t_l), ratio=t_l / t_b,
                     target=">= 10", met=t_l / t_b >= 10))
    t_bl = _timeit(lambda: js.spectral_norm(js.jacobian(model32, xb, batched=True),
                                            method="lanczos"))
    t_ll = _timeit(lambda: [js.spectral_norm(js.jacobian(model32, xi), method="lanczos")
                            for xi in xb], 1)
    rows.append(dict(name="batched vs loop (lanczos)", configuration="B=128, 10x64, float32",
                     measured=dict(batched_s=t_bl, loop_s=t_ll), ratio=t_ll / t_bl,
                     target=">= 10", met=t_ll / t_bl >= 10))

    # (3) overhead vs a hand-written torch.func GKL loop doing the same products
    wide = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(),
                               torch.nn.Linear(256, 256)).float()
    for p in wide.parameters():
        p.requires_grad_(False)
    xw = X32[:32]
    steps = 20
    n_products = 2 * steps - 1

    def native():
        from torch.func import jvp, vjp

        f = wide
        _, vjp_fn = vjp(f, xw)
        g = torch.Generator().manual_seed(0)
        v = torch.randn(xw.shape, generator=g)
        v = v / v.norm(dim=-1, keepdim=True)
        Vs, Us = [], []
        for j in range(steps):
            u = jvp(f, (xw,), (v,))[1]
            for U in Us:
                u = u - (U * u).sum(-1, keepdim=True) * U
            u = u / u.norm(dim=-1, keepdim=True)
            Vs.append(v)
            Us.append(u)
            if j == steps - 1:
                break
            r = vjp_fn(u)[0]
            for _ in range(2):
                for V in Vs:
                    r = r - (V * r).sum(-1, keepdim=True) * V
            v = r / r.norm(dim=-1, keepdim=True)
        return v

    def ours():
        return js.svds(js.jacobian(wide, xw, batched=True), method="lanczos",
                       maxiter=n_products, tol=1e-30)

    t_n = _timeit(native)
    t_o = _timeit(ours)
    rows.append(dict(name="overhead vs torch.func loop",
                     configuration=f"B=32 64->256->256 tanh, float32, {n_products} products",
                     measured=dict(jacspec_s=t_o, native_s=t_n), ratio=t_o / t_n,
                     target="<= 1.10", met=t_o / t_n <= 1.10))

    # (4) auto vs best of dense / lanczos, output sizes
    sizes = [10, 64, 256] if quick else [10, 64, 128, 256, 512, 1024, 3072]
    worst = 0.0
    detail = {}
    for m in sizes:
        net = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.Tanh(),
                                  torch.nn.Linear(256, m)).float()
        for p in net.parameters():
            p.requires_grad_(False)
        xs = X32[:16]
        times = {}
        for method in ["dense", "lanczos", "auto"]:
            times[method] = _timeit(lambda method=method, net=net, xs=xs: js.spectral_norm(
                js.jacobian(net, xs, batched=True), method=method), 2)
        ratio = times["auto"] / min(times["dense"], times["lanczos"])
        worst = max(worst, ratio)
        detail[m] = {k: round(v, 4) for k, v in times.items()}
    rows.append(dict(name="auto vs best", configuration=f"B=16, 64->256->m tanh, float32, m in {sizes}",
                     measured=detail, ratio=worst, target="<= 1.2", met=worst <= 1.2))
    return rows


if __name__ == "__main__":  # pragma: no cover
    import sys

    for row in run(quick="--quick" in sys.argv):
        print(row)
