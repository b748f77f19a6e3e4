"""``jacspec bench``: the benchmark list, each row a ratio measured side by side.

Every row runs jacspec and its reference (a hand-written native loop, a per-sample loop,
the best fixed method, or a peer library) in the same process, on the same model and
inputs, and reports the median of several repetitions after a warm-up call. The
configuration (backend, device, dtype, threads, load, versions) is printed with the
table; ``json_path`` also writes everything machine-readably.

The package reads as its list:

* ``registry``: the groups of rows, each registered with its backend, its targets and
  whether ``--quick`` runs it; ``run``: the command (configuration, table, JSON);
* ``timing``: side-by-side medians, peak memory in fresh processes
  (``memory_probe`` is what such a process runs), a busy second process;
* ``models`` (data and shapes) and ``models_torch``, ``models_jax``,
  ``models_tensorflow``: the models the rows share;
* one ``*_rows`` module per group of rows: ``overhead`` (vs hand-written loops),
  ``eager`` (JAX eager vs ``jax.jit``), ``lanczos`` (products vs power iteration),
  ``batched`` (vs a per-sample loop), ``auto`` (vs the best fixed method), ``dense``,
  ``penalty``, ``peers``, ``conv``, ``memory``, ``dataset`` (with ``dataset-memory`` and
  ``density``), ``scaling`` (a ResNet-18) and ``load`` (a second busy process);
* ``scaling_plot``: the scaling figure from ``--json`` output.

Bench code uses jacspec only through its public API (``import jacspec as js``); frameworks
and peer libraries are imported inside the row functions (or in the framework's models
module), so that ``jacspec bench --backend NAME`` needs only that framework.

Adding rows
-----------
Write a module ``src/jacspec/bench/<topic>_rows.py`` (the ``_rows`` suffix is how the
registry finds it: no other file changes). In it, one function per group and backend
that takes ``quick`` and returns a list of row dicts, registered with
:func:`~jacspec.bench.registry.register`::

    from .registry import Row, register
    from .timing import interleaved_times, ms

    @register("gram", "torch", target="<= 1.5")  # quick=False: the full run only
    def gram_torch(quick: bool) -> list[Row]:
        import torch
        import jacspec as js
        from .models_torch import mlp
        ...
        t = interleaved_times({"jacspec": ours, "reference": theirs}, 5 if quick else 11)
        ratio = t["jacspec"] / t["reference"]
        return [dict(name="gram: bound / exact (torch)", jacspec=ms(t["jacspec"]),
                     reference=ms(t["reference"]), ratio=ratio, target="<= 1.5",
                     met=ratio <= 1.5, configuration="what was measured, on what",
                     details=dict(times_s=t))]

A row's keys are described in :mod:`jacspec.bench.registry`; a peer that is not
installed gives ``dict(name=..., skipped=reason)``. Put models several rows share in the
framework's models module, time sides in turn with :mod:`jacspec.bench.timing`, keep the
``--quick`` part of a group within seconds of CPU (``jacspec bench --quick`` aims at two
minutes per backend; its output ends with each group's wall and CPU time), and add the
group's name to
:data:`~jacspec.bench.registry.ORDER` where it should stand in the table (otherwise it
comes last). Test the reference of a new row against jacspec on a tiny case in
``tests/bench/test_<topic>_rows.py``, without timed assertions.
"""

from __future__ import annotations

from .run import configuration, format_table, main, write_json

__all__ = ["main", "format_table", "write_json", "configuration"]
