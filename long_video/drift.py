"""Drift control: later windows held to the statistics of the first.

Window after window, small biases of the model add up: the background's colour and brightness
creep. The anchor is the first window. Each later window's new frames are moved toward it by
``strength`` (0: untouched, 1: matched exactly) before they are kept, shown, and handed on as
the next window's known frames; the known frames are never touched (they were anchored when
they were new).

- Frames (windows continued in pixels): the background colour, the per-channel median of the
  frames' border pixels, is moved toward the first window's by a uniform shift. A moving object
  leaves it alone, where matching the mean or the contrast of whole frames would flash whenever
  the object enters or leaves the picture (measured in bench/RESULTS.md).
- Latents (one latent timeline): the per-channel mean and standard deviation over time and space.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Anchor:
    mean: torch.Tensor   # (C,)
    std: torch.Tensor    # (C,)

    channel: int         # the channel dimension: 1 for a latent [1, C, T, h, w], -1 for frames [n, H, W, 3]

    @classmethod
    def of(cls, x: torch.Tensor, channel: int) -> Anchor:
        """The anchor of the first window's latent (``channel`` 1) or frames (``channel`` -1)."""
        if channel == -1:
            return cls(border_colour(x), torch.ones(x.shape[-1], dtype=torch.float64), channel)
        flat = x.double().movedim(channel, 0).flatten(1)                     # (C, rest)
        return cls(flat.mean(dim=1), flat.std(dim=1), channel)


def border_colour(frames: torch.Tensor) -> torch.Tensor:
    """The per-channel median of the border pixels of IMAGE frames ``[n, H, W, 3]``: the background."""
    border = torch.cat([frames[:, 0], frames[:, -1], frames[:, :, 0], frames[:, :, -1]], dim=1)
    return border.reshape(-1, frames.shape[-1]).double().median(dim=0).values


def hold_to_anchor(new: torch.Tensor, anchor: Anchor, strength: float) -> torch.Tensor:
    """``new`` (a window's new latent or frames, laid out as the anchor's) moved toward the anchor
    by ``strength`` in 0..1: frames by their background colour, latents by their per-channel mean
    and standard deviation."""
    if strength <= 0:
        return new
    if anchor.channel == -1:
        shift = strength * (anchor.mean - border_colour(new))
        return (new.double() + shift).clamp(0, 1).to(new.dtype)
    x = new.double().movedim(anchor.channel, -1)                            # (..., C)
    dims = tuple(range(x.dim() - 1))
    mean, std = x.mean(dim=dims, keepdim=True), x.std(dim=dims, keepdim=True).clamp_min(1e-6)
    a_mean, a_std = anchor.mean, anchor.std
    want_mean = mean + strength * (a_mean - mean)
    want_std = std + strength * (a_std - std)
    out = (x - mean) / std * want_std + want_mean
    return out.movedim(-1, anchor.channel).to(new.dtype)
