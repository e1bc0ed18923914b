"""Where a file name from a workflow may point: inside ComfyUI's own folders, nowhere else.

Workflows are shared, so a name such as ``../../etc/passwd`` or an absolute path must be
refused before anything is opened. No ComfyUI import: the callers pass the folders.
"""
from __future__ import annotations

import os
from typing import Iterable


def file_inside(roots: Iterable[str], name: str) -> str | None:
    """The real path of ``name`` inside the first of ``roots`` that holds it as a file, or None
    when it is missing or resolves outside them (``..``, absolute paths, links out)."""
    for root in roots:
        root = os.path.realpath(root)
        path = os.path.realpath(os.path.join(root, name))
        if os.path.commonpath([root, path]) == root and os.path.isfile(path):
            return path
    return None
