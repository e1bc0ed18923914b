"""The node set in-process on tiny random weights: VAE interop with ComfyUI's native Wan VAE,
canvas placements kept through sampling, native CONDITIONING, clear errors."""
from __future__ import annotations

import pytest
import torch

from dit_helpers import TINY, random_state_dict


@pytest.fixture(scope="module")
def nodes(comfy):
    from spacetime_video.nodes import canvas_nodes, comfy_model, comfy_vae, sampler, vae_nodes
    return type("N", (), dict(canvas=canvas_nodes, model=comfy_model, vae=comfy_vae,
                              sampler=sampler, vae_nodes=vae_nodes))


def tiny_vae_sd(version="2.1", seed=0) -> dict:
    from spacetime_video.model.vae import WanVAE
    from spacetime_video.model.vae.config import VAEConfig
    torch.manual_seed(seed)
    cfg = VAEConfig(version=version, dim=4, z_dim=16 if version == "2.1" else 48, dec_dim=None)
    return {k: v.clone() for k, v in WanVAE(cfg).state_dict().items()}


def ours_vae(nodes, sd):
    from spacetime_video.model.vae import load_vae
    return nodes.vae.wrap_vae(load_vae(sd))


def out(node_output, i=0):
    return node_output.result[i] if hasattr(node_output, "result") else node_output[i]


def test_latents_interoperate_with_native_vae(nodes):
    import comfy.sd
    sd = tiny_vae_sd()
    native, ours = comfy.sd.VAE(sd=dict(sd)), ours_vae(nodes, sd)
    images = torch.rand(5, 16, 16, 3)
    z_ours = out(nodes.vae_nodes.SpacetimeVAEEncode.execute(images, ours, 0))["samples"]
    z_native = native.encode(images)
    assert z_ours.shape == z_native.shape == (1, 16, 2, 2, 2)
    assert torch.allclose(z_ours, z_native, atol=1e-4, rtol=1e-3)
    frames_native = native.decode(z_ours).reshape(-1, 16, 16, 3)
    frames_ours = out(nodes.vae_nodes.SpacetimeVAEDecode.execute({"samples": z_native}, ours, 0))
    assert frames_ours.shape == frames_native.shape == (5, 16, 16, 3)
    assert torch.allclose(frames_ours, frames_native, atol=1e-3)
    # our nodes also accept the native VAE
    z2 = out(nodes.vae_nodes.SpacetimeVAEEncode.execute(images, native, 0))["samples"]
    assert torch.allclose(z2, z_native)


def test_encode_refuses_bad_length_naming_the_input(nodes):
    from spacetime_video.nodes.errors import SpacetimeNodeError
    ours = ours_vae(nodes, tiny_vae_sd())
    with pytest.raises(SpacetimeNodeError, match=r"SpacetimeVAEEncode: input 'images'.*"):
        nodes.vae_nodes.SpacetimeVAEEncode.execute(torch.rand(4, 32, 32, 3), ours, 0)


def _ti2v_model(nodes):
    from spacetime_video.model.dit import load_dit
    cfg = TINY["ti2v"]
    return nodes.model.wrap_dit(load_dit(random_state_dict(cfg, 2), config=cfg), shift=5.0), cfg


def test_image_to_video_keeps_the_first_frame_with_native_conditioning(nodes):
    model, cfg = _ti2v_model(nodes)
    vae = ours_vae(nodes, tiny_vae_sd("2.2"))
    latent = out(nodes.canvas.SpacetimeCanvas.execute(vae, 64, 64, 9, "snap", model))
    assert latent["samples"].shape == (1, 48, 3, 4, 4)
    image = torch.rand(1, 64, 64, 3)
    placed = out(nodes.canvas.SpacetimePlaceFrames.execute(latent, vae, image, "start", 0, "all", 1))
    assert placed["noise_mask"][0, 0, :, 0, 0].tolist() == [0.0, 1.0, 1.0]
    cond = [[torch.randn(1, 5, cfg.text_dim), {}]]      # native CONDITIONING layout
    result = out(nodes.sampler.SpacetimeSampler.execute(model, cond, cond, placed, 1, 3, 1.0, "euler", 5.0, 1.0))
    z = result["samples"]
    assert z.shape == placed["samples"].shape
    assert torch.allclose(z[:, :, 0], placed["samples"][:, :, 0], atol=1e-4)
    assert not torch.allclose(z[:, :, 1:], placed["samples"][:, :, 1:], atol=1e-2)


