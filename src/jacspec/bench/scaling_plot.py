"""The scaling figure and table, drawn from ``jacspec bench --json`` output: time and
memory of forward+backward and of an HVP against the ResNet-18's base width and the
batch size, log-log, one line per backend and kind (rows of the ``scaling`` group).

    jacspec bench --only scaling --json bench.json        # or one JSON per backend
    python -m jacspec.bench.scaling_plot bench.json -o docs/figures/scaling.png

Prints the points as a Markdown table. Needs matplotlib (drawn with the Agg backend).

Examples
--------
>>> from jacspec.bench.scaling_plot import series_rows, markdown_table
>>> row = dict(group="scaling", backend="torch", name="scaling: width series (torch)",
...            details=dict(axis="width", points=[dict(width=8, batch=8, params=1,
...                         fwd_bwd_s=0.01, hvp_s=0.03, fwd_bwd_mb=2.0, hvp_mb=5.0)]))
>>> print(markdown_table(series_rows([{"rows": [row]}])).splitlines()[2])
| torch | width | 8 | 8 | 1 | 10.0 | 30.0 | 3 | 2.0 | 5.0 |
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

__all__ = ["series_rows", "markdown_table", "plot", "main"]

KINDS = (("fwd_bwd", "fwd+bwd", "--"), ("hvp", "HVP", "-"))
MARKERS = {"torch": "o", "jax": "s"}


def series_rows(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The ``scaling`` series rows of several ``--json`` outputs, in order."""
    return [r for run in runs for r in run.get("rows", [])
            if r.get("group") == "scaling" and "axis" in r.get("details", {})]


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """One line per point: backend, axis, width, batch, parameters, times (ms), their
    ratio and memory (MB)."""
    out = ["| backend | series | width | batch | parameters | fwd+bwd ms | HVP ms | "
           "HVP/fwd+bwd | fwd+bwd MB | HVP MB |", "|" + "---|" * 10]
    for r in rows:
        for p in r["details"]["points"]:
            out.append(f"| {r['backend']} | {r['details']['axis']} | {p['width']} | "
                       f"{p['batch']} | {p['params']} | {p['fwd_bwd_s'] * 1e3:.1f} | "
                       f"{p['hvp_s'] * 1e3:.1f} | {p['hvp_s'] / p['fwd_bwd_s']:.2g} | "
                       f"{p['fwd_bwd_mb']:.1f} | {p['hvp_mb']:.1f} |")
    return "\n".join(out)


def plot(rows: Sequence[dict[str, Any]], path: str) -> None:
    """Four log-log panels (time and memory against width and batch) saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(9, 7))
    for col, axis in enumerate(("width", "batch")):
        for r in (r for r in rows if r["details"]["axis"] == axis):
            pts = r["details"]["points"]
            xs = [p[axis] for p in pts]
            fixed = ", ".join(f"{k} {v}" for k, v in r["details"].get("fixed", {}).items())
            for key, label, style in KINDS:
                for row_i, (unit, scale) in enumerate((("s", 1e3), ("mb", 1.0))):
                    axes[row_i, col].plot(
                        xs, [p[f"{key}_{unit}"] * scale for p in pts], style,
                        marker=MARKERS.get(r["backend"], "^"),
                        label=f"{r['backend']} {label}" + (f" ({fixed})" if fixed else ""))
        for row_i, ylabel in enumerate(("time (ms)", "memory (MB)")):
            ax = axes[row_i, col]
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_xlabel("base width" if axis == "width" else "batch size")
            ax.set_ylabel(ylabel)
            ax.grid(True, which="both", alpha=0.3)
    for ax in axes[0]:
        ax.legend(fontsize=7)
    fig.suptitle("ResNet-18: forward+backward and Hessian-vector product")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m jacspec.bench.scaling_plot",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("json", nargs="+", help="jacspec bench --json outputs")
    parser.add_argument("-o", "--output", default="scaling.png", help="the figure")
    args = parser.parse_args(argv)
    runs = []
    for path in args.json:
        with open(path) as fh:
            runs.append(json.load(fh))
    rows = series_rows(runs)
    if not rows:
        parser.error("no rows of the scaling group in " + ", ".join(args.json))
    plot(rows, args.output)
    print(markdown_table(rows))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
