"""The code blocks of the docs pages run (each ```python block in a fresh namespace, so
that every block runs on its own).

A page's blocks run with the backend the page is about, so each runs once per test
session of that backend (the torch and TensorFlow tutorials run in ``test_quiet.py``,
in a fresh process that also checks they emit no warning); a page about several frameworks (``None``) runs each block with
the framework it imports first.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = {
    "index.md": "torch",
    "api.md": "torch",
    "installation.md": "jax",
    "tutorials/slope.md": "torch",
    "tutorials/lipschitz.md": "torch",
    "tutorials/jax.md": "jax",
    "tutorials/curvature.md": None,
    "tutorials/transformer.md": None,
}
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
_IMPORT = re.compile(r"^import (torch|jax|tensorflow)\b", re.M)
# Libraries beyond the framework (test extras): a page's data, a block's model library.
_NEEDS = {"tutorials/slope.md": "sklearn", "tutorials/curvature.md": "sklearn"}
_MODEL_LIBRARIES = re.compile(r"^import (transformers|flax|equinox)\b", re.M)


def _blocks(page: str) -> list[str]:
    return _BLOCK.findall((DOCS / page).read_text())


CASES = [(page, i) for page in PAGES for i in range(len(_blocks(page)))]
SLOW_PAGES = ("tutorials/curvature.md", "tutorials/slope.md",  # training runs, datasets
              "tutorials/transformer.md")


@pytest.mark.parametrize(("page", "index"), [
    pytest.param(p, i, id=f"{p}#{i}", marks=[pytest.mark.slow] if p in SLOW_PAGES else [])
    for p, i in CASES])
def test_tutorial_block_runs(autodiff_backend, page, index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # figures saved by the examples land here
    code = _blocks(page)[index]
    framework = PAGES[page] or _IMPORT.search(code).group(1)
    if framework != autodiff_backend:
        pytest.skip(f"{page}#{index} is run in the {framework} session")
    if page in _NEEDS:
        pytest.importorskip(_NEEDS[page])
    for library in _MODEL_LIBRARIES.findall(code):
        pytest.importorskip(library)
    exec(compile(code, f"{page}#{index}", "exec"), {"__name__": "__docs__"})


def test_pages_have_code():
    for page in PAGES:
        assert _blocks(page), page
