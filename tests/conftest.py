"""Test configuration: backend selection, JAX float64, hypothesis profiles, GPU marker.

- ``JACSPEC_TEST_BACKENDS``: comma list of backends to test (default: all four,
  ``numpy,torch,jax,tensorflow``). The ``backend`` fixture is parametrized over them; a
  backend whose framework is not installed is skipped, not failed. The nox session
  ``tests(backend=NAME)`` sets it to ``NAME``.
- JAX: float64 tests need x64, so this file enables it (``jax_enable_x64``) when JAX is
  selected and installed. The library itself never changes it.
- JAX compiles every program it runs (eager operations too). For the test run only, XLA
  compiles for the CPU with fewer optimisation passes and its classic emitters
  (``XLA_FLAGS``; tests run small programs once, so compiling dominates). An
  ``XLA_FLAGS`` option set by the caller wins. (A persistent compilation cache shared
  by the xdist workers costs more to write than it saves: the workers rarely compile
  the same program.)
- Under pytest-xdist, ``OMP_NUM_THREADS`` (PyTorch's and OpenBLAS's thread pools) is
  set to the worker's share of the cores unless the caller set it.
- ``HYPOTHESIS_PROFILE``: ``ci`` (default: 15 examples, derandomized, no deadline) or
  ``dev`` (50 random examples).
- ``@pytest.mark.slow`` tests run first, spread over the xdist workers, so that none of
  them is left for last on one worker while the other has finished.
- ``@pytest.mark.gpu``: skipped unless the backend under test (or, for tests without a
  ``backend`` parameter, any installed framework) sees a GPU.

Helpers (``to_numpy``, ``from_numpy``, ``rtol_for``, ...) live in ``tests/_helpers.py``.
"""

from __future__ import annotations

import os

# Before any TensorFlow import: silence its C++ start-up logging.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Plots in tests (slope, demo, README) render off-screen.
os.environ.setdefault("MPLBACKEND", "Agg")


def _threads_per_worker() -> None:
    """xdist workers share the cores: each gets its share for the frameworks' thread
    pools (read when they are imported). More threads than cores spin and wait."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers <= 1:
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (cores or 1) // workers)))


_threads_per_worker()

import pytest  # noqa: E402
from hypothesis import HealthCheck, settings  # noqa: E402

from _helpers import (  # noqa: E402
    ALL_BACKENDS,
    backend_available,
    has_gpu,
    selected_backends,
)

# ------------------------------------------------------------------------------- JAX

# Cheaper XLA CPU compilation (read when JAX starts its backend, after this file runs).
_XLA_TEST_FLAGS = ("--xla_backend_optimization_level=0",
                   "--xla_llvm_disable_expensive_passes=true",
                   "--xla_cpu_use_fusion_emitters=false")


def _cheap_xla_compilation() -> None:
    flags = os.environ.get("XLA_FLAGS", "").split()
    names = {f.split("=")[0] for f in flags}
    flags += [f for f in _XLA_TEST_FLAGS if f.split("=")[0] not in names]
    os.environ["XLA_FLAGS"] = " ".join(flags)


if "jax" in selected_backends():
    _cheap_xla_compilation()

# ------------------------------------------------------------------------ hypothesis

_SUPPRESSED = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile(
    "ci",
    # JACSPEC_MAX_EXAMPLES lowers it for backends whose eager mode compiles or traces
    # every new shape (the nox sessions set 6 for JAX, 8 for TensorFlow).
    max_examples=int(os.environ.get("JACSPEC_MAX_EXAMPLES", "15")),
    deadline=None,
    derandomize=True,  # the same examples on every CI run: no flaky reds
    suppress_health_check=_SUPPRESSED,
    print_blob=True,
)
settings.register_profile(
    "dev",
    max_examples=50,
    deadline=None,
    suppress_health_check=_SUPPRESSED,
    print_blob=True,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# -------------------------------------------------------------------------- backends

SELECTED_BACKENDS: list[str] = selected_backends()
_AVAILABLE: dict[str, bool] = {}


def _available(name: str) -> bool:
    if name not in _AVAILABLE:
        _AVAILABLE[name] = backend_available(name)
    return _AVAILABLE[name]


def _enable_jax_x64() -> None:
    import jax

    jax.config.update("jax_enable_x64", True)


@pytest.hookimpl(trylast=True)  # after pytest's own reordering by fixture parameters
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``slow`` first, on every xdist worker.

    ``--dist worksteal`` hands each of the N workers one contiguous 1/N of the
    collection to start with, and an idle worker steals from the *end* of a busy one's
    queue. So the slow tests are dealt round-robin to the N parts and each part starts
    with its own: they all start at once, and what is left to steal at the end is fast.
    (Slow tests all in the first part would run one after another on one worker.)
    """
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    fast = [item for item in items if item.get_closest_marker("slow") is None]
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    items[:] = _deal_slow_first(slow, fast, workers)


def _deal_slow_first(slow: list, fast: list, parts: int) -> list:
    """``slow + fast`` reordered so that each of the ``parts`` contiguous parts that
    pytest-xdist's worksteal scheduler makes (the i-th of the k still unserved takes
    ``len(rest) // k`` of the rest) starts with every ``parts``-th slow test."""
    if parts <= 1:
        return slow + fast
    order: list = []
    rest = len(slow) + len(fast)
    for i in range(parts):
        size = rest // (parts - i)
        mine = slow[i::parts]
        take = max(0, size - len(mine))
        order += mine + fast[:take]
        fast = fast[take:]
        rest -= size
    return order + fast


def pytest_configure(config: pytest.Config) -> None:
    # x64 must be on before the first jax array is made, so do it at start-up.
    if "jax" in SELECTED_BACKENDS and _available("jax"):
        _enable_jax_x64()


def pytest_report_header(config: pytest.Config) -> list[str]:
    parts = []
    for name in SELECTED_BACKENDS:
        if not _available(name):
            parts.append(f"{name} (not installed: skipped)")
            continue
        mod = __import__(name)
        parts.append(f"{name} {getattr(mod, '__version__', '?')}")
    return ["jacspec test backends: " + ", ".join(parts)]


@pytest.fixture(scope="session", params=SELECTED_BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Name of the backend under test: "numpy", "torch", "jax" or "tensorflow".

    Session-scoped (tests are grouped per backend, and hypothesis accepts it). Skips the
    test when the framework is not importable.
    """
    name: str = request.param
    if not _available(name):
        pytest.skip(f"backend {name!r} is not installed")
    if name == "jax":
        _enable_jax_x64()  # idempotent; covers a JACSPEC_TEST_BACKENDS change mid-run
    return name


@pytest.fixture(scope="session")
def autodiff_backend(backend: str) -> str:
    """Like ``backend`` but skips NumPy (no autodiff: jacobian/hessian/slope/penalties)."""
    if backend == "numpy":
        pytest.skip("NumPy has no autodiff")
    return backend


@pytest.fixture(params=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> str:
    """Floating dtype name; convert with ``_helpers.from_numpy(a, backend, dtype)``."""
    return request.param


# ------------------------------------------------------------------------------- GPU


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("gpu") is None:
        return
    callspec = getattr(item, "callspec", None)
    params = callspec.params if callspec is not None else {}
    name = params.get("backend")
    if name in ALL_BACKENDS:
        if not has_gpu(name):
            pytest.skip(f"needs a GPU visible to {name}")
    elif not any(has_gpu(b) for b in SELECTED_BACKENDS if _available(b)):
        pytest.skip("needs a GPU")
