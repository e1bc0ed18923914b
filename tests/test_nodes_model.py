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
    # started like ComfyUI's KSAMPLER does: sigma0 * noise (+ (1 - sigma0) * an empty latent)
    ref = samplers.SOLVERS["euler"](lambda x, s, **_: x - s.view(-1, 1, 1, 1, 1) * dit(x, s * 1000, ctx),
                                    noise * sigmas[0], sigmas)
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
    model = cm.wrap_dit(dit, shift=5.0)
    real_forward = dit.forward
    dit.forward = lambda x, t, **kw: (seen.append(t.clone()), real_forward(x, t, **kw))[1]
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


def test_native_ksampler_drives_our_model(cm):
    import comfy.sample
    dit = _dit(seed=5)
    model = cm.wrap_dit(dit, shift=5.0)
    ctx = torch.randn(1, 7, TINY["t2v"].text_dim)
    latent = torch.zeros(1, 16, 2, 4, 4)
    noise = comfy.sample.prepare_noise(latent, 0)
    out = comfy.sample.sample(model, noise, 3, 2.0, "uni_pc", "simple", [[ctx, {}]], [[torch.zeros_like(ctx), {}]],
                              latent, seed=0)
    assert out.shape == latent.shape and torch.isfinite(out).all() and out.abs().sum() > 0


def test_native_unet_loader_model_drives_our_sampler(cm):
    """A native ComfyUI Wan MODEL (UNETLoader's path) through SpacetimeSampler, with native
    CONDITIONING, and our model sampled the same way gives the same result on the same weights."""
    import comfy.sd
    from spacetime_video.model.dit import load_dit
    from spacetime_video.model.dit.config import tiny_config
    from spacetime_video.nodes.sampler import SpacetimeSampler

    cfg = tiny_config(text_dim=4096, num_heads=1, text_len=512, freq_dim=256, ffn_dim=256)  # UNETLoader-detectable
    sd = random_state_dict(cfg, 7)
    native = comfy.sd.load_diffusion_model_state_dict({k: v.clone() for k, v in sd.items()},
                                                      model_options={"dtype": torch.float32})
    ours = cm.wrap_dit(load_dit(sd, config=cfg), shift=8.0)  # native WAN21 default shift is 8
    # 512 tokens, zero-padded as Wan trains (ComfyUI's WanModel does not pad shorter contexts)
    cond = [[torch.nn.functional.pad(torch.randn(1, 9, 4096), (0, 0, 0, 503)), {}]]
    latent = {"samples": torch.zeros(1, 16, 2, 4, 4)}
    args = (cond, cond, latent, 3, 3, 1.0, "euler", 8.0, 1.0)
    a = SpacetimeSampler.execute(native, *args).result[0]["samples"]
    b = SpacetimeSampler.execute(ours, *args).result[0]["samples"]
    assert torch.isfinite(a).all() and a.abs().sum() > 0
    assert torch.allclose(a, b, atol=1e-3, rtol=1e-3), (a - b).abs().max()


def test_fp8_storage_runs_close_to_full_precision(cm):
    from spacetime_video.model.dit import load_dit
    dit = _dit(seed=6)
    x, ctx = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 5, TINY["t2v"].text_dim)
    ref = dit(x, torch.tensor([700.0]), ctx)
    dit = load_dit(random_state_dict(TINY["t2v"], 6), dtype=torch.float8_e4m3fn, config=TINY["t2v"])
    assert dit.blocks[0].ffn[0].weight.dtype == torch.float8_e4m3fn
    assert dit.blocks[0].modulation.dtype == torch.float32 and dit.patch_embedding.weight.dtype == torch.float32
    model = cm.wrap_dit(dit)
    out = cm.spacetime_dit(model)(x, torch.tensor([700.0]), ctx)
    assert (out - ref).norm() / ref.norm() < 0.1


def test_model_management_loads_partially_and_unloads(cm):
    """ComfyUI's low-VRAM partial load (weights cast per layer) gives the same result, and the
    model can be unloaded again: the path a GPU with too little memory takes."""
    import comfy.model_management as mm
    import comfy.sample
    import comfy.samplers
    from spacetime_video import samplers

    model = cm.wrap_dit(_dit(seed=8))
    assert model.model_size() > 0
    ctx = torch.randn(1, 5, TINY["t2v"].text_dim)
    noise = torch.randn(1, 16, 2, 4, 4)

    def sample():
        return comfy.sample.sample_custom(model, noise, 2.0, comfy.samplers.KSAMPLER(samplers.SOLVERS["euler"]),
                                          samplers.flow_sigmas(2, 5.0), [[ctx, {}]], [[ctx * 0, {}]],
                                          torch.zeros_like(noise), seed=0)

    full = sample()
    mm.unload_all_models()
    model.load(torch.device("cpu"), lowvram_model_memory=64 * 1024)  # most layers "offloaded"
    casting = [m for m in model.model.modules() if isinstance(m, cm.CastLinear) and m.comfy_cast_weights]
    assert casting, "no layer was set to cast its weights"
    assert torch.allclose(_run(model, sample), full, atol=1e-5)
    model.detach()
    mm.unload_all_models()
    assert not any(lm.model is model for lm in mm.current_loaded_models)


