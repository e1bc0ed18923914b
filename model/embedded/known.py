"""Known latent frames: the one mechanism behind T2V, I2V, extend, connect and loops.

A known latent frame is given clean (timestep 0) while the others are denoised; the DiT
sees a per-token timestep [B, tokens] (tokens in (t, h, w) order, as Wan 2.2 TI2V does for
its first frame). Training draws one of `MODES` per sample so one model learns them all.
"""
from __future__ import annotations

import torch

from ..canvas import token_timesteps as token_timesteps_from_mask

# Known latent frames per mode, as (count at the start, count at the end).
MODES: dict[str, tuple[int, int]] = {
    "t2v": (0, 0),
    "i2v": (1, 0),            # the first frame
    "extend": (2, 0),         # the last pixel frames of a clip become the first latents
    "last": (0, 1),
    "extend_back": (0, 2),
    "connect": (1, 1),        # first and last frame (also a loop when both are the same)
    "connect_clips": (2, 2),
}
# Training frequency of each mode: text-to-video most often.
MODE_WEIGHTS: dict[str, float] = {"t2v": 0.4, "i2v": 0.15, "extend": 0.1, "last": 0.05,
                                  "extend_back": 0.1, "connect": 0.12, "connect_clips": 0.08}


def frame_mask(mode: str, frames: int) -> torch.Tensor:
    """Which of `frames` latent frames are known in a mode: bool [frames]."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    head, tail = MODES[mode]
    m = torch.zeros(frames, dtype=torch.bool)
    m[: min(head, frames)] = True
    if tail:
        m[-tail:] = True
    return m


def random_frame_masks(batch: int, frames: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """A mode drawn per sample by `MODE_WEIGHTS`: bool [batch, frames]."""
    names = list(MODE_WEIGHTS)
    w = torch.tensor([MODE_WEIGHTS[n] for n in names])
    picks = torch.multinomial(w, batch, replacement=True, generator=generator)
    return torch.stack([frame_mask(names[i], frames) for i in picks.tolist()])


def token_timesteps(sigma: torch.Tensor, known: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Per-token timesteps [B, T * tokens_per_frame]: 1000 * sigma, and 0 on known frames.

    sigma [B] (or a scalar), known bool [B, T] or [T]. The same rule the ComfyUI model uses
    (``canvas.token_timesteps``), given whole known frames instead of a pixel-level mask."""
    if known.dim() == 1:
        known = known.unsqueeze(0)
    b = max(known.shape[0], sigma.numel())
    unknown = (~known).float()[:, None, :, None, None]                     # (B|1, 1, T, 1, 1)
    mask = unknown.expand(-1, -1, -1, 1, tokens_per_frame)                 # one "pixel" per token
    t = (1000 * sigma.reshape(-1).float()).expand(b)
    return token_timesteps_from_mask(mask, t, patch=(1, 1, 1))              # (B, T*hw)


def apply_known(x: torch.Tensor, clean: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """x [B, C, T, H, W] with the known frames replaced by `clean` (same shape or batch 1)."""
    if known.dim() == 1:
        known = known.unsqueeze(0)
    m = known[:, None, :, None, None].to(x.device)
    return torch.where(m, clean.to(x.dtype).expand_as(x), x)
