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

import atexit
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
           "run_fresh", "TORCH_PRELOAD", "fresh_cpu_seconds", "reset_peak_rss", "peak_rss_mb", "BusyProcess",
           "loaded_times"]

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
                      seconds: Callable[[Any], float] | None = None,
                      outputs: dict[str, Any] | None = None) -> dict[str, float]:
    """Median wall time of each function, run in turn (``reps`` rounds after one
    warm-up round, the order rotating from round to round): a slow spell of a shared
    machine, or the cache state one function leaves to the next, then hits every side
    alike. ``seconds``: read each call's time from its output instead (a phase of the
    call's work that it timed itself). ``outputs``: a dict that receives each
    function's warm-up output (a row's values, without calling a slow side once more).

    Examples
    --------
    >>> out = {}
    >>> t = interleaved_times({"a": lambda: 1.5, "b": lambda: 2.5}, 1, outputs=out)
    >>> out
    {'a': 1.5, 'b': 2.5}
    """
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
            elif outputs is not None:
                outputs[k] = out
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


#: glibc's mmap threshold in fresh processes: otherwise it rises after each large free,
#: and later tensors come from a heap that never shrinks (the resident set then counts
#: memory already freed).
_MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}


#: What fresh torch processes fork from (``run_fresh(..., preload=TORCH_PRELOAD)``):
#: torch, the module that torch's first gradient with given output gradients imports
#: (it imports sympy: seconds of CPU, more where no bytecode cache is written), jacspec.
TORCH_PRELOAD = ("torch", "torch.fx.experimental.symbolic_shapes", "jacspec")


def run_fresh(module: str, args: Sequence[str] = (), *, timeout: float = 300,
              preload: Sequence[str] = ()) -> dict:
    """Run ``python -m module *args`` in a fresh process and return the JSON object it
    prints last. The child reads its own peak memory with :func:`reset_peak_rss` and
    :func:`peak_rss_mb`; glibc's mmap threshold is fixed in it.

    ``preload`` (e.g. ``("torch", "jacspec")``): fork the process from a server that
    imported these modules once, instead of starting a new interpreter: importing torch
    takes seconds of CPU, and a row of several fresh measurements would pay it each
    time. The child starts as a fresh process does after those imports: nothing run,
    nothing allocated but the modules. JAX and TensorFlow do not support a fork after
    their import: leave them out."""
    if not preload:
        out = subprocess.run([sys.executable, "-m", module, *map(str, args)],
                             capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, **_MALLOC_ENV})
        code, stdout, stderr = out.returncode, out.stdout, out.stderr
    else:
        code, stdout, stderr = _fork_server(tuple(preload)).run(module, args, timeout)
    if code != 0:
        raise RuntimeError(stderr.strip()[-300:] or f"{module} exited with {code}")
    return json.loads(stdout.strip().splitlines()[-1])


def _serve() -> None:
    """The fork server's loop (see :class:`_ForkServer`): import the modules named on
    the command line, then per request line (JSON: module, args, stdout and stderr
    files) fork a child that runs the module as ``__main__``, and answer its exit code
    and CPU seconds."""
    import runpy
    import traceback

    for name in sys.argv[1:]:
        __import__(name)
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:  # the child: the module's run, its output to the files
            code = 1
            try:
                for fd, path in ((1, req["stdout"]), (2, req["stderr"])):
                    os.dup2(os.open(path, os.O_WRONLY | os.O_TRUNC), fd)
                sys.argv = [req["module"], *req["args"]]
                runpy.run_module(req["module"], run_name="__main__", alter_sys=True)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else int(exc.code is not None)
            except BaseException:
                traceback.print_exc()
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status, usage = os.wait4(pid, 0)
        print(os.waitstatus_to_exitcode(status), usage.ru_utime + usage.ru_stime, flush=True)


class _ForkServer:
    """A Python process that imported ``preload`` and forks one child per
    :meth:`run`; one per set of modules, ended when this process exits."""

    _servers: dict[tuple[str, ...], _ForkServer] = {}
    #: CPU seconds of every child so far (what the children of ``os.times`` miss).
    cpu_seconds = 0.0

    def __init__(self, preload: tuple[str, ...]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from jacspec.bench.timing import _serve; _serve()",
             *preload], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            env={**os.environ, **_MALLOC_ENV}, start_new_session=True)

    def run(self, module: str, args: Sequence[str], timeout: float) -> tuple[int, str, str]:
        import select
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            files = {k: os.path.join(tmp, k) for k in ("stdout", "stderr")}
            for path in files.values():
                open(path, "w").close()
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(dict(module=module, args=list(map(str, args)),
                                                  **files)) + "\n")
            self.proc.stdin.flush()
            if not select.select([self.proc.stdout], [], [], timeout)[0]:
                self.close()
                raise subprocess.TimeoutExpired([module, *map(str, args)], timeout)
            answer = self.proc.stdout.readline()
            if not answer:
                self.close()
                raise RuntimeError(f"the fork server running {module} ended")
            code, cpu = answer.split()
            _ForkServer.cpu_seconds += float(cpu)
            with open(files["stdout"]) as out, open(files["stderr"]) as err:
                return int(code), out.read(), err.read()

    def close(self) -> None:
        """End the server and any child it is running (its own session)."""
        _ForkServer._servers = {k: v for k, v in self._servers.items() if v is not self}
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def fresh_cpu_seconds() -> float:
    """CPU seconds of the processes :func:`run_fresh` forked so far (not counted in
    ``os.times()``: their parent, the server, is still running)."""
    return _ForkServer.cpu_seconds


def _fork_server(preload: tuple[str, ...]) -> _ForkServer:
    server = _ForkServer._servers.get(preload)
    if server is None or server.proc.poll() is not None:
        server = _ForkServer._servers[preload] = _ForkServer(preload)
        atexit.register(server.close)
    return server


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
