"""Run scripts with warnings as errors and the frameworks' loggers captured.

``python tests/_quiet_run.py BACKEND ITEM [ITEM ...]`` (used by ``tests/test_quiet.py``):
imports the framework first (its own import chatter is not jacspec's), then turns every
Python warning into an error, captures log records of level WARNING and above (where
TensorFlow's AutoGraph reports functions it cannot convert), and runs each ITEM in order
in this process: a path is a script run with :func:`runpy.run_path` (AutoGraph needs
real source files), ``demo`` is a tiny ``jacspec demo`` run with progress bars. Exits 1
and prints the records if anything was warned or logged.
"""

from __future__ import annotations

import importlib
import io
import logging
import os
import runpy
import sys
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")


class _Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(f"{record.name}: {record.getMessage()}")


def main(backend: str, items: list[str]) -> int:
    framework = importlib.import_module(backend)
    collect = _Collect()
    logging.getLogger().addHandler(collect)
    if backend == "tensorflow":
        framework.get_logger().addHandler(collect)
    warnings.simplefilter("error")
    for item in items:
        if item == "demo":
            from jacspec import demo

            demo.run(backend, quick=True, steps=3, n_test=50, num_between=5, plot=False,
                     progress=True, stream=io.StringIO())
        else:
            runpy.run_path(item, run_name="__main__")
    for record in collect.records:
        print(record)
    return 1 if collect.records else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
