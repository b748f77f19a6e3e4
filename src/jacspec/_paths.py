"""Checks that an output path can be written, made before a long run (the command line's
``--out`` and ``--json``) rather than after it."""

from __future__ import annotations

import os


def writable_file(path: str) -> str | None:
    """Why ``path`` cannot be written as a file, or None if it can."""
    if os.path.isdir(path):
        return f"{path!r} is a folder; expected a file path"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"the folder {folder!r} does not exist"
    if not os.access(folder, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        return f"{path!r} is not writable"
    return None


def writable_folder(path: str) -> str | None:
    """Why ``path`` cannot be used (or created) as a folder, or None if it can."""
    if os.path.exists(path) and not os.path.isdir(path):
        return f"{path!r} exists and is not a folder"
    existing = os.path.abspath(path)
    while not os.path.exists(existing):  # the nearest existing ancestor creates the rest
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"{existing!r} is not a folder, so {path!r} cannot be created"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing!r} is not writable"
    return None
