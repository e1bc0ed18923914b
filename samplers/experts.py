"""Wan 2.2 A14B's two experts: a high-noise model for the early steps, a low-noise model after.

Official rule (Wan-Video/Wan2.2 ``wan/text2video.py`` and ``wan/image2video.py``,
``_prepare_model_for_timestep``): with the integer timestep ``t = int(1000·σ)`` of the schedule
and ``boundary`` from the config (0.875 for T2V A14B, 0.900 for I2V A14B), the high-noise
expert and its guidance scale are used while ``t >= boundary·1000``, the low-noise expert after.
Wan's configs give the scales as (low, high): T2V (3.0, 4.0), I2V (3.5, 3.5).
Mixture-of-experts denoising by noise level: Balaji et al., "eDiff-I", arXiv:2211.01324.

One rule, two ways to run it: per step (``two_expert_denoiser``, both experts in memory) or as
two stages one after the other (``expert_stages`` + ``resume_noise``, one expert at a time, as
the sampler node does).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from .common import Denoiser
from .guidance import cfg_denoiser
from .schedules import NUM_TRAIN_TIMESTEPS, validate_sigmas

# The one table of expert switch points, as a fraction of the 1000 timesteps (Wan 2.2's configs).
WAN22_BOUNDARY = {"t2v": 0.875, "i2v": 0.900}


def uses_high_noise_expert(sigma: float, boundary: float) -> bool:
    """The official comparison: integer timestep ``int(1000·σ) >= boundary·1000``."""
    if not 0.0 <= boundary <= 1.0:
        raise ValueError(f"expert boundary is a fraction of the 1000 timesteps, in [0, 1]; got {boundary!r}")
    return math.floor(sigma * NUM_TRAIN_TIMESTEPS) >= boundary * NUM_TRAIN_TIMESTEPS


def expert_switch_index(sigmas: torch.Tensor, boundary: float) -> int:
    """Index of the first step run by the low-noise expert (``steps`` if it never runs)."""
    sig = [float(s) for s in validate_sigmas(sigmas, end_in_zero=False)[:-1]]
    return next((i for i, s in enumerate(sig) if not uses_high_noise_expert(s, boundary)), len(sig))


def two_expert_denoiser(high: Denoiser, low: Denoiser, boundary: float) -> Denoiser:
    """A denoiser that calls ``high`` at timesteps ≥ boundary·1000 and ``low`` below it."""
    uses_high_noise_expert(1.0, boundary)  # validate once, up front

    def denoise(x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        expert = high if uses_high_noise_expert(float(sigma.reshape(-1)[0]), boundary) else low
        return expert(x, sigma, **extra)

    return denoise


def wan22_denoiser(high_model: Denoiser, low_model: Denoiser, cond: dict[str, Any], uncond: dict[str, Any],
                   boundary: float, high_scale: float, low_scale: float, batched: bool = True,
                   sigma_range: tuple[float, float] | None = None) -> Denoiser:
    """Wan 2.2 A14B sampling: each expert with classifier-free guidance at its own scale."""
    return two_expert_denoiser(
        cfg_denoiser(high_model, cond, uncond, high_scale, batched, sigma_range),
        cfg_denoiser(low_model, cond, uncond, low_scale, batched, sigma_range),
        boundary)


@dataclass(frozen=True)
class Stage:
    """One expert's share of a schedule: ``sigmas`` from the stage's first step to its end (the
    next stage starts where this one stops), ``expert`` 0 for the (high-noise) model, 1 for
    the low-noise expert, ``first_step`` the index of its first step in the whole schedule."""

    expert: int
    sigmas: torch.Tensor
    first_step: int


def expert_stages(sigmas: torch.Tensor, boundary: float | None) -> list[Stage]:
    """The schedule split at ``boundary`` between two experts run one after the other (only one
    needs to be in memory at a time); ``boundary=None``: one model, one stage."""
    total = len(sigmas) - 1
    split = total if boundary is None else expert_switch_index(sigmas, boundary)
    stages = [Stage(0, sigmas[:split + 1], 0)] if split > 0 else []
    if split < total:
        stages.append(Stage(1, sigmas[split:], split))
    return stages


def resume_noise(x_sigma: torch.Tensor, x_start: torch.Tensor, sigma: float) -> torch.Tensor:
    """The noise ``n`` with ``σ·n + (1 − σ)·x_start = x_sigma``: lets the second stage (the
    low-noise expert) resume from the first stage's state at ``σ`` while known latents keep
    being imposed from the original ``x_start``, with the noise they were first given."""
    if sigma <= 0:
        raise ValueError(f"cannot resume at sigma {sigma}: the sample is already clean")
    return (x_sigma - (1.0 - sigma) * x_start) / sigma
