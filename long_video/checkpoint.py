"""Checkpoints of a long run: every finished window's new latent frames, one safetensors file each.

A run folder holds ``window_00000.safetensors``, ``window_00001.safetensors``, ... Each file
holds the window's raw latent (``latent``, float32, exactly as sampled) and, as
metadata, the run's settings (storyboard, seed, sizes, sampling; JSON), the window's place on
the timeline and a format version. A file is written under a hidden temporary name and renamed
when complete, so a crash never leaves a half-written checkpoint under a window's name.

Running the same settings again reads the finished windows back in order and goes on from the
first missing one. Nothing here ever deletes a file: a checkpoint that cannot be read, or that
was made with other settings, stops the run with a message naming the file.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .storyboard import StoryboardError, Window

FORMAT = "spacetime-long-video/1"


class CheckpointError(StoryboardError):
    """A run folder or checkpoint file that cannot be used; finished windows are left in place."""


def settings_key(settings: dict) -> str:
    """A short stable name of ``settings`` (the run folder's suffix)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def window_path(folder: Path, index: int) -> Path:
    return folder / f"window_{index:05d}.safetensors"


def save_window(folder: Path, win: Window, latent: torch.Tensor, settings: dict) -> Path:
    """Write window ``win``'s raw latent ``[1, C, end - start, h, w]``; returns the file."""
    folder.mkdir(parents=True, exist_ok=True)
    dest = window_path(folder, win.index)
    tmp = folder / f".partial-{secrets.token_hex(6)}.safetensors"
    meta = {"format": FORMAT, "settings": json.dumps(settings, sort_keys=True),
            "window": json.dumps({"index": win.index, "start": win.start, "end": win.end,
                                  "known_end": win.known_end})}
    try:
        save_file({"latent": latent.detach().float().contiguous().cpu()}, str(tmp), metadata=meta)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def load_window(folder: Path, win: Window, settings: dict) -> torch.Tensor | None:
    """Window ``win``'s saved latent, or None when it has not been saved yet.
    ``CheckpointError`` when the file is unreadable, of another run, or of the wrong shape."""
    path = window_path(folder, win.index)
    if not path.is_file():
        return None
    fix = f"move {path.name} out of {folder.name} to make that window again, or choose another run folder"
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            latent = f.get_tensor("latent")
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path.name} in the run folder {folder.name} cannot be read "
                              f"({type(e).__name__}: {e}); {fix}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path.name} in {folder.name} is not a long-video checkpoint; {fix}")
    if json.loads(meta.get("settings", "null")) != json.loads(json.dumps(settings, sort_keys=True)):
        raise CheckpointError(f"{path.name} in {folder.name} was made with other settings (storyboard, seed, size "
                              f"or sampling); {fix}")
    if latent.dim() != 5 or latent.shape[2] != win.end - win.start:
        raise CheckpointError(f"{path.name} in {folder.name} holds a latent of shape {tuple(latent.shape)}, "
                              f"not the {win.end - win.start} latent frames of window {win.index}; {fix}")
    return latent


def finished_windows(folder: Path | None, windows: list[Window], settings: dict) -> Iterator[torch.Tensor]:
    """The saved windows from the first on, in order, up to the first missing one."""
    if folder is None:
        return
    for win in windows:
        latent = load_window(folder, win, settings)
        if latent is None:
            return
        yield latent
