"""Flow-matching schedules, solvers, guidance and the denoise loop (plain PyTorch).

k-diffusion shape: ``sigmas`` is a 1-D tensor ending in 0; a solver is
``sample_x(model, x, sigmas, extra_args, callback, disable)`` with ``model(x, sigma) -> x0``.
"""
from .common import flow_lambda, seeded_noise_sampler
from .dpmpp import sample_dpmpp_2m
from .euler import sample_euler, sample_lcm
from .experts import (WAN22_BOUNDARY, Stage, expert_stages, expert_switch_index, resume_noise, two_expert_denoiser,
                      uses_high_noise_expert, wan22_denoiser)
from .guidance import (cfg_combine, cfg_denoiser, guidance_scale, guided_x0, in_sigma_range,
                       step_range_to_sigma_range)
from .loop import SOLVERS, sample
from .schedules import (SPACINGS, flow_sigmas, resolution_shift, shift_sigma, truncate_for_denoise,
                        validate_sigmas)
from .step_cache import DEFAULT_SPEED, SPEEDS, Speed, StepCache, speed_settings
from .unipc import sample_unipc

__all__ = [
    "flow_sigmas", "shift_sigma", "resolution_shift", "truncate_for_denoise", "validate_sigmas", "SPACINGS", "sample",
    "SOLVERS", "sample_euler", "sample_unipc", "sample_dpmpp_2m", "sample_lcm", "cfg_combine", "cfg_denoiser",
    "guidance_scale", "guided_x0", "in_sigma_range", "step_range_to_sigma_range", "two_expert_denoiser",
    "wan22_denoiser", "expert_switch_index", "uses_high_noise_expert", "WAN22_BOUNDARY", "Stage", "expert_stages",
    "resume_noise", "flow_lambda", "seeded_noise_sampler", "StepCache", "Speed", "SPEEDS", "DEFAULT_SPEED",
    "speed_settings",
]
