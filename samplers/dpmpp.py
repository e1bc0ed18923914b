"""DPM-Solver++(2M) in the flow-matching form (the "dpm++" solver of Wan's official code).

Lu, Zhou, Bao, Chen, Li, Zhu, "DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
Probabilistic Models", arXiv:2211.01095, Algorithm 2 (multistep second order, data prediction).
With flow matching ``α = 1 − σ`` and ``λ = log(α/σ)``; one step from σ_s to σ_t is

    x_t = (σ_t/σ_s)·x_s − α_t·(e^{−h} − 1)·D,   h = λ_t − λ_s,
    D = (1 + 1/(2r))·x0_s − 1/(2r)·x0_prev,    r = h_prev / h,

and ``D = x0_s`` (first order) for the first step and the step to σ = 0 (which then returns
x0_s exactly), as k-diffusion's ``sample_dpmpp_2m`` and diffusers' DPMSolverMultistepScheduler
(``final_sigmas_type="zero"``) do. A first sigma of exactly 1 (Wan's DPM++ schedule) has
λ = −inf: the first step is then exactly ``σ_t·x + α_t·x0`` and the second one first order
(1/r = 0), the limits Wan's official solver reaches through its infinities.
"""
from __future__ import annotations

import math

import torch

from .common import Callback, Denoiser, flow_lambda, notify, sigma_floats


def dpmpp_2m_plan(sigmas: torch.Tensor) -> list[tuple[float, float, float]]:
    """Per step: ``(a, w_now, w_prev)`` with ``x_next = a·x + w_now·x0_i + w_prev·x0_{i−1}``."""
    sig = sigma_floats(sigmas, strict=True)
    n = len(sig) - 1
    lam = [flow_lambda(s, clamp=False) for s in sig]  # σ = 1 -> −inf: exact limits below
    plan = []
    for i in range(n):
        s, t = sig[i], sig[i + 1]
        if t == 0.0:
            plan.append((0.0, 1.0, 0.0))
            continue
        h = lam[i + 1] - lam[i]
        scale = -(1.0 - t) * math.expm1(-h)  # −α_t (e^{−h} − 1)
        a = t / s
        if i == 0:
            plan.append((a, scale, 0.0))
            continue
        half_inv_r = 0.5 * h / (lam[i] - lam[i - 1])  # 1/(2r)
        plan.append((a, scale * (1.0 + half_inv_r), -scale * half_inv_r))
    return plan


@torch.no_grad()
def sample_dpmpp_2m(model: Denoiser, x: torch.Tensor, sigmas: torch.Tensor, extra_args: dict | None = None,
                    callback: Callback | None = None, disable: bool | None = None) -> torch.Tensor:
    """DPM-Solver++(2M), flow form. ``model(x, sigma, **extra_args) -> x0``."""
    extra_args = {} if extra_args is None else extra_args
    plan = dpmpp_2m_plan(sigmas)
    sig = [float(s) for s in sigmas]
    s_in = x.new_ones([x.shape[0]])  # (B,)
    prev = None
    for i, (a, w_now, w_prev) in enumerate(plan):
        denoised = model(x, sig[i] * s_in, **extra_args)
        notify(callback, i, x, sig[i], sig[i + 1], denoised)
        x = (x * a).add_(denoised, alpha=w_now)
        if w_prev != 0.0:
            x.add_(prev, alpha=w_prev)
        prev = denoised
    return x
