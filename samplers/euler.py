"""First-order flow solvers: Euler on the probability-flow ODE, and LCM re-noising for
step-distilled models.

Euler: the flow ODE ``dx/dσ = v = (x − x0)/σ`` of rectified flow (Liu et al. 2022,
arXiv:2209.03003) integrated with explicit Euler steps (Karras et al. 2022, arXiv:2206.00364,
Alg. 1 without the Heun correction), ``x_next = x + (σ_next − σ)·v``.

LCM: the multistep consistency sampling of Latent Consistency Models (Luo et al. 2023,
arXiv:2310.04378, Alg. 1 / Song et al. 2023, arXiv:2303.01469, Alg. 1): predict x0, then jump
to the next noise level with *fresh* noise, ``x_next = (1 − σ_next)·x0 + σ_next·ε``.
"""
from __future__ import annotations

import torch

from .common import Callback, Denoiser, NoiseSampler, notify, seeded_noise_sampler, sigma_floats


@torch.no_grad()
def sample_euler(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                 callback: Callback | None = None, disable: bool | None = None) -> torch.Tensor:
    """Explicit Euler on the flow ODE. ``model(x, sigma, **extra_args) -> x0``."""
    extra_args = {} if extra_args is None else extra_args
    sig = sigma_floats(sigmas)
    s_in = x.new_ones([x.shape[0]])  # (B,)
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        notify(callback, i, x, sig[i], sig[i + 1], denoised)
        # x + (σ' − σ)·v with v = (x − x0)/σ is the lerp x0 + (σ'/σ)·(x − x0): one fused op
        x = torch.lerp(denoised, x, sig[i + 1] / sig[i])
    return x


@torch.no_grad()
def sample_lcm(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
               callback: Callback | None = None, disable: bool | None = None,
               noise_sampler: NoiseSampler | None = None) -> torch.Tensor:
    """Few-step consistency sampling for step-distilled models (e.g. 4–8 step LoRAs).

    The fresh noise comes from ``noise_sampler(sigma, sigma_next)`` or, when none is given, from
    a CPU generator seeded with ``extra_args["seed"]`` (the key ComfyUI passes; it is also
    forwarded to the model, which ComfyUI's model wrapper expects).
    """
    extra_args = {} if extra_args is None else extra_args
    sig = sigma_floats(sigmas)
    if noise_sampler is None:
        noise_sampler = seeded_noise_sampler(x, seed=extra_args.get("seed"))
    s_in = x.new_ones([x.shape[0]])  # (B,)
    for i in range(len(sig) - 1):
        denoised = model(x, sig[i] * s_in, **extra_args)
        notify(callback, i, x, sig[i], sig[i + 1], denoised)
        x = denoised
        if sig[i + 1] > 0.0:
            x = torch.lerp(denoised, noise_sampler(sig[i], sig[i + 1]), sig[i + 1])  # (1−σ)x0 + σε
    return x