def test_mismatched_vae_and_model_is_refused(nodes):
    from spacetime_video.nodes.errors import SpacetimeNodeError
    model, cfg = _ti2v_model(nodes)
    vae21 = ours_vae(nodes, tiny_vae_sd("2.1"))
    with pytest.raises(SpacetimeNodeError, match="SpacetimeCanvas: input 'vae'.*48"):
        nodes.canvas.SpacetimeCanvas.execute(vae21, 64, 64, 9, "snap", model)
    latent = {"samples": torch.randn(1, 16, 3, 8, 8)}  # a Wan 2.1 latent
    cond = [[torch.randn(1, 5, cfg.text_dim), {}]]
    with pytest.raises(SpacetimeNodeError, match="SpacetimeSampler: input 'latent'.*48"):
        nodes.sampler.SpacetimeSampler.execute(model, cond, cond, latent, 0, 2, 1.0, "euler", 5.0, 1.0)


def test_placement_errors_name_the_input(nodes):
    from spacetime_video.nodes.errors import SpacetimeNodeError
    vae = ours_vae(nodes, tiny_vae_sd())
    latent = out(nodes.canvas.SpacetimeCanvas.execute(vae, 32, 32, 9, "snap"))
    place = nodes.canvas.SpacetimePlaceFrames.execute
    with pytest.raises(SpacetimeNodeError, match="input 'images'.*32x32"):
        place(latent, vae, torch.rand(1, 16, 16, 3), "start", 0, "all", 1)           # wrong size
    with pytest.raises(SpacetimeNodeError, match="input 'images'.*1..3"):
        place(latent, vae, torch.rand(3, 32, 32, 3), "end", 0, "first", 5)          # clip too short
    with pytest.raises(SpacetimeNodeError, match="input 'frame'.*0..8"):
        place(latent, vae, torch.rand(1, 32, 32, 3), "frame", 9, "all", 1)          # outside the clip
    with pytest.raises(SpacetimeNodeError, match="SpacetimeCanvas: input 'width/height/length'.*length 10"):
        nodes.canvas.SpacetimeCanvas.execute(vae, 32, 32, 10, "error")


def test_two_experts_split_the_schedule(nodes):
    from spacetime_video.model.dit import load_dit
    cfg = TINY["t2v"]
    calls = {"high": 0, "low": 0}

    def counted(dit, name):
        model = nodes.model.wrap_dit(dit, shift=5.0)
        f = dit.forward
        dit.forward = lambda *a, **k: (calls.__setitem__(name, calls[name] + 1), f(*a, **k))[1]
        return model

    high = counted(load_dit(random_state_dict(cfg, 3), config=cfg), "high")
    low = counted(load_dit(random_state_dict(cfg, 4), config=cfg), "low")
    cond = [[torch.randn(1, 5, cfg.text_dim), {}]]
    latent = {"samples": torch.zeros(1, 16, 2, 4, 4)}
    res = out(nodes.sampler.SpacetimeSampler.execute(high, cond, cond, latent, 0, 6, 1.0, "euler", 12.0, 1.0,
                                                     None, low, 0.875, 1.0))
    from spacetime_video import samplers
    split = samplers.expert_switch_index(samplers.flow_sigmas(6, 12.0), 0.875)
    assert 0 < split < 6
    # the high-noise expert runs the steps above the boundary, the low-noise one the rest
    assert calls == {"high": split, "low": 6 - split}
    assert torch.isfinite(res["samples"]).all()


def test_canvas_snaps_and_says_so(nodes):
    vae = ours_vae(nodes, tiny_vae_sd())
    res = nodes.canvas.SpacetimeCanvas.execute(vae, 70, 50, 10, "snap")
    text = res.ui.as_dict()["text"][0]
    assert "width 70 -> 64" in text and "height 50 -> 48" in text and "length 10 -> 9" in text
    assert "tokens" in text and res.result[0]["samples"].shape == (1, 16, 3, 6, 8)


