"""The public sampling entry point and the solver registry."""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from .common import Callback, Denoiser, seeded_noise_sampler
from .dpmpp import sample_dpmpp_2m
from .euler import sample_euler, sample_lcm
from .schedules import validate_sigmas
from .unipc import sample_unipc

log = logging.getLogger("spacetime.samplers")

# name -> solver with the k-diffusion signature (model, x, sigmas, extra_args, callback, disable)
SOLVERS: dict[str, Callable[..., torch.Tensor]] = {
    "unipc": sample_unipc,
    "dpmpp_2m": sample_dpmpp_2m,
    "euler": sample_euler,
    "lcm": sample_lcm,
}
STOCHASTIC = frozenset({"lcm"})  # solvers that draw fresh noise during the loop


def sample(denoiser: Denoiser, noise: torch.Tensor, sigmas: torch.Tensor, solver: str = "unipc",
           extra_args: dict | None = None, callback: Callback | None = None,
           x_start: torch.Tensor | None = None, seed: int | None = None,
           generator: torch.Generator | None = None, disable: bool | None = None,
           **solver_opts: Any) -> torch.Tensor:
    """Integrate from ``sigmas[0]`` to 0 and return the clean sample x0 (shaped like ``noise``).

    ``denoiser(x, sigma, **extra_args) -> x0`` with ``sigma`` of shape (B,). The start is
    ``x = σ0·noise + (1 − σ0)·x_start`` (flow matching's forward process) given a start latent;
    without one (text-to-video) it is the noise itself, as in Wan's official pipelines and
    diffusers' WanPipeline (ComfyUI scales it by σ0 instead: 2e-4 apart for Wan's σ0 = 0.9998).
    For a partial denoise pass ``x_start`` (the clean latent) and a schedule from
    ``flow_sigmas(..., denoise=d)`` or ``truncate_for_denoise``.
    Deterministic given ``noise`` (and ``seed``/``generator`` for the LCM solver's fresh noise).
    ``callback(dict(i, x, sigma, sigma_next, denoised))`` runs once per step; an exception
    raised in it (e.g. a cancel) propagates and stops sampling, leaving no state behind.
    ``solver_opts`` go to the solver, e.g. ``order=3`` for UniPC.
    """
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; choose one of {', '.join(SOLVERS)}")
    sigmas = validate_sigmas(sigmas)
    sigma0 = float(sigmas[0])
    x = noise
    if x_start is not None:
        if x_start.shape != noise.shape:
            raise ValueError(f"x_start {tuple(x_start.shape)} and noise {tuple(noise.shape)} must have the same shape")
        x = torch.lerp(x_start.to(noise.dtype), noise, sigma0)  # σ0·noise + (1 − σ0)·x_start
    elif sigma0 < 0.99:
        log.warning("sampling starts at sigma %.3f without x_start: the start is under-noised "
                    "pure noise; pass x_start (the clean latent) for a partial denoise", sigma0)
    if solver in STOCHASTIC and "noise_sampler" not in solver_opts:
        solver_opts["noise_sampler"] = seeded_noise_sampler(noise, seed=seed, generator=generator)
    return SOLVERS[solver](denoiser, x, sigmas, extra_args=extra_args, callback=callback,
                           disable=disable, **solver_opts)
