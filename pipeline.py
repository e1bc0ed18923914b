"""Generation as one plain function: text and known frames in, a video out.

    from spacetime_video.pipeline import Known, generate, generate_embedded
    video = generate_embedded("a red ball rolls to the left across a black background", seed=0)
    video = generate_embedded("a blue box rises", known=[Known(first_frame)])      # image-to-video
    video = generate_embedded("a red ball rolls to the left", distilled=True)       # 4 steps, no CFG
    video = generate(dit, vae, context, negative, frames=81, height=480, width=832)  # any T2V / TI2V Wan

Each step: impose the canvas' known latents (clean with timestep 0 for Wan 2.2 TI2V and the
embedded model, re-noised to the step's sigma for Wan 2.1), run the DiT, turn its velocity
into x0, guide, take a solver step — the same placement and rules the ComfyUI nodes use.
Models that take the image as extra input channels (I2V / FLF2V) run through the nodes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .model import canvas
from .model.dit import TextMemo, WanDiT
from .model.embedded import EmbeddedModel, load_embedded
from .model.embedded import config as C
from .model.vae import WanVAE
from .samplers import cfg_denoiser, flow_sigmas, sample, step_range_to_sigma_range
from .samplers.common import Callback, Denoiser
from .samplers.step_cache import Speed, StepCache, guided_steps

__all__ = ["Known", "generate", "generate_embedded", "generate_latent", "sample_canvas"]


@dataclass(frozen=True)
class Known:
    """Frames to keep: ``[n, H, W, 3]`` in 0..1 (ComfyUI IMAGE) or ``[3, n, H, W]`` in -1..1, at
    ``"start"``, ``"end"`` or a frame index."""

    frames: torch.Tensor
    at: str | int = "start"

    def pixels(self) -> torch.Tensor:
        """The frames as ``[n, H, W, 3]`` in 0..1 (a single image ``[H, W, 3]`` / ``[3, H, W]`` too)."""
        x = torch.as_tensor(self.frames).float()
        if x.dim() == 3:
            x = x.unsqueeze(0) if x.shape[-1] == 3 else x.unsqueeze(1)
        if x.dim() != 4:
            raise ValueError(f"known frames of shape {tuple(x.shape)}: expected [n, H, W, 3] in 0..1 "
                             "or [3, n, H, W] in -1..1")
        if x.shape[-1] == 3:                                   # IMAGE layout (also for 3 frames)
            return x
        return ((x.permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1)


def _encode_pixels(vae: WanVAE) -> Callable[[torch.Tensor], torch.Tensor]:
    def encode(pixels: torch.Tensor) -> torch.Tensor:  # [T, H, W, 3] in 0..1 -> normalized latent
        video = pixels.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1                  # (1, 3, T, H, W)
        return vae.normalize(vae.encode(video.to(vae.device, vae.dtype)).float())
    return encode


def _canvas_denoiser(dit: WanDiT, clean: torch.Tensor | None, mask: torch.Tensor | None,
                     noise: torch.Tensor, per_token: bool, cache: StepCache | None = None,
                     negative: torch.Tensor | None = None) -> Denoiser:
    """``denoise(x, sigma, context) -> x0`` of one DiT with the canvas' known latents imposed
    (``clean`` normalized latents, ``mask`` ComfyUI's noise mask: 1 = generate, 0 = keep).
    With a ``cache``, the DiT's velocity may be forecast instead of evaluated; a batch of 2 is
    the guided pair (conditional rows first, as ``guided_x0`` batches them), and an unbatched
    call is the unconditional one when its context is ``negative``."""
    patch = dit.config.patch_size

    def denoise(x: torch.Tensor, sigma: torch.Tensor, context: torch.Tensor, **_: object) -> torch.Tensor:
        s = sigma.reshape(-1).float()                                            # (B,)
        t = 1000 * s
        if clean is not None:
            x = canvas.known_input(x, clean, mask, float(s[0]), None if per_token else noise)
            if per_token:
                t = canvas.token_timesteps(mask, t, patch)                       # (B, tokens)
        if cache is None:
            v = dit(x, t, context)
        else:
            rows = ("cond", "uncond") if x.shape[0] == 2 * noise.shape[0] else \
                ("uncond",) if context is negative else ("cond",)
            v = cache(rows, float(s[0]), x, lambda: dit(x, t, context))
        x0 = x - s.view(-1, 1, 1, 1, 1).to(x.dtype) * v
        return x0 if clean is None else canvas.replace_known(x0, clean.to(x0.dtype), mask)

    return denoise


@torch.no_grad()
def generate_latent(dit: WanDiT, vae: WanVAE, context: torch.Tensor, negative: torch.Tensor | None = None, *,
                    frames: int, height: int, width: int, steps: int = 50, shift: float = 5.0,
                    guidance: float = 5.0, seed: int = 0, known: Sequence[Known] = (), solver: str = "unipc",
                    per_token: bool | None = None, sigmas: torch.Tensor | None = None,
                    callback: Callback | None = None, speed: str | Speed | StepCache = "off") -> torch.Tensor:
    """The raw latent ``[1, C, T', h, w]`` of a clip (what :func:`generate` decodes).

    ``context`` / ``negative``: text-encoder states ``[1, L, text_dim]`` (negative None: no
    guidance); ``known``: frames to keep; ``per_token``: known latents stay clean with timestep
    0 (default: Wan 2.2 TI2V) rather than being re-noised each step; ``sigmas`` replaces the
    ``steps`` / ``shift`` schedule. Deterministic given ``seed`` (the noise is drawn on the CPU
    as ComfyUI draws it). ``speed``: a preset of ``samplers.SPEEDS`` ("off": every DiT
    evaluation runs), a ``Speed``, or a ``StepCache`` (whose counts the caller then reads).
    """
    c = dit.config
    if c.cond_channels:
        raise ValueError(f"generate() runs models whose input is the latent alone; this {c.model_type} model "
                         f"takes {c.cond_channels} extra image channels: use the ComfyUI nodes for it")
    if c.out_dim != vae.config.z_dim:
        raise ValueError(f"the VAE makes {vae.config.z_dim}-channel latents but the DiT denoises {c.out_dim}-channel "
                         "ones: use the VAE of the model's family")
    st, sh, sw = vae.config.stride
    problems = canvas.check_canvas(width, height, frames, (st, sh, sw), c.patch_size)
    if problems:
        raise ValueError("; ".join(problems))
    per_token = c.model_type == "ti2v" if per_token is None else per_token
    latent_shape = (1, c.out_dim, (frames - 1) // st + 1, height // sh, width // sw)
    noise = torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed))
    clean = mask = None
    if known:
        pixels, flags = canvas.new_pixel_canvas(frames, height, width)
        for k in known:
            f = k.pixels()
            canvas.place(pixels, flags, f, canvas.start_frame(k.at, frames, f.shape[0]))
        clean = canvas.known_latents(_encode_pixels(vae), pixels, flags)
        mask = canvas.noise_mask(flags, latent_shape[3:], st)
    sigmas = flow_sigmas(steps, shift) if sigmas is None else sigmas
    z = sample_canvas(dit, context, negative, noise=noise, sigmas=sigmas, clean=clean, mask=mask, guidance=guidance,
                      solver=solver, per_token=per_token, callback=callback, speed=speed)
    return vae.denormalize(z)


def sample_canvas(dit: WanDiT, context: torch.Tensor, negative: torch.Tensor | None, *, noise: torch.Tensor,
                  sigmas: torch.Tensor, clean: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                  guidance: float = 5.0, solver: str = "unipc", per_token: bool = False,
                  callback: Callback | None = None, speed: str | Speed | StepCache = "off") -> torch.Tensor:
    """Sample one canvas in the DiT's (normalized) latent space: from ``noise`` ``[1, C, T, h, w]``
    along ``sigmas``, keeping ``clean`` (normalized latents) where ``mask`` (ComfyUI's noise mask,
    1 = generate, 0 = keep) is 0; the rest as :func:`generate_latent` (which builds the canvas from
    pixels and calls this)."""
    cache = speed if isinstance(speed, StepCache) else StepCache(speed)
    cache.begin(sigmas)
    settings = cache.speed
    counted = settings.skips or isinstance(speed, StepCache)
    model = _canvas_denoiser(dit, clean, mask, noise, per_token, cache if counted else None, negative)
    uncond = {"context": negative} if negative is not None else {"context": context}
    n = len(sigmas) - 1
    guided = guided_steps(settings, n) if negative is not None else 0
    scale, sigma_range = (guidance, None) if guided >= n else (1.0, None) if guided == 0 else \
        (guidance, step_range_to_sigma_range(sigmas, 0, guided))
    truncated = counted and negative is not None and guidance != 1.0 and guided < n

    def count_unguided(rows: int) -> None:      # the unconditional rows guidance truncation leaves out
        cache.unguided += rows
    denoiser = cfg_denoiser(model, {"context": context}, uncond, scale, sigma_range=sigma_range,
                            on_unguided=count_unguided if truncated else None)
    dit.use_text_memo(TextMemo() if settings.reuse_text else None)
    try:
        return sample(denoiser, noise, sigmas, solver=solver, callback=callback, disable=True)
    finally:
        dit.use_text_memo(None)


def generate(dit: WanDiT, vae: WanVAE, context: torch.Tensor, negative: torch.Tensor | None = None,
             **options: object) -> torch.Tensor:
    """A clip ``[3, frames, height, width]`` in [-1, 1]: :func:`generate_latent` (same options:
    ``frames``, ``height``, ``width`` are required), decoded by the VAE."""
    z = generate_latent(dit, vae, context, negative, **options)
    with torch.no_grad():
        return vae.decode(z.to(vae.dtype))[0]


@torch.no_grad()
def generate_embedded(prompt: str, frames: int = C.FRAMES, steps: int | None = None, guidance: float | None = None,
                      seed: int = 0, known: Sequence[Known] | None = None, negative: str = "",
                      shift: float = C.DEFAULT_SHIFT, solver: str | None = None, model: EmbeddedModel | None = None,
                      speed: str | Speed | StepCache = "off", distilled: bool = False) -> torch.Tensor:
    """A clip ``[3, frames, 64, 64]`` in [-1, 1] from the embedded tiny model (trained at 17 frames),
    guided against ``negative`` (the empty caption by default).

    ``distilled``: the model with its 4-step distilled LoRA (``load_embedded(distilled=True)``; a
    ``model`` given is used as it is), sampled with its defaults: 4 UniPC steps without guidance
    (4 DiT evaluations instead of 40). ``steps`` / ``guidance`` / ``solver`` left None take the
    defaults of the model chosen (20 UniPC steps, guidance 4 without ``distilled``)."""
    m = model or load_embedded(distilled=distilled)
    if distilled:
        steps, guidance, solver = steps or C.DISTILLED_STEPS, 1.0 if guidance is None else guidance, \
            solver or C.DISTILLED_SOLVER
    else:
        steps, solver = steps or C.DEFAULT_STEPS, solver or "unipc"
        guidance = C.DEFAULT_GUIDANCE if guidance is None else guidance
    cond = m.text_encoder.encode([prompt])
    uncond = m.text_encoder.encode([negative]) if guidance != 1.0 else None
    return generate(m.dit, m.vae, cond, uncond, frames=frames, height=C.SIZE, width=C.SIZE, steps=steps,
                    shift=shift, guidance=guidance, seed=seed, known=known or (), solver=solver, per_token=True,
                    speed=speed)
