"""The README's examples run, each in the session of the framework it is about, and each
on its own (a fresh namespace per block: a reader can copy any one of them).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"
_SECTION = re.compile(r"^### (.+?)\n(.*?)(?=^##)", re.S | re.M)
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _backend_of(title: str) -> str:
    for key, name in (("PyTorch", "torch"), ("Slope", "torch"), ("JAX", "jax"),
                      ("TensorFlow", "tensorflow"), ("NumPy", "numpy")):
        if key in title:
            return name
    raise AssertionError(f"README section {title!r} names no backend")


def _examples() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for title, body in _SECTION.findall(README.read_text()):
        for block in _BLOCK.findall(body):
            out.setdefault(_backend_of(title), []).append(block)
    return out


def test_readme_has_examples_for_every_backend():
    assert set(_examples()) == {"numpy", "torch", "jax", "tensorflow"}


def test_readme_examples_show_their_results():
    """Run as scripts, the examples print what they compute: no bare expression (a
    value shown only at an interactive prompt) is left as a statement."""
    for blocks in _examples().values():
        for code in blocks:
            for node in ast.walk(ast.parse(code)):
                if isinstance(node, ast.Expr):
                    assert isinstance(node.value, ast.Call), ast.unparse(node)
                    name = ast.unparse(node.value.func)
                    assert not name.startswith("js."), f"{ast.unparse(node)} shows nothing"
            assert "print(" in code, code


def test_readme_examples_run(backend, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # res.plot() and friends write nothing into the tree
    pytest.importorskip("matplotlib") if backend == "torch" else None
    for i, code in enumerate(_examples()[backend]):
        exec(compile(code, f"README.md[{backend}#{i}]", "exec"), {"__name__": "__readme__"})
        assert capsys.readouterr().out.strip(), f"README.md[{backend}#{i}] printed nothing"
