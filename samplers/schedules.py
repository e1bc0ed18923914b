"""Flow-matching sigma schedules: pure functions returning a 1-D float32 tensor that ends in 0.

Flow matching (Lipman et al. 2022, arXiv:2210.02747; rectified flow, Liu et al. 2022,
arXiv:2209.03003) noises as ``x_σ = (1 − σ)·x0 + σ·ε`` with σ from 1 (pure noise) to 0 (data).
Wan samples on a *shifted* schedule ``σ' = s·σ / (1 + (s − 1)·σ)`` (SD3, Esser et al. 2024,
arXiv:2403.03206, eq. 23), which spends more steps at high noise for s > 1.

Every schedule here is ``steps + 1`` values, non-increasing, the last one exactly 0: the
k-diffusion / ComfyUI SIGMAS convention, so they plug into ComfyUI's SamplerCustomAdvanced
and any ComfyUI schedule plugs into our solvers (see :func:`validate_sigmas`).
"""
from __future__ import annotations

import math

import torch

SPACINGS = ("wan", "wan_dpm", "diffusers_unipc", "diffusers_euler", "comfy_simple")
NUM_TRAIN_TIMESTEPS = 1000  # Wan, diffusers and ComfyUI all discretise σ·1000


def shift_sigma(sigma: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """``σ' = s·σ / (1 + (s − 1)·σ)``: the SD3 / Wan time shift (identity for s = 1)."""
    return shift * sigma / (1 + (shift - 1) * sigma)


def resolution_shift(tokens: int, base_shift: float = 0.5, max_shift: float = 1.15,
                     base_tokens: int = 256, max_tokens: int = 4096) -> float:
    """The resolution-dependent shift ``s = exp(μ)`` of Flux / SD3-style "dynamic shifting".

    ``μ`` is linear in the number of image tokens: ``μ = base_shift + (max_shift − base_shift)
    · (tokens − base_tokens) / (max_tokens − base_tokens)`` (diffusers ``calculate_shift`` with
    its Flux defaults; ComfyUI ``ModelSamplingFlux``). The exponential time shift
    ``exp(μ) / (exp(μ) + (1/σ − 1))`` is then exactly :func:`shift_sigma` with ``s = exp(μ)``,
    so the result can be passed as ``shift`` to :func:`flow_sigmas`. Wan's official configs use a
    fixed shift instead; this is an option for users who want more shift for larger videos.
    """
    if tokens <= 0 or max_tokens == base_tokens:
        raise ValueError(f"resolution_shift needs tokens > 0 and max_tokens != base_tokens; "
                         f"got tokens={tokens}, base_tokens={base_tokens}, max_tokens={max_tokens}")
    slope = (max_shift - base_shift) / (max_tokens - base_tokens)
    mu = base_shift + slope * (tokens - base_tokens)
    return math.exp(mu)


def _check_steps_shift(steps: int, shift: float) -> None:
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not shift > 0:
        raise ValueError(f"shift must be > 0 (1 = no shift; Wan uses 3 to 12), got {shift!r}")


def _with_zero(sigmas: torch.Tensor) -> torch.Tensor:
    # (steps,) float64 -> (steps + 1,) float32 ending in exactly 0
    return torch.cat([sigmas, sigmas.new_zeros(1)]).to(torch.float32)


def _base_sigmas(steps: int, shift: float, spacing: str) -> torch.Tensor:
    """The ``steps`` non-zero sigmas of one spacing, float64 (the trailing 0 is added later)."""
    f64 = torch.float64
    if spacing == "wan":
        # Wan's FlowUniPCMultistepScheduler (wan/utils/fm_solvers_unipc.py): the training table
        # is 1 − linspace(1, 1/1000, 1000) stored as float32, so σ_max = float32(0.999) and
        # σ_min = 0; set_timesteps takes linspace(σ_max, σ_min, steps + 1)[:-1], then shifts.
        sigma_max = float(torch.tensor(1.0 - 1.0 / NUM_TRAIN_TIMESTEPS, dtype=torch.float32))
        base = torch.linspace(sigma_max, 0.0, steps + 1, dtype=f64)[:-1]
        return shift_sigma(base, shift)
    if spacing == "wan_dpm":
        # Wan's DPM++ path (wan/utils/fm_solvers.py get_sampling_sigmas): linspace(1, 0)[:steps].
        return shift_sigma(torch.linspace(1.0, 0.0, steps + 1, dtype=f64)[:-1], shift)
    if spacing == "diffusers_unipc":
        # diffusers UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift):
        # linspace(1, 1/1000, steps + 1)[:-1], shifted; σ_0 == 1 is pulled down by 1e-6 there
        # so that log(α) stays finite.
        base = torch.linspace(1.0, 1.0 / NUM_TRAIN_TIMESTEPS, steps + 1, dtype=f64)[:-1]
        sig = shift_sigma(base, shift)
        if abs(float(sig[0]) - 1.0) < 1e-6:
            sig[0] -= 1e-6
        return sig
    if spacing == "diffusers_euler":
        # diffusers FlowMatchEulerDiscreteScheduler(shift=shift): its table is already shifted
        # (σ_min = float32 shift(1/1000)); set_timesteps spaces linspace(1, σ_min, steps) and
        # shifts *again*: the end of the schedule gets the shift twice (diffusers' behaviour).
        t_min = torch.tensor(1.0 / NUM_TRAIN_TIMESTEPS, dtype=torch.float32)
        sigma_min = float(shift_sigma(t_min, shift))  # float32 arithmetic, as diffusers
        base = torch.linspace(1.0, sigma_min, steps, dtype=f64)
        return shift_sigma(base, shift)
    if spacing == "comfy_simple":
        # ComfyUI "simple" scheduler on ModelSamplingDiscreteFlow(shift): its table holds
        # shift(k/1000) for k = 1..1000; step x takes entry -(1 + int(x * 1000/steps)).
        stride = NUM_TRAIN_TIMESTEPS / steps
        ks = [NUM_TRAIN_TIMESTEPS - int(x * stride) for x in range(steps)]
        return shift_sigma(torch.tensor(ks, dtype=f64) / NUM_TRAIN_TIMESTEPS, shift)
    raise ValueError(f"unknown spacing {spacing!r}; choose one of {', '.join(SPACINGS)}")


def flow_sigmas(steps: int, shift: float = 5.0, spacing: str = "wan",
                denoise: float = 1.0) -> torch.Tensor:
    """Shifted flow-matching sigmas, ``(steps + 1,)`` float32 from ~1 down to exactly 0.

    spacing:
      * ``"wan"`` (default): Wan 2.1/2.2's official UniPC schedule, starting at shift(0.999).
      * ``"wan_dpm"``: the schedule Wan's official code feeds its DPM++ solver (starts at 1).
      * ``"diffusers_unipc"``: diffusers ``UniPCMultistepScheduler`` with flow sigmas.
      * ``"diffusers_euler"``: diffusers ``FlowMatchEulerDiscreteScheduler``.
      * ``"comfy_simple"``: ComfyUI's "simple" scheduler on a flow model with this shift.

    denoise < 1 follows ComfyUI's BasicScheduler exactly: build the schedule for
    ``int(steps / denoise)`` steps and keep its last ``steps + 1`` sigmas, so ``steps`` model
    calls are still made, starting at a lower noise level (video-to-video / SDEdit).
    """
    _check_steps_shift(steps, shift)
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1] (1 = generate from pure noise), got {denoise!r}")
    total = steps if denoise >= 1.0 else int(steps / denoise)
    return _with_zero(_base_sigmas(total, float(shift), spacing))[-(steps + 1):]


