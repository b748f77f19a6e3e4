"""How to install a framework for jacspec: the documented, pinned commands."""

from __future__ import annotations


def install_hint(name: str) -> str:
    """The documented command that installs ``name`` (torch, jax, tensorflow, numpy).

    The pinned requirements file comes first: an unpinned ``torch`` (or the
    ``jacspec[torch]`` extra in an environment without torch) pulls several GB of CUDA
    wheels on a CPU machine.

    Examples
    --------
    >>> install_hint("torch")
    'python -m pip install -r backends/torch/requirements.txt -e .  (from a jacspec clone; GPU builds: docs/installation.md)'
    """
    return (f"python -m pip install -r backends/{name}/requirements.txt -e .  "
            "(from a jacspec clone; GPU builds: docs/installation.md)")
