"""pipeline.generate: one canvas, one guidance, one loop. The plain library path and the ComfyUI
node path (Canvas -> Place Frames -> Sampler) give the same latent for the same model, seed and
known frames, for both ways of holding known frames (re-noised: Wan 2.1; clean with timestep 0:
Wan 2.2 TI2V and the embedded model)."""
from __future__ import annotations

import pytest
import torch

from dit_helpers import TINY, random_state_dict
from spacetime_video import pipeline, samplers


def tiny_parts(kind: str):
    """A tiny random DiT and a matching tiny random VAE (16 channels for t2v, 48 for ti2v)."""
    from spacetime_video.model.dit import load_dit
    from spacetime_video.model.vae import WanVAE, load_vae
    from spacetime_video.model.vae.config import VAEConfig
    torch.manual_seed(0)
    vcfg = VAEConfig(dim=4, z_dim=16) if kind == "t2v" else VAEConfig(version="2.2", dim=4, z_dim=48)
    vae_sd = {k: v.clone() for k, v in WanVAE(vcfg).state_dict().items()}
    return load_dit(random_state_dict(TINY[kind], 3), config=TINY[kind]), load_vae(vae_sd), vae_sd


def _node_latent(dit, vae, cond, uncond, image, sigmas, per_token, *, width, height, frames, cfg):
    from spacetime_video.nodes import canvas_nodes, comfy_model, comfy_vae, sampler
    model = comfy_model.wrap_dit(dit, per_token=per_token)
    cvae = comfy_vae.wrap_vae(vae)
    latent = canvas_nodes.SpacetimeCanvas.execute(cvae, width, height, frames, "snap", model).result[0]
    if image is not None:
        latent = canvas_nodes.SpacetimePlaceFrames.execute(latent, cvae, image, "start", 0, "all", 1).result[0]
    out = sampler.SpacetimeSampler.execute(model, [[cond, {}]], [[uncond, {}]], latent, 7, len(sigmas) - 1, cfg,
                                           "euler", 5.0, 1.0, sigmas=sigmas)
    return out.result[0]["samples"]


@pytest.mark.parametrize("kind, per_token, with_image", [("t2v", False, True), ("ti2v", True, True),
                                                         ("t2v", False, False)])
def test_library_and_node_paths_agree(comfy, kind, per_token, with_image):
    dit, vae, vae_sd = tiny_parts(kind)
    from spacetime_video.model.vae import load_vae
    node_vae = load_vae(vae_sd)  # the node path re-types its VAE for ComfyUI: give it its own
    g = torch.Generator().manual_seed(5)
    cond, uncond = torch.randn(1, 9, TINY[kind].text_dim, generator=g), torch.zeros(1, 9, TINY[kind].text_dim)
    width, height, frames = (32, 32, 9) if kind == "t2v" else (64, 64, 5)
    image = torch.rand(1, height, width, 3, generator=g) if with_image else None
    # a schedule that starts at sigma 1: ComfyUI starts from sigma0 * noise, the library from the
    # noise itself (Wan's official start); at sigma0 = 1 both are the noise
    sigmas = samplers.flow_sigmas(4, 3.0, spacing="wan_dpm")
    known = [pipeline.Known(image)] if with_image else []
    ours = pipeline.generate_latent(dit, vae, cond, uncond, frames=frames, height=height, width=width, guidance=3.0,
                                    seed=7, known=known, solver="euler", per_token=per_token, sigmas=sigmas)
    theirs = _node_latent(dit, node_vae, cond, uncond, image, sigmas, per_token, width=width, height=height,
                          frames=frames, cfg=3.0)
    assert ours.shape == theirs.shape
    assert torch.allclose(ours, theirs, atol=1e-4, rtol=1e-4), (ours - theirs).abs().max()
    if with_image:  # the first latent frame is the image's own latent
        pixels = image.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1
        assert torch.allclose(ours[:, :, 0], vae.encode(pixels)[:, :, 0], atol=1e-4)


def test_renoised_known_frames_are_the_clean_latent_at_the_end():
    dit, vae, _ = tiny_parts("t2v")
    clip = torch.rand(5, 32, 32, 3, generator=torch.Generator().manual_seed(1))
    cond = torch.randn(1, 9, TINY["t2v"].text_dim)
    z = pipeline.generate_latent(dit, vae, cond, None, frames=9, height=32, width=32, steps=3, seed=2,
                                 known=[pipeline.Known(clip)])
    ref = vae.encode(clip.permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1)            # 5 frames -> 2 latents
    assert torch.allclose(z[:, :, :2], ref, atol=1e-5)
    free = pipeline.generate_latent(dit, vae, cond, None, frames=9, height=32, width=32, steps=3, seed=2)
    assert not torch.allclose(free[:, :, :2], ref, atol=1e-2)
    again = pipeline.generate_latent(dit, vae, cond, None, frames=9, height=32, width=32, steps=3, seed=2,
                                     known=[pipeline.Known(clip)])
    assert torch.equal(z, again)


def test_clear_errors():
    dit, vae, _ = tiny_parts("t2v")
    cond = torch.randn(1, 9, TINY["t2v"].text_dim)
    with pytest.raises(ValueError, match=r"width 40 is not a multiple of 16.*32 or 48.*length 10.*9 or 13"):
        pipeline.generate(dit, vae, cond, frames=10, height=32, width=40)
    from spacetime_video.model.dit import load_dit
    i2v = load_dit(random_state_dict(TINY["i2v"], 0), config=TINY["i2v"])
    with pytest.raises(ValueError, match="extra image channels: use the ComfyUI nodes"):
        pipeline.generate(i2v, vae, cond, frames=9, height=32, width=32)
    _, vae22, _ = tiny_parts("ti2v")
    with pytest.raises(ValueError, match="48-channel latents but the DiT denoises 16"):
        pipeline.generate(dit, vae22, cond, frames=9, height=32, width=32)


def test_known_frames_in_either_layout():
    frames = torch.rand(2, 8, 8, 3)
    assert torch.equal(pipeline.Known(frames).pixels(), frames)
    three = torch.rand(3, 8, 8, 3)                                             # a 3-frame IMAGE
    assert torch.equal(pipeline.Known(three).pixels(), three)
    signed = frames.permute(3, 0, 1, 2) * 2 - 1                                # [3, n, H, W] in -1..1
    assert torch.allclose(pipeline.Known(signed).pixels(), frames, atol=1e-6)
    assert pipeline.Known(frames[0]).pixels().shape == (1, 8, 8, 3)
    with pytest.raises(ValueError, match=r"\[n, H, W, 3\]"):
        pipeline.Known(torch.rand(8, 8)).pixels()


def test_generate_embedded_builds_no_autograd_graph():
    model = pipeline.load_embedded()
    with torch.enable_grad():
        video = pipeline.generate_embedded("a red ball", steps=1, model=model)
    assert not video.requires_grad and video.grad_fn is None
