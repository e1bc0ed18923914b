"""Small helpers shared by the solvers: log-SNR of a flow sigma, noise samplers, step checks."""
from __future__ import annotations

import math
from typing import Any, Callable

import torch

from .schedules import validate_sigmas

# A denoiser: model(x (B, ...), sigma (B,), **extra_args) -> x0 (B, ...)
Denoiser = Callable[..., torch.Tensor]
# A noise sampler: noise_sampler(sigma, sigma_next) -> fresh standard normal noise shaped like x
NoiseSampler = Callable[[float, float], torch.Tensor]
Callback = Callable[[dict[str, Any]], None]

# σ is clamped below 1 in log-SNR maths only, so that λ(σ=1) = log(0) stays finite; the same
# 1e-6 that diffusers' UniPC subtracts from a first sigma of 1.
SIGMA_ONE_EPS = 1e-6


def flow_lambda(sigma: float, clamp: bool = True) -> float:
    """Half log-SNR of flow matching, ``λ = log(α/σ)`` with ``α = 1 − σ``; +inf at σ = 0.

    ``clamp``: read σ ≥ 1 − 1e-6 as 1 − 1e-6 (finite λ, as diffusers' UniPC); else σ = 1 gives
    −inf, which first-order steps and DPM++'s step ratio handle as the exact limit.
    """
    if sigma <= 0.0:
        return math.inf
    if clamp:
        sigma = min(sigma, 1.0 - SIGMA_ONE_EPS)
    elif sigma >= 1.0:
        return -math.inf
    return math.log1p(-sigma) - math.log(sigma)


def sigma_floats(sigmas: torch.Tensor, strict: bool = False) -> list[float]:
    """Validated sigmas as Python floats (all coefficient maths is done once, in float64).
    The schedule may stop above 0 (a split schedule): the solver then ends at that noise level.

    ``strict``: multistep solvers divide by step sizes in λ, so a repeated non-zero sigma
    (a zero-length step) is refused with a clear message.
    """
    values = [float(s) for s in validate_sigmas(sigmas, end_in_zero=False)]
    if strict:
        for i in range(len(values) - 1):
            if values[i] == values[i + 1]:
                raise ValueError(f"sigmas[{i}] == sigmas[{i + 1}] = {values[i]:.6g}: multistep solvers "
                                 "(UniPC, DPM++) need strictly decreasing sigmas; use euler or remove the repeat")
    return values


def seeded_noise_sampler(x: torch.Tensor, seed: int | None = None,
                         generator: torch.Generator | None = None) -> NoiseSampler:
    """Fresh N(0, I) noise shaped like ``x`` from one CPU generator (device-independent results).

    Pass a ``generator`` to continue an existing stream, or a ``seed`` for a new one.
    """
    if generator is None:
        if seed is None:
            raise ValueError("a stochastic solver needs a seed: pass extra_args={'seed': N}, "
                             "a noise_sampler, or use spacetime_video.samplers.sample(..., seed=N)")
        generator = torch.Generator(device="cpu").manual_seed(int(seed))

    def draw(sigma: float, sigma_next: float) -> torch.Tensor:
        return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device, x.dtype)

    return draw


def notify(callback: Callback | None, i: int, x: torch.Tensor, sigma: float, sigma_next: float,
           denoised: torch.Tensor) -> None:
    """k-diffusion style progress callback; an exception raised by it stops sampling."""
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})
