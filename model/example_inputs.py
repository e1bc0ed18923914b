"""The example inputs the shipped workflows name (``workflows/inputs/``: a start image and two
short clips from the embedded model's world), copied into a ComfyUI input folder so that every
shipped workflow opens and runs as it is.

Called when ComfyUI loads the pack and by ``spacetime-video run`` for the host it starts. The
rules (workflows are shared and untrusted; the input folder is the user's):

- only the pack's own files are copied, by their own plain names, straight into the folder;
- a name that already exists there (a file, a folder or a link, even a broken one) is left
  alone: a user's file is never overwritten, and no link is followed;
- a copy is written under a temporary name and published with a hard link that fails if the
  name appeared meanwhile, so a half-written example never shows up under its real name.
"""
from __future__ import annotations

import logging
import os
import re
import secrets
from pathlib import Path

log = logging.getLogger("spacetime.example_inputs")

EXAMPLE_INPUTS_DIR = Path(__file__).resolve().parents[1] / "workflows" / "inputs"
_PLAIN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\.(png|jpg|mp4|webm)$")


def example_inputs(source: str | os.PathLike = EXAMPLE_INPUTS_DIR) -> list[Path]:
    """The shipped example files: regular files (not links) with plain media names, sorted."""
    folder = Path(source)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir()
                  if _PLAIN_NAME.match(p.name) and p.is_file() and not p.is_symlink())


def install_example_inputs(input_dir: str | os.PathLike,
                           source: str | os.PathLike = EXAMPLE_INPUTS_DIR) -> list[Path]:
    """Copy each shipped example whose name ``input_dir`` does not hold yet; returns the paths
    written. ``input_dir`` must be an existing folder (it is created when missing, not when it
    is something else)."""
    folder = Path(input_dir)
    folder.mkdir(parents=True, exist_ok=True)
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is not a folder")
    written = []
    for src in example_inputs(source):
        dest = folder / src.name
        if os.path.lexists(dest):
            continue
        if _publish(src.read_bytes(), folder, src.name):
            written.append(dest)
    if written:
        log.info("Spacetime: example inputs copied into %s: %s", folder, ", ".join(p.name for p in written))
    return written


def _publish(data: bytes, folder: Path, name: str) -> bool:
    """Write ``data`` as ``folder/name`` unless that name exists; True when written."""
    tmp = folder / f".{name}.{secrets.token_hex(4)}.part"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        try:
            os.link(tmp, folder / name)   # fails with FileExistsError if the name was taken meanwhile
        except FileExistsError:
            return False
        except OSError:                   # a file system without hard links: create the name exclusively
            return _write_exclusive(data, folder / name)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _write_exclusive(data: bytes, dest: Path) -> bool:
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    return True
