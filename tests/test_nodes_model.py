"""Our DiT as a ComfyUI MODEL (in-process): native sampling machinery drives it and agrees with
our own sampling loop; per-token timesteps for TI2V; the Linear re-typing keeps the outputs."""
from __future__ import annotations

import pytest
import torch

from dit_helpers import TINY, random_state_dict


@pytest.fixture(scope="module")
def cm(comfy):
    from spacetime_video.nodes import comfy_model
    return comfy_model


def _dit(kind="t2v", seed=0):
    from spacetime_video.model.dit import load_dit
    return load_dit(random_state_dict(TINY[kind], seed), config=TINY[kind])


def test_wrapped_model_matches_own_sampling_loop(cm):
    import comfy.sample
    import comfy.samplers
    from spacetime_video import samplers

    dit = _dit()
    ctx = torch.randn(1, 7, TINY["t2v"].text_dim)
    noise = torch.randn(1, 16, 2, 4, 4, generator=torch.Generator().manual_seed(3))
    sigmas = samplers.flow_sigmas(4, 5.0)
    # ours: normalised latent space, denoiser x0 = x - sigma * v
    fmt = cm.latent_format_for(16)
    ref = samplers.sample(lambda x, s, **_: x - s.view(-1, 1, 1, 1, 1) * dit(x, s * 1000, ctx), noise, sigmas, "euler")
    ref = fmt.process_out(ref)

    model = cm.wrap_dit(dit, shift=5.0)
    assert cm.spacetime_dit(model) is dit
    sampler = comfy.samplers.KSAMPLER(samplers.SOLVERS["euler"])
    out = comfy.sample.sample_custom(model, noise, 1.0, sampler, sigmas, [[ctx, {}]], [[ctx, {}]],
                                     torch.zeros_like(noise), seed=0)
    assert out.shape == noise.shape
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4), (out - ref).abs().max()


def test_cast_linear_path_equals_plain_path(cm):
    dit = _dit(seed=1)
    x = torch.randn(1, 16, 2, 4, 4)
    ctx = torch.randn(1, 5, TINY["t2v"].text_dim)
    plain = dit(x, torch.tensor([500.0]), ctx)
    cm.make_castable(dit)
    for m in dit.modules():
        if isinstance(m, cm.CastLinear):
            m.comfy_cast_weights = True
    assert torch.allclose(dit(x, torch.tensor([500.0]), ctx), plain, atol=1e-5)


def test_ti2v_known_frames_get_timestep_zero_and_stay(cm):
    import comfy.sample
    import comfy.samplers
    from spacetime_video import samplers

    dit = _dit("ti2v")
    seen = []
    real_forward = dit.forward
    dit.forward = lambda x, t, c, clip_fea=None: (seen.append(t.clone()), real_forward(x, t, c, clip_fea))[1]
    model = cm.wrap_dit(dit, shift=5.0)
    known = torch.randn(1, 48, 3, 4, 4)
    mask = torch.ones(1, 1, 3, 4, 4)
    mask[:, :, 0] = 0
    ctx = torch.randn(1, 6, TINY["ti2v"].text_dim)
    noise = torch.randn_like(known)
    out = comfy.sample.sample_custom(model, noise, 1.0, comfy.samplers.KSAMPLER(samplers.SOLVERS["euler"]),
                                     samplers.flow_sigmas(3, 5.0), [[ctx, {}]], [[ctx, {}]], known,
                                     noise_mask=mask, seed=0)
    assert seen and all(t.shape == (1, 3 * 2 * 2) for t in seen)
    assert all(t[0, :4].eq(0).all() and t[0, 4:].gt(0).all() for t in seen)
    assert torch.allclose(out[:, :, 0], known[:, :, 0], atol=1e-5)   # the known frame is kept
    assert not torch.allclose(out[:, :, 1], known[:, :, 1], atol=1e-2)
