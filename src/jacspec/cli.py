"""The ``jacspec`` command: ``info``, ``demo`` and ``bench``."""

from __future__ import annotations

import argparse
import platform
import sys
from collections.abc import Sequence

from ._install import install_hint
from ._paths import writable_file

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


def host_gpus() -> str:
    """The GPUs this machine has, as far as is known without importing a framework:
    NVIDIA GPUs from the driver's entries in ``/proc``, Apple silicon's GPU (MPS)."""
    import glob

    nvidia = glob.glob("/proc/driver/nvidia/gpus/*")
    if nvidia:
        return f"GPU: {len(nvidia)} NVIDIA (driver loaded)"
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return "GPU: Apple silicon (MPS)"
    return "no GPU found (no NVIDIA driver loaded)"


def _build(name: str) -> str:
    """Whether a framework's installed build can use a GPU, from its metadata."""
    import importlib.metadata

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    if name == "torch":
        local = (version("torch") or "").partition("+")[2]
        if local.startswith(("cu", "rocm")):
            return f"{local} build"
        return "CPU build" if local == "cpu" else "build: see --devices"
    if name == "jax":
        plugins = [d for d in ("jax-cuda12-plugin", "jax-cuda13-plugin", "jax-rocm60-plugin")
                   if version(d)]
        return f"{plugins[0]} installed" if plugins else "CPU build (no GPU plugin)"
    return "build: see --devices"


def info(devices: bool = False) -> str:
    """Installed backends with their versions and devices (GPU or not).

    Without ``devices`` nothing is imported, so that the answer is immediate: versions
    and GPU builds come from the packages' metadata, the machine's GPUs from the
    driver. ``devices=True`` imports each framework and lists the devices it sees.

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
    lines.append(host_gpus())
    lines.append(f"{'backend':<12}{'version':<16}devices")
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
        elif name != "numpy":
            text += _build(name)
        else:
            text += "cpu"
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
    p_info = sub.add_parser(
        "info", help="installed backends, versions and devices (GPU or not)",
        description="Installed backends with their versions, whether the machine has a "
        "GPU and whether each framework's build can use one (from package metadata: "
        "nothing is imported). --devices lists the devices each framework sees.")
    p_info.add_argument("--devices", action="store_true",
                        help="list the devices each framework sees (imports the frameworks, "
                        "which takes seconds; default: off)")
    from . import demo

    p_demo = sub.add_parser(
        "demo",
        help="train a small classifier on scikit-learn's digits with and without spectral "
        "penalties and report accuracy, Jacobian spectral norms and slopes",
    )
    demo.build_parser(p_demo)
    p_bench = sub.add_parser("bench", help="the benchmark table (ratios measured side by side)")
    p_bench.add_argument("--backend", choices=BACKENDS, default=None)
    p_bench.add_argument("--quick", action="store_true",
                         help="a shorter run: at least one row per target; heavy report "
                         "rows and the dataset peers run in the full run only")
    p_bench.add_argument("--json", default=None, metavar="PATH",
                         help="also write JSON here (default: none)")
    args = parser.parse_args(argv)
    if args.command == "demo":
        demo.check_args(p_demo, args)
    if args.command == "bench" and args.json is not None:
        problem = writable_file(args.json)  # before the run, not after it
        if problem:
            p_bench.error(f"argument --json: {problem}")

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
