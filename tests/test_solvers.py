"""Solvers on an analytic denoiser: step-by-step parity with diffusers / ComfyUI / plain
references, order of accuracy, partial denoise, the expert switch, callbacks and determinism."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from spacetime_video.samplers import (SOLVERS, expert_switch_index, flow_sigmas, sample, sample_dpmpp_2m,
                                      sample_euler, sample_lcm, sample_unipc, seeded_noise_sampler,
                                      two_expert_denoiser)


class GaussianMixture:
    """Exact denoiser E[x0 | x_σ] for x0 from an isotropic Gaussian mixture and
    x_σ = (1 − σ)·x0 + σ·ε: a nonlinear x0(x, σ) with a known ODE solution (in float64)."""

    def __init__(self, dim: int = 6, k: int = 3, dtype=torch.float64, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.means = (torch.randn(k, dim, generator=g) * 1.5).to(dtype)  # (K, D)
        self.stds = (0.2 + torch.rand(k, generator=g) * 0.6).to(dtype)  # (K,)
        self.logw = torch.log_softmax(torch.randn(k, generator=g), 0).to(dtype)  # (K,)
        self.calls: list[float] = []

    def __call__(self, x: torch.Tensor, sigma, **kwargs) -> torch.Tensor:
        s = float(torch.as_tensor(sigma).reshape(-1)[0])
        self.calls.append(s)
        a = 1.0 - s
        xf = x.reshape(x.shape[0], -1).to(self.means.dtype)  # (B, D)
        var = a * a * self.stds ** 2 + s * s  # (K,) marginal variance of x_σ per component
        diff = xf[:, None, :] - a * self.means[None]  # (B, K, D)
        logp = self.logw - 0.5 * (diff ** 2).sum(-1) / var - 0.5 * xf.shape[1] * torch.log(var)  # (B, K)
        post = torch.softmax(logp, dim=1)  # (B, K)
        x0_k = self.means[None] + (a * self.stds ** 2 / var)[None, :, None] * diff  # (B, K, D)
        return (post[:, :, None] * x0_k).sum(1).reshape(x.shape).to(x.dtype)


def _noise(shape=(2, 6), dtype=torch.float32, seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


# ---------------------------------------------------------------- parity with references

@pytest.mark.parametrize("order", [1, 2, 3])
@pytest.mark.parametrize("steps, shift, spacing", [(10, 5.0, "wan"), (25, 3.0, "wan"), (8, 12.0, "comfy_simple"),
                                                    (6, 1.0, "diffusers_unipc")])
def test_unipc_equals_diffusers_step_by_step(order, steps, shift, spacing):
    from diffusers import UniPCMultistepScheduler

    model = GaussianMixture(dtype=torch.float32)
    sigmas = flow_sigmas(steps, shift, spacing)
    noise = _noise()
    ours_x0 = []
    ours = sample_unipc(model, noise * sigmas[0], sigmas, order=order, callback=lambda d: ours_x0.append(d["denoised"]))

    sch = UniPCMultistepScheduler(solver_order=order, prediction_type="flow_prediction", use_flow_sigmas=True,
                                  flow_shift=1.0, solver_type="bh2", predict_x0=True, lower_order_final=True)
    sch.set_timesteps(sigmas=sigmas[:-1].double().numpy())  # flow_shift=1: takes our sigmas as they are
    sch.set_begin_index(0)
    x = noise * sigmas[0]
    for i, t in enumerate(sch.timesteps):
        s = sch.sigmas[i]
        x0 = model(x, s)
        # the model sees the same (predicted, not yet corrected) sample at every step
        torch.testing.assert_close(x0, ours_x0[i], rtol=0, atol=1e-5)
        x = sch.step((x - x0) / s, t, x).prev_sample  # flow prediction: v = (x − x0)/σ
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-5)


@pytest.mark.parametrize("steps, shift, spacing", [(10, 5.0, "wan"), (20, 3.0, "wan_dpm"), (7, 8.0, "comfy_simple")])
def test_dpmpp_2m_equals_diffusers_dpmsolver_in_flow_mode(steps, shift, spacing):
    from diffusers import DPMSolverMultistepScheduler

    model = GaussianMixture(dtype=torch.float32)
    sigmas = flow_sigmas(steps, shift, spacing)
    noise = _noise()
    ours = sample_dpmpp_2m(model, noise * sigmas[0], sigmas)

    sch = DPMSolverMultistepScheduler(use_flow_sigmas=True, flow_shift=1.0, prediction_type="flow_prediction",
                                      algorithm_type="dpmsolver++", solver_order=2, solver_type="midpoint",
                                      lower_order_final=True, final_sigmas_type="zero")
    sch.set_timesteps(steps)
    sch.sigmas = sigmas.clone()  # this scheduler takes no custom sigmas: use ours, same length
    sch.set_begin_index(0)
    x = noise * sigmas[0]
    for i, t in enumerate(sch.timesteps):
        s = sigmas[i]
        x0 = model(x, s)
        # σ = 1 (wan_dpm): the velocity x − x0 over σ is fine; diffusers' λ = −inf is the limit we take
        x = sch.step((x - x0) / s, t, x).prev_sample
    assert torch.isfinite(ours).all()
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-5)


def _plain_euler(model, x, sigmas):
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = (x - model(x, s)) / s
        x = x + (s_next - s) * v
    return x


def test_euler_equals_plain_reference_and_comfyui(comfy):
    from comfy.k_diffusion.sampling import sample_euler as comfy_euler

    model = GaussianMixture(dtype=torch.float32)
    sigmas = flow_sigmas(12, 5.0)
    x = _noise() * sigmas[0]
    ours = sample_euler(model, x, sigmas)
    torch.testing.assert_close(ours, _plain_euler(model, x, sigmas), rtol=0, atol=1e-6)
    # ComfyUI runs k-diffusion's Euler directly in the flow space of CONST models
    ref = comfy_euler(model, x, sigmas, disable=True)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)


def test_lcm_predicts_then_renoises_with_the_seeded_noise():
    model = GaussianMixture(dtype=torch.float32)
    sigmas = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])
    x = _noise()
    ours = sample_lcm(model, x, sigmas, extra_args={"seed": 7})
    draw = seeded_noise_sampler(x, seed=7)
    ref = x
    for i in range(4):
        x0 = model(ref, float(sigmas[i]))
        s_next = float(sigmas[i + 1])
        ref = x0 if s_next == 0 else (1 - s_next) * x0 + s_next * draw(0, 0)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    assert not torch.equal(ours, sample_lcm(model, x, sigmas, extra_args={"seed": 8}))
    with pytest.raises(ValueError, match="seed"):
        sample_lcm(model, x, sigmas)


# ---------------------------------------------------------------- order of accuracy

class DiagonalGaussian:
    """x0 ~ N(m, diag(s²)): the exact denoiser and the exact flow-ODE trajectory, per dimension
    x_σ = (1 − σ)·m + r(σ)·z with r(σ) = sqrt((1 − σ)²s² + σ²) and z constant along it."""

    def __init__(self, dim: int = 6, seed: int = 0):
        self.m = torch.randn(dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        self.s = torch.linspace(0.1, 2.0, dim, dtype=torch.float64)

    def __call__(self, x, sigma, **kwargs):
        sg = float(torch.as_tensor(sigma).reshape(-1)[0])
        a = 1.0 - sg
        return self.m + a * self.s ** 2 / (a * a * self.s ** 2 + sg * sg) * (x - a * self.m)

    def flow(self, x, s0: float, s1: float):
        r = lambda sg: torch.sqrt((1 - sg) ** 2 * self.s ** 2 + sg ** 2)  # noqa: E731
        return (1 - s1) * self.m + r(s1) * (x - (1 - s0) * self.m) / r(s0)


SOLVER_CASES = [("euler", {}), ("dpmpp_2m", {}), ("unipc", {"order": 1}), ("unipc", {"order": 2}),
                ("unipc", {"order": 3})]


def test_order_of_accuracy_on_the_analytic_ode():
    """Global error at σ = 0.05 (read from the callback) vs the exact ODE solution, on grids
    uniform in σ from 0.95. Fitted slopes: Euler 1, DPM++(2M) 2, UniPC-p p + 1 (the corrector
    adds one order: Zhao et al. 2023, Thm 3.3); measured 1.02 / 1.87 / 2.06, 2.78, 3.87."""
    model = DiagonalGaussian()
    noise = torch.randn(8, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    steps = [16, 32, 64]
    slope = {}
    for name, opts in SOLVER_CASES:
        errors = []
        for n in steps:
            sigmas = torch.cat([torch.linspace(0.95, 0.05, n, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
            seen = []
            SOLVERS[name](model, noise * 0.95, sigmas, callback=seen.append, **opts)
            errors.append(float((seen[-1]["x"] - model.flow(noise * 0.95, 0.95, 0.05)).abs().max()))
        slope[name + str(opts.get("order", ""))] = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert 0.9 < slope["euler"] < 1.15, slope
    assert 1.7 < slope["dpmpp_2m"] < 2.3, slope
    assert 1.8 < slope["unipc1"] < 2.3, slope
    assert 2.5 < slope["unipc2"] < 3.3, slope
    assert 3.3 < slope["unipc3"], slope


def test_whole_wan_schedule_converges_faster_than_euler():
    """To σ = 0 on Wan's schedule (shift 3), against the exact endpoint x0."""
    model = DiagonalGaussian()
    noise = torch.randn(8, 6, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    sigmas = flow_sigmas(20, 3.0).double()
    x = noise * sigmas[0]
    exact = model.flow(x, float(sigmas[0]), 0.0)
    err = {name + str(o.get("order", "")): float((SOLVERS[name](model, x, sigmas, **o) - exact).abs().max())
           for name, o in SOLVER_CASES}
    for k in ("dpmpp_2m", "unipc2", "unipc3"):
        assert err[k] < 0.5 * err["euler"], err


# ---------------------------------------------------------------- partial denoise, experts, loop

def test_partial_denoise_starts_from_the_noised_clean_latent_and_runs_the_tail():
    model = GaussianMixture(dtype=torch.float32)
    clean, noise = _noise(seed=3), _noise(seed=4)
    full = flow_sigmas(20, 5.0)  # int(8 / 0.4) = 20 steps, last 9 sigmas kept
    sigmas = flow_sigmas(8, 5.0, denoise=0.4)
    assert torch.equal(sigmas, full[12:])
    seen = []
    sample(model, noise, sigmas, solver="euler", x_start=clean, callback=seen.append)
    s0 = float(sigmas[0])
    torch.testing.assert_close(seen[0]["x"], s0 * noise + (1 - s0) * clean, rtol=0, atol=1e-7)
    assert model.calls == pytest.approx([float(s) for s in full[12:-1]])
    seen.clear()
    sample(model, noise, flow_sigmas(8, 5.0), solver="euler", callback=seen.append)
    assert torch.equal(seen[0]["x"], noise)  # text-to-video starts from the noise, as Wan's code


@pytest.mark.parametrize("steps, shift, boundary", [(40, 12.0, 0.875), (40, 5.0, 0.9), (50, 5.0, 0.875),
                                                    (30, 8.0, 0.9), (4, 5.0, 0.875)])
def test_expert_switch_step_matches_official_integer_timestep_rule(steps, shift, boundary):
    from test_schedules import wan_unipc_reference

    # official: the scheduler's int64 timesteps (1000·σ of the float64 shifted sigmas, truncated);
    # high-noise expert while t >= boundary·1000 (wan/text2video.py: `t.item() >= boundary`)
    sig64 = np.linspace(np.float32(1 - 1 / 1000).item(), 0, steps + 1)[:-1]
    sig64 = shift * sig64 / (1 + (shift - 1) * sig64)
    t_official = (sig64 * 1000).astype(np.int64)
    low = t_official < boundary * 1000
    expected = int(np.argmax(low)) if low.any() else steps
    assert 0 < expected < steps or steps == 4
    sigmas = flow_sigmas(steps, shift)
    np.testing.assert_allclose(sigmas[:-1].numpy(), sig64, atol=1e-6)
    np.testing.assert_allclose(sigmas.numpy(), wan_unipc_reference(steps, shift), atol=1e-6)
    assert expert_switch_index(sigmas, boundary) == expected

    used = []
    high = lambda x, s, **k: (used.append("high"), x * 0.0)[1]  # noqa: E731
    low = lambda x, s, **k: (used.append("low"), x * 0.0)[1]  # noqa: E731
    sample(two_expert_denoiser(high, low, boundary), _noise(), sigmas, solver="unipc")
    assert used == ["high"] * expected + ["low"] * (steps - expected)


def test_callback_exception_stops_the_loop_cleanly():
    model = GaussianMixture(dtype=torch.float32)

    class Cancelled(Exception):
        pass

    def cancel_at_3(d):
        if d["i"] == 3:
            raise Cancelled

    for name in SOLVERS:
        model.calls.clear()
        with pytest.raises(Cancelled):
            sample(model, _noise(), flow_sigmas(10, 5.0), solver=name, callback=cancel_at_3, seed=0)
        assert len(model.calls) == 4, name
    # and the next run is unaffected (no state kept between runs)
    a = sample(model, _noise(), flow_sigmas(10, 5.0))
    b = sample(model, _noise(), flow_sigmas(10, 5.0))
    assert torch.equal(a, b)


def test_callback_reports_every_step_like_k_diffusion():
    model = GaussianMixture(dtype=torch.float32)
    sigmas = flow_sigmas(6, 5.0)
    for name in SOLVERS:
        seen = []
        out = sample(model, _noise(), sigmas, solver=name, callback=seen.append, seed=1)
        assert [d["i"] for d in seen] == list(range(6))
        assert [d["sigma"] for d in seen] == pytest.approx(sigmas[:-1].tolist())
        assert [d["sigma_next"] for d in seen] == pytest.approx(sigmas[1:].tolist())
        assert torch.equal(seen[-1]["denoised"], out), name  # the step to σ = 0 returns x0


def test_sample_is_deterministic_and_checks_its_inputs():
    model = GaussianMixture(dtype=torch.float32)
    sigmas = flow_sigmas(8, 5.0)
    for name in SOLVERS:
        a = sample(model, _noise(), sigmas, solver=name, seed=5)
        b = sample(model, _noise(), sigmas, solver=name, seed=5)
        assert torch.equal(a, b) and torch.isfinite(a).all(), name
    with pytest.raises(ValueError, match="unknown solver"):
        sample(model, _noise(), sigmas, solver="heun")
    with pytest.raises(ValueError, match="same shape"):
        sample(model, _noise(), sigmas, x_start=torch.zeros(3, 6))
    with pytest.raises(ValueError, match="order"):
        sample(model, _noise(), sigmas, order=4)
    with pytest.raises(ValueError, match="strictly decreasing"):
        sample(model, _noise(), torch.tensor([1.0, 0.5, 0.5, 0.0]), solver="dpmpp_2m")


def test_samples_land_on_the_data_distribution():
    """Sanity far from any reference: 20 UniPC steps put samples near mixture modes."""
    model = GaussianMixture(dim=2, k=2, dtype=torch.float32, seed=2)
    x = sample(model, _noise((256, 2), seed=9), flow_sigmas(20, 3.0))
    dist = torch.cdist(x, model.means.float()).min(dim=1).values  # (256,)
    assert float(dist.median()) < 3 * float(model.stds.max()) * math.sqrt(2)


def test_split_schedules_chain_like_the_whole_one():
    """ComfyUI's SplitSigmas gives a high-noise part that stops above 0 and a low-noise rest; the
    solvers run either part (k-diffusion semantics). Euler chained over the split is the whole run;
    the multistep solvers restart their history at the split, so they only agree closely."""
    model = GaussianMixture(dtype=torch.float64)
    sigmas = flow_sigmas(20, 5.0).double()
    x = _noise(dtype=torch.float64) * sigmas[0]
    for name in ("euler", "unipc", "dpmpp_2m"):
        whole = SOLVERS[name](model, x, sigmas)
        mid = SOLVERS[name](model, x, sigmas[:9])
        assert torch.isfinite(mid).all()
        chained = SOLVERS[name](model, mid, sigmas[8:])
        tol = 1e-12 if name == "euler" else 2e-3  # measured 1.8e-4 (UniPC), 1.9e-4 (DPM++)
        torch.testing.assert_close(chained, whole, rtol=0, atol=tol)
    with pytest.raises(ValueError, match="end in 0"):
        sample(model, _noise(dtype=torch.float64), sigmas[:9])
