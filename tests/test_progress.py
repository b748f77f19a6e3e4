"""Progress display: a tqdm bar on a terminal, whole lines in a log, nothing when off."""

from __future__ import annotations

import io

import pytest

import jacspec as js
from _helpers import from_numpy
from jacspec._progress import LineProgress, progress


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_log_gets_whole_lines_at_most_one_per_tenth():
    log = io.StringIO()
    bar = progress(100, desc="work", unit="pt", file=log)
    assert isinstance(bar, LineProgress)
    for _ in range(100):
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and 10 <= len(lines) <= 11
    assert lines[0].startswith("work: 1/100 pt (1%)")
    assert lines[-1].startswith("work: 100/100 pt (100%)")


def test_a_log_hears_what_starts_and_where_work_stopped():
    log = io.StringIO()
    bar = progress(5, desc="bench", unit="group", file=log)
    bar.set_postfix_str("overhead")
    bar.update(2)
    bar.close()  # stopped early: the last state is written
    lines = log.getvalue().splitlines()
    assert lines[0] == "bench: 0/5 group (0%), 0 s overhead"
    assert lines[-1].startswith("bench: 2/5 group (40%)")


def test_a_terminal_gets_a_tqdm_bar():
    tqdm = pytest.importorskip("tqdm")
    term = _Terminal()
    bar = progress(3, desc="slope", unit="pt", file=term)
    assert isinstance(bar, tqdm.tqdm)
    bar.update(3)
    bar.close()
    assert "slope" in term.getvalue() and "\r" in term.getvalue()


def test_disabled_writes_nothing():
    log = io.StringIO()
    bar = progress(3, desc="x", enabled=False, file=log)
    bar.update(3)
    bar.set_postfix_str("y")
    bar.close()
    assert log.getvalue() == ""


def test_slope_progress_in_a_log(autodiff_backend, capsys):
    X = from_numpy([[1.0, 2.0], [3.0, 4.0], [0.5, 0.1]], autodiff_backend, "float64")
    js.slope(lambda x: 2.0 * x, X, num_between=3, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert err.splitlines()[-1].startswith("slope: 6/6 pt (100%)")
