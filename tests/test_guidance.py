"""Classifier-free guidance: batched vs two forwards, guidance ranges, per-expert scales."""
from __future__ import annotations

import pytest
import torch

from spacetime_video.samplers import (cfg_combine, cfg_denoiser, flow_sigmas, sample, step_range_to_sigma_range,
                                      wan22_denoiser)


class CondModel:
    """A toy conditional denoiser: x0 = tanh(x·w + context·u) with context [B, L, C], recording
    every forward's batch size and context."""

    def __init__(self, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.w = torch.randn(4, 4, generator=g)
        self.u = torch.randn(3, 4, generator=g)
        self.forwards: list[tuple[int, float, torch.Tensor]] = []

    def __call__(self, x, sigma, context, **kwargs):
        assert sigma.shape == (x.shape[0],) and context.shape[0] == x.shape[0]
        self.forwards.append((x.shape[0], float(sigma[0]), context))
        return torch.tanh(x @ self.w * (1 - sigma[:, None]) + context.mean(1) @ self.u)


def _args(b=2, length=5):
    g = torch.Generator().manual_seed(1)
    return {"context": torch.randn(b, length, 3, generator=g)}, {"context": torch.zeros(b, length, 3)}


def test_cfg_combine_formula():
    c, u = torch.tensor([2.0, 1.0]), torch.tensor([1.0, 3.0])
    assert torch.allclose(cfg_combine(c, u, 5.0), u + 5.0 * (c - u))
    assert torch.equal(cfg_combine(c, u, 1.0), c)


def test_batched_and_two_forward_guidance_agree():
    cond, uncond = _args()
    x, sigma = torch.randn(2, 4), torch.full((2,), 0.7)
    m1, m2 = CondModel(), CondModel()
    batched = cfg_denoiser(m1, cond, uncond, 5.0, batched=True)(x, sigma)
    separate = cfg_denoiser(m2, cond, uncond, 5.0, batched=False)(x, sigma)
    torch.testing.assert_close(batched, separate, rtol=1e-6, atol=1e-6)
    assert [f[0] for f in m1.forwards] == [4]  # one forward of 2B
    assert [f[0] for f in m2.forwards] == [2, 2]
    x0c = m2(x, sigma, **cond)
    x0u = m2(x, sigma, **uncond)
    torch.testing.assert_close(batched, x0u + 5.0 * (x0c - x0u), rtol=1e-6, atol=1e-6)


def test_unbatchable_arguments_fall_back_to_two_forwards():
    cond, _ = _args(length=5)
    _, uncond = _args(length=7)  # different prompt lengths cannot be stacked
    m = CondModel()
    cfg_denoiser(m, cond, uncond, 3.0, batched=True)(torch.randn(2, 4), torch.full((2,), 0.5))
    assert [f[0] for f in m.forwards] == [2, 2]


def test_guidance_only_on_the_chosen_steps():
    cond, uncond = _args()
    sigmas = flow_sigmas(10, 5.0)
    lo, hi = step_range_to_sigma_range(sigmas, 2, 6)
    assert (lo, hi) == (float(sigmas[5]), float(sigmas[2]))
    m = CondModel()
    sample(cfg_denoiser(m, cond, uncond, 4.0, batched=True, sigma_range=(lo, hi)), torch.randn(2, 4), sigmas,
           solver="euler")
    batch_per_step = [f[0] for f in m.forwards]
    assert batch_per_step == [2, 2, 4, 4, 4, 4, 2, 2, 2, 2]  # steps 2..5 guided, the rest cond only
    with pytest.raises(ValueError, match="step range"):
        step_range_to_sigma_range(sigmas, 6, 2)


def test_scale_one_runs_the_conditional_model_only():
    cond, uncond = _args()
    m = CondModel()
    x, sigma = torch.randn(2, 4), torch.full((2,), 0.3)
    out = cfg_denoiser(m, cond, uncond, 1.0)(x, sigma)
    assert len(m.forwards) == 1 and torch.equal(m.forwards[0][2], cond["context"])
    assert torch.equal(out, m(x, sigma, **cond))


def test_each_expert_uses_its_own_model_and_scale():
    cond, uncond = _args()
    high, low = CondModel(seed=1), CondModel(seed=2)
    denoise = wan22_denoiser(high, low, cond, uncond, boundary=0.875, high_scale=4.0, low_scale=3.0)
    x = torch.randn(2, 4)
    for sigma, model, scale in [(0.95, high, 4.0), (0.875, high, 4.0), (0.8749, low, 3.0), (0.3, low, 3.0)]:
        s = torch.full((2,), sigma)
        ref = cfg_combine(model(x, s, **cond), model(x, s, **uncond), scale)
        torch.testing.assert_close(denoise(x, s), ref, rtol=1e-6, atol=1e-6)


def test_resume_noise_inverts_forward_process():
    from spacetime_video.samplers import resume_noise
    x0, n = torch.randn(1, 4, 2, 2, 2), torch.randn(1, 4, 2, 2, 2)
    xs = 0.3 * n + 0.7 * x0
    assert torch.allclose(resume_noise(xs, x0, 0.3), n, atol=1e-5)
    with pytest.raises(ValueError):
        resume_noise(xs, x0, 0.0)


def test_guidance_scale_outside_the_range_is_one():
    from spacetime_video.samplers import guidance_scale
    assert guidance_scale(0.5, 5.0) == 5.0
    assert guidance_scale(0.5, 5.0, (0.2, 0.6)) == 5.0 and guidance_scale(0.7, 5.0, (0.2, 0.6)) == 1.0


@pytest.mark.parametrize("boundary, experts", [(None, [0]), (0.875, [0, 1]), (0.0, [0]), (1.0, [1])])
def test_expert_stages_split_the_schedule_once(boundary, experts):
    from spacetime_video.samplers import WAN22_BOUNDARY, expert_stages, expert_switch_index
    sigmas = flow_sigmas(8, 12.0)
    stages = expert_stages(sigmas, boundary)
    assert [s.expert for s in stages] == experts
    assert torch.equal(torch.cat([stages[0].sigmas] + [s.sigmas[1:] for s in stages[1:]]), sigmas)
    if experts == [0, 1]:
        split = expert_switch_index(sigmas, boundary)
        assert 0 < split < 8 and stages[1].first_step == split and float(stages[1].sigmas[0]) == float(sigmas[split])
    assert stages[0].first_step == 0
    assert WAN22_BOUNDARY == {"t2v": 0.875, "i2v": 0.900}