def truncate_for_denoise(sigmas: torch.Tensor, denoise: float) -> torch.Tensor:
    """The low-noise tail of an existing schedule, for a partial denoise.

    Same rule as ComfyUI's SplitSigmasDenoise (second output): with ``n = len(sigmas) − 1``
    steps, keep the last ``round(n · denoise)`` steps, i.e. ``sigmas[-(round(n·denoise) + 1):]``.
    (To keep the *number of steps* fixed instead, use ``flow_sigmas(..., denoise=...)``.)
    """
    sigmas = validate_sigmas(sigmas)
    if not 0.0 < denoise <= 1.0:
        raise ValueError(f"denoise must be in (0, 1] (1 = keep the whole schedule), got {denoise!r}")
    n = sigmas.shape[0] - 1
    keep = round(n * denoise)
    if keep < 1:
        raise ValueError(f"denoise={denoise} keeps no step of a {n}-step schedule: "
                         f"use denoise >= {0.5 / n:.3g} or more steps")
    return sigmas[-(keep + 1):]


def validate_sigmas(sigmas: torch.Tensor, end_in_zero: bool = True) -> torch.Tensor:
    """Check a SIGMAS tensor from anywhere (ours or any ComfyUI scheduler) and return it.

    Must be 1-D with at least 2 values, finite, within [0, 1] (flow matching), non-increasing,
    and (``end_in_zero``) end in exactly 0, so that the last step returns the clean prediction.
    The solvers themselves also take a schedule that stops above 0 (``end_in_zero=False``), such
    as the high-noise half that ComfyUI's SplitSigmas makes for a two-sampler workflow: they then
    return the sample at that noise level, as k-diffusion's samplers do.
    """
    if not isinstance(sigmas, torch.Tensor):
        sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    if sigmas.ndim != 1 or sigmas.shape[0] < 2:
        raise ValueError(f"sigmas must be a 1-D tensor of at least 2 values (steps + 1), "
                         f"got shape {tuple(sigmas.shape)}: build it with flow_sigmas(steps, shift)")
    if not torch.isfinite(sigmas).all():
        raise ValueError("sigmas contain NaN or inf")
    lo, hi = float(sigmas.min()), float(sigmas.max())
    if lo < 0.0 or hi > 1.0 + 1e-6:
        raise ValueError(f"flow-matching sigmas must lie in [0, 1], got [{lo:.4g}, {hi:.4g}]: "
                         "this schedule belongs to a non-flow (e.g. SD/EDM) model")
    if (sigmas[1:] > sigmas[:-1]).any():
        i = int(torch.nonzero(sigmas[1:] > sigmas[:-1])[0])
        raise ValueError(f"sigmas must be non-increasing, but sigmas[{i + 1}]={float(sigmas[i + 1]):.6g} > "
                         f"sigmas[{i}]={float(sigmas[i]):.6g} (flipped schedule?)")
    if end_in_zero and float(sigmas[-1]) != 0.0:
        raise ValueError(f"sigmas must end in 0, got last value {float(sigmas[-1]):.6g}: "
                         "append a 0 (e.g. torch.cat([sigmas, sigmas.new_zeros(1)]))")
    return sigmas