def test_loop_keeps_one_image_at_both_ends(nodes):
    model, cfg = _ti2v_model(nodes)
    vae = ours_vae(nodes, tiny_vae_sd("2.2"))
    latent = out(nodes.canvas.SpacetimeCanvas.execute(vae, 64, 64, 9, "snap", model))
    image = torch.rand(1, 64, 64, 3)
    place = nodes.canvas.SpacetimePlaceFrames.execute
    placed = out(place(out(place(latent, vae, image, "start", 0, "all", 1)), vae, image, "end", 0, "all", 1))
    assert placed["noise_mask"][0, 0, :, 0, 0].tolist() == [0.0, 1.0, 0.0]   # the end image's latent is kept
    assert placed["concat_mask"][0, :, 2, 0, 0].tolist() == [1.0, 1.0, 1.0, 0.0]
    cond = [[torch.randn(1, 5, cfg.text_dim), {}]]
    z = out(nodes.sampler.SpacetimeSampler.execute(model, cond, cond, placed, 2, 2, 1.0, "euler", 5.0, 1.0))["samples"]
    assert torch.allclose(z[:, :, [0, 2]], placed["samples"][:, :, [0, 2]], atol=1e-4)


def test_native_tiled_nodes_and_vae_save_work_on_our_vae(nodes):
    """ComfyUI's VAEEncodeTiled / VAEDecodeTiled call our streamed, tiled paths (sizes in their
    units: pixels to encode, latent cells to decode); VAESave's get_sd gives the official keys."""
    import nodes as comfy_nodes  # ComfyUI's own nodes.py
    sd = tiny_vae_sd()
    ours = ours_vae(nodes, sd)
    assert set(ours.get_sd()) == set(sd)
    images = torch.rand(5, 32, 64, 3)
    z = out(nodes.vae_nodes.SpacetimeVAEEncode.execute(images, ours, 0))["samples"]
    whole = out(nodes.vae_nodes.SpacetimeVAEDecode.execute({"samples": z}, ours, 0))
    z_tiled = comfy_nodes.VAEEncodeTiled().encode(ours, images, 512, 64)[0]["samples"]
    assert torch.allclose(z_tiled, z, atol=1e-5)                       # one tile covers the frame
    big = comfy_nodes.VAEDecodeTiled().decode(ours, {"samples": z}, 512, 64)[0]
    assert big.shape == whole.shape and torch.allclose(big, whole, atol=1e-5)
    tiled = comfy_nodes.VAEDecodeTiled().decode(ours, {"samples": z}, 32, 8)[0]   # 2 tiles across
    assert tiled.shape == whole.shape and not torch.equal(tiled, whole)
    assert (tiled - whole).abs().mean() < 0.15              # blended seams of a random tiny VAE
    assert nodes.vae.vae_geometry(ours) == ((4, 8, 8), 16)


def test_vae_asks_model_management_for_what_comfyui_would(nodes, monkeypatch):
    """The memory our VAE asks ComfyUI to free before a decode or encode is ComfyUI's own estimate
    for its Wan VAE (scaled by the model width), computed on the latent for a decode and on the
    pixels for an encode."""
    import comfy.model_management as mm
    import comfy.sd
    sd = tiny_vae_sd()
    native, ours = comfy.sd.VAE(sd=dict(sd)), ours_vae(nodes, sd)
    scale = 4 / 96                                                    # our tiny VAE is 4 wide
    z, video = (1, 16, 3, 4, 6), (1, 3, 9, 32, 48)
    assert ours.memory_used_decode(z, torch.float32) == pytest.approx(native.memory_used_decode(z, torch.float32) * scale)
    assert ours.memory_used_encode(video, torch.float32) == pytest.approx(
        native.memory_used_encode(video, torch.float32) * scale)
    asked = []
    monkeypatch.setattr(mm, "load_models_gpu", lambda models, memory_required=0, **kw: asked.append(memory_required))
    frames = ours.decode(torch.zeros(z))
    ours.encode(frames[0])
    assert asked == [pytest.approx(ours.memory_used_decode(z, ours.vae_dtype)),
                     pytest.approx(ours.memory_used_encode((1, 3, 9, 32, 48), ours.vae_dtype))]
