"""Generate with the embedded tiny model outside ComfyUI (scripts, evaluation, tests): text,
known frames, classifier-free guidance, a flow-matching solver.

    from spacetime_video.scripts.embedded_generate import Known, generate
    video = generate("a red ball rolls to the left across a black background", seed=0)
    video = generate("a blue box rises", known=[Known(first_frame, "start")])   # image-to-video

It joins ``model/`` (the parts) and ``samplers/`` (the loop), which ``model/`` may not import.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..model.dit import WanDiT
from ..model.embedded import config as C
from ..model.embedded.known import apply_known, token_timesteps
from ..model.embedded.pipeline import EmbeddedModel, Known, known_latents, load_embedded
from ..samplers import cfg_combine, flow_sigmas, sample

__all__ = ["Known", "generate", "load_embedded", "make_denoiser"]


def make_denoiser(dit: WanDiT, cond: torch.Tensor, uncond: torch.Tensor | None, guidance: float,
                  clean: torch.Tensor | None, mask: torch.Tensor) -> Callable[..., torch.Tensor]:
    """denoiser(x, sigma) -> x0 with known frames held clean and classifier-free guidance
    (Ho & Salimans 2022): x0 = x0_u + g (x0_c - x0_u); cond and uncond in one batch."""
    ph, pw = dit.config.patch_size[1:]
    use_cfg = uncond is not None and guidance != 1.0
    reps = 2 if use_cfg else 1
    context = torch.cat([cond, uncond]) if use_cfg else cond     # once per run, not per step

    def denoise(x: torch.Tensor, sigma: torch.Tensor, **_: object) -> torch.Tensor:
        B = x.shape[0]
        xin = apply_known(x, clean, mask) if clean is not None else x
        tok = (x.shape[3] // ph) * (x.shape[4] // pw)
        s = sigma.reshape(-1).expand(B)
        ctx = context.repeat_interleave(B, dim=0) if B > 1 else context
        t = token_timesteps(s.repeat(reps), mask.unsqueeze(0).expand(B * reps, -1), tok)
        v = dit(xin.repeat(reps, 1, 1, 1, 1), t, ctx)
        x0 = xin.repeat(reps, 1, 1, 1, 1) - s.repeat(reps).view(-1, 1, 1, 1, 1) * v
        if use_cfg:
            x0 = cfg_combine(*x0.chunk(2), guidance)
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
