"""Nox sessions for jacspec.

    nox -s tests                          # all four backends (what CI runs)
    nox -s "tests(backend='torch')"       # one backend
    nox -s tests -- -k svds -x            # extra arguments go to pytest (-n 0: one process)
    nox -s lint docs bench
    nox -s experiments                    # regenerate the Experiments page's results

Each backend session installs that backend's pinned CPU requirements from
``backends/<name>/requirements.txt`` *before* resolving jacspec, so that e.g. torch is
never resolved unpinned (which would pull the multi-GB CUDA build).

Environments are made and filled by uv when it is installed (``pip install "nox[uv]"``,
as the README's test command does), else by virtualenv and pip. uv installs the four
test environments several times faster than pip: it fetches in parallel and unpacks each
wheel once into its cache, from which every environment is linked. Two differences
from pip are bridged here:

- uv does not read pip's configuration. The sessions pass pip's index settings
  (``find-links``, index URLs, constraint files, from ``pip config list``) to uv, so
  that both install the same wheels, e.g. a local CPU build of torch that pip finds
  through ``find-links``.
- uv does not compile bytecode at install time. The sessions let Python write it
  on first import (into the environment's own ``pycache`` folder, never beside the
  sources), so only the modules the tests import are compiled, once, even where the
  caller set ``PYTHONDONTWRITEBYTECODE``.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.sessions = ["tests"]
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).resolve().parent
PYPROJECT = nox.project.load_toml(ROOT / "pyproject.toml")
BACKENDS = ["numpy", "torch", "jax", "tensorflow"]
# The backend whose session also runs the docstring examples (they use torch and NumPy).
DOCTEST_BACKEND = "torch"


def _requirements(backend: str) -> list[str]:
    return ["-r", str(ROOT / "backends" / backend / "requirements.txt")]


# pip's configuration names and the install options that carry them over to uv.
_PIP_INDEX_OPTIONS = {"find-links": "--find-links", "index-url": "--index-url",
                      "extra-index-url": "--extra-index-url", "constraint": "--constraint"}


def _pip_index_settings() -> list[str]:
    """pip's index settings as install options (uv reads none of pip's files).

    The environment's (``PIP_*``) values win over the files' for the same name, as
    in pip.
    """
    try:
        listing = subprocess.run([sys.executable, "-m", "pip", "config", "list"],
                                 capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    chosen: dict[str, str] = {}
    for line in listing.splitlines():
        key, _, value = line.partition("=")
        section, _, name = key.rpartition(".")
        if name in _PIP_INDEX_OPTIONS and (section == ":env:" or name not in chosen):
            chosen[name] = value.strip("'\"")
    return [arg for name, value in chosen.items()
            for item in value.replace("\\n", " ").split()
            for arg in (_PIP_INDEX_OPTIONS[name], item)]


def _install(session: nox.Session, *args: str) -> None:
    """``session.install``; where uv installs, with pip's index settings, and with
    bytecode cached on first import, inside the environment (uv compiles none: without
    a cache every process, xdist workers included, would recompile all it imports)."""
    if session.venv_backend == "uv":
        args = (*_pip_index_settings(), *args)
        session.env["PYTHONDONTWRITEBYTECODE"] = ""
        session.env["PYTHONPYCACHEPREFIX"] = str(Path(session.virtualenv.location) / "pycache")
    session.install(*args)


@nox.session
@nox.parametrize("backend", BACKENDS)
def tests(session: nox.Session, backend: str) -> None:
    """Test suite for one backend (JACSPEC_TEST_BACKENDS=<backend>)."""
    # One resolver run: the pins in requirements.txt constrain everything else.
    _install(session, *_requirements(backend), "-e", ".[test]")
    session.env["JACSPEC_TEST_BACKENDS"] = backend
    # Eager JAX compiles each new shape and eager TensorFlow traces its functions anew
    # for each: fewer hypothesis examples (the same checks, on fewer random problems)
    # keep CI in budget. NumPy and torch run the "ci" profile's 15.
    examples = {"jax": "6", "tensorflow": "8"}
    if backend in examples:
        session.env["JACSPEC_MAX_EXAMPLES"] = examples[backend]
    # Both cores (or all): the tests are small and mostly single-threaded (JAX compiling
    # each new shape, torch's tiny kernels). Work stealing: a few tests are much longer
    # than the rest, and an idle worker takes queued tests from the busy one instead of
    # waiting. `-- -n 0` runs them in one process.
    session.run("pytest", "-n", "auto", "--dist", "worksteal", *session.posargs)
    if backend == DOCTEST_BACKEND:
        # Docstring examples. Modules of frameworks not installed here (jax, tensorflow
        # adapters) fail to import; skip those instead of erroring. Exit code 5 (no
        # doctest collected) is not a failure.
        session.run(
            "pytest",
            "--doctest-modules",
            "--doctest-ignore-import-errors",
            "-p",
            "no:cacheprovider",
            "src/jacspec",
            success_codes=[0, 5],
        )


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check over src, tests, the experiment scripts and this file."""
    _install(session, *nox.project.dependency_groups(PYPROJECT, "lint"))
    session.run("ruff", "check", "src", "tests", "noxfile.py", "docs/experiments",
                *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the documentation with mkdocs (strict: warnings are errors)."""
    # mkdocstrings reads the sources statically; torch is installed (pinned, CPU) so that
    # anything that does import the package for rendering finds it.
    # ruff (in the docs extra) formats the rendered signatures.
    _install(session, *_requirements("torch"), "-e", ".[docs]")
    session.env["NO_MKDOCS_2_WARNING"] = "1"
    session.run("mkdocs", "build", "--strict", *session.posargs)


@nox.session
def bench(session: nox.Session) -> None:
    """The benchmark table: `jacspec bench --quick` with torch, JAX and the peers.

    Peers (curvlinops-for-pytorch, PyHessian, matfree) are installed with ``--no-deps``
    after the pinned CPU torch, plus their small pure-Python dependencies: their own
    requirements (torchvision via backpack-for-pytorch) would otherwise upgrade torch to
    a CUDA build. hessian-eigenthings is not on PyPI; its row prints a skip line.
    """
    _install(session, *_requirements("torch"), *_requirements("jax"), "-e", ".[demo]")
    _install(session, "--no-deps", "curvlinops-for-pytorch", "backpack-for-pytorch",
                    "pyhessian", "matfree", "einops", "einconv", "linear_operator",
                    "unfoldNd", "opt-einsum")
    session.run("python", "-c", "import torch; assert '+cpu' in torch.__version__ or "
                "not torch.cuda.is_available(), torch.__version__; print(torch.__version__)")
    if session.posargs:
        session.run("jacspec", "bench", *session.posargs)
    else:
        session.run("jacspec", "bench", "--quick", "--backend", "torch")
        session.run("jacspec", "bench", "--quick", "--backend", "jax")


# Experiment scripts under docs/experiments and the backends each runs on.
EXPERIMENTS = {
    "exact_vs_bound": ("torch", "jax"),
    "slope_width": ("torch", "jax"),
    "gradreg_data_size": ("torch",),
    "fantastic_four": ("torch",),
    "cui_targets": ("torch",),
}


@nox.session
def experiments(session: nox.Session) -> None:
    """Regenerate the tables and figures of the Experiments page (full mode).

    They are written to docs/experiments/results/. ``nox -s experiments -- slope_width``
    runs the named scripts only; options (``--quick``, ``--seeds N``) are passed on.
    """
    _install(session, *_requirements("torch"), *_requirements("jax"), "-e", ".[demo]")
    session.env["MPLBACKEND"] = "Agg"
    names = [a for a in session.posargs if a in EXPERIMENTS] or list(EXPERIMENTS)
    options = [a for a in session.posargs if a not in EXPERIMENTS]
    for name in names:
        for backend in EXPERIMENTS[name]:
            session.run("python", f"docs/experiments/{name}.py", "--backend", backend,
                        *options)
