"""How ``jacspec bench`` measures: side-by-side medians, peak memory in fresh
processes, and a second busy process for the rows under load.

Every time a row reports is the median of several calls after a warm-up call; where a
row compares two sides, the sides run in turn (:func:`interleaved_times`), so that a slow
spell of a shared machine hits every side alike. Peak memory is read in a fresh
subprocess (:func:`run_fresh`), whose peak resident set starts clean.
Framework-free: a row passes its framework's synchronization as ``sync``.

Examples
--------
>>> from jacspec.bench.timing import interleaved_times, ms
>>> t = interleaved_times({"a": lambda: sum(range(100)), "b": lambda: None}, 3)
>>> sorted(t)
['a', 'b']
>>> ms(0.0123)
'12.3 ms'
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["median_time", "interleaved_times", "paired_times", "loop_time", "ms", "repetitions",
           "run_fresh", "reset_peak_rss", "peak_rss_mb", "BusyProcess", "loaded_times"]

Sync = Callable[[Any], Any]


def ms(t: float) -> str:
    """Seconds as milliseconds with one decimal."""
    return f"{t * 1e3:.1f} ms"


def repetitions(quick: bool) -> int:
    """The default repetitions of a timed call: 5 in ``--quick``, else 11."""
    return 5 if quick else 11


def median_time(fn: Callable[[], Any], reps: int, sync: Sync | None = None) -> float:
    """Median wall time of ``reps`` calls of ``fn`` after one warm-up call; ``sync`` gets
    each call's output and waits for it (a device, a lazy framework)."""
    return interleaved_times({"fn": fn}, reps, sync)["fn"]


def interleaved_times(fns: dict[str, Callable[[], Any]], reps: int,
                      sync: Sync | None = None, *,
                      seconds: Callable[[Any], float] | None = None) -> dict[str, float]:
    """Median wall time of each function, run in turn (``reps`` rounds after one
    warm-up round, the order rotating from round to round): a slow spell of a shared
    machine, or the cache state one function leaves to the next, then hits every side
    alike. ``seconds``: read each call's time from its output instead (a phase of the
    call's work that it timed itself)."""
    ts: dict[str, list[float]] = {k: [] for k in fns}
    items = list(fns.items())
    for i in range(reps + 1):
        r = i % len(items)
        for k, fn in items[r:] + items[:r]:
            t0 = time.perf_counter()
            out = fn()
            if sync is not None:
                sync(out)
            if i:
                ts[k].append(time.perf_counter() - t0 if seconds is None else seconds(out))
    return {k: statistics.median(v) for k, v in ts.items()}


def paired_times(fa: Callable[[], Any], fb: Callable[[], Any], reps: int,
                 sync: Sync | None = None) -> tuple[float, float]:
    """Median wall times of ``fa`` and ``fb`` run alternately (see
    :func:`interleaved_times`)."""
    t = interleaved_times({"a": fa, "b": fb}, reps, sync)
    return t["a"], t["b"]


def loop_time(one: Callable[[int], Any], n: int, reps: int) -> float:
    """Median time of ``reps`` passes of ``one(i)`` over ``i < n``, after two calls as a
    warm-up (a pass of such a loop takes seconds: no full pass is spent warming up)."""
    one(0), one(1)
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for i in range(n):
            one(i)
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


# ---------------------------------------------------------------------------- memory


def run_fresh(module: str, args: Sequence[str] = (), *, timeout: float = 300) -> dict:
    """Run ``python -m module *args`` in a fresh process and return the JSON object it
    prints last. The child reads its own peak memory with :func:`reset_peak_rss` and
    :func:`peak_rss_mb`. glibc's mmap threshold is fixed: otherwise it rises after each
    large free, and later tensors come from a heap that never shrinks (the resident set
    then counts memory already freed)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-m", module, *map(str, args)],
                         capture_output=True, text=True, timeout=timeout, env=env)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip()[-300:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as fh:
        return next(float(line.split()[1]) / 1024 for line in fh
                    if line.startswith(key + ":"))


def _maxrss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def reset_peak_rss() -> float:
    """Reset this process's peak resident set (Linux: ``VmHWM`` through
    ``/proc/self/clear_refs``) and return the resident set now, in MB. Elsewhere the
    peak cannot be reset: the peak so far is returned, and later rises count from it."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _status_mb("VmRSS")
    except OSError:
        return _maxrss_mb()


def peak_rss_mb() -> float:
    """This process's peak resident set in MB (since :func:`reset_peak_rss` on Linux)."""
    try:
        return _status_mb("VmHWM")
    except OSError:
        return _maxrss_mb()


# ---------------------------------------------------------------------------- load


class BusyProcess:
    """A second process spinning on a core: the machine loaded as by another user's job.
    ``on()`` lets it run, ``off()`` stops it (``SIGSTOP``), so that quiet and loaded
    timings can alternate round by round; ``close()`` ends it. A context manager."""

    def __init__(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-S", "-c", "while True: pass"],
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.2)  # started and spinning

    def on(self) -> None:
        self._proc.send_signal(signal.SIGCONT)

    def off(self) -> None:
        self._proc.send_signal(signal.SIGSTOP)

    def close(self) -> None:
        self._proc.kill()
        self._proc.wait()

    def __enter__(self) -> BusyProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def loaded_times(fn: Callable[[], Any], reps: int, sync: Sync | None = None, *,
                 seconds: Callable[[Any], float] | None = None) -> dict[str, float]:
    """Median time of ``fn`` on the machine as it is (``"quiet"``) and with a
    :class:`BusyProcess` running (``"loaded"``), the two in turn (see
    :func:`interleaved_times`, also for ``seconds``)."""
    with BusyProcess() as busy:
        def quiet() -> Any:
            busy.off()
            return fn()

        def loaded() -> Any:
            busy.on()
            return fn()

        return interleaved_times({"quiet": quiet, "loaded": loaded}, reps, sync,
                                 seconds=seconds)
