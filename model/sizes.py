"""Valid sizes, in one place: what a causal video VAE with time stride ``s`` and a DiT with a
patch grid accept, the nearest valid values, and the message that names them.

A causal VAE takes ``s*k + 1`` frames (the first frame alone, then groups of ``s``); a side
must be a multiple of the spatial stride (times the DiT's patch size, for a canvas).
"""
from __future__ import annotations

import math


def nearest_length(length: int, stride_t: int = 4) -> int:
    """The nearest frame count of the form ``stride_t*k + 1`` (ties go up), at least 1."""
    k = max(0, math.floor((length - 1) / stride_t + 0.5))
    return stride_t * k + 1


def nearest_multiple(value: int, multiple: int) -> int:
    """The nearest positive multiple of ``multiple`` (ties go up)."""
    return max(multiple, multiple * math.floor(value / multiple + 0.5))


def frames_problem(frames: int, stride_t: int = 4, what: str = "length", fix: str = "") -> str | None:
    """None when ``frames`` is ``stride_t*k + 1``, else a message naming the valid counts around it."""
    if frames >= 1 and (frames - 1) % stride_t == 0:
        return None
    s = stride_t
    lo = 1 + max(0, (frames - 1) // s) * s
    options = f"{lo} or {lo + s}" if lo < frames else f"{lo}"
    return (f"{what} {frames} is not {s}k+1 (1, {1 + s}, {1 + 2 * s}, ...), the frame counts a causal VAE "
            f"of time stride {s} takes: use {options}" + (f" ({fix})" if fix else ""))


def side_problem(name: str, size: int, multiple: int, why: str = "", fix: str = "") -> str | None:
    """None when ``size`` is a positive multiple of ``multiple``, else a message naming the
    valid sizes around it. ``why`` says where the rule comes from, ``fix`` what to do."""
    if size > 0 and size % multiple == 0:
        return None
    lo = max(0, size) // multiple * multiple
    options = f"{lo} or {lo + multiple}" if lo else f"{multiple}"
    return (f"{name} {size} is not a multiple of {multiple}" + (f" ({why})" if why else "")
            + f": use {options}" + (f" ({fix})" if fix else ""))
