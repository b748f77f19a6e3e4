"""Fixtures of the adapter tests: the framework module itself, in its own session only."""

from __future__ import annotations

import pytest

from _helpers import selected_backends


@pytest.fixture
def torch():
    """The torch module (skips outside the torch session)."""
    if "torch" not in selected_backends():
        pytest.skip("runs in the torch session")
    return pytest.importorskip("torch")
