"""``jacspec bench``: the benchmark rows, each a ratio measured side by side.

Every row runs jacspec and its reference (a hand-written native loop, a per-sample loop,
the best fixed method, or a peer library) in the same process, on the same model and
inputs, and reports the median of several repetitions after a warm-up call. The
configuration (backend, device, dtype, threads, versions) is printed with the table;
``json_path`` also writes everything machine-readably.

Rows (see ``jacspec.bench.rows``; TensorFlow's in ``jacspec.bench.rows_tf``):

1. ``overhead``: jacspec power iteration and Lanczos vs a hand-written native loop doing
   the same products (torch; JAX under ``jax.jit``; TensorFlow under ``tf.function``,
   eager reported), target <= 1.10x on the design's 64-256-256-10 MLP with B=128
   per-sample Jacobians; a small case is reported too.
2. ``lanczos/power``: products until every per-sample ``sigma_max`` (B=64/128 held-out
   digits, trained 64-256-256-10 MLP, float64) stays within relative error 1e-6 of the
   dense SVD; worst sample (the batch waits for it), target <= 1/3.
3. ``batched/loop``: per-sample spectral norms of B=128 samples, target >= 10x (torch,
   TensorFlow).
4. ``auto/best``: ``method="auto"`` vs the faster of dense and Lanczos on square maps
   ``R^s -> R^s`` (both sides scale, so the crossover is exercised), target <= 1.2x.
5. ``peers``: top Hessian eigenvalue vs curvlinops + ``scipy.sparse.linalg.eigsh``,
   hessian-eigenthings, PyHessian (torch) and matfree (JAX) where installed: time,
   products, error against the dense answer.
6. ``conv``: Fantastic Four bound vs exact zero-padded norm (``jacspec.bench.conv_bench``).
7. ``memory``: peak memory of Lanczos vs the model's own saved activations (torch).
8. ``dataset``, ``dataset-memory``, ``density`` (``jacspec.bench.rows_data``): the top
   Hessian eigenvalue of the whole digits set vs PyHessian's data-loader mode and
   curvlinops + ``eigsh``; the peak memory of a dataset product; the cost of a
   spectral-density probe-step vs one dataset product (torch).
9. ``scaling`` (``jacspec.bench.rows_scaling``): a ResNet-18 (torch and JAX): JVP, VJP
   and HVP vs forward+backward, top Hessian eigenvalue and per-sample ``sigma_max`` vs
   hand-written loops, time and memory against width and batch size.

Peer libraries are imported inside the row functions only; none is a dependency.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
import warnings
from typing import Any

from .._progress import progress

__all__ = ["main", "format_table", "configuration"]

BACKENDS = ("torch", "jax", "tensorflow")


def configuration(backend: str, quick: bool) -> dict[str, Any]:
    """Backend, versions, device, threads and machine of this run."""
    import jacspec

    cfg: dict[str, Any] = {
        "backend": backend,
        "mode": "quick" if quick else "full",
        "jacspec": getattr(jacspec, "__version__", "?"),
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores",
    }
    try:
        import numpy as np
        import scipy

        cfg["numpy"], cfg["scipy"] = np.__version__, scipy.__version__
    except ImportError:  # pragma: no cover
        pass
    if backend == "torch":
        import torch

        cfg["torch"] = torch.__version__
        cfg["threads"] = torch.get_num_threads()
        cfg["device"] = "cpu"
    elif backend == "jax":
        import jax

        cfg["jax"] = jax.__version__
        cfg["device"] = str(jax.devices()[0])
    elif backend == "tensorflow":
        import tensorflow as tf

        cfg["tensorflow"] = tf.__version__
        cfg["device"] = tf.config.list_logical_devices()[0].name
    for peer in ("curvlinops", "hessian_eigenthings", "pyhessian", "matfree"):
        try:
            from importlib.metadata import version

            dist = {"curvlinops": "curvlinops-for-pytorch",
                    "hessian_eigenthings": "hessian-eigenthings",
                    "pyhessian": "pyhessian", "matfree": "matfree"}[peer]
            cfg[peer] = version(dist)
        except Exception:
            cfg[peer] = "not installed"
    return cfg


def _fmt(x: Any) -> str:
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "NO"
    if isinstance(x, float):
        if not math.isfinite(x):
            return str(x)
        if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-2):
            return f"{x:.2e}"
        return f"{x:.3g}"
    return str(x)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text (Markdown) table with columns row, jacspec, reference, ratio,
    target, met. ``met`` is "-" for rows without a target."""
    head = ["row", "jacspec", "reference", "ratio", "target", "met"]
    body = [[str(r.get("name", "?")), _fmt(r.get("jacspec")), _fmt(r.get("reference")),
             _fmt(r.get("ratio")), _fmt(r.get("target")), _fmt(r.get("met"))]
            for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h)
              for i, h in enumerate(head)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(b) for b in body]
    return "\n".join(out)


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    try:
        return float(x)
    except Exception:
        return str(x)