def _run(model, fn):
    import comfy.model_management as mm
    real = mm.load_models_gpu
    mm.load_models_gpu = lambda *a, **k: None  # keep the partial load made by the test
    try:
        return fn()
    finally:
        mm.load_models_gpu = real


def test_native_lora_loader_patches_our_model(cm):
    """Parameters keep the official names under diffusion_model.: a LoRA in ComfyUI's generic
    format applies through comfy.sd.load_lora_for_models (what LoraLoaderModelOnly calls)."""
    import comfy.sd
    dit = _dit(seed=9)
    model = cm.wrap_dit(dit)
    w = dit.blocks[0].ffn[0].weight
    assert "diffusion_model.blocks.0.ffn.0.weight" in model.model.state_dict()
    up, down = torch.randn(w.shape[0], 2), torch.randn(2, w.shape[1])
    lora = {"diffusion_model.blocks.0.ffn.0.lora_up.weight": up,
            "diffusion_model.blocks.0.ffn.0.lora_down.weight": down}
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 0.5, 0.0)
    before = w.detach().clone()
    patched.patch_model()
    try:
        assert torch.allclose(cm.spacetime_dit(patched).blocks[0].ffn[0].weight, before + 0.5 * up @ down, atol=1e-5)
    finally:
        patched.unpatch_model()
    assert torch.equal(w, before)


def test_lora_applies_in_low_vram_mode_too(cm):
    """Partially loaded, a LoRA is applied per use (weight_function), also on the DiT's fused
    QKV path that reads the weights directly: same result as a fully loaded patched model."""
    import comfy.model_management as mm
    import comfy.sd
    dit = _dit(seed=10)
    model = cm.wrap_dit(dit)
    q = dit.blocks[0].self_attn.q.weight
    lora = {"diffusion_model.blocks.0.self_attn.q.lora_up.weight": torch.randn(q.shape[0], 2),
            "diffusion_model.blocks.0.self_attn.q.lora_down.weight": torch.randn(2, q.shape[1])}
    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, 1.0, 0.0)
    x, ctx = torch.randn(1, 16, 2, 4, 4), torch.randn(1, 5, TINY["t2v"].text_dim)
    t = torch.tensor([600.0])
    mm.unload_all_models()
    patched.patch_model()
    full = cm.spacetime_dit(patched)(x, t, ctx)
    patched.unpatch_model()
    plain = cm.spacetime_dit(patched)(x, t, ctx)
    patched.load(torch.device("cpu"), lowvram_model_memory=1)   # everything "offloaded", patches per use
    low = cm.spacetime_dit(patched)(x, t, ctx)
    patched.detach()
    assert not torch.allclose(full, plain, atol=1e-3)
    assert torch.allclose(low, full, atol=1e-4), (low - full).abs().max()


def test_every_latent_format_has_preview_factors_for_comfyuis_latent2rgb(cm):
    """ComfyUI previews a latent while sampling (``--preview-method auto``) only when the MODEL's
    latent format has ``latent_rgb_factors``: Wan's own formats and the embedded model's do."""
    import latent_preview

    from spacetime_video.model.embedded import config as emb
    for channels in (16, 48):
        assert cm.latent_format_for(channels).latent_rgb_factors is not None, channels
    fmt = cm.latent_format_for(emb.Z_DIM, torch.zeros(emb.Z_DIM), torch.ones(emb.Z_DIM),
                               rgb=(emb.LATENT_RGB_FACTORS, emb.LATENT_RGB_BIAS))
    previewer = latent_preview.Latent2RGBPreviewer(fmt.latent_rgb_factors, fmt.latent_rgb_factors_bias)
    assert previewer.decode_latent_to_preview(torch.zeros(1, emb.Z_DIM, 2, 5, 7)).size == (7, 5)
    assert cm.latent_format_for(emb.Z_DIM, torch.zeros(emb.Z_DIM), torch.ones(emb.Z_DIM)).latent_rgb_factors is None
    with pytest.raises(ValueError, match="8 channels"):
        cm.latent_format_for(emb.Z_DIM, rgb=(emb.LATENT_RGB_FACTORS[:3], emb.LATENT_RGB_BIAS))
