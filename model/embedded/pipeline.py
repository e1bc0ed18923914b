"""Generate with the embedded tiny model: text, known frames, guidance, UniPC.

    from spacetime_video.model.embedded.pipeline import Known, generate, load_embedded
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
from typing import Callable

import torch

try:  # inside the package (spacetime_video.model.embedded)
    from ...samplers import flow_sigmas, sample
except ImportError:  # scripts that put the repository root on sys.path
    from samplers import flow_sigmas, sample  # type: ignore[no-redef]
from ..dit import WanDiT
from ..vae import WanVAE
from . import config as C
from .known import apply_known, token_timesteps
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


def make_denoiser(dit: WanDiT, cond: torch.Tensor, uncond: torch.Tensor | None, guidance: float,
                  clean: torch.Tensor | None, mask: torch.Tensor) -> Callable[..., torch.Tensor]:
    """denoiser(x, sigma) -> x0 with known frames held clean and classifier-free guidance
    (Ho & Salimans 2022): x0 = x0_u + g (x0_c - x0_u); cond and uncond in one batch."""
    ph, pw = dit.config.patch_size[1:]

    def denoise(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        B = x.shape[0]
        xin = apply_known(x, clean, mask) if clean is not None else x
        tok = (x.shape[3] // ph) * (x.shape[4] // pw)
        s = sigma.reshape(-1).expand(B)
        use_cfg = uncond is not None and guidance != 1.0
        ctx = torch.cat([cond.expand(B, -1, -1), uncond.expand(B, -1, -1)]) if use_cfg else cond.expand(B, -1, -1)
        reps = 2 if use_cfg else 1
        t = token_timesteps(s.repeat(reps), mask.unsqueeze(0).expand(B * reps, -1), tok)
        v = dit(xin.repeat(reps, 1, 1, 1, 1), t, ctx)
        x0 = xin.repeat(reps, 1, 1, 1, 1) - s.repeat(reps).view(-1, 1, 1, 1, 1) * v
        if use_cfg:
            c, u = x0.chunk(2)
            x0 = u + guidance * (c - u)
        return apply_known(x0, clean, mask) if clean is not None else x0

    return denoise


@torch.no_grad()
def generate(prompt: str, frames: int = C.FRAMES, steps: int = C.DEFAULT_STEPS,
             guidance: float = C.DEFAULT_GUIDANCE, seed: int = 0, known: list[Known] | None = None,
             negative: str = "", shift: float = C.DEFAULT_SHIFT, solver: str = "unipc",
             model: EmbeddedModel | None = None) -> torch.Tensor:
    """A clip [3, frames, 64, 64] in [-1, 1] for `prompt` (frames = 4k+1; trained at 17)."""
    if frames < 1 or (frames - 1) % 4:
        raise ValueError(f"frames={frames}: the causal VAE needs 4k+1 frames (e.g. {4 * ((frames - 1) // 4) + 1} "
                         f"or {4 * ((frames - 1) // 4 + 1) + 1}); the model was trained on 17")
    m = model or load_embedded()
    t_lat = (frames - 1) // 4 + 1
    clean, mask = known_latents(m.vae, known or [], frames)
    cond = m.text_encoder.encode([prompt])
    uncond = m.text_encoder.encode([negative])
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(1, m.vae.config.z_dim, t_lat, C.LATENT_SIZE, C.LATENT_SIZE, generator=g)
    den = make_denoiser(m.dit, cond, uncond, guidance, clean if bool(mask.any()) else None, mask)
    z = sample(den, noise, flow_sigmas(steps, shift), solver=solver, disable=True)
    return m.vae.decode(m.vae.denormalize(z))[0]
