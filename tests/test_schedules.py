"""Schedules against their references: Wan's official formula, diffusers' schedulers, ComfyUI's."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from spacetime_video.samplers import (SPACINGS, flow_sigmas, resolution_shift, shift_sigma, truncate_for_denoise,
                                      validate_sigmas)

STEPS = [1, 2, 3, 4, 7, 10, 20, 30, 40, 50]
SHIFTS = [1.0, 3.0, 5.0, 8.0, 12.0, 16.0]


def wan_unipc_reference(steps: int, shift: float) -> np.ndarray:
    """An independent transcription of Wan's FlowUniPCMultistepScheduler (wan/utils/
    fm_solvers_unipc.py; identical in Wan2.1 and Wan2.2) as the official pipelines build it:
    ``__init__(num_train_timesteps=1000, shift=1)`` then ``set_timesteps(steps, shift=shift)``."""
    alphas = np.linspace(1, 1 / 1000, 1000)[::-1].copy()
    table = torch.from_numpy(1.0 - alphas).to(torch.float32)  # shift=1: no shift in __init__
    sigma_max, sigma_min = table[0].item(), table[-1].item()
    sig = np.linspace(sigma_max, sigma_min, steps + 1).copy()[:-1]
    sig = shift * sig / (1 + (shift - 1) * sig)
    return np.concatenate([sig, [0]]).astype(np.float32)


def wan_dpm_reference(steps: int, shift: float) -> np.ndarray:
    """Wan's get_sampling_sigmas (wan/utils/fm_solvers.py) + the appended final 0."""
    sig = np.linspace(1, 0, steps + 1)[:steps]
    sig = shift * sig / (1 + (shift - 1) * sig)
    return np.concatenate([sig, [0]]).astype(np.float32)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_wan_spacing_equals_official_formula(steps, shift):
    ours = flow_sigmas(steps, shift)
    assert ours.dtype == torch.float32 and ours.shape == (steps + 1,) and ours[-1] == 0
    np.testing.assert_allclose(ours.numpy(), wan_unipc_reference(steps, shift), rtol=0, atol=1e-6)
    np.testing.assert_allclose(flow_sigmas(steps, shift, "wan_dpm").numpy(), wan_dpm_reference(steps, shift),
                               rtol=0, atol=1e-6)


