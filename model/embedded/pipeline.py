"""The embedded tiny model's parts, and its known frames as clean latents.

``load_embedded()`` gives the trained VAE, DiT and text encoder; ``known_latents`` places
known frames. Sampling lives outside ``model/`` (which may not import ``samplers/``): the
ComfyUI nodes, or ``scripts/embedded_generate.py`` for scripts and tests::

    from spacetime_video.scripts.embedded_generate import Known, generate
    video = generate("a red ball rolls to the left across a black background", seed=0)
    # video [3, 17, 64, 64] in [-1, 1]
    video = generate("a blue box rises", known=[Known(first_frame, "start")])   # image-to-video

Known frames are encoded by the VAE and held clean (timestep 0) while the rest is denoised,
the same placement the ComfyUI nodes make. "start" frames become the first latents (1 frame
-> 1 latent, 5 frames -> 2); "end" frames are encoded after a still lead-in of their first
frame and become the last latents (1 frame -> 1 latent, 8 -> 2). Connect = one of each;
a loop = the same image at both ends.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from ..dit import WanDiT
from ..vae import WanVAE
from . import config as C
from .text_encoder import TinyTextEncoder
from .weights_io import load_parts

log = logging.getLogger("spacetime.embedded")


@dataclass
class EmbeddedModel:
    """The three trained parts and their training record."""

    vae: WanVAE
    dit: WanDiT
    text_encoder: TinyTextEncoder
    record: dict


@dataclass(frozen=True)
class Known:
    """Frames to keep: [3, n, H, W] in [-1, 1] or [n, H, W, 3] in 0..1, at "start" or "end"."""

    frames: torch.Tensor
    at: str = "start"


@lru_cache(maxsize=2)
def _load_cached(folder: str, device: str) -> EmbeddedModel:
    return EmbeddedModel(*load_parts(Path(folder), device))


def load_embedded(folder: str | Path | None = None, device: str = "cpu") -> EmbeddedModel:
    """The shipped tiny model (model/embedded/weights/), or one saved elsewhere; cached."""
    return _load_cached(str(folder or C.WEIGHTS_DIR), device)


def as_video(frames: torch.Tensor) -> torch.Tensor:
    """[3, n, H, W] in [-1, 1] from either frame layout (a single image [H, W, 3] or [3, H, W] too)."""
    x = torch.as_tensor(frames).float()
    if x.dim() == 3:
        x = x.unsqueeze(0) if x.shape[-1] == 3 else x.unsqueeze(1)
    if x.dim() != 4:
        raise ValueError(f"known frames of shape {tuple(x.shape)}: expected [n, H, W, 3] in 0..1 "
                         "or [3, n, H, W] in -1..1")
    if x.shape[-1] == 3 and x.shape[0] != 3:
        return x.permute(3, 0, 1, 2) * 2 - 1
    return x


def known_latents(vae: WanVAE, known: list[Known], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized clean latents [1, C, T', h, w] (zeros where unknown) and the mask [T']."""
    t_lat = (frames - 1) // 4 + 1
    clean, mask = None, torch.zeros(t_lat, dtype=torch.bool)
    for k in known:
        v = as_video(k.frames)                                           # (3, n, H, W)
        n = v.shape[1]
        if k.at == "start":
            m = (n - 1) // 4 + 1
            z = vae.normalize(vae.encode(v[:, : 4 * (m - 1) + 1].unsqueeze(0)))
            sl = slice(0, m)
        elif k.at == "end":
            if n > frames - 1:
                raise ValueError(f"{n} end frames do not fit a {frames}-frame clip; pass at most {frames - 1}")
            m = math.ceil(n / 4)
            lead = v[:, :1].expand(3, frames - n, *v.shape[2:])
            z = vae.normalize(vae.encode(torch.cat([lead, v], dim=1).unsqueeze(0)))[:, :, -m:]
            sl = slice(t_lat - m, t_lat)
        else:
            raise ValueError(f"Known.at={k.at!r}: use 'start' or 'end'")
        if m > t_lat:
            raise ValueError(f"{n} known frames need {m} latent frames; the clip has {t_lat}")
        if clean is None:
            clean = torch.zeros(1, z.shape[1], t_lat, *z.shape[3:])
        clean[:, :, sl] = z[:, :, : sl.stop - sl.start]
        mask[sl] = True
    return clean, mask
