"""Rows "load" (torch): the same work on the machine as it is and with a second process
spinning on a core (:class:`~jacspec.bench.timing.BusyProcess`), in turn; the ratio is
loaded / quiet, target <= 2x.

* the demo's spectral run: ``jacspec.demo.run`` (quick sizes), the seconds of its
  spectral-penalty run (training and evaluation), on the demo's own thread setting;
* a per-sample Lanczos solve: ``js.svds`` of the design MLP's per-sample Jacobians
  (B=128, 10x64), on the process's thread setting (torch's default: one thread per
  core).

Here a framework's thread pool meets a busy machine: an operation split over threads
waits for its slowest thread, and a thread that lost its core waits for a time slice of
the scheduler.
"""

from __future__ import annotations

import io

from .registry import Row, register
from .timing import loaded_times, ms


def _row(name: str, t: dict[str, float], cfg: str) -> Row:
    ratio = t["loaded"] / t["quiet"]
    return dict(name=f"load: {name}, loaded / quiet (torch)", jacspec=ms(t["loaded"]),
                reference=ms(t["quiet"]), ratio=ratio, target="<= 2", met=ratio <= 2,
                configuration=cfg, details=dict(times_s=t))


@register("load", "torch", target="<= 2")
def load_torch(quick: bool) -> list[Row]:
    import torch

    import jacspec as js
    from jacspec import demo

    from .models_torch import design_mlp

    reps = 3 if quick else 7
    demo_reps = 2 if quick else 7  # seconds a run: the ratio holds from two rounds

    def spectral_run() -> list:
        return demo.run("torch", quick=True, penalties={"spectral": 0.01}, plot=False,
                        progress=False, stream=io.StringIO())

    # the spectral run's own seconds (a plain run comes first)
    t_demo = loaded_times(spectral_run, demo_reps, seconds=lambda res: res[-1].seconds)
    net, Xte, _ = design_mlp(torch.float32)
    xb = Xte[:128]
    t_solve = loaded_times(lambda: js.svds(js.jacobian(net, xb, batched=True),
                                           method="lanczos", tol=1e-4).values, 5 * reps)
    return [
        _row("demo spectral run", t_demo,
             "jacspec.demo.run('torch', quick=True, penalties={'spectral': 0.01}): the "
             "spectral run's seconds (30 Adam steps with js.penalties.spectral on 200 "
             "digits, then js.slope at 400 test points and 100 between them) on the "
             f"demo's thread setting; {demo_reps} rounds, quiet and loaded in turn"),
        _row("per-sample Lanczos solve", t_solve,
             "js.svds(js.jacobian(trained MLP 64-256-256-10, 128 digits, batched=True), "
             f"method='lanczos', tol=1e-4), torch on {torch.get_num_threads()} intra-op "
             f"thread(s); {5 * reps} rounds, quiet and loaded in turn"),
    ]
