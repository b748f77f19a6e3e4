"""Progress bars: tqdm when installed, else a one-line counter on stderr."""

from __future__ import annotations

import sys
from typing import Any


class _Null:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _Counter:
    def __init__(self, total: int | None, desc: str, unit: str) -> None:
        self.done, self.total, self.desc, self.unit = 0, total, desc, unit

    def update(self, n: int = 1) -> None:
        self.done += n
        of = "" if self.total is None else f"/{self.total}"
        sys.stderr.write(f"\r{self.desc}: {self.done}{of} {self.unit}")
        sys.stderr.flush()

    def close(self) -> None:
        sys.stderr.write("\n")
        sys.stderr.flush()


def progress_bar(total: int | None, enabled: bool, *, desc: str, unit: str) -> Any:
    """An object with ``update(n)`` and ``close()``: a tqdm bar, a stderr counter when
    tqdm is not installed, or nothing when ``enabled`` is False."""
    if not enabled:
        return _Null()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _Counter(total, desc, unit)
    return tqdm(total=total, desc=desc, unit=unit, leave=False)
