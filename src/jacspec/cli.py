"""The ``jacspec`` command: ``info``, ``demo`` and ``bench``."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence

from ._install import install_hint

BACKENDS = ("torch", "jax", "tensorflow")


def _installed_version(module: str, distributions: dict[str, list[str]]) -> str | None:
    """The installed version of the distribution providing ``module``, read from its
    metadata (importing a framework takes seconds), or None when it is not installed."""
    import importlib.metadata
    import importlib.util

    if importlib.util.find_spec(module) is None:
        return None
    for dist in distributions.get(module, []):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:  # pragma: no cover
            continue
    return "?"


def _device_text(name: str) -> str:
    """Devices the framework sees, with a GPU flag (imports the framework)."""
    from .backends import get_backend

    devices = get_backend(name).devices()
    gpu = any(d.split(":")[0].lower() in ("cuda", "gpu", "mps") or "GPU" in d for d in devices)
    return ", ".join(devices) + ("  [GPU]" if gpu else "  [no GPU]")


def info(devices: bool = False) -> str:
    """Installed backends with their versions (and, with ``devices``, their devices).

    Versions come from the packages' metadata, so that the answer is immediate; listing
    devices imports each framework.

    Examples
    --------
    >>> from jacspec.cli import info
    >>> "numpy" in info()
    True
    """
    import importlib.metadata

    from .backends import BACKEND_NAMES

    try:
        version = importlib.metadata.version("jacspec")
    except importlib.metadata.PackageNotFoundError:  # running from a source tree
        from . import __version__ as version
    distributions = importlib.metadata.packages_distributions()
    lines = [f"jacspec {version} (Python {platform.python_version()}, {platform.machine()})"]
    lines.append(f"{'backend':<12}{'version':<16}{'devices' if devices else ''}".rstrip())
    for name, module in BACKEND_NAMES.items():
        found = _installed_version(module, distributions)
        if found is None:
            lines.append(f"{name:<12}{'not installed':<16}install: {install_hint(name)}")
            continue
        text = f"{name:<12}{found:<16}"
        if devices:
            try:
                text += _device_text(name)
            except ImportError as err:  # installed but broken
                text += f"cannot import: {err}"
        lines.append(text.rstrip())
    if not devices:
        lines.append("(jacspec info --devices lists each framework's devices; it imports them)")
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
            f"tensorflow, e.g. {install_hint('torch')}."
        )
    return name


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jacspec",
        description="Spectra of neural-network derivatives, matrix-free, in every framework.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_info = sub.add_parser("info", help="installed backends and versions (and devices)")
    p_info.add_argument("--devices", action="store_true",
                        help="also list each framework's devices (imports the frameworks; "
                        "default: off)")
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
        print(info(devices=args.devices))
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
