"""The ``jacspec`` command: ``info``, ``demo`` and ``bench``."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence

BACKENDS = ("torch", "jax", "tensorflow")


def info() -> str:
    """Installed backends with their versions and devices, as printable text.

    Examples
    --------
    >>> from jacspec.cli import info
    >>> "numpy" in info()
    True
    """
    import importlib.metadata

    from .backends import BACKEND_NAMES, get_backend

    try:
        version = importlib.metadata.version("jacspec")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        from . import __version__ as version
    lines = [f"jacspec {version} (Python {platform.python_version()}, {platform.machine()})"]
    lines.append(f"{'backend':<12}{'version':<16}devices")
    for name in BACKEND_NAMES:
        try:
            b = get_backend(name)
            devices = b.devices()
            gpu = any(d.split(":")[0].lower() in ("cuda", "gpu", "mps") or "GPU" in d
                      for d in devices)
            lines.append(f"{name:<12}{b.version():<16}{', '.join(devices)}"
                         + ("  [GPU]" if gpu else "  [no GPU]"))
        except ImportError:
            lines.append(f"{name:<12}{'not installed':<16}-  (pip install 'jacspec[{name}]')")
    return "\n".join(lines)


def default_backend() -> str | None:
    """The first installed of torch, jax, tensorflow."""
    import importlib.util

    for name in BACKENDS:
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def _backend_arg(value: str | None) -> str:
    name = value or default_backend()
    if name is None:
        raise SystemExit(
            "jacspec: no autodiff framework installed; install one of torch, jax or "
            "tensorflow (see README.md)."
        )
    return name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jacspec",
        description="Spectra of neural-network derivatives, matrix-free, in every framework.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="installed backends, versions and devices")
    from . import demo

    p_demo = sub.add_parser(
        "demo",
        help="train a small classifier on scikit-learn's digits with and without spectral "
        "penalties and report accuracy, Jacobian spectral norms and slopes",
    )
    demo.build_parser(p_demo)
    p_bench = sub.add_parser("bench", help="the benchmark table (ratios measured side by side)")
    p_bench.add_argument("--backend", choices=BACKENDS, default=None)
    p_bench.add_argument("--quick", action="store_true", help="a shorter run (< 3 minutes)")
    p_bench.add_argument("--json", default=None, metavar="PATH", help="also write JSON here")
    args = parser.parse_args(argv)

    if args.command == "info":
        print(info())
        return 0
    if args.command == "demo":
        args.backend = _backend_arg(args.backend)
        return demo.run_args(args)
    if args.command == "bench":
        from . import bench

        return int(bench.main(backend=_backend_arg(args.backend), quick=args.quick,
                              json_path=args.json) or 0)
    parser.error(f"unknown command {args.command!r}")  # pragma: no cover
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
