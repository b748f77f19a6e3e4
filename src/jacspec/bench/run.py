"""``jacspec bench``'s run: the configuration, the groups of the registry in turn, the
table and the JSON file."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import json
import math
import os
import platform
import sys
import time
import warnings
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from .._progress import progress
from .registry import BACKENDS, Row, groups
from .timing import fresh_cpu_seconds

__all__ = ["main", "format_table", "format_group_seconds", "write_json", "configuration"]

#: Peer libraries some rows compare with (import name: distribution name).
PEERS = {"curvlinops": "curvlinops-for-pytorch", "hessian_eigenthings": "hessian-eigenthings",
         "pyhessian": "pyhessian", "matfree": "matfree"}


def _models(backend: str) -> Any:
    """The backend's models module (``models_torch``, ...): it imports the framework."""
    return importlib.import_module(f"{__package__}.models_{backend}")


def configuration(backend: str, quick: bool) -> dict[str, Any]:
    """Backend, versions, device, threads and machine of this run."""
    import numpy as np
    import scipy

    import jacspec

    cfg: dict[str, Any] = {
        "backend": backend,
        "mode": "quick" if quick else "full",
        "jacspec": jacspec.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores",
        "load average": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "numpy": np.__version__,
        "scipy": scipy.__version__,
    }
    cfg.update(_models(backend).describe())
    for peer, dist in PEERS.items():
        try:
            cfg[peer] = version(dist)
        except PackageNotFoundError:
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


def format_table(rows: list[Row]) -> str:
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


def write_json(path: str, config: dict[str, Any], rows: list[Row], seconds: float,
               group_seconds: dict[str, dict[str, float]] | None = None) -> None:
    """The configuration, the rows (non-finite numbers as strings), the run's wall time
    and each group's wall and CPU seconds (``"name (backend)": {"wall": ..., "cpu":
    ...}``) as JSON."""
    data = {"configuration": config, "rows": rows, "seconds": seconds,
            "group_seconds": group_seconds or {}}
    with open(path, "w") as fh:
        json.dump(_jsonable(data), fh, indent=2)
        fh.write("\n")


def _backends(backend: str | None) -> list[str] | None:
    if backend is None:  # torch, and JAX where installed
        return ["torch"] + (["jax"] if importlib.util.find_spec("jax") else [])
    return [backend] if backend in BACKENDS else None


def main(backend: str | None = None, quick: bool = False,
         json_path: str | None = None, *, only: list[str] | None = None) -> int:
    """Run the benchmark groups of ``backend`` (default: torch, plus JAX when it is
    installed), print the configuration and the table, write JSON to ``json_path``.
    Returns 0 (an unmet target is a reported fact, not an error); 2 when the backend is
    not benchmarked. ``only``: the names of the groups to run (see
    :data:`jacspec.bench.registry.ORDER`)."""
    t0 = time.perf_counter()
    backends = _backends(backend)
    if backends is None:
        print(f"jacspec bench: backend {backend!r} is not benchmarked "
              f"(supported: {', '.join(BACKENDS)}).", file=sys.stderr)
        return 2
    with contextlib.ExitStack() as stack:
        for b in backends:  # the backend's own setting for the bench (threads), if any
            stack.enter_context(getattr(_models(b), "threads", contextlib.nullcontext)())
        config = configuration(backends[0], quick)
        for b in backends[1:]:
            config.update({k: v for k, v in configuration(b, quick).items()
                           if k not in config})
        config["backend"] = "+".join(backends)
        print("jacspec bench — configuration")
        for k, v in config.items():
            print(f"  {k}: {v}")
        print(flush=True)
        rows, group_seconds = _run_groups(
            [(b, g) for b in backends for g in groups(b, quick, only)], quick)
    seconds = time.perf_counter() - t0
    print()
    print(format_table(rows))
    print()
    for r in rows:
        if r.get("configuration"):
            print(f"  {r['name']}: {r['configuration']}")
    print(f"\n{len(rows)} rows in {seconds:.0f} s (times: median of repetitions after a "
          "warm-up).")
    print(format_group_seconds(group_seconds))
    if json_path:
        write_json(json_path, config, rows, seconds, group_seconds)
        print(f"wrote {json_path}")
    return 0


def format_group_seconds(group_seconds: dict[str, dict[str, float]]) -> str:
    """Where the run's time went: each group's wall time, slowest first, with the CPU
    time of this process and its subprocesses beside it (on a shared machine the wall
    time grows with the load, the CPU time much less).

    Examples
    --------
    >>> print(format_group_seconds({"overhead (torch)": dict(wall=12.04, cpu=9.0),
    ...                             "dense (torch)": dict(wall=30.5, cpu=20.0)}))
    time per group, wall (CPU): dense (torch) 30.5 s (20.0 s), overhead (torch) 12.0 s (9.0 s)
    """
    slowest = sorted(group_seconds.items(), key=lambda kv: -kv[1]["wall"])
    return "time per group, wall (CPU): " + ", ".join(
        f"{k} {v['wall']:.1f} s ({v['cpu']:.1f} s)" for k, v in slowest)


def _cpu_seconds() -> float:
    """CPU time of this process and of its finished subprocesses (fresh-process rows)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system + fresh_cpu_seconds()


def _run_groups(todo: list, quick: bool) -> tuple[list[Row], dict[str, dict[str, float]]]:
    """Each group's rows and seconds (``"name (backend)": {"wall": ..., "cpu": ...}``),
    with a progress line per group; a group that fails is reported as a skip line and
    the run goes on."""
    rows: list[Row] = []
    group_seconds: dict[str, dict[str, float]] = {}
    bar = progress(len(todo), desc="jacspec bench", unit="group", file=sys.stdout)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for b, group in todo:
            bar.set_postfix_str(f"{group.name} ({b})")
            t1, c1 = time.perf_counter(), _cpu_seconds()
            try:
                new = group.run(quick)
            except Exception as exc:  # report, keep going
                new = [dict(name=f"{group.name} ({b})",
                            skipped=f"{type(exc).__name__}: {exc}")]
            for r in new:
                r.setdefault("backend", b)
                r.setdefault("group", group.name)
                if "skipped" in r:
                    print(f"  [skip] {r['name']}: {r['skipped']}", flush=True)
                else:
                    rows.append(r)
            elapsed = time.perf_counter() - t1
            group_seconds[f"{group.name} ({b})"] = dict(wall=elapsed,
                                                        cpu=_cpu_seconds() - c1)
            bar.set_postfix_str(f"{group.name} ({b}) done in {elapsed:.1f} s")
            bar.update(1)
    bar.close()
    return rows, group_seconds
