"""Progress display for long work (``js.slope(progress=True)``, the demo, the benchmarks).

On a terminal (or in Jupyter) this is a tqdm bar when tqdm is installed (the ``progress``
extra). Written to a file or a pipe (a log, CI output), or without tqdm, progress is
whole lines, at most one per tenth of the work, so that logs stay readable instead of
collecting carriage returns.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO


class _Null:
    """No display."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class LineProgress:
    """Progress as whole lines: ``desc: 30/100 pt (30%), 12 s [postfix]``.

    A line is written when another tenth of ``total`` is done (and at the end); with an
    unknown total (``None``), at every update. A postfix set before any work is done is
    announced at once (what is starting), so that a log does not stay silent.
    """

    def __init__(self, total: int | None, desc: str, unit: str, file: TextIO) -> None:
        self.total, self.desc, self.unit, self.file = total, desc, unit, file
        self.n = 0
        self.postfix = ""
        self.start = time.perf_counter()
        self._next = 0.0
        self._closed = False

    def set_postfix_str(self, text: str) -> None:
        self.postfix = text
        if self.n == 0 and self._next == 0.0:
            self._write()
            self._next = max(1, (self.total or 0) / 10)

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.total is None or self.n >= self._next or self.n >= self.total:
            self._write()
            if self.total:
                self._next = self.n + max(1, self.total / 10)

    def _write(self) -> None:
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        share = f" ({100 * self.n // self.total}%)" if self.total else ""
        tail = f" {self.postfix}" if self.postfix else ""
        seconds = time.perf_counter() - self.start
        self.file.write(f"{self.desc}: {done} {self.unit}{share}, {seconds:.0f} s{tail}\n")
        self.file.flush()

    def close(self) -> None:
        if not self._closed and self.total is not None and self.n < self.total:
            self._write()  # where the work stopped
        self._closed = True


def _interactive(file: TextIO) -> bool:
    """A terminal, or Jupyter's stderr (where tqdm.auto draws a widget)."""
    isatty = getattr(file, "isatty", None)
    if isatty is not None and isatty():
        return True
    return "ipykernel" in sys.modules and file in (sys.stderr, sys.stdout)


def progress(total: int | None, *, desc: str, unit: str = "it", enabled: bool = True,
             file: TextIO | None = None) -> Any:
    """A progress display with ``update(n)``, ``set_postfix_str(text)`` and ``close()``.

    Parameters
    ----------
    total : int or None
        Units of work (None: unknown).
    desc, unit : str
        Label and unit name.
    enabled : bool
        False: nothing is displayed.
    file : text stream, optional
        Where to write (default ``sys.stderr``).

    Examples
    --------
    >>> import io
    >>> from jacspec._progress import progress
    >>> log = io.StringIO()
    >>> bar = progress(4, desc="slope", unit="pt", file=log)
    >>> for _ in range(4):
    ...     bar.update(1)
    >>> bar.close()
    >>> log.getvalue().splitlines()[-1].startswith("slope: 4/4 pt (100%)")
    True
    """
    if not enabled:
        return _Null()
    file = sys.stderr if file is None else file
    if _interactive(file):
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, desc=desc, unit=unit, file=file, dynamic_ncols=True)
    return LineProgress(total, desc, unit, file)