@pytest.mark.parametrize("shift", [1.0, 5.0, 12.0])
@pytest.mark.parametrize("steps", [4, 30, 50])
def test_wan_spacing_equals_diffusers_dpmsolver_flow_schedule(steps, shift):
    """A second, independent source: diffusers' DPMSolverMultistepScheduler with flow sigmas builds
    1 − linspace(1, 1/1000, steps + 1), flipped, shifted, last dropped: the same linspace from
    0.999 to 0 as Wan's UniPC (Wan rounds 0.999 to float32 first: < 1e-7 apart)."""
    from diffusers import DPMSolverMultistepScheduler

    sch = DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction")
    sch.set_timesteps(steps)
    np.testing.assert_allclose(flow_sigmas(steps, shift).numpy(), sch.sigmas.numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("shift", SHIFTS)
@pytest.mark.parametrize("steps", STEPS)
def test_diffusers_spacings_equal_diffusers_schedulers(steps, shift):
    from diffusers import FlowMatchEulerDiscreteScheduler, UniPCMultistepScheduler

    unipc = UniPCMultistepScheduler(use_flow_sigmas=True, flow_shift=shift, prediction_type="flow_prediction")
    unipc.set_timesteps(steps)
    np.testing.assert_allclose(flow_sigmas(steps, shift, "diffusers_unipc").numpy(), unipc.sigmas.numpy(),
                               rtol=0, atol=1e-6)
    euler = FlowMatchEulerDiscreteScheduler(shift=shift)
    euler.set_timesteps(steps)
    np.testing.assert_allclose(flow_sigmas(steps, shift, "diffusers_euler").numpy(), euler.sigmas.numpy(),
                               rtol=0, atol=1e-6)


def _comfy_flow_sampling(comfy, shift):
    import comfy.model_sampling

    ms = comfy.model_sampling.ModelSamplingDiscreteFlow()
    ms.set_parameters(shift=shift)
    return ms


@pytest.mark.parametrize("shift", SHIFTS)
def test_comfy_simple_equals_comfyui(comfy, shift):
    import comfy.samplers

    ms = _comfy_flow_sampling(comfy, shift)
    for steps in STEPS + [33, 64, 333]:
        ref = comfy.samplers.simple_scheduler(ms, steps)
        np.testing.assert_allclose(flow_sigmas(steps, shift, "comfy_simple").numpy(), ref.numpy(), rtol=0, atol=1e-6)


class _FakeModel:
    """The one method BasicScheduler calls on a MODEL."""

    def __init__(self, ms):
        self.ms = ms

    def get_model_object(self, name):
        assert name == "model_sampling"
        return self.ms


@pytest.mark.parametrize("denoise", [1.0, 0.9, 0.75, 0.5, 0.33, 0.1])
@pytest.mark.parametrize("steps", [1, 4, 10, 20, 30])
def test_partial_denoise_follows_comfyui_basic_scheduler(comfy, steps, denoise):
    from comfy_extras.nodes_custom_sampler import BasicScheduler

    ref = BasicScheduler.execute(_FakeModel(_comfy_flow_sampling(comfy, 5.0)), "simple", steps, denoise).args[0]
    ours = flow_sigmas(steps, 5.0, "comfy_simple", denoise=denoise)
    assert ours.shape == (steps + 1,)  # still `steps` model calls
    np.testing.assert_allclose(ours.numpy(), ref.numpy(), rtol=0, atol=1e-6)


def test_partial_denoise_keeps_exact_indices():
    # steps=10, denoise=0.4 -> the schedule of int(10/0.4) = 25 steps, its last 11 values
    full = flow_sigmas(25, 5.0)
    part = flow_sigmas(10, 5.0, denoise=0.4)
    assert torch.equal(part, full[15:])
    # truncating an existing 20-step schedule at 0.35 keeps round(7) steps: indices 13..20
    sig = flow_sigmas(20, 5.0)
    assert torch.equal(truncate_for_denoise(sig, 0.35), sig[13:])
    assert torch.equal(truncate_for_denoise(sig, 1.0), sig)


@pytest.mark.parametrize("denoise", [1.0, 0.8, 0.5, 0.26, 0.1])
def test_truncate_for_denoise_equals_comfyui_split_sigmas_denoise(comfy, denoise):
    from comfy_extras.nodes_custom_sampler import SplitSigmasDenoise

    sig = flow_sigmas(30, 8.0)
    _, low = SplitSigmasDenoise.execute(sig, denoise).args
    assert torch.equal(truncate_for_denoise(sig, denoise), low)


def test_any_comfyui_flow_schedule_is_accepted(comfy):
    import comfy.samplers

    ms = _comfy_flow_sampling(comfy, 5.0)
    for name in ("normal", "simple", "sgm_uniform", "beta", "linear_quadratic", "ddim_uniform"):
        sig = comfy.samplers.calculate_sigmas(ms, name, 12)
        assert validate_sigmas(sig) is sig


@pytest.mark.parametrize("bad, match", [
    (torch.zeros(3, 2), "1-D"),
    (torch.tensor([0.0]), "at least 2"),
    (torch.tensor([0.5, 0.8, 0.0]), "non-increasing"),
    (torch.tensor([0.9, 0.5, 0.1]), "end in 0"),
    (torch.tensor([14.6, 1.0, 0.0]), r"\[0, 1\]"),
    (torch.tensor([1.0, float("nan"), 0.0]), "NaN"),
])
def test_bad_sigmas_are_refused_with_a_message(bad, match):
    with pytest.raises(ValueError, match=match):
        validate_sigmas(bad)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="steps"):
        flow_sigmas(0, 5.0)
    with pytest.raises(ValueError, match="shift"):
        flow_sigmas(10, 0.0)
    with pytest.raises(ValueError, match="spacing"):
        flow_sigmas(10, 5.0, "karras")
    with pytest.raises(ValueError, match="denoise"):
        flow_sigmas(10, 5.0, denoise=0.0)
    with pytest.raises(ValueError, match="keeps no step"):
        truncate_for_denoise(flow_sigmas(4, 5.0), 0.1)


def test_every_spacing_is_a_valid_decreasing_schedule():
    for spacing in SPACINGS:
        for steps in (1, 2, 5, 50):
            sig = validate_sigmas(flow_sigmas(steps, 5.0, spacing))
            assert (sig[1:] < sig[:-1]).all(), spacing
            assert 0.99 < float(sig[0]) <= 1.0


def test_shift_formula_and_resolution_shift_match_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    assert torch.equal(shift_sigma(t, 1.0), t)
    assert torch.allclose(shift_sigma(t, 3.0), 3 * t / (1 + 2 * t))
    sch = FlowMatchEulerDiscreteScheduler(use_dynamic_shifting=True)
    for tokens in (256, 1024, 4096, 32760):
        mu = calculate_shift(tokens)
        s = resolution_shift(tokens)
        assert s == pytest.approx(np.exp(mu), rel=1e-12)
        np.testing.assert_allclose(shift_sigma(t.numpy(), s), sch.time_shift(mu, 1.0, t.numpy()), rtol=1e-12)
