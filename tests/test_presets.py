"""Few-step presets against lightx2v's own sampling (ModelTC/LightX2V,
lightx2v/models/schedulers/wan/step_distill/scheduler.py and configs/distill/): the sigmas of
its step list, its update rules (re-noise for Wan 2.1, deterministic for Wan 2.2) and its
expert split, transcribed independently here; and the scheduler node's preset input."""
from __future__ import annotations

import pytest
import torch

from spacetime_video.samplers import (SOLVERS, WAN22_BOUNDARY, expert_switch_index, flow_sigmas, sample_euler,
                                      sample_lcm)
from spacetime_video.samplers.presets import FEW_STEP_PRESETS, preset_sigmas, timestep_sigmas

LIGHTX2V_CONFIG = {"denoising_step_list": [1000, 750, 500, 250], "sample_shift": 5, "enable_cfg": False,
                   "boundary_step_index": 2}  # wan21/wan_t2v_distill_lora_4step_cfg.json, wan22/wan_moe_*


def lightx2v_sigmas(step_list: list[int], shift: float) -> torch.Tensor:
    """WanStepDistillScheduler.set_denoising_timesteps, float32 as there (sigma_max 1, sigma_min 0)."""
    sigmas = torch.linspace(1.0, 0.0, 1000 + 1)[:-1]
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    return sigmas[[1000 - t for t in step_list]]


def lightx2v_loop(model, noise: torch.Tensor, sigmas: torch.Tensor, fresh: list[torch.Tensor] | None):
    """The step_post loops: x0 = x − σ·v; then fresh noise to the next σ (Wan 2.1, ``fresh``) or
    x0 + σ'·v (Wan 2.2, ``fresh`` None). ``model(x, σ) -> v`` (the flow the DiT predicts)."""
    x = noise
    for i, sigma in enumerate(sigmas.tolist()):
        v = model(x, sigma)
        x0 = x - sigma * v
        if i < len(sigmas) - 1:
            nxt = sigmas[i + 1].item()
            x = (1 - nxt) * x0 + nxt * fresh[i] if fresh is not None else x0 + nxt * v
        else:
            x = x0
    return x


def toy_velocity(target: torch.Tensor):
    """A smooth stand-in for the DiT: ``v(x, σ)``, not exactly the flow towards ``target``."""
    def v(x: torch.Tensor, sigma: float) -> torch.Tensor:
        return 0.7 * (x - (1 - sigma) * target) / max(sigma, 1e-3) + 0.3 * torch.tanh(x)
    return v


@pytest.mark.parametrize("name", list(FEW_STEP_PRESETS))
def test_preset_sigmas_are_lightx2v_s(name):
    preset = FEW_STEP_PRESETS[name]
    assert list(preset.timesteps) == LIGHTX2V_CONFIG["denoising_step_list"]
    assert preset.shift == LIGHTX2V_CONFIG["sample_shift"] and preset.cfg == 1.0 and preset.steps == 4
    assert preset.solver in SOLVERS
    sigmas = preset_sigmas(name)
    assert sigmas.dtype == torch.float32 and sigmas[-1] == 0 and sigmas.shape == (5,)
    torch.testing.assert_close(sigmas[:-1], lightx2v_sigmas(LIGHTX2V_CONFIG["denoising_step_list"], 5.0),
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(sigmas, torch.tensor([1.0, 15 / 16, 5 / 6, 5 / 8, 0.0]), rtol=0, atol=1e-7)
    # ComfyUI's own Wan 2.2 14B 4-step template (4 steps, 'simple' at shift 5, euler, cfg 1) samples the same
    torch.testing.assert_close(sigmas, flow_sigmas(4, 5.0, "comfy_simple"), rtol=0, atol=1e-6)


def test_wan21_preset_update_is_lightx2v_s_renoising():
    g = torch.Generator().manual_seed(0)
    noise, target = torch.randn(1, 4, 2, 3, 3, generator=g), torch.randn(1, 4, 2, 3, 3, generator=g)
    fresh = [torch.randn(noise.shape, generator=g) for _ in range(3)]
    velocity = toy_velocity(target)
    sigmas = preset_sigmas("lightx2v_4step")
    draws = iter(fresh)
    assert FEW_STEP_PRESETS["lightx2v_4step"].solver == "lcm"
    ours = sample_lcm(lambda x, s: x - float(s[0]) * velocity(x, float(s[0])), noise, sigmas,
                      noise_sampler=lambda s, s_next: next(draws))
    theirs = lightx2v_loop(velocity, noise, lightx2v_sigmas([1000, 750, 500, 250], 5.0), fresh)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_wan22_preset_update_is_lightx2v_s_deterministic_step_and_expert_split():
    g = torch.Generator().manual_seed(1)
    noise, target = torch.randn(1, 4, 2, 3, 3, generator=g), torch.randn(1, 4, 2, 3, 3, generator=g)
    velocity = toy_velocity(target)
    preset = FEW_STEP_PRESETS["lightx2v_wan22_4step"]
    assert SOLVERS[preset.solver] is sample_euler
    sigmas = preset_sigmas("lightx2v_wan22_4step")
    ours = sample_euler(lambda x, s: x - float(s[0]) * velocity(x, float(s[0])), noise, sigmas)
    theirs = lightx2v_loop(velocity, noise, lightx2v_sigmas([1000, 750, 500, 250], 5.0), None)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    for boundary in WAN22_BOUNDARY.values():  # high-noise expert for lightx2v's first 2 steps
        assert expert_switch_index(sigmas, boundary) == LIGHTX2V_CONFIG["boundary_step_index"]


def test_bad_timestep_lists_are_refused():
    for bad in ([], [750, 1000], [1000, 1000, 500], [1001, 500], [500, 0]):
        with pytest.raises(ValueError, match="strictly decreasing"):
            timestep_sigmas(bad, 5.0)
    with pytest.raises(ValueError, match="shift"):
        timestep_sigmas([1000, 500], 0.0)
    with pytest.raises(ValueError, match="lightx2v_4step"):
        preset_sigmas("turbo")


def test_scheduler_node_preset(comfy):
    from spacetime_video.nodes.custom_sampling import SpacetimeScheduler
    from spacetime_video.nodes.errors import SpacetimeNodeError

    node = SpacetimeScheduler.PREPARE_CLASS_CLONE({})
    plain = node.execute(steps=30, shift=8.0, spacing="wan", denoise=1.0).result[0]
    assert torch.equal(plain, flow_sigmas(30, 8.0))                             # without a preset: as before
    assert torch.equal(node.execute(steps=30, shift=8.0, spacing="wan", denoise=1.0, preset="none").result[0], plain)
    for name in FEW_STEP_PRESETS:                                               # steps, shift, spacing unused
        out = node.execute(steps=30, shift=8.0, spacing="comfy_simple", denoise=1.0, preset=name).result[0]
        assert torch.equal(out, preset_sigmas(name))
    tail = node.execute(steps=30, shift=8.0, spacing="wan", denoise=0.5, preset="lightx2v_4step").result[0]
    assert torch.equal(tail, preset_sigmas("lightx2v_4step")[-3:])             # the last 2 of 4 steps
    with pytest.raises(SpacetimeNodeError, match="SpacetimeScheduler: input 'denoise'"):
        node.execute(steps=30, shift=8.0, spacing="wan", denoise=0.1, preset="lightx2v_4step")
    problem = SpacetimeScheduler.validate_inputs(steps=4, shift=5.0, spacing="wan", denoise=1.0, preset="turbo")
    assert isinstance(problem, str) and "input 'preset'" in problem and "lightx2v_4step" in problem, problem
