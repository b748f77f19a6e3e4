"""``jacspec.bench.timing``: fresh-process measurements through the fork server."""

from __future__ import annotations

import subprocess

import pytest

from jacspec.bench import timing

PROBE = "jacspec.bench.memory_probe"
PRELOAD = ("torch", "jacspec")


def test_run_fresh_forks_from_a_server():
    """A forked child runs the module as ``__main__`` with its arguments; the server
    answers again; a failing child's error reaches the caller. The server preloads
    torch and jacspec, as for the memory rows (one server for both)."""
    pytest.importorskip("torch")
    cpu = timing.fresh_cpu_seconds()
    out = timing.run_fresh(PROBE, ["forward_backward", 16, 8, 1], preload=PRELOAD)
    assert out["mode"] == "forward_backward" and out["peak_mb"] >= 0
    server = timing._ForkServer._servers[PRELOAD]
    out = timing.run_fresh(PROBE, ["native_hvp", 16, 8, 1], preload=PRELOAD)
    assert out["mode"] == "native_hvp"
    assert timing._ForkServer._servers[PRELOAD] is server  # reused
    assert timing.fresh_cpu_seconds() > cpu  # the children's CPU time is counted
    with pytest.raises(RuntimeError, match="ValueError"):  # "x" is no width
        timing.run_fresh(PROBE, ["dataset", "x", 8, 1], preload=PRELOAD)


def test_run_fresh_timeout_ends_the_server():
    """A child past its time limit is killed with its server; the next call starts a
    new server."""
    pytest.importorskip("torch")
    with pytest.raises(subprocess.TimeoutExpired):  # the child imports torch: > 1 ms
        timing.run_fresh(PROBE, ["forward_backward", 16, 8, 1], preload=("json",),
                         timeout=1e-3)
    assert ("json",) not in timing._ForkServer._servers
