"""Classifier-free guidance as a denoiser wrapper, optionally limited to a range of noise levels.

CFG: Ho & Salimans, "Classifier-Free Diffusion Guidance", arXiv:2207.12598:
``x0 = x0_uncond + scale·(x0_cond − x0_uncond)``. Because ``x0 = x − σ·v`` is affine in the
velocity, guiding x0 equals guiding the velocity as Wan's official code does. Limiting guidance
to part of the schedule follows Kynkäänniemi et al., "Applying Guidance in a Limited Interval
Improves Sample and Distribution Quality", arXiv:2404.07724; outside the interval only the
conditional forward runs (scale 1), which also halves the cost of those steps.

A range is always expressed in sigmas, so the wrapped denoiser needs no step counter; use
:func:`step_range_to_sigma_range` to turn step indices of a schedule into sigmas.

This is the one guidance rule of the pack: :func:`cfg_denoiser` applies it to a plain model
(``pipeline``); on a ComfyUI MODEL the sampler node asks :func:`guidance_scale` for each step's
scale and lets ComfyUI's own CFG function combine the two predictions, so that ComfyUI's CFG
patches still apply.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

import torch

from .common import Denoiser
from .schedules import validate_sigmas

log = logging.getLogger("spacetime.samplers")


def cfg_combine(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """``uncond + scale·(cond − uncond)``."""
    return torch.lerp(uncond, cond, scale)


def step_range_to_sigma_range(sigmas: torch.Tensor, start: int, end: int) -> tuple[float, float]:
    """The sigma interval ``(low, high)`` holding exactly the steps ``start ≤ i < end`` of a
    strictly decreasing schedule (step i is evaluated at ``sigmas[i]``)."""
    sigmas = validate_sigmas(sigmas, end_in_zero=False)
    n = sigmas.shape[0] - 1
    if not 0 <= start < end <= n:
        raise ValueError(f"guidance step range must satisfy 0 <= start < end <= {n} (steps), got [{start}, {end})")
    return float(sigmas[end - 1]), float(sigmas[start])


def in_sigma_range(sigma: float, sigma_range: tuple[float, float] | None) -> bool:
    """Whether ``sigma`` lies in the closed interval ``(low, high)``; ``None`` means everywhere."""
    return sigma_range is None or sigma_range[0] <= sigma <= sigma_range[1]


def guidance_scale(sigma: float, scale: float, sigma_range: tuple[float, float] | None = None) -> float:
    """The guidance scale of the step at ``sigma``: ``scale`` inside ``sigma_range`` (closed;
    None = every step), 1 outside it (only the conditional forward runs there)."""
    return scale if in_sigma_range(sigma, sigma_range) else 1.0


def _batchable(x: torch.Tensor, cond: dict[str, Any], uncond: dict[str, Any]) -> bool:
    if cond.keys() != uncond.keys():
        return False
    for k, c in cond.items():
        u = uncond[k]
        if isinstance(c, torch.Tensor) and isinstance(u, torch.Tensor):
            if c.shape != u.shape or c.shape[0] != x.shape[0]:
                return False
        elif c is not u and not (not isinstance(c, torch.Tensor) and not isinstance(u, torch.Tensor) and c == u):
            return False
    return True


def _cat_args(cond: dict[str, Any], uncond: dict[str, Any]) -> dict[str, Any]:
    # tensors: (B, ...) + (B, ...) -> (2B, ...), cond first; other values are shared
    return {k: torch.cat([c, uncond[k]]) if isinstance(c, torch.Tensor) else c for k, c in cond.items()}


def guided_x0(model: Denoiser, x: torch.Tensor, sigma: torch.Tensor, cond: dict[str, Any],
              uncond: dict[str, Any], scale: float, batched: bool = True, **extra: Any) -> torch.Tensor:
    """One guided prediction: conditional and unconditional forwards (one batched forward of
    2B when ``batched`` and the two argument sets have matching shapes), combined by CFG."""
    if batched and _batchable(x, cond, uncond):
        out = model(torch.cat([x, x]), torch.cat([sigma, sigma]), **_cat_args(cond, uncond), **extra)
        x0_cond, x0_uncond = out.chunk(2)  # (B, ...) each
    else:
        if batched:
            log.debug("cond/uncond arguments differ in shape: two forwards instead of one batched")
        x0_cond = model(x, sigma, **cond, **extra)
        x0_uncond = model(x, sigma, **uncond, **extra)
    return cfg_combine(x0_cond, x0_uncond, scale)


def cfg_denoiser(model: Denoiser, cond: dict[str, Any], uncond: dict[str, Any], scale: float,
                 batched: bool = True, sigma_range: tuple[float, float] | None = None,
                 on_unguided: Callable[[int], None] | None = None) -> Denoiser:
    """Wrap ``model(x, sigma, **kwargs) -> x0`` into a guided denoiser ``(x, sigma, **extra)``.

    ``cond``/``uncond``: the keyword arguments of the two forwards (e.g. ``{"context": c}`` and
    ``{"context": c_null}``). Guidance runs where ``sigma`` is inside ``sigma_range`` (closed;
    None = all steps) and ``scale != 1``; elsewhere only the conditional forward runs, and
    ``on_unguided`` (if given) is told how many unconditional rows that call left out.
    """
    def denoise(x: torch.Tensor, sigma: torch.Tensor, **extra: Any) -> torch.Tensor:
        step_scale = guidance_scale(float(sigma.reshape(-1)[0]), scale, sigma_range)
        if step_scale == 1.0:
            if on_unguided is not None:
                on_unguided(x.shape[0])
            return model(x, sigma, **cond, **extra)
        return guided_x0(model, x, sigma, cond, uncond, step_scale, batched, **extra)

    return denoise