def write_json(path: str, config: dict[str, Any], rows: list[dict[str, Any]],
               seconds: float) -> None:
    with open(path, "w") as fh:
        json.dump(_jsonable({"configuration": config, "rows": rows,
                             "seconds": seconds}), fh, indent=2)
        fh.write("\n")


def main(backend: str | None = None, quick: bool = False,
         json_path: str | None = None, *, only: list[str] | None = None) -> int:
    """Run the benchmark rows for ``backend`` (default: torch, plus the JAX rows when
    JAX is installed), print the configuration and the table, write JSON to
    ``json_path``. Returns 0 (an unmet target is a reported fact, not an error); 2 when
    the backend is not supported.

    ``only``: row groups to run (``overhead lanczos batched auto peers conv memory
    dataset dataset-memory density scaling``).
    """
    from . import rows as R

    t0 = time.perf_counter()
    if backend is None:
        backends = ["torch"]
        try:
            import jax  # noqa: F401

            backends.append("jax")
        except ImportError:
            pass
    elif backend in BACKENDS:
        backends = [backend]
    else:
        print(f"jacspec bench: backend {backend!r} is not benchmarked "
              f"(supported: {', '.join(BACKENDS)}).", file=sys.stderr)
        return 2
    config = configuration(backends[0], quick)
    if len(backends) > 1:
        config.update({k: v for k, v in configuration(backends[1], quick).items()
                       if k not in config})
        config["backend"] = "+".join(backends)
    print("jacspec bench — configuration")
    for k, v in config.items():
        print(f"  {k}: {v}")
    print(flush=True)
    all_rows: list[dict[str, Any]] = []
    todo = [(b, group, fn) for b in backends for group, fn in R.groups(b)
            if only is None or group in only]
    bar = progress(len(todo), desc="jacspec bench", unit="group", file=sys.stdout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b, group, fn in todo:
            bar.set_postfix_str(f"{group} ({b})")
            t1 = time.perf_counter()
            try:
                new = fn(quick)
            except Exception as exc:  # report, keep going
                new = [dict(name=f"{group} ({b})", skipped=f"{type(exc).__name__}: {exc}")]
            for r in new:
                r.setdefault("backend", b)
                r.setdefault("group", group)
                if "skipped" in r:
                    print(f"  [skip] {r['name']}: {r['skipped']}", flush=True)
                else:
                    all_rows.append(r)
            bar.set_postfix_str(f"{group} ({b}) done in {time.perf_counter() - t1:.1f} s")
            bar.update(1)
    bar.close()
    seconds = time.perf_counter() - t0
    print()
    print(format_table(all_rows))
    print()
    for r in all_rows:
        if r.get("configuration"):
            print(f"  {r['name']}: {r['configuration']}")
    print(f"\n{len(all_rows)} rows in {seconds:.0f} s "
          f"(times: median of repetitions after a warm-up).")
    if json_path:
        write_json(json_path, config, all_rows, seconds)
        print(f"wrote {json_path}")
    return 0
